//! No other user can keep an instance from starting. Anyone who can open a
//! file can `flock` it, so the PID file is 0600: other users cannot open
//! it at all. The owner's own readers (an observer, `flock -s`) still can,
//! and a *reader* is not an instance: it is never reported as one, and a
//! start that finds only shared locks on the file puts a new file in its
//! place.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use nix::sys::signal::Signal;
use pidlock_core::Status;

/// A `flock(1)` on `path` (`-s` or `-x`) by this test's user, holding it
/// until dropped. `flock` opens the file read-only.
struct Reader {
    child: Child,
}

impl Reader {
    fn command(path: &Path, mode: &str, user: Option<u32>) -> Command {
        let mut command = match user {
            Some(uid) => {
                let mut command = Command::new("setpriv");
                command.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "flock",
                ]);
                command
            }
            None => Command::new("flock"),
        };
        command
            .arg(mode)
            .arg(path)
            .args(["sh", "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts the reader; returns once it holds its lock.
    fn hold(path: &Path, mode: &str) -> Self {
        let mut child = Self::command(path, mode, None).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n", "the reader did not get its lock");
        Self { child }
    }

    /// Starts the reader while the lock is taken: it waits in `flock` and
    /// gets its lock when the instance dies. Returns once the kernel lists
    /// it as waiting for the lock (had it opened the path only after the
    /// instance removed the file, it would lock a new file of its own).
    fn queue(path: &Path, mode: &str) -> (Self, std::sync::mpsc::Receiver<()>) {
        let mut child = Self::command(path, mode, None).spawn().unwrap();
        let waiting = format!(" {} ", child.id());
        let listed = || {
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .any(|line| line.contains("-> FLOCK") && line.contains(&waiting))
        };
        let since = std::time::Instant::now();
        while !listed() {
            assert!(since.elapsed() < DEADLINE, "the reader never queued");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let stdout = child.stdout.take().unwrap();
        let (send, locked) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if BufReader::new(stdout).read_line(&mut line).is_ok() && line == "locked\n" {
                let _ = send.send(());
            }
        });
        (Self { child }, locked)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing its stdin ends `cat`, then `flock`.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Another user cannot even open the file, let alone lock it: whatever it
/// tries, the next start runs. (The issue as reported: `nobody` held a
/// shared lock on root's crashed bot's 0644 file, and root's bot could
/// never start again.)
#[test]
fn another_user_cannot_lock_the_file_so_cannot_block_a_start() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root, which a second user needs"
        );
        eprintln!("skipped: needs root to run a reader as another user");
        return;
    }
    let case = Case::new();
    // Other users may enter the directory, as a service's data directory
    // usually allows.
    std::fs::set_permissions(case.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let instance = start(case.holder(&["hold"]));
    for mode in ["-s", "-x"] {
        let output = Reader::command(&case.pid_file, mode, Some(NOBODY))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{mode}: nobody locked root's file"
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("Permission denied"),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    instance.signal(Signal::SIGKILL);
    let (status, _) = instance.finish();
    assert!(killed_by(status, Signal::SIGKILL));
    let next = start(case.holder(&["hold"]));
    assert_eq!(read(&case.pid_file), format!("{}\n", next.pid()));
}

/// The owner's own reader keeps a crashed instance's file locked (shared):
/// the next start runs, names the reader in a warning, and leaves it the
/// old inode.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: replacing a file readers hold needs an atomic exchange of two names"
)]
fn a_file_a_reader_holds_after_a_crash_does_not_block_the_next_start() {
    let case = Case::new();
    let instance = start(case.holder(&["hold"]));
    let (reader, locked) = Reader::queue(&case.pid_file, "-s");
    instance.signal(Signal::SIGKILL);
    let (status, _) = instance.finish();
    assert!(killed_by(status, Signal::SIGKILL));
    locked
        .recv_timeout(DEADLINE)
        .expect("the reader never got its lock");
    let next = start(case.holder(&["hold"]));
    assert_eq!(read(&case.pid_file), format!("{}\n", next.pid()));
    next.signal(Signal::SIGTERM);
    let (_, stderr) = next.finish();
    assert!(
        stderr.starts_with(&format!(
            "WARNING - Found PID file {} held by readers, not by a running instance (PID {}",
            case.pid_file.display(),
            reader.child.id()
        )) && stderr.contains(". Replaced it with a new file.\n"),
        "{stderr}"
    );
    assert!(!case.pid_file.exists(), "left behind");
}

/// A standby that waits sees a pinned file as free: it starts at once
/// rather than waiting for a reader that may never let go.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: replacing a file readers hold needs an atomic exchange of two names"
)]
fn a_waiting_start_does_not_wait_for_readers() {
    let case = Case::new();
    std::fs::write(&case.pid_file, "999999\n").unwrap();
    let _reader = Reader::hold(&case.pid_file, "-s");
    let standby = start(case.command(env!("CARGO_BIN_EXE_fixture-wait"), &["hold"]));
    assert_eq!(read(&case.pid_file), format!("{}\n", standby.pid()));
}

