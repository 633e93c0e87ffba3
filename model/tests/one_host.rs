//! The one-host protocol, checked exhaustively (breadth-first, to the last
//! state) in each configuration of `one_host::Config`: small ones, one or
//! two rules each, rather than one that holds everything.

use pidlock_model::checking::{Outcome, exhaustive, until};
use pidlock_model::one_host::{Config, OneHost, names, render::render};

/// Fails on any counterexample or unreached example, and if the model
/// visited fewer states than it did when this was written (a model that
/// silently lost behaviour would pass every `always` vacuously).
fn assert_holds(config: Config, label: &str, floor: usize) {
    let outcome = exhaustive(OneHost::new(config));
    eprintln!("{}", outcome.summary(label));
    assert_no_counterexample(&outcome, label);
    assert_eq!(
        outcome.unreached(),
        Vec::<&str>::new(),
        "{label}: never reached"
    );
    assert!(
        outcome.unique_states > floor,
        "{label}: only {} states: the model collapsed",
        outcome.unique_states
    );
}

fn assert_no_counterexample(outcome: &Outcome<OneHost>, label: &str) {
    if let Some(&name) = outcome.violated().first() {
        let path = &outcome.discoveries[name];
        panic!(
            "{label}: counterexample\n{}",
            render(&outcome.model, path, name)
        );
    }
}

/// Three instances (two give up on a conflict, one waits), from no file, a
/// stale file or a garbage file; any may be killed at any step; one
/// restart.
#[test]
fn three_instances_racing_crashing_restarting() {
    assert_holds(Config::three_instances(), "three instances", 25_000);
}

/// Two instances, crashes, a restart, and an `rm` of the file from outside
/// at any moment (a replacement that finds the path gone looks again).
#[test]
fn two_instances_and_an_outside_rm() {
    assert_holds(Config::outside_rm(), "outside rm", 4_000);
}

/// An instance that forks (the child may daemonize, outlive its parent
/// with the lock, or just exit) and one that takes over: SIGTERM to the
/// holder, SIGKILL to the pins that keep the lock after the grace period.
#[test]
fn fork_daemonize_and_takeover() {
    assert_holds(Config::fork_and_takeover(), "fork and takeover", 3_500);
}

/// An instance that forks, `pidlock stop --kill`, and a second instance
/// that may start on the file a stopped holder leaves behind.
#[test]
fn fork_and_stop_with_sigkill() {
    assert_holds(Config::fork_and_stop(), "fork and stop", 9_000);
}

/// An instance that forks (the child may daemonize), `pidlock stop --kill`,
/// and a dead process's PID given to an unrelated process.
#[test]
fn fork_stop_and_pid_reuse() {
    assert_holds(Config::fork_and_reuse(), "fork and reuse", 6_000);
}

/// A fork child that is PID 1 of a nested PID namespace, as its parent is
/// of its container, and lives on after the parent returns, exits or is
/// killed; the fork hook's `pipe2` may fail (a lock without a sharers pipe
/// counts as shared).
#[test]
fn fork_into_a_nested_pid_namespace() {
    assert_holds(
        Config::fork_in_a_pid_namespace(),
        "nested PID namespace",
        400,
    );
}

/// A reader that takes a shared lock on whatever file the path names,
/// whenever it likes, and keeps it; three starts that may return, exit or
/// be killed: each pinned file is frozen and replaced, starts take turns.
#[test]
fn a_shared_reader_and_three_starts() {
    assert_holds(Config::shared_reader(), "shared reader", 85_000);
}

/// A reader (root) holding the file exclusively through a read-only
/// descriptor (that may let go), and two starts that may return, exit or
/// be killed: the file cannot be frozen, so a start that meets the reader
/// reports it and never replaces the file.
#[test]
fn an_exclusive_reader_and_two_starts() {
    assert_holds(Config::exclusive_reader(), "exclusive reader", 2_000);
}

/// A standby that waits behind an instance that may return, exit or be
/// killed, and a reader that takes a shared lock on whatever file the path
/// names and keeps it: the wait notices its file losing its name.
#[test]
fn a_waiting_standby_and_a_shared_reader() {
    assert_holds(Config::standby_and_reader(), "standby and reader", 1_800);
}

/// The known limit the README states: once someone removes the file from
/// outside, a releasing owner's fstatat-then-unlinkat can remove a
/// newcomer's file (there is no unlink by descriptor).
#[test]
fn an_outside_rm_can_make_a_release_remove_a_newcomers_file() {
    let model = OneHost::new(Config::outside_rm());
    let outcome = until(model.clone(), names::RM_RACE);
    let path = outcome
        .discoveries
        .get(names::RM_RACE)
        .expect("the race is reachable");
    eprintln!("{}", render(&model, path, names::RM_RACE));
}
