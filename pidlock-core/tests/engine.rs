//! The lock engine without the macro, against a real
//! file and a real kernel lock.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use pidlock_core::{Error, FileKind, Holder, OnConflict, Pid, PidLock, Signals, Status};

fn lock(path: &Path) -> PidLock {
    PidLock::new(path)
        .signals(Signals::None)
        .log_level(pidlock_core::LogLevel::Error)
}

/// Holds the lock on `path` the way another instance would: a separate open
/// file description with an exclusive `flock`, and `contents` in the file.
fn hold_elsewhere(path: &Path, contents: &str) -> Flock<File> {
    fs::write(path, contents).unwrap();
    let file = File::options().read(true).write(true).open(path).unwrap();
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| errno)
        .unwrap()
}

/// Another process holding the lock on `path` the way a shell script would
/// (`exec 9<>FILE; flock 9`), with `contents` in the file: `flock(1)` takes
/// the lock and exits, the shell (then `sleep`, same PID) keeps it.
struct ShellHolder(Child);

impl ShellHolder {
    fn start(path: &Path, contents: &str) -> Self {
        fs::write(path, contents).unwrap();
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"exec 9<>"$0" && flock -x 9 && echo locked && exec sleep 30"#,
            ])
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "locked\n");
        Self(child)
    }

    fn pid(&self) -> Pid {
        Pid::new(self.0.id() as i32).unwrap()
    }
}

impl Drop for ShellHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A live process that is not us, to name as a holder.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Self(Command::new("sleep").arg("30").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn acquisition_writes_our_pid_and_a_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let guard = lock(&path).acquire().unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{}\n", std::process::id())
    );
    assert_eq!(guard.pid(), Pid::current());
    assert_eq!(guard.path(), path);
}

#[test]
fn missing_parent_directories_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/app.pid");
    let _guard = lock(&path).acquire().unwrap();
    assert!(path.is_file());
}

#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn an_existing_instance_is_reported_with_its_verified_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let holder = ShellHolder::start(&path, "");
    fs::write(&path, format!("{}\n", holder.pid())).unwrap();
    match lock(&path).acquire() {
        Err(Error::AlreadyRunning {
            path: reported,
            holder: named,
        }) => {
            assert_eq!(reported, path);
            assert_eq!(
                named,
                Holder::Kernel {
                    pid: holder.pid(),
                    others: Vec::new(),
                    ns_pid: None
                }
            );
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{}\n", holder.pid())
    );
}

#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn the_holder_is_named_by_the_kernel_not_by_the_files_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let other = Sleeper::start();
    // Empty (the holder has not written yet), then a PID that is not the holder.
    for contents in [String::new(), format!("{}\n", other.pid())] {
        let holder = ShellHolder::start(&path, &contents);
        match lock(&path).acquire() {
            Err(Error::AlreadyRunning { holder: named, .. }) => {
                assert_eq!(named.pid(), Some(holder.pid()), "file said {contents:?}");
                assert!(named.is_verified());
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
    }
}

#[test]
fn a_number_in_the_file_equal_to_ours_is_not_held_by_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    // Another process holds the lock; the file names our PID number (as a
    // holder in another PID namespace, or a stale number, would).
    let _holder = ShellHolder::start(&path, &format!("{}\n", std::process::id()));
    assert!(matches!(
        lock(&path).acquire(),
        Err(Error::AlreadyRunning { .. })
    ));
    assert!(matches!(
        lock(&path).acquire_timeout(Duration::from_millis(200)),
        Err(Error::TimedOut { .. })
    ));
}

#[test]
fn a_second_acquisition_in_this_process_is_held_by_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let _guard = lock(&path).acquire().unwrap();
    assert!(matches!(
        lock(&path).acquire(),
        Err(Error::HeldByThisProcess { .. })
    ));
    // Also through a different spelling of the same path.
    let other_spelling = dir.path().join(".").join("app.pid");
    assert!(matches!(
        lock(&other_spelling).acquire(),
        Err(Error::HeldByThisProcess { .. })
    ));
}

#[test]
fn a_stale_pid_file_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    fs::write(&path, format!("{}\n", dead_pid())).unwrap();
    let _guard = lock(&path).acquire().unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{}\n", std::process::id())
    );
}

#[test]
fn a_corrupted_pid_file_is_taken_over_and_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    fs::write(&path, "not a pid, and rather longer than one\n").unwrap();
    let _guard = lock(&path).acquire().unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{}\n", std::process::id())
    );
}

#[test]
fn release_removes_the_file_and_frees_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut guard = lock(&path).acquire().unwrap();
    guard.release().unwrap();
    assert!(!path.exists());
    // Nobody holds it: a plain flock on a fresh file succeeds.
    let _again = lock(&path).acquire().unwrap();
}

