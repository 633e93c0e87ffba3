//! What every lock across hosts promises, written once and run against each
//! engine (as client-go's leader-election tests run one table per lock
//! type): the machine's PostgreSQL (`PIDLOCK_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and Redis
//! (`PIDLOCK_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/13`, a
//! database of the tests' own). An engine whose server is missing is
//! skipped with a message, except under `CI=true`, where it fails.
//!
//! What only one engine does (PgBouncer, libpq's TLS modes, a Redis restart
//! without persistence, replicas) is in that engine's own test files; the
//! real partition is `tests/partition.rs`.
#![cfg(any(feature = "postgres", feature = "redis"))]

mod servers;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pidlock_core::{Error, LogLevel, OnConflict, RemoteGuard};
use servers::{
    DEADLINE, Process, attribute, engine, field, killed_by, ms, now_ns, short_lease, unique_key,
};

/// The holders' short lease: lease 2 s + grace 1 s < 4 s.
const SERVER_LIMIT: Duration = Duration::from_secs(4);

/// One engine under test.
struct Engine {
    /// As messages name it.
    service: &'static str,
    url: String,
    /// Makes the server let go of `key`'s lock under its holder, as an
    /// administrator or a restart would.
    let_go: fn(&str, &str),
    /// How long after a SIGKILL a waiting standby takes over: PostgreSQL
    /// frees the lock with the connection and the standby waits the 1 s
    /// handover; Redis frees it when the key's TTL runs out.
    after_crash: (Duration, Duration),
}

fn engines() -> Vec<Engine> {
    let mut engines = Vec::new();
    #[cfg(feature = "postgres")]
    if let Some(url) = servers::postgres::machine_url() {
        engines.push(Engine {
            service: "PostgreSQL",
            url,
            let_go: |url, key| {
                let id = pidlock_core::PgLock::lock_id(key);
                let mut admin = postgres::Client::connect(url, postgres::NoTls).expect("admin");
                let ended: bool = admin
                    .query_one(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
                           AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
                        &[&(id >> 32), &(id & 0xffff_ffff)],
                    )
                    .expect("pg_terminate_backend")
                    .get(0);
                assert!(ended, "the holder's backend was not found in pg_locks");
            },
            after_crash: (Duration::from_secs(1), Duration::from_secs(2)),
        });
    }
    #[cfg(feature = "redis")]
    if let Some(url) = servers::redis::machine_url() {
        engines.push(Engine {
            service: "Redis",
            url,
            let_go: |url, key| {
                let deleted: i64 = redis::cmd("DEL")
                    .arg(servers::redis::lock_key(key))
                    .query(&mut servers::redis::admin(url))
                    .expect("DEL");
                assert_eq!(deleted, 1, "the holder's key was not there");
            },
            after_crash: (Duration::ZERO, SERVER_LIMIT + Duration::from_secs(1)),
        });
    }
    engines
}

