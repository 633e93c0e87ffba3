//! No other user can keep an instance from starting. Anyone who can open
//! the 0644 PID file can `flock` it — shared (`flock -s`), or even
//! exclusively through a read-only descriptor (`flock -x`) — but a
//! *reader* is not an instance: it is never reported as one, and a start
//! that finds only readers on the file puts a new file in its place.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use nix::sys::signal::Signal;
use pidlock_core::Status;

/// The user `nobody`.
const NOBODY: u32 = 65534;

/// A `flock(1)` of `nobody` on `path` (`-s` or `-x`), holding it until
/// dropped. `flock` opens the file read-only, as any user can.
struct Reader {
    child: Child,
}

impl Reader {
    /// Starts the reader; returns once it holds its lock.
    fn hold(path: &Path, mode: &str) -> Self {
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "flock",
                mode,
            ])
            .arg(path)
            .args(["sh", "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n", "the reader did not get its lock");
        Self { child }
    }

    /// Starts the reader while the lock is taken: it waits in `flock` and
    /// gets its lock when the instance dies.
    fn queue(path: &Path, mode: &str) -> (Child, std::sync::mpsc::Receiver<()>) {
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "flock",
                mode,
            ])
            .arg(path)
            .args(["sh", "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, locked) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if BufReader::new(stdout).read_line(&mut line).is_ok() && line == "locked\n" {
                let _ = send.send(());
            }
        });
        (child, locked)
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

/// A case whose directory other users can enter, as a service's data
/// directory usually is.
fn open_case() -> Option<Case> {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root, which a second user needs"
        );
        eprintln!("skipped: needs root to run a reader as another user");
        return None;
    }
    let case = Case::new();
    std::fs::set_permissions(case.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(case)
}

/// The issue as reported: root's bot crashes (SIGKILL) and leaves its file;
/// `nobody` had it open and now holds `mode` on it. Root's next start runs,
/// names the reader in a warning, and the reader keeps only the old inode.
fn a_crash_pinned_by(mode: &str) {
    let Some(case) = open_case() else {
        return;
    };
    let instance = start(case.holder(&["hold"]));
    let (reader, locked) = Reader::queue(&case.pid_file, mode);
    let reader = Reader { child: reader };
    instance.signal(Signal::SIGKILL);
    let (status, _) = instance.finish();
    assert!(killed_by(status, Signal::SIGKILL));
    locked
        .recv_timeout(DEADLINE)
        .expect("the reader never got its lock");
    assert!(matches!(
        pidlock_core::status(&case.pid_file).unwrap(),
        Status::Stale { ref readers, .. } if readers.iter().any(|r| r.uid == Some(NOBODY))
    ));
    let next = start(case.holder(&["hold"]));
    assert_eq!(read(&case.pid_file), format!("{}\n", next.pid()));
    next.signal(Signal::SIGTERM);
    let (_, stderr) = next.finish();
    assert!(
        stderr.starts_with(&format!(
            "WARNING - Found PID file {} held by readers, not by a running instance (PID ",
            case.pid_file.display()
        )) && stderr.contains("(user nobody (uid 65534): flock ")
            && stderr.contains(". Replaced it with a new file.\n"),
        "{mode}: {stderr}"
    );
    assert!(!case.pid_file.exists(), "{mode}: left behind");
    drop(reader);
}

#[test]
fn a_file_another_user_holds_shared_after_a_crash_does_not_block_the_next_start() {
    a_crash_pinned_by("-s");
}

#[test]
fn a_file_another_user_holds_exclusively_through_a_read_only_descriptor_does_not_block_the_next_start()
 {
    a_crash_pinned_by("-x");
}

/// A standby that waits sees a pinned file as free: it starts at once
/// rather than waiting for a reader that may never let go.
#[test]
fn a_waiting_start_does_not_wait_for_readers() {
    let Some(case) = open_case() else {
        return;
    };
    std::fs::write(&case.pid_file, "999999\n").unwrap();
    let _reader = Reader::hold(&case.pid_file, "-s");
    let standby = start(case.command(env!("CARGO_BIN_EXE_fixture-wait"), &["hold"]));
    assert_eq!(read(&case.pid_file), format!("{}\n", standby.pid()));
}

/// A shared lock is never a running instance: `status` says the file is
/// stale and names the reader, with its user and command.
#[test]
fn a_reader_is_named_as_a_reader_never_as_a_running_instance() {
    let Some(case) = open_case() else {
        return;
    };
    std::fs::write(&case.pid_file, "999999\n").unwrap();
    let reader = Reader::hold(&case.pid_file, "-s");
    match pidlock_core::status(&case.pid_file).unwrap() {
        Status::Stale { pid, readers } => {
            assert_eq!(pid.map(pidlock_core::Pid::get), Some(999_999));
            let flock = readers
                .iter()
                .find(|found| found.pid.get() as u32 == reader.child.id())
                .unwrap_or_else(|| panic!("flock is not among {readers:?}"));
            assert_eq!(flock.uid, Some(NOBODY));
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
fn simultaneous_starts_on_a_pinned_file_have_one_winner_and_never_overlap() {
    let Some(case) = open_case() else {
        return;
    };
    let log = case.dir.path().join("holders.log");
    const ROUNDS: usize = 10;
    const STARTS: usize = 8;
    for round in 0..ROUNDS {
        std::fs::write(&case.pid_file, "999999\n").unwrap();
        let reader = Reader::hold(&case.pid_file, if round % 2 == 0 { "-s" } else { "-x" });
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
