//! The PostgreSQL lease (DESIGN.md, "Across hosts"), checked exhaustively with the shipped
//! settings (L = 10 s, G = 5 s, S = 30 s, heartbeat 2 s) in one-second
//! ticks, messages lost or delayed.

use pidlock_model::checking::{exhaustive, until};
use pidlock_model::lease::{Lease, LeaseConfig, LeaseStart, names, render::render};

fn holds(config: LeaseConfig, label: &str) {
    let outcome = exhaustive(Lease::new(config));
    eprintln!("{}", outcome.summary(label));
    if let Some(&name) = outcome.violated().first() {
        panic!(
            "{label}: counterexample\n{}",
            render(&outcome.discoveries[name], name)
        );
    }
    assert_eq!(
        outcome.unreached(),
        Vec::<&str>::new(),
        "{label}: never reached"
    );
    assert!(
        outcome.unique_states > 20_000,
        "{label}: the model collapsed"
    );
}

fn breaks(config: LeaseConfig) -> String {
    let outcome = until(Lease::new(config), names::HOLDER_STOPS_FIRST);
    let path = outcome
        .discoveries
        .get(names::HOLDER_STOPS_FIRST)
        .expect("a counterexample");
    let trace = render(path, names::HOLDER_STOPS_FIRST);
    eprintln!("{trace}");
    trace
}

/// As the code is written: safe while every message arrives within
/// S - L - G - 1 = 14 s (any heartbeat may be lost or late).
#[test]
fn as_written_the_holder_stops_first_while_delays_stay_under_s_minus_l_minus_g() {
    holds(
        LeaseConfig::defaults(14, LeaseStart::GuardBuilt),
        "lease as written, delays up to 14 s",
    );
}

/// As written, the lease clock starts when the guard is built, after the
/// acquisition's last reply arrived; the server last heard the holder
/// when that reply's query arrived. A reply 15 s late (S - L - G) leaves
/// the holder running when the session times out.
#[test]
fn as_written_a_late_acquisition_reply_breaks_the_promise() {
    let trace = breaks(LeaseConfig::defaults(15, LeaseStart::GuardBuilt));
    assert!(trace.contains("lease clock starts"), "{trace}");
}

/// Counting the lease from the sending of the acquisition's last query,
/// and refusing a reply that comes a lease late, is safe for every reply
/// the server's tcp_user_timeout lets through (up to S - 1 = 29 s).
#[test]
fn a_lease_counted_from_the_last_query_sent_is_safe_for_any_delay() {
    holds(
        LeaseConfig::defaults(29, LeaseStart::LastQuerySent),
        "lease from the last query sent, delays up to 29 s",
    );
}

/// The arithmetic matters: with L + G = S (which PgLock::acquire refuses)
/// the checker finds the holder still running when its session ends.
#[test]
fn lease_plus_grace_not_below_the_server_timeout_breaks_it() {
    let mut config = LeaseConfig::defaults(0, LeaseStart::LastQuerySent);
    config.server_timeout = 15;
    breaks(config);
}
