//! Each safeguard matters: with it taken out of the model, the checker
//! finds a counterexample, printed as a trace.

use pidlock_model::checking::until;
use pidlock_model::one_host::{Config, Mutations, OneHost, names, render::render};

fn counterexample(config: Config, mutations: Mutations, property: &'static str) -> String {
    let model = OneHost::new(config.with(mutations));
    let outcome = until(model.clone(), property);
    eprintln!("{}", outcome.summary("mutant"));
    let path = outcome
        .discoveries
        .get(property)
        .unwrap_or_else(|| panic!("no counterexample to {property} without the safeguard"));
    let trace = render(&model, path, property);
    eprintln!("{trace}");
    trace
}

/// Without the post-lock fstatat, a process that opened the file before
/// the holder unlinked it locks the dead inode and runs beside the
/// instance that created the new file.
#[test]
fn without_the_identity_check_two_instances_run() {
    let trace = counterexample(
        Config::three_instances(),
        Mutations {
            no_identity_check: true,
            ..Mutations::default()
        },
        names::NO_TWO_INSTANCES,
    );
    assert!(trace.contains("unlinkat(path) removes"), "{trace}");
}

/// Without the owner check on the exit paths, a forked child that exits
/// removes its parent's file while the parent runs.
#[test]
fn without_the_owner_check_a_fork_child_unlinks_the_parents_file() {
    let trace = counterexample(
        Config::fork_and_reuse(),
        Mutations {
            no_owner_check: true,
            ..Mutations::default()
        },
        names::ONLY_OWNER_MODIFIES,
    );
    assert!(trace.contains("child (pid 3) unlinkat"), "{trace}");
}

/// With the holder taken from /proc/locks (whoever took the lock), a stop
/// after the taker died and its PID was reused signals the unrelated
/// process.
#[test]
fn with_holders_from_proc_locks_a_reused_pid_is_signalled() {
    let trace = counterexample(
        Config::fork_and_reuse(),
        Mutations {
            holders_from_proc_locks: true,
            ..Mutations::default()
        },
        names::SIGNAL_ONLY_HOLDERS,
    );
    assert!(trace.contains("reaches unrelated"), "{trace}");
}
