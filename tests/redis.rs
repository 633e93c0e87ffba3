//! The Redis engine against servers the tests start for themselves (no
//! persistence, free loopback ports): a restart that loses the key under a
//! running holder, TLS with a CA the test makes, passwords and ACL users,
//! servers that cannot be reached or do not answer, idle-client timeouts,
//! and replicas (`WAIT`, and a failover to a promoted replica). What every
//! engine promises is in `tests/across_hosts.rs`; the partition in
//! `tests/partition.rs`.
//!
//! Without `redis-server` (or `openssl`) these tests say so and pass, except
//! under `CI=true`.
#![cfg(feature = "redis")]

mod servers;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pidlock_core::{Error, LogLevel, RedisLock};
use servers::certs::{Certs, openssl_cli};
use servers::redis::{RedisServer, Setup, lock_key};
use servers::{
    DEADLINE, Process, engine, field, free_port, killed_by, ms, now_ns, short_lease, unique_key,
};

/// lease 2 s + grace 1 s < TTL 4 s.
const TTL: Duration = Duration::from_secs(4);

/// The reason of an `Error::Remote`, or a panic naming what came instead.
fn reason(result: pidlock_core::Result<pidlock_core::RemoteGuard>) -> String {
    match result {
        Err(Error::Remote { reason, .. }) => reason,
        other => panic!("expected Error::Remote, got {other:?}"),
    }
}

fn quiet(url: &str, key: &str) -> RedisLock {
    RedisLock::new(url, key).log_level(LogLevel::Warn)
}

#[test]
fn redis_restart_without_persistence_stops_the_holder_before_the_standby_runs() {
    let Some(mut server) = RedisServer::start(Setup::default()) else {
        return;
    };
    let key = unique_key("restart");
    let mut holder = engine(&server.url(0), &key);
    short_lease(&mut holder, TTL);
    let mut holder = Process::start(holder);
    let term = field(&holder.line(DEADLINE), "term");
    let mut standby = engine(&server.url(0), &key);
    short_lease(&mut standby, TTL).env("PIDLOCK_TEST_WAIT", "1");
    let standby = Process::start(standby);
    standby.stderr_line("Waiting for the Redis lock", DEADLINE);

    let restarted_at = now_ns();
    server.restart();
    let stopped_at = field(&holder.line_starting("stopping", DEADLINE), "at");
    assert!(killed_by(holder.wait(DEADLINE), Signal::SIGTERM));
    let held = standby.line_starting("held", DEADLINE);
    let acquired_at = field(&held, "at");
    let stderr = holder.stderr_all();
    eprintln!(
        "restart without persistence: holder told to stop {:.1} ms after the restart began, standby held {:.1} ms after that",
        ms(stopped_at - restarted_at),
        ms(acquired_at - stopped_at)
    );
    eprintln!(
        "the holder said: {}",
        stderr
            .lines()
            .find(|line| line.contains("Lost"))
            .unwrap_or("")
    );
    // Whichever came first after the restart, the holder's renewal (the key
    // is gone) or the standby's acquisition (the key is another's), the
    // holder was told by the server.
    assert!(
        stderr.contains("the key is gone")
            || stderr.contains("the key now holds another holder's token"),
        "{stderr}"
    );
    assert!(
        stopped_at - restarted_at < Duration::from_secs(5).as_nanos() as i128,
        "{:.1} ms",
        ms(stopped_at - restarted_at)
    );
    // The standby saw a holder, then a server with no record of it: it
    // waited the handover, so the old holder stopped first.
    assert!(
        standby
            .stderr_so_far()
            .contains("The server lost its record of the previous holder"),
        "{}",
        standby.stderr_so_far()
    );
    assert!(acquired_at > stopped_at, "two holders at once");
    // The counter was lost with the data; the term still grew.
    assert!(field(&held, "term") > term, "{held} after term {term}");
}

