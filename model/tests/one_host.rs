//! The one-host protocol, checked exhaustively (breadth-first, to the last
//! state) in the two configurations of `one_host::Config`.

use pidlock_model::checking::{Outcome, exhaustive, until};
use pidlock_model::one_host::{Config, OneHost, names, render::render};

/// Fails on any counterexample or unreached example, and if the model
/// visited fewer states than it did when this was written (a model that
/// silently lost behaviour would pass every `always` vacuously).
fn assert_holds(outcome: &Outcome<OneHost>, label: &str, floor: usize) {
    eprintln!("{}", outcome.summary(label));
    if let Some(&name) = outcome.violated().first() {
        let path = &outcome.discoveries[name];
        panic!(
            "{label}: counterexample\n{}",
            render(&outcome.model, path, name)
        );
    }
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

/// Three instances (two give up on a conflict, one waits), from no file, a
/// stale file or a garbage file; any may be killed at any step; one
/// restart; one outside `rm`.
#[test]
fn three_instances_racing_crashing_restarting() {
    let outcome = exhaustive(OneHost::new(Config::three_instances()));
    assert_holds(&outcome, "three instances", 200_000);
}

/// An instance that forks (the child may daemonize or just exit), one that
/// takes over, `pidlock stop`, crashes, and a dead process's PID given to
/// an unrelated process.
#[test]
fn fork_daemonize_takeover_stop_and_pid_reuse() {
    let outcome = exhaustive(OneHost::new(Config::fork_and_reuse()));
    assert_holds(&outcome, "fork and reuse", 100_000);
}

/// The known limit the README states: once someone removes the file from
/// outside, a releasing owner's fstatat-then-unlinkat can remove a
/// newcomer's file (there is no unlink by descriptor).
#[test]
fn an_outside_rm_can_make_a_release_remove_a_newcomers_file() {
    let model = OneHost::new(Config::three_instances());
    let outcome = until(model.clone(), names::RM_RACE);
    let path = outcome
        .discoveries
        .get(names::RM_RACE)
        .expect("the race is reachable");
    eprintln!("{}", render(&model, path, names::RM_RACE));
}
