//! Acting only on what was verified: `stop` signals and waits for the very
//! processes it checked, never whoever holds the lock later; a process is
//! the owner by identity, not by a PID number another namespace reuses; a
//! zombie is not running; the log level holds across `restart()`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use pidlock_core::{Escalation, Holder, Pid, Status, Stop, Stopped};

/// A holder that dies of SIGTERM without removing its file, as a
/// `flock(1)` script does (or a program with `signals = "none"`): its
/// successor takes the lock on the same inode.
struct ShellHolder(Child);

impl ShellHolder {
    fn start(path: &Path) -> Self {
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"exec 9<>"$0" && flock -x 9 && echo locked && exec sleep 60"#,
            ])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
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

/// The race the issue reproduced 6 times in 10: the holder dies of SIGTERM
/// leaving its file, a `wait` standby takes the lock on the same inode, and
/// `stop --kill` used to SIGKILL whoever held that inode when its timeout
/// ran out — the standby. Now it reports the holder stopped and the
/// standby, untouched, holds the lock.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_never_signals_the_standby_that_took_over_from_the_stopped_holder() {
    for round in 0..10 {
        let case = Case::new();
        let holder = ShellHolder::start(&case.pid_file);
        let mut standby = waiting(case.command(env!("CARGO_BIN_EXE_fixture-wait"), &["hold"]));
        let stopped = Stop::new()
            .timeout(Duration::from_secs(2))
            .escalation(Escalation::Kill)
            .run(&case.pid_file)
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        let standby_pid = Pid::new(standby.child.id() as i32).unwrap();
        match stopped {
            Stopped::Exited { pid, now_held_by } => {
                assert_eq!(pid, holder.pid(), "round {round}");
                if let Some(now) = now_held_by {
                    assert_eq!(now.pid(), Some(standby_pid), "round {round}: {now:?}");
                }
            }
            other => panic!("round {round}: {other:?}"),
        }
        // Once it holds the lock:
        assert_eq!(standby.wait_for_stdout("ready"), "ready");
        // Untouched: it runs on, holding the lock.
        assert!(
            standby
                .child
                .try_wait()
                .map(|s| s.is_none())
                .unwrap_or(false)
        );
        match pidlock_core::status(&case.pid_file).unwrap() {
            Status::Running(Holder::Kernel { pid, .. }) => assert_eq!(pid, standby_pid),
            other => panic!("round {round}: {other:?}"),
        }
        drop(standby);
    }
}

/// A `wait` standby, started while another process holds the lock:
/// returns once it is waiting (its INFO line).
fn waiting(command: Command) -> Watched {
    let standby = Watched::spawn(command);
    standby.wait_for_stderr("waiting for it to exit");
    standby
}

/// A bot that is PID 1 of its container forks a worker that moves its
/// children into a new PID namespace and forks a helper: the helper is PID 1
/// there too. Its exit (through `exit`, the `atexit` path) must not remove
/// the file: a PID number is not an identity.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_pid_1_helper_in_a_nested_pid_namespace_is_not_the_owner() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        eprintln!("skipped: needs root for PID namespaces");
        return;
    }
    let case = Case::new();
    let mut command = case.command(
        "unshare",
        &["--pid", "--fork", "--kill-child", "--mount-proc"],
    );
    command
        .arg(env!("CARGO_BIN_EXE_fixture-holder"))
        .arg("pidns-helper");
    let container = start(command);
    assert_eq!(container.first_line, "helper ended: exited 0");
    assert!(case.pid_file.exists(), "the helper's exit removed the file");
    assert_eq!(
        read(&case.pid_file),
        "1\n",
        "the bot is PID 1 of its container"
    );
    // A second instance is refused, naming the bot.
    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(1), "a second instance ran:\n{stderr}");
    assert!(
        stderr.contains("it calls itself PID 1: another PID namespace"),
        "{stderr}"
    );
    // Stopped the way `pidlock stop` would: its PID 1 ends with 128 + 15.
    let stopped = Stop::new().run(&case.pid_file).unwrap();
    assert!(matches!(stopped, Stopped::Exited { .. }), "{stopped:?}");
    let (status, stderr) = container.finish();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("helper pid 1\n"), "{stderr}");
}

/// A stale file naming a process that has exited but is not reaped yet: it
/// answers `kill(pid, 0)`, but it does not run.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_zombie_named_by_a_stale_file_is_not_called_running() {
    let case = Case::new();
    let zombie = Command::new("true").spawn().unwrap();
    let zombie_pid = zombie.id();
    wait_until_zombie(zombie_pid);
    std::fs::write(&case.pid_file, format!("{zombie_pid}\n")).unwrap();
    let running = start(case.holder(&["hold"]));
    running.signal(Signal::SIGTERM);
    let (_, stderr) = running.finish();
    assert!(
        stderr.starts_with(&format!(
            "WARNING - Found stale PID file {} (PID {zombie_pid} not running). Removing...",
            case.pid_file.display()
        )),
        "{stderr}"
    );
    drop(zombie);
}

fn wait_until_zombie(pid: u32) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} never became a zombie"
        );
        std::thread::yield_now();
    }
}

/// `PIDLOCK_LOG=warn` quiets INFO lines, the restart's included.
#[test]
fn restart_keeps_quiet_when_info_lines_are_off() {
    let case = Case::new();
    let log = case.dir.path().join("starts.log");
    let mut command = case.holder(&["restart", &log.display().to_string(), "1"]);
    command.env("PIDLOCK_LOG", "warn");
    let running = start(command);
    assert_eq!(read(&log).lines().count(), 2, "one restart");
    running.signal(Signal::SIGTERM);
    let (_, stderr) = running.finish();
    assert!(!stderr.contains("INFO"), "{stderr}");
}
