//! A holder whose session the server ends stops at once, not at the end of
//! its lease, and a standby never starts before it stops. Against servers
//! of the tests' own, which they terminate backends of and restart.
//!
//! Times are on the monotonic clock the fixtures print: `stopping at=` is
//! when the holder got its SIGTERM, `held at=` when a standby got the lock.
#![cfg(feature = "postgres")]

mod servers;

use std::time::Duration;

use nix::sys::signal::Signal;
use servers::postgres::{PgServer, Setup, holder_backend};
use servers::{DEADLINE, Process, engine, field, killed_by, ms, now_ns, short_lease, unique_key};

/// Well under the 2 s lease the holders run with: learning it "at once".
const AT_ONCE: Duration = Duration::from_secs(1);

/// Holder and standby on `server` with short lease settings.
fn pair(server: &PgServer, key: &str, standby_mode: &str) -> (Process, Process, i128) {
    let mut holder = engine(&server.url(), key);
    short_lease(&mut holder, Duration::from_secs(6));
    let holder = Process::start(holder);
    let term = field(&holder.line(DEADLINE), "term");
    let mut standby = engine(&server.url(), key);
    short_lease(&mut standby, Duration::from_secs(6)).env(standby_mode, "1");
    let standby = Process::start(standby);
    (holder, standby, term)
}

/// Waits until a standby is blocked in the server on `key`.
fn standby_waiting(server: &PgServer, key: &str) {
    let id = pidlock_core::PgLock::lock_id(key);
    let mut admin = server.admin();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let waiting: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)",
                &[&(id >> 32), &(id & 0xffff_ffff)],
            )
            .expect("pg_locks")
            .get(0);
        if waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never waited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The holder's stop after `let_go`, and the standby's start after that
/// stop; asserts both. Returns (stop - let_go, start - stop) in ns.
fn measure(
    label: &str,
    holder: &mut Process,
    standby: &Process,
    let_go: i128,
    term: i128,
) -> (i128, i128) {
    let stopping = holder.line_starting("stopping", DEADLINE);
    let stopped_at = field(&stopping, "at");
    let status = holder.wait(DEADLINE);
    assert!(killed_by(status, Signal::SIGTERM), "{label}: {status:?}");
    let stderr = holder.stderr_all();
    assert!(
        stderr.contains(&format!("(term {term})")) && stderr.contains("Lost the PostgreSQL lock"),
        "{stderr}"
    );
    let held = standby.line_starting("held", DEADLINE);
    let acquired_at = field(&held, "at");
    let (stop, gap) = (stopped_at - let_go, acquired_at - stopped_at);
    eprintln!(
        "{label}: holder told to stop {:.1} ms after the server let go; standby acquired {:.1} ms after that",
        ms(stop),
        ms(gap)
    );
    eprintln!(
        "{label}: holder said: {}",
        stderr
            .lines()
            .find(|line| line.contains("Lost"))
            .unwrap_or("")
    );
    assert!(
        stop < AT_ONCE.as_nanos() as i128,
        "{label}: stopped {:.1} ms after",
        ms(stop)
    );
    assert!(
        gap > 0,
        "{label}: the standby acquired {:.1} ms before the holder stopped",
        ms(-gap)
    );
    assert!(field(&held, "term") > term, "{held} after term {term}");
    (stop, gap)
}

#[test]
fn postgres_terminated_backend_stops_the_holder_at_once() {
    let Some(server) = PgServer::start(Setup::default()) else {
        return;
    };
    let key = unique_key("terminate");
    let (mut holder, standby, term) = pair(&server, &key, "PIDLOCK_TEST_WAIT");
    standby_waiting(&server, &key);
    let mut admin = server.admin();
    let backend = holder_backend(&mut admin, &key).expect("holder in pg_locks");
    let let_go = now_ns();
    let ended: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .expect("terminate")
        .get(0);
    assert!(ended);
    measure("pg_terminate_backend", &mut holder, &standby, let_go, term);
}

#[test]
fn postgres_server_restart_stops_the_holder_at_once() {
    let Some(server) = PgServer::start(Setup::default()) else {
        return;
    };
    let key = unique_key("restart");
    // The standby is refused while the holder runs, and tries again (as a
    // supervisor would restart it) until the server is back.
    let (mut holder, standby, term) = pair(&server, &key, "PIDLOCK_TEST_RETRY");
    std::thread::sleep(Duration::from_millis(300));
    let let_go = now_ns();
    server.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "30"]);
    measure("server restart (fast)", &mut holder, &standby, let_go, term);
}

