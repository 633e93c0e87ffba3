//! The lock across hosts (SPEC §8) against the real PostgreSQL server.
//!
//! The server's URL comes from `PIDLOCK_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Without a server these tests
//! say so and pass, except under `CI=true`, where a missing server fails them.
#![cfg(feature = "postgres")]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::killed_by;
use nix::sys::signal::Signal;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server's URL, or `None` (outside CI) when there is no server.
fn server() -> Option<String> {
    let url = std::env::var("PIDLOCK_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    match postgres::Client::connect(&url, postgres::NoTls) {
        Ok(_) => Some(url),
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and no PostgreSQL at {url}: {error}")
        }
        Err(error) => {
            eprintln!("skipped: no PostgreSQL at {url} ({error}); set PIDLOCK_TEST_POSTGRES_URL");
            None
        }
    }
}

/// A key no other test (or earlier run) uses.
fn unique_key(test: &str) -> String {
    format!(
        "pidlock-test-{test}-{}-{}",
        std::process::id(),
        common::monotonic_ns()
    )
}

/// A started fixture whose stdout lines arrive on a channel.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Self { child, lines }
    }

    /// The next stdout line, e.g. `held term=3 at=123`.
    fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no line within {within:?}"))
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut text);
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

fn field(line: &str, name: &str) -> i128 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

fn engine(url: &str, key: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fixture-pg-engine"));
    command
        .env("PIDLOCK_TEST_POSTGRES_URL", url)
        .env("PIDLOCK_TEST_KEY", key)
        .stdin(Stdio::null());
    command
}

fn attribute(url: &str, key: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fixture-pg-attribute"));
    command
        .env("PIDLOCK_TEST_POSTGRES_URL", url)
        .env("PIDLOCK_TEST_KEY", key)
        .stdin(Stdio::null());
    command
}

/// Waits for the process to exit; the monotonic time it was seen gone.
fn exited(process: &mut Process, within: Duration) -> (std::process::ExitStatus, i128) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return (status, common::monotonic_ns());
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn postgres_second_instance_is_refused_with_the_holders_host_and_pid() {
    let Some(url) = server() else { return };
    let key = unique_key("refused");
    let first = Process::start(attribute(&url, &key));
    let ready = first.line(common::DEADLINE);
    assert!(field(&ready, "term") >= 1, "{ready}");

    let output = attribute(&url, &key).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let pid = first.child.id();
    assert!(
        stderr.contains(&format!(
            "ERROR - Another instance is already running on host {host} (PID: {pid}), holding the PostgreSQL lock \"{key}\"."
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "To stop the existing instance, on {host}:\n          kill {pid}"
        )),
        "{stderr}"
    );
}

#[test]
fn postgres_sigkilled_holder_is_replaced_by_a_waiting_standby_after_the_handover() {
    let Some(url) = server() else { return };
    let key = unique_key("sigkill");
    let holder = Process::start(engine(&url, &key));
    let term = field(&holder.line(common::DEADLINE), "term");
    let mut standby = engine(&url, &key);
    standby.env("PIDLOCK_TEST_WAIT", "1");
    let standby = Process::start(standby);
    // Let the standby reach the server and block there.
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = common::monotonic_ns();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.child.id() as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    let held = standby.line(common::DEADLINE);
    let took = Duration::from_nanos((field(&held, "at") - killed_at) as u64);
    eprintln!("standby took over {took:?} after SIGKILL (1 s of it the handover)");
    // The holder did not release the lock: its successor waits the 1 s
    // handover, and not much more.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(field(&held, "term") > term, "{held} after term {term}");
}

/// A terminated backend is learned of at once (tests/postgres_lost.rs
/// measures it against a server of its own; the real partition is
/// tests/postgres_partition.rs).
#[test]
fn postgres_holder_whose_backend_is_terminated_stops_at_once() {
    let Some(url) = server() else { return };
    let key = unique_key("terminated");
    let lease = Duration::from_secs(2);
    let mut holder = engine(&url, &key);
    holder
        .env("PIDLOCK_TEST_LEASE_MS", lease.as_millis().to_string())
        .env("PIDLOCK_TEST_HEARTBEAT_MS", "300")
        .env("PIDLOCK_TEST_GRACE_MS", "1000")
        .env("PIDLOCK_TEST_SERVER_TIMEOUT_MS", "6000");
    let mut holder = Process::start(holder);
    holder.line(common::DEADLINE);

    // What a server restart does to the session, for this one backend.
    let id = pidlock_core::PgLock::lock_id(&key);
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let terminated_at = common::monotonic_ns();
    let ended: bool = admin
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
            &[&(id >> 32), &(id & 0xffff_ffff)],
        )
        .unwrap()
        .get(0);
    assert!(ended, "the holder's backend was not found in pg_locks");

    let (status, stopped_at) = exited(&mut holder, common::DEADLINE);
    let stopped_after = Duration::from_nanos((stopped_at - terminated_at) as u64);
    eprintln!("holder stopped {stopped_after:?} after its backend was terminated");
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    assert!(stopped_after < Duration::from_secs(1), "{stopped_after:?}");
    assert!(holder.stderr().contains("Lost the PostgreSQL lock"));
    // Nothing runs unprotected: the key is free, and a new holder gets a new term.
    let next = Process::start(engine(&url, &key));
    assert!(field(&next.line(common::DEADLINE), "term") >= 2);
}
