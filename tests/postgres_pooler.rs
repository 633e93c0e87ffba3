//! The lock through PgBouncer (Debian's package), configured and started by
//! the test in front of a PostgreSQL server of its own: transaction and
//! statement pooling are refused, with one server connection and with
//! several, and two holders never both run; session pooling works like a
//! direct connection.
//!
//! Without `pgbouncer` these tests say so and pass, except under `CI=true`.
#![cfg(feature = "postgres")]

mod servers;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pidlock_core::{Error, PgLock};
use servers::postgres::{PgServer, Setup, as_server_user, chown_to_server_user};
use servers::{DEADLINE, Process, engine, free_port, require, unique_key};

const POOLER_ERROR: &str = "use a direct or session-mode connection";

fn pgbouncer_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| candidate.exists())
}

/// A PgBouncer of the test's own on a free port, killed when dropped.
struct PgBouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start(binary: &Path, server: &PgServer, pool_mode: &str, pool_size: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pidlock-pgbouncer-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").expect("users.txt");
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = {pool_mode}\n\
                 default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n\
                 max_client_conn = 100\nquery_wait_timeout = 10\n\
                 ignore_startup_parameters = extra_float_digits\nlogfile = {}\n",
                server.port,
                dir.path().join("users.txt").display(),
                dir.path().join("pgbouncer.log").display()
            ),
        )
        .expect("pgbouncer.ini");
        chown_to_server_user(dir.path());
        for file in ["users.txt", "pgbouncer.ini"] {
            chown_to_server_user(&dir.path().join(file));
        }
        let child = as_server_user(binary)
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup() -> Option<(PathBuf, PgServer)> {
    let binary = require("pgbouncer (apt-get install pgbouncer)", pgbouncer_binary())?;
    let server = PgServer::start(Setup::default())?;
    Some((binary, server))
}

fn refusal(url: &str, key: &str) -> String {
    match PgLock::new(url, key)
        .log_level(pidlock_core::LogLevel::Warn)
        .acquire()
    {
        Err(Error::Remote { reason, .. }) => reason,
        other => panic!("expected the pooler to be refused, got {other:?}"),
    }
}

/// Two holders started together: never both hold; the refused ones name the
/// pooler.
fn two_at_once(url: &str, label: &str) {
    let key = unique_key("pooler-pair");
    let mut pair = [
        Process::start(engine(url, &key)),
        Process::start(engine(url, &key)),
    ];
    let mut held = 0;
    let mut pooler_refusals = 0;
    for process in &mut pair {
        match process.try_line(Duration::from_secs(5)) {
            Some(line) if line.starts_with("held") => held += 1,
            _ => {
                let status = process.wait(DEADLINE);
                let stderr = process.stderr_all();
                assert_eq!(status.code(), Some(1), "{stderr}");
                if stderr.contains(POOLER_ERROR) {
                    pooler_refusals += 1;
                }
            }
        }
    }
    eprintln!("{label}: {held} held, {pooler_refusals} refused as behind a pooler");
    assert!(held <= 1, "{label}: both holders run");
    assert!(pooler_refusals >= 1, "{label}: no refusal names the pooler");
}

#[test]
fn postgres_transaction_and_statement_pooling_are_refused() {
    let Some((binary, server)) = setup() else {
        return;
    };
    for (mode, size) in [
        ("transaction", 1),
        ("transaction", 3),
        ("statement", 1),
        ("statement", 3),
    ] {
        let label = format!("pool_mode = {mode}, default_pool_size = {size}");
        let bouncer = PgBouncer::start(&binary, &server, mode, size);
        // One at a time, each is refused...
        for _ in 0..2 {
            let reason = refusal(&bouncer.url(), &unique_key("pooler"));
            eprintln!("{label}: {reason}");
            assert!(reason.contains(POOLER_ERROR), "{label}: {reason}");
        }
        // ...and two at once never both run.
        two_at_once(&bouncer.url(), &label);
    }
}

#[test]
fn postgres_session_pooling_works_like_a_direct_connection() {
    let Some((binary, server)) = setup() else {
        return;
    };
    let bouncer = PgBouncer::start(&binary, &server, "session", 3);
    let key = unique_key("session-pool");
    let first = PgLock::new(bouncer.url(), &key)
        .log_level(pidlock_core::LogLevel::Warn)
        .acquire()
        .expect("first holder");
    match PgLock::new(bouncer.url(), &key)
        .log_level(pidlock_core::LogLevel::Warn)
        .acquire()
    {
        Err(error @ Error::RemoteHeld { .. }) => {
            let text = error.to_string();
            eprintln!("second through the session pooler: {text}");
            assert!(
                text.starts_with("another instance is already running on host"),
                "{text}"
            );
        }
        other => panic!("expected the normal conflict, got {other:?}"),
    }
    drop(first);
    let again = PgLock::new(bouncer.url(), &key)
        .log_level(pidlock_core::LogLevel::Warn)
        .acquire()
        .expect("after release");
    drop(again);

    // A holder that dies: PgBouncer resets its server session (DISCARD ALL),
    // which frees the lock for a standby waiting through the same pooler.
    let holder = Process::start(engine(&bouncer.url(), &key));
    assert!(holder.line(DEADLINE).starts_with("held"));
    let mut standby = engine(&bouncer.url(), &key);
    standby.env("PIDLOCK_TEST_WAIT", "1");
    let standby = Process::start(standby);
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = servers::now_ns();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.child.id() as i32),
        Signal::SIGKILL,
    )
    .expect("kill");
    let held = standby.line(DEADLINE);
    eprintln!(
        "standby through the session pooler took over {:.1} ms after SIGKILL",
        servers::ms(servers::field(&held, "at") - killed_at)
    );
}