#[test]
fn redis_tls_verifies_the_chain_and_the_host_name_and_says_what_failed() {
    let Some(()) = openssl_cli() else { return };
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let certs = Certs::make(certs_dir.path());
    let Some(server) = RedisServer::start(Setup {
        tls: Some(&certs),
        // 127.0.0.2 is this host too, but not a name in the certificate.
        bind: Some("127.0.0.1 127.0.0.2".to_owned()),
        args: ["--user", "bot", "on", ">s3cret", "~*", "&*", "+@all"]
            .map(str::to_owned)
            .to_vec(),
        ..Setup::default()
    }) else {
        return;
    };
    let tls_port = server.tls_port.expect("TLS port");
    let (ca, other_ca) = (certs.ca.display(), certs.other_ca.display());
    let at = |host: &str, port: u16, rest: &str| format!("rediss://{host}:{port}/0{rest}");
    let mut results = Vec::new();
    let mut expect = |label: &str, url: String, expected: Result<(), &str>| {
        let key = unique_key("tls");
        let got = quiet(&url, &key).acquire().map(drop);
        results.push(format!("{label:<40} -> {got:?}"));
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(Error::Remote { reason, .. }), Err(needle)) => {
                assert!(reason.contains(needle), "{label}: {reason}");
            }
            (got, expected) => panic!("{label}: got {got:?}, expected {expected:?}"),
        }
    };
    expect(
        "right CA, localhost",
        at("localhost", tls_port, &format!("?sslrootcert={ca}")),
        Ok(()),
    );
    expect(
        "right CA, 127.0.0.1",
        at("127.0.0.1", tls_port, &format!("?sslrootcert={ca}")),
        Ok(()),
    );
    expect(
        "ACL user and password",
        format!("rediss://bot:s3cret@localhost:{tls_port}/0?sslrootcert={ca}"),
        Ok(()),
    );
    expect(
        "ACL user, wrong password",
        format!("rediss://bot:wrong@localhost:{tls_port}/0?sslrootcert={ca}"),
        Err("the server refused the password of user \"bot\": WRONGPASS"),
    );
    expect(
        "wrong CA",
        at("localhost", tls_port, &format!("?sslrootcert={other_ca}")),
        Err(&format!(
            "the server's certificate is not signed by the CA in {other_ca} (unknown CA; rediss://)"
        )),
    );
    expect(
        "system roots (the test CA is not one)",
        at("localhost", tls_port, ""),
        Err("not signed by the system's trusted CAs (unknown CA"),
    );
    expect(
        "right CA, a name not in the certificate",
        at("127.0.0.2", tls_port, &format!("?sslrootcert={ca}")),
        Err("host name mismatch: the server's certificate is not valid for \"127.0.0.2\""),
    );
    expect(
        "plaintext server behind rediss://",
        at("127.0.0.1", server.port, &format!("?sslrootcert={ca}")),
        Err(&format!(
            "the server at 127.0.0.1:{} does not speak TLS: it answered a plaintext PING",
            server.port
        )),
    );
    eprintln!("{}", results.join("\n"));
}

