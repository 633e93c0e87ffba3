//! DESIGN.md, *Processes and places*, with real processes: the lock stays
//! true under `fork`, daemonizing, a PID namespace and fork churn.
//!
//! Linux only, as root: a test makes a PID namespace (`unshare`).

mod common;
mod programs;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use nix::sys::time::TimeSpec;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::time::{ClockId, ClockNanosleepFlags, clock_gettime, clock_nanosleep};
use programs::*;

const RELEASE_LINES: [&str; 2] = ["Releasing PID lock", "PID file lock released"];

impl Case {
    fn assert_refused_naming(&self, pid: impl std::fmt::Display) {
        let (status, stderr) = run(self.holder(&["exit"]));
        assert_eq!(
            status.code(),
            Some(1),
            "a second instance was let in:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "Another instance is already running {}",
                named_holder(&pid)
            )),
            "the conflict does not name PID {pid}:\n{stderr}"
        );
    }

    /// A new instance starts (and exits, releasing).
    fn assert_new_instance_starts(&self) {
        let (status, stderr) = run(self.holder(&["exit"]));
        assert!(
            status.success(),
            "a new instance could not start:\n{stderr}"
        );
        assert!(!self.pid_file.exists());
    }
}

fn has_release_line(line: &str) -> bool {
    RELEASE_LINES.iter().any(|release| line.contains(release))
}

/// A process we did not start directly (a daemon, PID 1 of a namespace),
/// killed on drop. `reap`: it is our child (we are its subreaper).
struct Stray {
    pinned: Pinned,
    reap: bool,
    reaped: bool,
}

impl Stray {
    fn new(pid: i32, reap: bool) -> Self {
        Self {
            pinned: Pinned::new(pid).unwrap_or_else(|| panic!("process {pid} is gone")),
            reap,
            reaped: false,
        }
    }

