//! A real network partition, for each engine: the holder runs in a network
//! namespace of its own, joined by a veth pair to a namespace where the
//! test's own server listens (both namespaces made here, removed when
//! done), and an nftables drop rule on both ends cuts the wire without
//! closing anything. The server then lets go of the silent holder's lock
//! (PostgreSQL: its keepalives end the session; Redis: the key's TTL runs
//! out), and the holder must have stopped before the standby (next to the
//! server) acquires. Ten runs per engine, each gap printed and asserted
//! positive.
//!
//! Needs root, `ip` and `nft` (Debian's iproute2 and nftables); without them
//! the tests say so and pass, except under `CI=true`.
#![cfg(any(feature = "postgres", feature = "redis"))]

mod servers;

use std::time::Duration;

use servers::netns::{SERVER_ADDR, Wire, tools};
use servers::{DEADLINE, Process, engine, field, ms, now_ns, short_lease, unique_key};

/// The holders' lease settings: lease 2 s + grace 1 s < 4 s, the server's
/// limit (PostgreSQL's keepalive timeout, Redis's TTL).
const SERVER_LIMIT: Duration = Duration::from_secs(4);

const RUNS: usize = 10;

/// Ten cuts between a holder at `holder_url` (inside the holder's
/// namespace) and a standby at `standby_url` (beside the server); asserts
/// every gap between the holder's stop and the standby's start is positive.
fn ten_cuts(service: &str, wire: &Wire, holder_url: &str, standby_url: &str) {
    let mut gaps = Vec::new();
    for run_number in 1..=RUNS {
        let key = unique_key("partition");
        let mut holder = engine(holder_url, &key);
        short_lease(&mut holder, SERVER_LIMIT);
        let mut holder = Process::start(Wire::inside(&wire.holder_ns, &holder));
        let term = field(&holder.line_starting("held", DEADLINE), "term");
        let mut standby = engine(standby_url, &key);
        // No handover: the gap below is the lease arithmetic's alone.
        short_lease(&mut standby, SERVER_LIMIT)
            .env("PIDLOCK_TEST_WAIT", "1")
            .env("PIDLOCK_TEST_HANDOVER_MS", "0");
        let standby = Process::start(Wire::inside(&wire.server_ns, &standby));
        // Refused once and waiting: the lock is its the moment it is free.
        standby.stderr_line("Waiting for the", DEADLINE);

        let cut_at = now_ns();
        wire.cut();
        let stopped_at = field(&holder.line_starting("stopping", DEADLINE), "at");
        let held = standby.line_starting("held", DEADLINE);
        let acquired_at = field(&held, "at");
        let _ = holder.wait(DEADLINE);
        let stderr = holder.stderr_all();
        wire.heal();

        let gap = acquired_at - stopped_at;
        eprintln!(
            "{service} run {run_number:2}: holder stopped {:7.1} ms after the cut, standby acquired {:7.1} ms after the cut: gap {:7.1} ms",
            ms(stopped_at - cut_at),
            ms(acquired_at - cut_at),
            ms(gap)
        );
        assert!(
            stderr.contains(&format!("Lost the {service} lock \"{key}\" (term {term})")),
            "{stderr}"
        );
        assert!(field(&held, "term") > term, "{held} after term {term}");
        if run_number == 1 {
            let said = stderr
                .lines()
                .find(|line| line.contains("Lost"))
                .unwrap_or("");
            eprintln!("{service} run  1: the holder said: {said}");
        }
        gaps.push(gap);
    }
    let shown: Vec<String> = gaps.iter().map(|gap| format!("{:.0}", ms(*gap))).collect();
    eprintln!(
        "{service} gaps (holder stop -> standby acquire), ms: {}",
        shown.join(", ")
    );
    assert!(
        gaps.iter().all(|&gap| gap > 0),
        "two holders at once: {shown:?}"
    );
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_partitioned_holder_stops_before_the_standby_acquires() {
    use servers::postgres::{PgServer, Setup};
    let Some(()) = tools() else { return };
    let wire = Wire::make('p');
    let Some(server) = PgServer::start(Setup {
        netns: Some(wire.server_ns.clone()),
        listen: Some(format!("{SERVER_ADDR},127.0.0.1")),
        ..Setup::default()
    }) else {
        return;
    };
    ten_cuts(
        "PostgreSQL",
        &wire,
        &server.url_at(SERVER_ADDR),
        &server.url(),
    );
}

#[cfg(feature = "redis")]
#[test]
fn redis_partitioned_holder_stops_before_the_standby_acquires() {
    use servers::redis::{RedisServer, Setup};
    let Some(()) = tools() else { return };
    let wire = Wire::make('r');
    let Some(server) = RedisServer::start(Setup {
        netns: Some(wire.server_ns.clone()),
        bind: Some(format!("{SERVER_ADDR} 127.0.0.1")),
        ..Setup::default()
    }) else {
        return;
    };
    ten_cuts(
        "Redis",
        &wire,
        &format!("redis://{SERVER_ADDR}:{}/0", server.port),
        &server.url(0),
    );
}
