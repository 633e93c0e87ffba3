//! The lock is held as long as any process holds it: a release or an exit
//! while a forked child still shares the lock leaves the file (and the lock)
//! to the child, and every report names it. No fixed number of locks per
//! process loses a file, and `restart()` keeps the lock on the path it
//! resolved at acquisition.

mod common;

use common::*;
use nix::sys::signal::Signal;
use pidlock_core::{Holder, Pid, Status};

const LIBRARY: &str = env!("CARGO_BIN_EXE_fixture-library");

/// FreeBSD's `lib/libutil/tests/pidfile_test.c`, case `pidfile_inherited`,
/// with a release in place of `pidfile_close`: the parent takes the lock,
/// forks, and lets go; it must then fail to take the lock again, with the
/// child named as the holder, and the lock is free once the child is gone.
#[test]
fn pidfile_inherited_as_freebsd_tests_it() {
    let case = Case::new();
    let output = case
        .command(
            LIBRARY,
            &["inherited", &case.pid_file.display().to_string()],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout,
        "ok\n",
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How the owner of the lock leaves while its worker lives on.
fn owner_leaves_while_a_worker_holds(how: &str) {
    let case = Case::new();
    let mut owner = Watched::spawn(case.holder(&["leave-to-worker", how]));
    let worker = worker_pid(&owner.next_stdout());
    let _worker = Killed(worker);
    if how == "signal" {
        assert_eq!(owner.next_stdout(), "ready");
        owner.signal(Signal::SIGTERM);
    }
    let ended = wait(&mut owner.child);
    let worker_pid = Pid::new(worker).unwrap();
    assert!(
        case.pid_file.exists(),
        "{how}: the file went while the worker held the lock ({ended:?})"
    );
    match pidlock_core::status(&case.pid_file).unwrap() {
        Status::Running(Holder::Kernel { pid, others, .. }) => {
            assert_eq!(pid, worker_pid, "{how}");
            assert!(others.is_empty(), "{how}: {others:?}");
        }
        // The portable layer cannot learn the worker's PID: the file keeps
        // the owner's, and the holder is unverified.
        Status::Running(Holder::File(_)) if cfg!(pidlock_portable) => {}
        other => panic!("{how}: {other:?}"),
    }
    // A second instance is refused, and (where holders can be verified)
    // told who holds the lock.
    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(
        status.code(),
        Some(1),
        "{how}: a second instance ran:\n{stderr}"
    );
    assert!(
        cfg!(pidlock_portable)
            || stderr.starts_with(&format!(
                "ERROR - Another instance is already running (PID: {worker})."
            )),
        "{how}: {stderr}"
    );
    // Once the worker is gone, the lock is free, and the file left to it is
    // taken over as stale.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let running = start(case.holder(&["hold"]));
    drop(running);
}

#[test]
fn an_owner_returning_from_main_leaves_the_file_to_its_worker() {
    owner_leaves_while_a_worker_holds("return");
}

#[test]
fn an_owner_calling_exit_leaves_the_file_to_its_worker() {
    owner_leaves_while_a_worker_holds("exit");
}

#[test]
fn an_owner_killed_by_sigterm_leaves_the_file_to_its_worker() {
    owner_leaves_while_a_worker_holds("signal");
}

/// After a normal release the file names the worker that carries on, so
/// that `cat` and `kill` reach a process that holds the lock.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_release_while_a_worker_holds_writes_the_workers_pid() {
    let case = Case::new();
    // The worker inherits stderr too: a pipe would stay open while it
    // lives, so the owner's stderr goes to a file.
    let log = case.dir.path().join("owner.err");
    let mut command = case.holder(&["leave-to-worker", "return"]);
    command.stderr(std::fs::File::create(&log).unwrap());
    let mut owner = Watched::spawn(command);
    let worker = worker_pid(&owner.next_stdout());
    let _worker = Killed(worker);
    let status = wait(&mut owner.child);
    assert!(status.success(), "{status:?}");
    assert_eq!(read(&case.pid_file), format!("{worker}\n"));
    let stderr = read(&log);
    assert!(
        stderr.contains(&format!(
            "INFO - PID file kept: PID {worker} (forked from this process) still holds the lock on {}",
            case.pid_file.display()
        )),
        "{stderr}"
    );
}

/// Thirteen locks in one process: every file goes on every exit path.
fn many_locks_all_go(how: &str) {
    let case = Case::new();
    let dir = case.dir.path().join("many");
    let mut command = case.command(LIBRARY, &["many", &dir.display().to_string(), "13", how]);
    if how == "signal" {
        let running = start(command);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 13);
        running.signal(Signal::SIGTERM);
        let (status, stderr) = running.finish();
        assert!(killed_by(status, Signal::SIGTERM), "{status:?}\n{stderr}");
    } else {
        command.stdout(std::process::Stdio::null());
        let (status, stderr) = run(command);
        assert!(status.success(), "{status:?}\n{stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{how}: files left behind: {left:?}");
}

#[test]
fn thirteen_locks_all_go_on_process_exit() {
    many_locks_all_go("exit");
}

#[test]
fn thirteen_locks_all_go_on_sigterm() {
    many_locks_all_go("signal");
}

#[test]
fn thirteen_locks_all_go_on_return() {
    many_locks_all_go("return");
}

/// A relative path is resolved once, at acquisition: a program that changed
/// directory and then restarts keeps the lock on that very file, rather
/// than resolving the path again from wherever it is now.
#[test]
fn restart_after_a_chdir_keeps_the_lock_on_the_path_resolved_at_acquisition() {
    let case = Case::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let log = case.dir.path().join("starts.log");
    let mut command = case.holder(&[
        "restart-after-chdir",
        &elsewhere.path().display().to_string(),
        &log.display().to_string(),
    ]);
    // The attribute's own relative path, `data/holder.pid`.
    command.env_remove("PIDLOCK_TEST_PID_FILE");
    let running = start(command);
    let pid_file = data_file(case.dir.path(), "holder.pid");
    assert_eq!(read(&pid_file), format!("{}\n", running.pid()));
    assert!(!data_file(elsewhere.path(), "holder.pid").exists());
    assert_eq!(read(&log).lines().count(), 2, "one restart");
    running.signal(Signal::SIGTERM);
    let (_, stderr) = running.finish();
    assert!(
        stderr.contains(&format!(
            "INFO - PID file lock kept across restart (PID: {}): {}",
            stderr_pid(&stderr),
            pid_file.display()
        )),
        "{stderr}"
    );
    assert!(!pid_file.exists());
}

/// An image started by `restart()` that never takes a lock: the hand-over
/// variable is gone from its environment and the inherited descriptors are
/// close-on-exec again before `main` runs, so nothing reaches its children;
/// the lock stays held by it all the same.
#[test]
fn restart_into_an_image_that_takes_no_lock_leaks_nothing_to_children() {
    let case = Case::new();
    let mark = case.dir.path().join("restarted");
    let restarted = Watched::spawn(case.command(
        LIBRARY,
        &[
            "restart-once",
            &case.pid_file.display().to_string(),
            &mark.display().to_string(),
        ],
    ));
    assert_eq!(restarted.next_stdout(), "PIDLOCK_RESTART: unset");
    assert_eq!(
        restarted.next_stdout(),
        "the locked descriptor: open, close-on-exec"
    );
    assert_eq!(restarted.next_stdout(), "ready");
    match pidlock_core::status(&case.pid_file).unwrap() {
        Status::Running(holder) => assert_eq!(holder.pid(), Pid::new(restarted.pid() as i32)),
        other => panic!("the lock was let go across the restart: {other:?}"),
    }
}

/// The PID in `PID file lock kept across restart (PID: N)`.
fn stderr_pid(stderr: &str) -> String {
    stderr
        .split("kept across restart (PID: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default()
        .to_owned()
}

/// Kills a process on drop: a failed assertion must not leave one holding
/// a lock.
struct Killed(i32);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// `worker <pid>`, read.
fn worker_pid(line: &str) -> i32 {
    line.strip_prefix("worker ")
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no worker line: {line:?}"))
}
