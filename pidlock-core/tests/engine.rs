//! The lock engine without the macro: the seed's unit tests, against a real
//! file and a real kernel lock.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use pidlock_core::{Error, FileKind, Holder, OnConflict, Pid, PidLock, Signals, Status};

fn lock(path: &Path) -> PidLock {
    PidLock::new(path).signals(Signals::None).quiet(true)
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

#[test]
fn an_existing_instance_is_reported_with_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let other = Sleeper::start();
    let _held = hold_elsewhere(&path, &format!("{}\n", other.pid()));
    match lock(&path).acquire() {
        Err(Error::AlreadyRunning {
            path: reported,
            holder,
        }) => {
            assert_eq!(reported, path);
            assert_eq!(holder, Holder::File(Pid::new(other.pid() as i32).unwrap()));
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{}\n", other.pid())
    );
}

#[test]
fn a_holder_that_writes_its_pid_late_is_still_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let other = Sleeper::start();
    let held = hold_elsewhere(&path, "");
    let pid = other.pid();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        nix::sys::uio::pwrite(&*held, format!("{pid}\n").as_bytes(), 0).unwrap();
        held
    });
    let result = lock(&path).acquire();
    let _held = writer.join().unwrap();
    match result {
        Err(Error::AlreadyRunning { holder, .. }) => {
            assert_eq!(holder.pid().map(Pid::get), Some(pid as i32));
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
}

#[test]
fn a_holder_that_never_writes_is_pid_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let _held = hold_elsewhere(&path, "");
    assert!(matches!(
        lock(&path).acquire(),
        Err(Error::AlreadyRunning {
            holder: Holder::Unknown,
            ..
        })
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
    assert_eq!(
        pidlock_core::status(&path).unwrap(),
        Status::Running(Holder::Kernel(Pid::current()))
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
            pid: Pid::new(dead as i32)
        }
    );
}

#[cfg(target_os = "linux")]
#[test]
fn status_names_the_kernel_lock_owner_not_the_files_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    // We hold the lock, but the file claims someone else does.
    let _held = hold_elsewhere(&path, "4242\n");
    assert_eq!(
        pidlock_core::status(&path).unwrap(),
        Status::Running(Holder::Kernel(Pid::current()))
    );
}

#[test]
fn acquire_timeout_gives_up_with_timed_out_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let other = Sleeper::start();
    let _held = hold_elsewhere(&path, &format!("{}\n", other.pid()));
    let started = std::time::Instant::now();
    match lock(&path).acquire_timeout(Duration::from_millis(200)) {
        Err(Error::TimedOut { holder, waited, .. }) => {
            assert_eq!(holder.pid().map(Pid::get), Some(other.pid() as i32));
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