    /// Waits for its exit and reaps it.
    fn wait_status(&mut self, deadline: Instant) -> Option<WaitStatus> {
        assert!(self.reap);
        if !self.pinned.wait_exit(deadline) {
            return None;
        }
        self.reaped = true;
        Some(waitpid(nix::unistd::Pid::from_raw(self.pinned.pid), None).expect("waitpid"))
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        self.pinned.signal(Signal::SIGKILL);
        if self.pinned.wait_exit(Instant::now() + DEADLINE) && self.reap && !self.reaped {
            let _ = waitpid(
                nix::unistd::Pid::from_raw(self.pinned.pid),
                Some(WaitPidFlag::WNOHANG),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 1. A forked child is not the owner.

/// `mode` forks a worker that ends as `worker_end` says while the parent
/// holds the lock; nothing of the lock may change.
fn forked_worker_leaves_the_lock_alone(mode: &str, worker_end: &str) {
    let case = Case::new();
    let mut parent = Program::spawn(case.holder(&[mode]));
    let deadline = Instant::now() + DEADLINE;
    let worker = parent.expect_stdout(deadline, "worker line", |line| {
        line.starts_with("worker ") && !line.starts_with("worker ended")
    });
    if mode == "fork-sigterm" {
        let pid: i32 = worker["worker ".len()..].parse().expect("worker PID");
        // The worker blocks until this signal, so its PID is still its own.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    }
    // The parent writes this to stderr after the worker has ended: whatever
    // the worker wrote to the shared stderr comes before it.
    let Some((marker, _)) = parent.stderr.wait_line(0, deadline, |line| {
        line.starts_with("fixture: worker ended")
    }) else {
        panic!(
            "the parent never saw its worker end; stdout {}\nstderr {}",
            parent.stdout.summary(),
            parent.stderr.summary()
        );
    };
    let before = parent.stderr.lines()[..marker].to_vec();
    assert!(
        !before.iter().any(|line| has_release_line(line)),
        "the forked worker ({worker_end}) released the parent's lock; stderr up to its end:\n{}\n\
         file now: {:?}",
        before.join("\n"),
        case.contents()
    );
    let ended = parent.expect_stdout(deadline, "worker status", |line| {
        line.starts_with("worker ended: ")
    });
    assert_eq!(ended, format!("worker ended: {worker_end}"));
    parent.expect_stdout(deadline, "ready", |line| line == "ready");
    assert_eq!(
        case.contents().as_deref(),
        Some(format!("{}\n", parent.pid()).as_str()),
        "the file must still name the parent"
    );
    case.assert_refused_naming(parent.pid());

    parent.pinned().signal(Signal::SIGTERM);
    let status = parent
        .wait_exit(Instant::now() + DEADLINE)
        .expect("the parent survived SIGTERM");
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    assert!(!case.pid_file.exists(), "SIGTERM left the file behind");
    assert!(parent.stderr.wait_closed(Instant::now() + DEADLINE));
    let released = parent
        .stderr
        .lines()
        .iter()
        .filter(|line| line.contains("PID file lock released"))
        .count();
    assert_eq!(released, 1, "stderr {}", parent.stderr.summary());
}

#[test]
fn a_forked_worker_calling_process_exit_does_not_release_the_parents_lock() {
    forked_worker_leaves_the_lock_alone("fork-exit", "exited 0");
}

#[test]
fn a_forked_worker_returning_from_main_does_not_release_the_parents_lock() {
    forked_worker_leaves_the_lock_alone("fork-return", "exited 0");
}

#[test]
fn a_forked_worker_killed_by_sigterm_does_not_release_the_parents_lock() {
    forked_worker_leaves_the_lock_alone("fork-sigterm", "killed by SIGTERM");
}

// ---------------------------------------------------------------------------
// 2. The daemon pattern.

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_daemonized_child_becomes_the_owner_names_itself_and_releases_on_sigterm() {
    // The daemon is orphaned when the original process exits: become its
    // parent, so that it is reaped and its end can be checked.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let case = Case::new();
    let mut original = Program::spawn(case.holder(&["daemon"]));
    let deadline = Instant::now() + DEADLINE;
    let status = original
        .wait_exit(deadline)
        .unwrap_or_else(|| panic!("the original process did not exit in daemon()"));
    assert_eq!(status.code(), Some(0), "{}", original.stderr.summary());
    let ready = original.expect_stdout(deadline, "`ready <pid>` from the daemon", |line| {
        line.starts_with("ready ")
    });
    let daemon_pid: i32 = ready["ready ".len()..].parse().expect("daemon PID");
    let mut daemon = Stray::new(daemon_pid, true);
    assert_ne!(daemon_pid, original.pid() as i32);

    assert_eq!(
        case.contents().as_deref(),
        Some(format!("{daemon_pid}\n").as_str()),
        "the file must name the daemon (PID {daemon_pid}), not the original process (PID {}), \
         which has exited",
        original.pid()
    );
    case.assert_refused_naming(daemon_pid);

    assert!(daemon.pinned.signal(Signal::SIGTERM));
    let end = daemon
        .wait_status(Instant::now() + DEADLINE)
        .unwrap_or_else(|| panic!("the daemon survived SIGTERM"));
    assert!(
        matches!(end, WaitStatus::Signaled(_, Signal::SIGTERM, _)),
        "{end:?}"
    );
    assert!(
        !case.pid_file.exists(),
        "the daemon's SIGTERM left the file behind: {:?}",
        case.contents()
    );
    assert!(original.stderr.wait_closed(Instant::now() + DEADLINE));
    let stderr = original.stderr.lines().join("\n");
    assert!(
        RELEASE_LINES.iter().all(|line| stderr.contains(line)),
        "{stderr}"
    );
    case.assert_new_instance_starts();
}

// ---------------------------------------------------------------------------
// 3. PID 1 in a container.

#[test]
fn pid_1_of_a_pid_namespace_releases_and_exits_143_on_sigterm() {
    let case = Case::new();
    let command = case.command(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            env!("CARGO_BIN_EXE_fixture-holder"),
            "hold",
        ],
    );
    let mut unshare = Program::spawn(command);
    let deadline = Instant::now() + DEADLINE;
    unshare.expect_stdout(deadline, "ready", |line| line == "ready");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.pid())).unwrap();
    let host_pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("unshare has no child: {children:?}"));
    let fixture = Stray::new(host_pid, false);
    assert_eq!(case.contents().as_deref(), Some("1\n"), "not PID 1?");

    assert!(fixture.pinned.signal(Signal::SIGTERM));
    let Some(status) = unshare.wait_exit(Instant::now() + DEADLINE) else {
        panic!(
            "PID 1 of the namespace still runs {DEADLINE:?} after SIGTERM (its PID file {}); \
             stderr {}",
            match case.contents() {
                Some(_) => "is still there",
                None => "was removed: file gone, process still running",
            },
            unshare.stderr.summary()
        );
    };
    assert_eq!(
        status.code(),
        Some(143),
        "expected exit status 128+SIGTERM; {status:?} (signal {:?}), stderr {}",
        status.signal(),
        unshare.stderr.summary()
    );
    assert!(!fixture.pinned.alive());
    assert!(!case.pid_file.exists(), "SIGTERM left the file behind");
    assert!(unshare.stderr.wait_closed(Instant::now() + DEADLINE));
    let stderr = unshare.stderr.lines().join("\n");
    assert!(
        RELEASE_LINES.iter().all(|line| stderr.contains(line)),
        "{stderr}"
    );
    case.assert_new_instance_starts();
}

// ---------------------------------------------------------------------------
// 4. Fork churn.

#[test]
fn fork_churn_200_rounds_never_has_two_holders() {
    const ROUNDS: usize = 200;
    /// When each of a round's three instances starts, after the round's
    /// go: the later ones arrive while the first holds and its workers have
    /// (likely) ended already.
    const OFFSETS_MS: [u64; 3] = [0, 3, 6];
    let case = Case::new();
    let log = case.pid_file.with_file_name("holders.log");
    let started = Instant::now();
    for round in 0..ROUNDS {
        let go = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap()
            + TimeSpec::from(Duration::from_millis(15));
        let mut instances: Vec<Program> = OFFSETS_MS
            .iter()
            .map(|offset| {
                let at = go + TimeSpec::from(Duration::from_millis(*offset));
                let mut command =
                    case.holder(&["fork-churn", log.to_str().unwrap(), &round.to_string()]);
                command.stdin(Stdio::piped());
                // SAFETY: clock_nanosleep is async-signal-safe, as required
                // between fork and exec.
                unsafe {
                    command.pre_exec(move || {
                        while clock_nanosleep(
                            ClockId::CLOCK_MONOTONIC,
                            ClockNanosleepFlags::TIMER_ABSTIME,
                            &at,
                        )
                        .is_err()
                        {}
                        Ok(())
                    });
                }
                Program::spawn(command)
            })
            .collect();
        // A holder holds until its stdin closes, which happens only once
        // every instance of the round has either lost or said `holding`:
        // all of them tried while one held.
        let deadline = Instant::now() + DEADLINE;
        let mut winners = Vec::new();
        for (index, instance) in instances.iter_mut().enumerate() {
            if instance
                .stdout
                .wait_line(0, deadline, |line| line == "holding")
                .is_some()
            {
                winners.push(index);
            } else {
                let status = instance
                    .wait_exit(deadline)
                    .unwrap_or_else(|| panic!("round {round}: an instance hangs"));
                assert!(instance.stderr.wait_closed(deadline));
                let stderr = instance.stderr.lines().join("\n");
                assert!(
                    status.code() == Some(1)
                        && stderr.starts_with("ERROR - Another instance is already running ("),
                    "round {round}: lost for another reason ({status:?}):\n{stderr}"
                );
            }
        }
        for instance in &mut instances {
            drop(instance.child.stdin.take());
        }
        for index in &winners {
            let instance = &mut instances[*index];
            let status = instance
                .wait_exit(deadline)
                .unwrap_or_else(|| panic!("round {round}: a holder hangs"));
            assert!(
                status.success(),
                "round {round}: {status:?}\n{}",
                instance.stderr.summary()
            );
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} instances held the lock at once (file: {:?})",
            winners.len(),
            case.contents()
        );
        assert!(
            !case.pid_file.exists(),
            "round {round} left the file behind"
        );
    }
    let elapsed = started.elapsed();

    assert_held_one_at_a_time(&log, ROUNDS);
    eprintln!("{ROUNDS} rounds of 3 starts with forking holders in {elapsed:?}");
}