#[test]
fn redis_an_unreachable_or_silent_server_is_a_clear_error_within_seconds() {
    // Nobody listens: refused at once.
    let port = free_port();
    let started = Instant::now();
    let refused = reason(quiet(&format!("redis://127.0.0.1:{port}"), "k").acquire());
    eprintln!("closed port, {:?}: {refused}", started.elapsed());
    assert!(
        refused.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{refused}"
    );
    // Something accepts the connection and never answers: the lease (2 s
    // here) bounds the wait.
    let silent = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = silent.local_addr().expect("address").port();
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("rediss://127.0.0.1:{port}"),
    ] {
        let started = Instant::now();
        let error = reason(
            quiet(&url, "k")
                .lease(Duration::from_secs(2))
                .heartbeat(Duration::from_millis(500))
                .grace(Duration::from_secs(1))
                .ttl(TTL)
                .acquire(),
        );
        let took = started.elapsed();
        eprintln!("{url}, silent server, {took:?}: {error}");
        assert!(
            error.contains("no reply from the server in time")
                || error.contains("no TLS handshake from the server in time"),
            "{error}"
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}

#[test]
fn redis_a_server_closing_idle_clients_does_not_end_the_lock() {
    // `timeout 1`: the server closes a client idle for a second; the holder
    // renews every 1.5 s, so its connection is closed between renewals.
    let Some(server) = RedisServer::start(Setup {
        args: vec!["--timeout".to_owned(), "1".to_owned()],
        ..Setup::default()
    }) else {
        return;
    };
    let key = unique_key("idle");
    let mut holder = engine(&server.url(0), &key);
    holder
        .env("PIDLOCK_TEST_LEASE_MS", "4000")
        .env("PIDLOCK_TEST_HEARTBEAT_MS", "1500")
        .env("PIDLOCK_TEST_GRACE_MS", "1000")
        .env("PIDLOCK_TEST_SERVER_LIMIT_MS", "6000");
    let holder = Process::start(holder);
    holder.line(DEADLINE);
    // Longer than the lease: had the lock needed its first connection, the
    // watchdog would have stopped the holder by now.
    assert_eq!(
        holder.try_line(Duration::from_secs(6)),
        None,
        "{}",
        holder.stderr_so_far()
    );
    let value: Option<String> = redis::cmd("GET")
        .arg(lock_key(&key))
        .query(&mut server.admin(0))
        .expect("GET");
    let value = value.expect("the key is still there");
    assert!(
        value.contains(&format!(" {} ", holder.child.id())),
        "{value}"
    );
    let closed: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut server.admin(0))
        .expect("INFO");
    eprintln!(
        "{}",
        closed
            .lines()
            .find(|line| line.starts_with("total_connections_received"))
            .unwrap_or("")
    );
}

#[test]
fn redis_replicas_acknowledge_the_lock_and_a_failover_keeps_it() {
    let Some(mut primary) = RedisServer::start(Setup::default()) else {
        return;
    };
    let Some(replica) = RedisServer::start(Setup {
        replica_of: Some(primary.port),
        ..Setup::default()
    }) else {
        return;
    };
    replica.wait_in_sync();

    // One replica acknowledges; two cannot, and the lock is given back.
    let key = unique_key("replicas");
    drop(
        quiet(&primary.url(0), &key)
            .replicas(1)
            .acquire()
            .expect("one replica"),
    );
    let refused = reason(quiet(&primary.url(0), &key).replicas(2).acquire());
    assert!(
        refused.contains("only 1 of 2 replicas acknowledged the lock"),
        "{refused}"
    );
    let _free = quiet(&primary.url(0), &key).acquire().expect("released");
    drop(_free);

    // Failover: the primary dies under a holder that waited for one
    // replica; the replica is promoted. It has the key, so a standby on it
    // waits; the holder, cut off from its server, stops at the end of its
    // lease, before the key's TTL runs out on the new primary.
    let key = unique_key("failover");
    let mut holder = engine(&primary.url(0), &key);
    short_lease(&mut holder, TTL).env("PIDLOCK_TEST_REPLICAS", "1");
    let mut holder = Process::start(holder);
    let term = field(&holder.line(DEADLINE), "term");
    let failed_at = now_ns();
    primary.kill();
    let promoted: String = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut replica.admin(0))
        .expect("REPLICAOF NO ONE");
    assert_eq!(promoted, "OK");
    let mut standby = engine(&replica.url(0), &key);
    short_lease(&mut standby, TTL)
        .env("PIDLOCK_TEST_WAIT", "1")
        .env("PIDLOCK_TEST_HANDOVER_MS", "0");
    let standby = Process::start(standby);
    standby.stderr_line("Waiting for the Redis lock", DEADLINE);
    let stopped_at = field(&holder.line_starting("stopping", DEADLINE), "at");
    let _ = holder.wait(DEADLINE);
    let held = standby.line_starting("held", DEADLINE);
    let acquired_at = field(&held, "at");
    eprintln!(
        "failover: holder stopped {:.1} ms after its primary died, the standby on the promoted replica held {:.1} ms after that",
        ms(stopped_at - failed_at),
        ms(acquired_at - stopped_at)
    );
    assert!(
        holder
            .stderr_all()
            .contains("ownership not confirmed for 2s"),
        "the holder stops by its lease"
    );
    assert!(acquired_at > stopped_at, "two holders at once");
    assert!(field(&held, "term") > term, "{held} after term {term}");
}
