//! What the cross-host tests share: servers they start for themselves
//! ([`postgres`], [`redis`]), a network namespace pair to cut
//! ([`netns`]), a CA and certificates ([`certs`]), and the fixture programs
//! that hold a lock across hosts, whose stdout lines arrive on a channel.
//!
//! Without a server or tool these helpers say so and the tests skip, except
//! under `CI=true`, where a missing one fails them.
#![allow(dead_code)] // each test file uses a different subset

pub(crate) mod certs;
pub(crate) mod netns;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// Long enough for a loaded CI machine, short enough to fail a hung test.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `None` (and a message) when `what` is missing outside CI; a panic in CI.
pub(crate) fn require<T>(what: &str, found: Option<T>) -> Option<T> {
    if found.is_none() {
        assert!(!in_ci(), "CI=true and {what} is missing");
        eprintln!("skipped: {what} is missing");
    }
    found
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command to completion; panics with its output if it fails.
pub(crate) fn run(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed: {text}");
    text
}

/// A port nobody listens on right now, on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// The monotonic clock the fixtures print, in nanoseconds.
pub(crate) fn now_ns() -> i128 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec())
}

/// A key no other test (or earlier run) uses.
pub(crate) fn unique_key(test: &str) -> String {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    format!(
        "pidlock-test-{test}-{}-{}{:09}",
        std::process::id(),
        now.tv_sec(),
        now.tv_nsec()
    )
}

/// A started fixture whose stdout lines arrive on a channel.
pub(crate) struct Process {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Stderr lines already read by [`Process::stderr_line`].
    kept: std::cell::RefCell<String>,
}

impl Process {
    pub(crate) fn start(mut command: Command) -> Self {
        default_signals(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        let forward = |pipe: Box<dyn std::io::Read + Send>| {
            let (send, receive) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = send.send(line);
                }
            });
            receive
        };
        let lines = forward(Box::new(child.stdout.take().expect("stdout")));
        let stderr = forward(Box::new(child.stderr.take().expect("stderr")));
        Self {
            child,
            lines,
            stderr,
            kept: std::cell::RefCell::default(),
        }
    }

    /// The next stdout line, e.g. `held term=3 at=123`; `None` at the deadline
    /// or when the process ended.
    pub(crate) fn try_line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    pub(crate) fn line(&self, within: Duration) -> String {
        self.try_line(within).unwrap_or_else(|| {
            panic!(
                "no line within {within:?}; stderr: {}",
                self.stderr_so_far()
            )
        })
    }

    /// The next stdout line that starts with `prefix`.
    pub(crate) fn line_starting(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left);
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Waits for a stderr line containing `needle` (e.g. the standby's
    /// "Waiting for the Redis lock"); the lines before it are kept.
    pub(crate) fn stderr_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let _ = writeln!(self.kept.borrow_mut(), "{line}");
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no stderr line with {needle:?} within {within:?}"),
            }
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a PID")
    }

    pub(crate) fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("kill");
    }

    /// Everything on stderr so far.
    pub(crate) fn stderr_so_far(&self) -> String {
        let mut text = self.kept.borrow().clone();
        while let Ok(line) = self.stderr.try_recv() {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    /// Waits for the exit.
    pub(crate) fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stderr after the exit (all of it).
    pub(crate) fn stderr_all(&self) -> String {
        let mut text = self.kept.borrow().clone();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn field(line: &str, name: &str) -> i128 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

pub(crate) fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

pub(crate) fn killed_by(status: ExitStatus, signal: Signal) -> bool {
    status.signal() == Some(signal as i32)
}

/// Signals back at their defaults, as a terminal or CI gives them (a shell
/// without job control starts background jobs with SIGINT and SIGQUIT
/// ignored, and `nohup` ignores SIGHUP).
fn default_signals(command: &mut Command) {
    // SAFETY: `signal` is async-signal-safe, as required between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for signal in [
                Signal::SIGHUP,
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGTERM,
            ] {
                nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// A fixture program of the root package. Looked up with `option_env!`, so
/// that the tests of other packages (examples/teloxide-bot) can include this
/// module for its servers and namespaces.
fn fixture(path: Option<&'static str>) -> &'static str {
    path.expect("a fixture program of the root package, which only its tests have")
}

/// The fixture that holds a `PgLock` or a `RedisLock`, by the URL's scheme
/// (tests/fixtures/remote_engine.rs).
pub(crate) fn engine(url: &str, key: &str) -> Command {
    let mut command = Command::new(fixture(option_env!("CARGO_BIN_EXE_fixture-remote-engine")));
    command
        .env("PIDLOCK_TEST_URL", url)
        .env("PIDLOCK_TEST_KEY", key)
        .env_remove("PIDLOCK_LOG");
    command
}

/// The attribute with `url` and `key` (tests/fixtures/remote_attribute.rs).
pub(crate) fn attribute(url: &str, key: &str) -> Command {
    let mut command = Command::new(fixture(option_env!(
        "CARGO_BIN_EXE_fixture-remote-attribute"
    )));
    command
        .env("PIDLOCK_TEST_URL", url)
        .env("PIDLOCK_TEST_KEY", key)
        .env_remove("PIDLOCK_LOG")
        .stdin(Stdio::null());
    command
}

/// Short lease settings (lease 2 s, heartbeat 0.5 s, grace 1 s), with the
/// server's limit `server_limit` (PostgreSQL's server timeout, Redis's TTL;
/// lease + grace must stay below it).
pub(crate) fn short_lease(command: &mut Command, server_limit: Duration) -> &mut Command {
    command
        .env("PIDLOCK_TEST_LEASE_MS", "2000")
        .env("PIDLOCK_TEST_HEARTBEAT_MS", "500")
        .env("PIDLOCK_TEST_GRACE_MS", "1000")
        .env(
            "PIDLOCK_TEST_SERVER_LIMIT_MS",
            server_limit.as_millis().to_string(),
        )
}