/// A standby waiting for an instance notices when the instance removes the
/// file on its way out, even if a reader takes a shared lock on the removed
/// inode at that moment (a plain blocking `flock` would wait behind that
/// reader forever).
#[test]
fn a_waiting_start_is_not_held_up_by_a_reader_of_the_removed_file() {
    let case = Case::new();
    let mut command = case.holder(&["until-stdin-closes"]);
    command.stdin(Stdio::piped());
    let instance = start(command);
    let standby = Watched::spawn(case.command(env!("CARGO_BIN_EXE_fixture-wait"), &["hold"]));
    standby.wait_for_stderr("waiting for it to exit");
    // The reader queues for a shared lock on the instance's file, and gets
    // it as soon as the instance lets go, on the removed inode.
    let (_reader, locked) = Reader::queue(&case.pid_file, "-s");
    let mut instance = instance;
    drop(instance.child.stdin.take());
    let (status, _) = instance.finish();
    assert!(status.success());
    locked
        .recv_timeout(DEADLINE)
        .expect("the reader never got its lock");
    standby.wait_for_stdout("ready");
    assert_eq!(read(&case.pid_file), format!("{}\n", standby.pid()));
}

/// A standby waiting for an instance that crashes, leaving its file at the
/// path, while a reader keeps a shared lock on that file: the standby sees
/// that only readers are left and replaces the file, rather than waiting
/// for an exclusive lock the reader would withhold for as long as it
/// likes. The test plays both parts itself on one descriptor: it holds the
/// file exclusively with its PID in it, as an instance does, and once the
/// standby waits, keeps only a shared lock (a conversion makes no close
/// event, so the standby cannot be woken into taking the lock in between).
///
/// Where a file cannot be replaced (the portable layer), the standby says
/// so and waits for the reader instead, and runs once it lets go.
#[test]
fn a_waiting_start_is_not_held_up_by_a_reader_of_a_crashed_instances_file() {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let case = Case::new();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&case.pid_file)
        .unwrap();
    writeln!(file, "{}", std::process::id()).unwrap();
    let held = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .unwrap_or_else(|(_, errno)| panic!("lock the file: {errno}"));
    let standby = Watched::spawn(case.command(env!("CARGO_BIN_EXE_fixture-wait"), &["hold"]));
    // (A child this test process forks for another test meanwhile shares
    // the lock until its exec, and the line may name it too.)
    standby.wait_for_stderr(&format!(
        "Another instance is running (PID: {}",
        std::process::id()
    ));
    held.relock(FlockArg::LockShared).unwrap();
    if cfg!(pidlock_portable) {
        standby.wait_for_stderr(&format!(
            "INFO - No instance is running, but readers hold {} and it cannot be replaced here; waiting for them to let go...",
            case.pid_file.display()
        ));
        drop(held);
        standby.wait_for_stdout("ready");
    } else {
        standby.wait_for_stdout("ready");
        drop(held);
    }
    assert_eq!(read(&case.pid_file), format!("{}\n", standby.pid()));
}

/// A shared lock is never a running instance: `status` says the file is
/// stale and names the reader, with its user and command.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_reader_is_named_as_a_reader_never_as_a_running_instance() {
    let case = Case::new();
    std::fs::write(&case.pid_file, "999999\n").unwrap();
    let reader = Reader::hold(&case.pid_file, "-s");
    match pidlock_core::status(&case.pid_file).unwrap() {
        Status::Stale { pid, readers } => {
            assert_eq!(pid.map(pidlock_core::Pid::get), Some(999_999));
            let flock = readers
                .iter()
                .find(|found| found.pid.get() as u32 == reader.child.id())
                .unwrap_or_else(|| panic!("flock is not among {readers:?}"));
            assert_eq!(flock.uid, Some(nix::unistd::geteuid().as_raw()));
            assert!(flock.shared);
            assert!(
                flock
                    .command
                    .as_deref()
                    .is_some_and(|c| c.starts_with("flock -s ")),
                "{flock:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Starts that replace a pinned file at the same instant: one wins, the
/// others meet it as an instance, and no two ever hold the lock at once.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: replacing a file readers hold needs an atomic exchange of two names"
)]
fn simultaneous_starts_on_a_pinned_file_have_one_winner_and_never_overlap() {
    let case = Case::new();
    let log = case.dir.path().join("holders.log");
    const ROUNDS: usize = 10;
    const STARTS: usize = 8;
    for round in 0..ROUNDS {
        std::fs::write(&case.pid_file, "999999\n").unwrap();
        let reader = Reader::hold(&case.pid_file, "-s");
        let gate = StartingGate::new();
        let children: Vec<_> = (0..STARTS)
            .map(|_| {
                let mut command = gate.command(
                    Path::new(env!("CARGO_BIN_EXE_fixture-holder")),
                    &["race".as_ref(), log.as_os_str()],
                );
                command
                    .current_dir(case.dir.path())
                    .env("PIDLOCK_TEST_PID_FILE", &case.pid_file)
                    .env_remove("PIDLOCK_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                command.spawn().unwrap()
            })
            .collect();
        gate.open();
        let mut winners = 0;
        for child in children {
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            match output.status.code() {
                Some(0) => winners += 1,
                Some(1) => assert!(
                    stderr.contains("ERROR - Another instance is already running (PID: "),
                    "round {round}: lost for another reason:\n{stderr}"
                ),
                _ => panic!("round {round}: {:?}\n{stderr}", output.status),
            }
        }
        assert!(winners >= 1, "round {round}: nobody started");
        drop(reader);
    }
    let held = read(&log).lines().count();
    assert_held_one_at_a_time(&log, held);
}
