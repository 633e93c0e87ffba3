//! DESIGN.md, *CLI and supervisors*, under a supervisor: the `sd_notify` messages a service manager
//! receives on a real `AF_UNIX` datagram socket, journald priorities, and
//! the example units checked by `systemd-analyze verify`.

mod common;

use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// A service manager's notify socket, bound by the test.
struct Manager {
    socket: UnixDatagram,
    /// What to put in `NOTIFY_SOCKET`: a path, or `@name`.
    address: String,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn at_path() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self {
            socket,
            address: path.display().to_string(),
            _dir: dir,
        }
    }

    fn abstract_name() -> Self {
        let name = format!("pidlock-test-{}-{}", std::process::id(), monotonic_ns());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        Self {
            socket,
            address: format!("@{name}"),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The next datagram, or a panic naming what was expected.
    fn next(&self, expecting: &str) -> String {
        self.socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|error| panic!("no notification ({expecting}): {error}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Nothing arrives within `quiet`.
    fn assert_silent(&self, quiet: Duration) {
        self.socket.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = [0; 4096];
        if let Ok(n) = self.socket.recv(&mut buf) {
            panic!(
                "unexpected notification: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

impl Case {
    /// `exe args`, told of `manager`'s socket when there is one.
    fn supervised(&self, exe: &str, args: &[&str], manager: Option<&Manager>) -> Command {
        let mut command = self.command(exe, args);
        if let Some(manager) = manager {
            command.env("NOTIFY_SOCKET", &manager.address);
        }
        command
    }

    fn supervised_holder(&self, args: &[&str], manager: Option<&Manager>) -> Command {
        self.supervised(env!("CARGO_BIN_EXE_fixture-holder"), args, manager)
    }

    fn holds(&self, pid: u32) -> String {
        format!(
            "STATUS=PID {pid} holds the lock on {}",
            self.pid_file.display()
        )
    }
}

fn start_and_stop(manager: &Manager) {
    let case = Case::new();
    let mut child = case
        .supervised_holder(&["exit"], Some(manager))
        .spawn()
        .unwrap();
    assert_eq!(manager.next("holding"), case.holds(child.id()));
    assert!(wait(&mut child).success());
    assert_eq!(
        manager.next("stopping"),
        "STOPPING=1\nSTATUS=Releasing the lock..."
    );
    manager.assert_silent(Duration::from_millis(200));
}

#[test]
fn a_normal_start_and_stop_reports_holding_then_stopping() {
    start_and_stop(&Manager::at_path());
}

#[test]
#[cfg_attr(pidlock_portable, ignore = "Linux only: the abstract socket namespace")]
fn the_abstract_namespace_socket_form_is_reached_too() {
    start_and_stop(&Manager::abstract_name());
}

#[test]
fn sigterm_sends_stopping_from_the_signal_handler() {
    let manager = Manager::at_path();
    let case = Case::new();
    let running = start(case.supervised_holder(&["hold"], Some(&manager)));
    assert_eq!(manager.next("holding"), case.holds(running.pid()));
    running.signal(Signal::SIGTERM);
    let (status, stderr) = running.finish();
    assert!(killed_by(status, Signal::SIGTERM), "{stderr}");
    assert_eq!(
        manager.next("stopping"),
        "STOPPING=1\nSTATUS=Releasing the lock..."
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_waiting_standby_keeps_asking_for_time_then_reports_the_lock() {
    let manager = Manager::at_path();
    let case = Case::new();
    let holder = start(case.supervised_holder(&["hold"], None));
    let mut waiter = case
        .supervised(env!("CARGO_BIN_EXE_fixture-wait"), &[], Some(&manager))
        .spawn()
        .unwrap();
    let waiting = format!(
        "STATUS=Waiting for the lock on {}, held by PID: {}\nEXTEND_TIMEOUT_USEC=15000000",
        case.pid_file.display(),
        holder.pid()
    );
    assert_eq!(manager.next("waiting"), waiting);
    let first = Instant::now();
    assert_eq!(manager.next("waiting again"), waiting);
    let gap = first.elapsed();
    // Each message asks for 15 s more; the next must come well before.
    assert!(gap < Duration::from_secs(15), "{gap:?} between extensions");
    eprintln!("extension messages {gap:?} apart, each asking for 15s");
    holder.signal(Signal::SIGTERM);
    assert_eq!(manager.next("holding"), case.holds(waiter.id()));
    let _ = waiter.kill();
    let _ = waiter.wait();
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_refused_copy_reports_why_it_did_not_start() {
    let manager = Manager::at_path();
    let case = Case::new();
    let holder = start(case.supervised_holder(&["hold"], None));
    let (status, stderr) = run(case.supervised_holder(&["exit"], Some(&manager)));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        manager.next("refused"),
        format!(
            "STATUS=Not started: another instance is already running (PID: {}); it holds {}",
            holder.pid(),
            case.pid_file.display()
        )
    );
    manager.assert_silent(Duration::from_millis(200));
}

#[test]
fn restart_is_a_reload_of_the_same_pid() {
    let manager = Manager::at_path();
    let case = Case::new();
    let log = case.pid_file.with_file_name("starts.log");
    let log_arg = log.display().to_string();
    let running = start(case.supervised_holder(&["restart", &log_arg, "1"], Some(&manager)));
    let pid = running.pid();
    assert_eq!(manager.next("holding"), case.holds(pid));
    let reloading = manager.next("reloading");
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines[0], "RELOADING=1", "{reloading}");
    assert!(lines[1].starts_with("MONOTONIC_USEC="), "{reloading}");
    assert_eq!(
        lines[2],
        format!("STATUS=Restarting with the lock held (PID {pid})")
    );
    // The new image (same PID) reports the lock it kept.
    assert_eq!(manager.next("holding after exec"), case.holds(pid));
}

/// A `Type=notify` service that sends its own `READY=1` and `WATCHDOG=1`
/// with the `sd-notify` crate (which reads `NOTIFY_SOCKET` on every call):
/// both arrive after pidlock's own line. Were the variable taken out of
/// the environment, the crate would report success and systemd would
/// never hear READY (the unit killed at `TimeoutStartSec=`).
#[test]
fn the_programs_own_notifications_reach_the_service_manager() {
    let manager = Manager::at_path();
    let case = Case::new();
    let mut child = case
        .supervised_holder(&["notify-itself"], Some(&manager))
        .spawn()
        .unwrap();
    assert_eq!(manager.next("holding"), case.holds(child.id()));
    assert_eq!(manager.next("the program's READY"), "READY=1\n");
    assert_eq!(manager.next("the program's WATCHDOG"), "WATCHDOG=1\n");
    assert!(wait(&mut child).success());
    assert_eq!(
        manager.next("stopping"),
        "STOPPING=1\nSTATUS=Releasing the lock..."
    );
}

/// The variable stays in the environment, so children see it as well:
/// systemd's default `NotifyAccess=main` ignores what they send.
#[test]
fn the_notify_socket_stays_in_the_environment() {
    let manager = Manager::at_path();
    let case = Case::new();
    let running = start(case.supervised_holder(&["spawn-child"], Some(&manager)));
    let child: i32 = running.first_line.trim().parse().unwrap();
    // `spawn` may return while the child is still in its `exec`: its
    // environment is readable once its command line is `sleep 30`.
    let deadline = Instant::now() + DEADLINE;
    while std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default() != b"sleep\x0030\x00"
    {
        assert!(Instant::now() < deadline, "the child never ran sleep");
        std::thread::yield_now();
    }
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let expected = format!("NOTIFY_SOCKET={}", manager.address);
    assert!(
        environ
            .split(|&byte| byte == 0)
            .any(|var| var == expected.as_bytes()),
        "the child did not see {expected}: {:?}",
        String::from_utf8_lossy(&environ),
    );
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
    drop(running);
}

/// Runs `command` with stderr on a pipe and `JOURNAL_STREAM` set to
/// `journal_stream(dev, ino)` of that pipe: its status and stderr.
fn with_journal_stream(
    mut command: Command,
    journal_stream: impl Fn(u64, u64) -> String,
) -> (std::process::ExitStatus, String) {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let stat = nix::sys::stat::fstat(read_end.as_fd()).unwrap();
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let (dev, ino) = (stat.st_dev as u64, stat.st_ino as u64);
    command
        .env("JOURNAL_STREAM", journal_stream(dev, ino))
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end));
    let mut child = command.spawn().unwrap();
    // Our copy of the write end goes with `command`, so the read sees EOF
    // when the child exits.
    drop(command);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(read_end), &mut stderr).unwrap();
    (wait(&mut child), stderr)
}

#[test]
fn lines_carry_syslog_priorities_when_stderr_is_the_journal() {
    let case = Case::new();
    let (status, stderr) =
        with_journal_stream(case.supervised_holder(&["exit"], None), |dev, ino| {
            format!("{dev}:{ino}")
        });
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines.iter().all(|line| line.starts_with("<6>INFO - ")),
        "{stderr}"
    );
}

#[test]
fn no_priorities_when_journal_stream_names_another_file() {
    let case = Case::new();
    let (status, stderr) =
        with_journal_stream(case.supervised_holder(&["exit"], None), |dev, ino| {
            format!("{dev}:{}", ino + 1)
        });
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.lines().all(|line| line.starts_with("INFO - ")),
        "{stderr}"
    );
}

#[test]
fn a_conflict_is_an_error_priority_line_in_the_journal() {
    let case = Case::new();
    let _holder = start(case.supervised_holder(&["hold"], None));
    let (status, stderr) =
        with_journal_stream(case.supervised_holder(&["exit"], None), |dev, ino| {
            format!("{dev}:{ino}")
        });
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.starts_with("<3>ERROR - Another instance is already running"),
        "{stderr}"
    );
    assert!(
        stderr.lines().all(|line| line.starts_with("<3>")),
        "{stderr}"
    );
}

/// The example units, with `ExecStart=` pointed at the built examples.
#[test]
fn the_example_units_pass_systemd_analyze_verify() {
    let Ok(_) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (Debian package systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for (unit, installed, example) in [
        ("bot.service", "/usr/local/bin/bot", "bot"),
        (
            "bot-standby.service",
            "/usr/local/bin/bot-standby",
            "bot_standby",
        ),
    ] {
        let text = std::fs::read_to_string(root.join("examples/systemd").join(unit)).unwrap();
        let built = example_path(example);
        assert!(text.contains(&format!("ExecStart={installed}\n")), "{unit}");
        let copy = dir.path().join(unit);
        std::fs::write(&copy, text.replace(installed, &built.display().to_string())).unwrap();
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name)
}