/// The lock in this process, quiet.
fn take(engine: &Engine, key: &str, on_conflict: OnConflict) -> pidlock_core::Result<RemoteGuard> {
    #[cfg(feature = "redis")]
    if engine.service == "Redis" {
        return pidlock_core::RedisLock::new(&engine.url, key)
            .on_conflict(on_conflict)
            .log_level(LogLevel::Warn)
            .acquire();
    }
    #[cfg(feature = "postgres")]
    {
        pidlock_core::PgLock::new(&engine.url, key)
            .on_conflict(on_conflict)
            .log_level(LogLevel::Warn)
            .acquire()
    }
    #[cfg(not(feature = "postgres"))]
    unreachable!("{} has no engine here", engine.service)
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_second_instance_is_refused_with_the_holders_host_pid_and_engine() {
    for engine in engines() {
        let key = unique_key("refused");
        let first = Process::start(attribute(&engine.url, &key));
        let ready = first.line(DEADLINE);
        assert!(field(&ready, "term") >= 1, "{}: {ready}", engine.service);

        let output = attribute(&engine.url, &key).output().expect("second");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let (host, pid, service) = (host_name(), first.child.id(), engine.service);
        assert!(
            stderr.contains(&format!(
                "ERROR - Another instance is already running on host {host} (PID: {pid}), holding the {service} lock \"{key}\"."
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
}

#[test]
fn a_clean_release_hands_over_to_a_waiting_standby_at_once() {
    for engine in engines() {
        let key = unique_key("clean");
        let holder = take(&engine, &key, OnConflict::Exit).expect("holder");
        let mut standby = engine_command(&engine, &key);
        standby.env("PIDLOCK_TEST_WAIT", "1");
        let standby = Process::start(standby);
        standby.stderr_line("Waiting for the", DEADLINE);
        let released_at = now_ns();
        drop(holder);
        let held = standby.line_starting("held", DEADLINE);
        let took = field(&held, "at") - released_at;
        eprintln!(
            "{}: clean release -> the standby held the lock {:.1} ms later",
            engine.service,
            ms(took)
        );
        // Woken by the release, not by a look at the lock a TTL later.
        assert!(
            took < Duration::from_secs(1).as_nanos() as i128,
            "{}: {:.1} ms",
            engine.service,
            ms(took)
        );
        assert!(
            !standby.stderr_so_far().contains("did not release"),
            "{}: a clean release needs no handover\n{}",
            engine.service,
            standby.stderr_so_far()
        );
    }
}

#[test]
fn a_sigkilled_holder_is_replaced_by_a_waiting_standby_with_a_larger_term() {
    for engine in engines() {
        let key = unique_key("sigkill");
        let holder = Process::start(engine_command(&engine, &key));
        let term = field(&holder.line(DEADLINE), "term");
        let mut standby = engine_command(&engine, &key);
        standby.env("PIDLOCK_TEST_WAIT", "1");
        let standby = Process::start(standby);
        standby.stderr_line("Waiting for the", DEADLINE);
        let killed_at = now_ns();
        holder.signal(Signal::SIGKILL);
        let held = standby.line_starting("held", DEADLINE);
        let took = Duration::from_nanos((field(&held, "at") - killed_at) as u64);
        eprintln!(
            "{}: the standby took over {took:?} after SIGKILL",
            engine.service
        );
        let (at_least, below) = engine.after_crash;
        assert!(
            took >= at_least && took < below,
            "{}: took {took:?}, expected [{at_least:?}, {below:?})",
            engine.service
        );
        assert!(field(&held, "term") > term, "{held} after term {term}");
    }
}

#[test]
fn the_holder_stops_at_once_when_the_server_lets_go_of_its_lock() {
    for engine in engines() {
        let key = unique_key("let-go");
        let mut holder = Process::start(engine_command(&engine, &key));
        let term = field(&holder.line(DEADLINE), "term");
        let let_go_at = now_ns();
        (engine.let_go)(&engine.url, &key);
        let stopping = field(&holder.line_starting("stopping", DEADLINE), "at");
        let status = holder.wait(DEADLINE);
        let after = stopping - let_go_at;
        eprintln!(
            "{}: the holder was told to stop {:.1} ms after the server let go",
            engine.service,
            ms(after)
        );
        assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
        let stderr = holder.stderr_all();
        assert!(
            stderr.contains(&format!(
                "Lost the {} lock \"{key}\" (term {term})",
                engine.service
            )),
            "{stderr}"
        );
        assert!(stderr.contains("the server has let go of it"), "{stderr}");
        // Within a heartbeat (0.5 s) and a round trip; 5 s is the promise.
        assert!(
            after < Duration::from_secs(5).as_nanos() as i128,
            "{}: {:.1} ms",
            engine.service,
            ms(after)
        );
        // Nothing runs unprotected: a new holder gets a new term.
        let next = Process::start(engine_command(&engine, &key));
        assert!(field(&next.line(DEADLINE), "term") > term);
    }
}

#[test]
fn every_acquisition_gets_a_larger_fencing_term() {
    for engine in engines() {
        let key = unique_key("terms");
        let mut terms = Vec::new();
        for _ in 0..3 {
            let guard = take(&engine, &key, OnConflict::Exit).expect("lock");
            terms.push(guard.term());
        }
        eprintln!("{}: terms {terms:?}", engine.service);
        assert!(
            terms.windows(2).all(|pair| pair[0] < pair[1]),
            "{}: {terms:?}",
            engine.service
        );
    }
}

#[test]
fn a_wait_that_times_out_names_the_holder() {
    for engine in engines() {
        let key = unique_key("timeout");
        let _holder = take(&engine, &key, OnConflict::Exit).expect("holder");
        let started = Instant::now();
        let waited = take(
            &engine,
            &key,
            OnConflict::Wait {
                timeout: Some(Duration::from_millis(300)),
            },
        );
        match waited {
            Err(Error::RemoteTimedOut {
                host, pid, waited, ..
            }) => {
                assert_eq!(host, Some(host_name()), "{}", engine.service);
                assert_eq!(
                    pid.map(pidlock_core::Pid::get),
                    Some(std::process::id() as i32)
                );
                assert!(waited >= Duration::from_millis(300), "{waited:?}");
            }
            other => panic!("{}: {other:?}", engine.service),
        }
        assert!(started.elapsed() < DEADLINE);
    }
}

#[test]
fn takeover_is_refused_before_anything_is_locked() {
    for engine in engines() {
        let key = unique_key("takeover");
        let refused = take(
            &engine,
            &key,
            OnConflict::Takeover {
                timeout: Duration::from_secs(1),
            },
        );
        match refused {
            Err(Error::Remote { reason, .. }) => {
                assert!(
                    reason.contains("can exit or wait, not take over"),
                    "{reason}"
                )
            }
            other => panic!("{}: {other:?}", engine.service),
        }
        // The key was never taken.
        let _free = take(&engine, &key, OnConflict::Exit).expect("free");
    }
}

/// The engine fixture with the short lease.
fn engine_command(of: &Engine, key: &str) -> std::process::Command {
    let mut command = engine(&of.url, key);
    short_lease(&mut command, SERVER_LIMIT);
    command
}