#[test]
fn postgres_idle_session_timeout_of_the_database_does_not_end_the_holders_session() {
    // A database that ends sessions idle for 300 ms: shorter than the
    // holder's 500 ms heartbeat. Left alone it would free the lock between
    // two heartbeats, and during a partition while the holder runs on.
    let Some(server) = PgServer::start(Setup::default()) else {
        return;
    };
    server
        .admin()
        .batch_execute("ALTER DATABASE postgres SET idle_session_timeout = '300ms'")
        .expect("ALTER DATABASE");
    let key = unique_key("idle");
    let mut holder = engine(&server.url(), &key);
    short_lease(&mut holder, Duration::from_secs(6));
    let holder = Process::start(holder);
    holder.line_starting("held", DEADLINE);
    // Ten idle timeouts and more than a lease: the session is still there.
    assert_eq!(
        holder.try_line(Duration::from_secs(3)),
        None,
        "{}",
        holder.stderr_so_far()
    );
    let mut admin = server.admin();
    let backend = holder_backend(&mut admin, &key).expect("the holder still holds the key");
    let idle: String = admin
        .query_one(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
               WHERE d.datname = 'postgres'",
            &[],
        )
        .map(|row| format!("{:?}", row.get::<_, Vec<String>>(0)))
        .expect("the database's settings");
    eprintln!("database settings {idle}; holder backend {backend} still holds the lock");
    assert!(idle.contains("idle_session_timeout=300ms"), "{idle}");
}

#[test]
fn postgres_hard_exit_releases_the_pid_file_and_skips_atexit() {
    let Some(server) = PgServer::start(Setup::default()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("holder.pid");
    let key = unique_key("hard-exit");
    let mut holder = engine(&server.url(), &key);
    short_lease(&mut holder, Duration::from_secs(6))
        .env("PIDLOCK_TEST_PID_FILE", &pid_file)
        // Its shutdown never finishes, and an atexit handler would hang.
        .env("PIDLOCK_TEST_IGNORE_TERM", "1")
        .env("PIDLOCK_TEST_HANG_AT_EXIT", "1");
    let mut holder = Process::start(holder);
    holder.line_starting("held", DEADLINE);
    assert!(pid_file.exists());
    let mut admin = server.admin();
    let backend = holder_backend(&mut admin, &key).expect("holder in pg_locks");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&backend])
        .expect("terminate");
    let stopping_at = field(&holder.line_starting("stopping", DEADLINE), "at");
    let status = holder.wait(DEADLINE);
    let exited_after = now_ns() - stopping_at;
    eprintln!(
        "hard exit {:.1} ms after SIGTERM (grace 1 s): {status:?}",
        ms(exited_after)
    );
    assert_eq!(
        status.code(),
        Some(pidlock_core::LOST_LOCK_EXIT_CODE),
        "{}",
        holder.stderr_all()
    );
    assert!(!pid_file.exists(), "the PID file outlived the hard exit");
    assert!(exited_after >= Duration::from_millis(900).as_nanos() as i128);
}

#[test]
fn postgres_clean_release_hands_over_without_the_handover() {
    let Some(server) = PgServer::start(Setup::default()) else {
        return;
    };
    let key = unique_key("clean");
    let holder = pidlock_core::PgLock::new(server.url(), &key)
        .log_level(pidlock_core::LogLevel::Warn)
        .acquire()
        .expect("holder");
    let mut standby = engine(&server.url(), &key);
    short_lease(&mut standby, Duration::from_secs(6)).env("PIDLOCK_TEST_WAIT", "1");
    let standby = Process::start(standby);
    standby_waiting(&server, &key);
    let released_at = now_ns();
    drop(holder);
    let took = field(&standby.line_starting("held", DEADLINE), "at") - released_at;
    eprintln!(
        "clean release: the standby held the lock {:.1} ms later",
        ms(took)
    );
    assert!(
        took < Duration::from_millis(500).as_nanos() as i128,
        "{:.1} ms",
        ms(took)
    );
}
