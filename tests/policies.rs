//! The conflict policies and the seamless restart (DESIGN.md, *The lock
//! protocol*), with real processes.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use pidlock_core::{Error, PidLock, Signals, Status};

impl Case {
    fn running(&self, mode: &str) -> Running {
        start(self.command(env!("CARGO_BIN_EXE_fixture-holder"), &[mode]))
    }
}

/// Waits for `watched` to print `ready` on stdout (it holds the lock) and
/// returns when it did.
fn wait_ready(watched: &Watched) -> Instant {
    let line = watched.next_stdout();
    assert_eq!(line, "ready");
    Instant::now()
}

#[test]
fn wait_takes_over_as_soon_as_the_holder_exits() {
    let case = Case::new();
    let holder = case.running("hold");
    let waiter = Watched::spawn(case.command(env!("CARGO_BIN_EXE_fixture-wait"), &[]));
    let line = waiter.wait_for_stderr("waiting for it to exit");
    assert_eq!(
        line,
        format!(
            "INFO - Another instance is running {}; waiting for it to exit...",
            named_holder(holder.pid())
        )
    );
    let released = Instant::now();
    holder.signal(Signal::SIGTERM);
    let ready = wait_ready(&waiter);
    eprintln!(
        "wait hand-over, SIGTERM to the holder -> the waiter runs: {:?}",
        ready - released
    );
    assert_eq!(read(&case.pid_file), format!("{}\n", waiter.child.id()));
    holder.finish();
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn wait_with_a_timeout_gives_up_with_the_exit_code_and_message() {
    let case = Case::new();
    let holder = case.running("hold");
    let started = Instant::now();
    let (status, stderr) = run(case.command(env!("CARGO_BIN_EXE_fixture-wait-500ms"), &[]));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(status.code(), Some(9), "{stderr}");
    let pid = holder.pid();
    assert!(
        stderr.contains(&format!(
            "ERROR - Another instance is still running (PID: {pid}) after waiting 500ms.\n\
             \x20       Only one instance can run at a time.\n\
             \x20       PID file: {}\n\
             \x20       To stop the existing instance:\n\
             \x20         kill {pid}\n",
            case.pid_file.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        read(&case.pid_file),
        format!("{pid}\n"),
        "the holder's file was touched"
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn takeover_sends_sigterm_and_runs_once_the_holder_exited() {
    let case = Case::new();
    let holder = case.running("hold");
    let old = holder.pid();
    let newcomer = Watched::spawn(case.command(env!("CARGO_BIN_EXE_fixture-takeover"), &[]));
    wait_ready(&newcomer);
    let (status, _) = holder.finish();
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    assert_eq!(read(&case.pid_file), format!("{}\n", newcomer.child.id()));
    newcomer.wait_for_stderr(&format!(
        "Another instance is running (PID: {old}); sending it SIGTERM to take over..."
    ));
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn takeover_kills_a_holder_that_ignores_sigterm_after_the_timeout() {
    let case = Case::new();
    let holder = case.running("ignore-sigterm");
    let started = Instant::now();
    let newcomer = Watched::spawn(case.command(env!("CARGO_BIN_EXE_fixture-takeover"), &[]));
    wait_ready(&newcomer);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "killed before the 1s grace"
    );
    let (status, _) = holder.finish();
    assert!(killed_by(status, Signal::SIGKILL), "{status:?}");
    newcomer.wait_for_stderr("did not exit within 1s; sending SIGKILL...");
    assert_eq!(read(&case.pid_file), format!("{}\n", newcomer.child.id()));
}

/// A live process that must never receive a signal from pidlock.
struct Bystander(Child);

impl Bystander {
    fn start() -> Self {
        Self(Command::new("sleep").arg("30").spawn().unwrap())
    }

    fn assert_untouched(&mut self) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the bystander was signalled"
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn takeover_never_signals_a_pid_read_from_an_unlocked_file() {
    let case = Case::new();
    let mut bystander = Bystander::start();
    std::fs::write(&case.pid_file, format!("{}\n", bystander.0.id())).unwrap();
    let (status, stderr) = run(case.command(env!("CARGO_BIN_EXE_fixture-takeover"), &["exit"]));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("is running but does not hold the lock"),
        "{stderr}"
    );
    assert!(!stderr.contains("sending it"), "{stderr}");
    bystander.assert_untouched();
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn takeover_signals_the_kernels_holder_not_the_pid_in_the_file() {
    let case = Case::new();
    let holder = case.running("hold");
    let mut bystander = Bystander::start();
    // The file now lies about who holds the lock.
    std::fs::write(&case.pid_file, format!("{}\n", bystander.0.id())).unwrap();
    let newcomer = Watched::spawn(case.command(env!("CARGO_BIN_EXE_fixture-takeover"), &[]));
    wait_ready(&newcomer);
    let (status, _) = holder.finish();
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    bystander.assert_untouched();
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn restart_keeps_the_lock_and_the_pid_across_twenty_execs() {
    const RESTARTS: usize = 20;
    let case = Case::new();
    let log = case.pid_file.with_file_name("starts.log");
    let restarting = Watched::spawn(case.command(
        env!("CARGO_BIN_EXE_fixture-holder"),
        &["restart", log.to_str().unwrap(), &RESTARTS.to_string()],
    ));
    let pid = restarting.child.id();
    // The first start logs itself only once it holds the lock; from then on
    // the lock must never be free, restarts included.
    let deadline = Instant::now() + DEADLINE;
    while !log.exists() {
        assert!(
            Instant::now() < deadline,
            "the first start never took the lock"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // A contender tries the lock in a tight loop for as long as the restarts go on.
    let contender = PidLock::new(&case.pid_file)
        .signals(Signals::None)
        .log_level(pidlock_core::LogLevel::Error);
    let mut attempts = 0;
    loop {
        match contender.acquire() {
            Ok(_) => panic!("the contender got the lock during a restart (attempt {attempts})"),
            Err(Error::AlreadyRunning { .. }) => attempts += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
        if restarting.try_stdout().is_some() {
            break;
        }
    }
    let starts = read(&log);
    assert_eq!(starts.lines().count(), RESTARTS + 1, "{starts}");
    assert!(
        starts.lines().all(|line| line == pid.to_string()),
        "PID changed: {starts}"
    );
    assert_eq!(read(&case.pid_file), format!("{pid}\n"));
    assert_eq!(
        pidlock_core::status(&case.pid_file).unwrap(),
        Status::Running(pidlock_core::Holder::Kernel {
            pid: pidlock_core::Pid::new(pid as i32).unwrap(),
            others: Vec::new(),
            ns_pid: None
        })
    );
    eprintln!("{attempts} contender attempts during {RESTARTS} restarts, all refused");
}