#[test]
fn dropping_the_guard_releases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    drop(lock(&path).acquire().unwrap());
    assert!(!path.exists());
}

#[test]
fn release_leaves_another_processs_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut guard = lock(&path).acquire().unwrap();
    // Someone removed our file and another instance wrote its own.
    fs::remove_file(&path).unwrap();
    fs::write(&path, "4242\n").unwrap();
    guard.release().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "4242\n");
}

#[test]
fn releasing_twice_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut first = lock(&path).acquire().unwrap();
    first.release().unwrap();
    let second = lock(&path).acquire().unwrap();
    let inode = fs::metadata(&path).unwrap().ino();
    first.release().unwrap();
    drop(first);
    assert_eq!(
        fs::metadata(&path).unwrap().ino(),
        inode,
        "second holder's file was touched"
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{}\n", second.pid())
    );
    // Closing `first`'s descriptor twice could close `second`'s, whose number
    // may be the same: the kernel must still show `second`'s lock.
    // (The portable layer names the holder by the file, unverified.)
    let expected = if cfg!(pidlock_portable) {
        Holder::File(Pid::current())
    } else {
        Holder::Kernel {
            pid: Pid::current(),
            others: Vec::new(),
            ns_pid: None,
        }
    };
    assert_eq!(
        pidlock_core::status(&path).unwrap(),
        Status::Running(expected)
    );
}

#[test]
fn lock_is_not_inherited_across_exec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let _guard = lock(&path).acquire().unwrap();
    // A child lists its open descriptors: the PID file must not be among them.
    let output = Command::new("sh")
        .arg("-c")
        .arg("for fd in /proc/self/fd/*; do readlink \"$fd\"; done")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(!listing.contains("app.pid"), "{listing}");
}

#[test]
fn unsafe_paths_are_refused_with_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let as_dir = dir.path().join("dir.pid");
    fs::create_dir(&as_dir).unwrap();
    let as_link = dir.path().join("link.pid");
    std::os::unix::fs::symlink(dir.path().join("target"), &as_link).unwrap();
    for (path, expected) in [
        (&as_dir, FileKind::Directory),
        (&as_link, FileKind::Symlink),
    ] {
        match lock(path).acquire() {
            Err(Error::UnsafePath { kind, .. }) => assert_eq!(kind, expected),
            other => panic!("{}: expected UnsafePath, got {other:?}", path.display()),
        }
    }
    assert!(!dir.path().join("target").exists());
}

#[test]
fn a_path_without_a_file_name_is_invalid() {
    assert!(matches!(
        lock(Path::new("/")).acquire(),
        Err(Error::InvalidPath { .. })
    ));
}

#[test]
fn status_reports_not_running_running_and_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    assert_eq!(pidlock_core::status(&path).unwrap(), Status::NotRunning);

    let guard = lock(&path).acquire().unwrap();
    match pidlock_core::status(&path).unwrap() {
        Status::Running(holder) => assert_eq!(holder.pid(), Some(guard.pid())),
        other => panic!("expected Running, got {other:?}"),
    }
    drop(guard);

    let dead = dead_pid();
    fs::write(&path, format!("{dead}\n")).unwrap();
    assert_eq!(
        pidlock_core::status(&path).unwrap(),
        Status::Stale {
            pid: Pid::new(dead as i32),
            readers: Vec::new(),
        }
    );
}

#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn status_names_the_kernel_lock_owner_not_the_files_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    // We hold the lock, but the file claims someone else does.
    let _held = hold_elsewhere(&path, "4242\n");
    assert_eq!(
        pidlock_core::status(&path).unwrap(),
        Status::Running(Holder::Kernel {
            pid: Pid::current(),
            others: Vec::new(),
            ns_pid: None
        })
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn acquire_timeout_gives_up_with_timed_out_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let other = ShellHolder::start(&path, "");
    let started = std::time::Instant::now();
    match lock(&path).acquire_timeout(Duration::from_millis(200)) {
        Err(Error::TimedOut { holder, waited, .. }) => {
            assert_eq!(holder.pid(), Some(other.pid()));
            assert!(waited >= Duration::from_millis(200), "{waited:?}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn acquire_timeout_takes_the_lock_when_the_holder_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let held = hold_elsewhere(&path, "4242\n");
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
    });
    let guard = lock(&path)
        .acquire_timeout(Duration::from_secs(10))
        .unwrap();
    releaser.join().unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{}\n", guard.pid())
    );
}

#[test]
fn waiting_on_a_lock_this_process_holds_is_refused_not_a_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let _guard = lock(&path).acquire().unwrap();
    let waiting = lock(&path).on_conflict(OnConflict::Wait { timeout: None });
    assert!(matches!(
        waiting.acquire(),
        Err(Error::HeldByThisProcess { .. })
    ));
}
