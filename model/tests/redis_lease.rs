//! The Redis lease, checked exhaustively in one-second ticks with small
//! settings of the shipped proportions (lease 4, grace 2, TTL 8: `L + G < T`
//! by two ticks, as 8 s + 5 s < 15 s), renewals lost, delayed or duplicated.

use pidlock_model::checking::{exhaustive, until};
use pidlock_model::redis_lease::{Mutations, RedisConfig, RedisLease, names, render};

fn outcome(config: RedisConfig, label: &str) -> pidlock_model::checking::Outcome<RedisLease> {
    let outcome = exhaustive(RedisLease::new(config));
    eprintln!("{}", outcome.summary(label));
    assert!(
        outcome.unique_states > 1_000,
        "{label}: the model collapsed"
    );
    outcome
}

fn counterexample(config: RedisConfig, property: &'static str) -> String {
    let outcome = until(RedisLease::new(config), property);
    let path = outcome
        .discoveries
        .get(property)
        .unwrap_or_else(|| panic!("no counterexample to {property}"));
    let trace = render(path, property);
    eprintln!("{trace}");
    trace
}

/// No pause: the holder has stopped before the standby runs, any renewal or
/// answer lost, delayed (up to a tick) or duplicated. Delays cannot stretch
/// the lease: the TTL counts from the server's receipt, the lease from the
/// sending. (Delays up to 2 ticks hold too: 3.3 million states, 86 s, too
/// long for every run.)
#[test]
fn without_a_pause_the_holder_stops_before_the_standby_runs() {
    let outcome = outcome(RedisConfig::small(1, 0), "no pause, delays up to 1");
    assert_eq!(outcome.violated(), Vec::<&str>::new());
    assert_eq!(outcome.unreached(), Vec::<&str>::new());
}

/// A pause longer than the TTL lets the key expire under a holder that then
/// wakes up and runs on for a moment beside the standby: the overlap a
/// lease cannot prevent. Fencing holds all the same: the standby holds the
/// key and the larger term, and the old holder gets no renewal confirmed.
#[test]
fn a_paused_holder_overlaps_the_standby_but_never_unfenced() {
    let outcome = outcome(RedisConfig::small(1, 9), "pauses up to 9 ticks");
    assert_eq!(outcome.violated(), vec![names::HOLDER_STOPS_FIRST]);
    assert_eq!(outcome.unreached(), Vec::<&str>::new());
}

/// The token check matters: a renewal that sets the key whoever it names
/// (a late or duplicated one, or one from a holder that woke from a pause)
/// takes the key back from the standby, and the old holder is confirmed.
#[test]
fn a_renewal_without_the_token_check_breaks_fencing() {
    let mut config = RedisConfig::small(1, 9);
    config.mutations = Mutations {
        blind_renewal: true,
        ..Mutations::default()
    };
    counterexample(config, names::FENCED);
}

/// The arithmetic matters: with L + G = T (which `RedisLock::acquire`
/// refuses) the holder runs when the key expires, with no pause at all.
#[test]
fn lease_plus_grace_not_below_the_ttl_breaks_it() {
    let mut config = RedisConfig::small(0, 0);
    config.ttl = 6;
    counterexample(config, names::HOLDER_STOPS_FIRST);
}

/// Where the lease starts matters: counted from a renewal's answer rather
/// than its sending, a delayed answer stretches the lease past the TTL.
#[test]
fn a_lease_counted_from_the_reply_breaks_it() {
    let mut config = RedisConfig::small(2, 0);
    config.mutations = Mutations {
        lease_from_reply: true,
        ..Mutations::default()
    };
    counterexample(config, names::HOLDER_STOPS_FIRST);
}
