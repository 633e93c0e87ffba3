//! Each safeguard matters: with it taken out of the model, the checker
//! finds a counterexample, printed as a trace. Each runs on a configuration
//! of `one_host.rs` (or one with fewer behaviours), where the property
//! holds with the safeguard in. Several put back the code as it was before
//! the fixes of what the model found in it (`replace_unfrozen`,
//! `leave_forgets`, `failed_pipe_alone`, `vanished_swap_fails`,
//! `wait_ignores_name`, `wait_ignores_readers`).

use pidlock_model::checking::until;
use pidlock_model::one_host::{Config, Mutations, OneHost, Policy, names, render::render};

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
    assert!(trace.contains("NO post-lock identity check"), "{trace}");
    assert!(trace.contains("unlinkat(path) removes"), "{trace}");
}

/// Without the owner check on the exit paths, a forked child that exits
/// removes the file its parent is leaving to it.
#[test]
fn without_the_owner_check_a_fork_child_unlinks_the_parents_file() {
    let trace = counterexample(
        Config::fork_and_takeover(),
        Mutations {
            no_owner_check: true,
            ..Mutations::default()
        },
        names::ONLY_OWNER_MODIFIES,
    );
    assert!(trace.contains("NO owner check (mutation)"), "{trace}");
    assert!(trace.contains("child (pid 3) unlinkat"), "{trace}");
}

/// With the owner told by its PID number alone, a fork child that is PID 1
/// of a nested namespace (as its parent is of its container) passes for
/// the owner: its exit removes the file while the owner leaves it to the
/// child. The sharers pipe does not save it: the owner's `leave` closed its
/// write end, so the child's read sees end of file.
#[test]
fn with_the_owner_told_by_pid_alone_a_namespaced_child_unlinks_the_owners_file() {
    let trace = counterexample(
        Config::fork_in_a_pid_namespace(),
        Mutations {
            owner_pid_only: true,
            ..Mutations::default()
        },
        names::ONLY_OWNER_MODIFIES,
    );
    assert!(
        trace.contains("owner check by PID number only passes (MUTATION)"),
        "{trace}"
    );
    assert!(trace.contains("child (pid 1) unlinkat"), "{trace}");
}

/// Without the sharers pipe (FreeBSD's `pidfile_inherited`): the parent
/// takes the lock, forks, and lets go, removing the file; a newcomer
/// creates a new one and runs beside the child, which still holds the lock.
#[test]
fn without_the_sharers_pipe_a_newcomer_runs_beside_the_child() {
    let trace = counterexample(
        Config {
            pipe_can_fail: false,
            ..Config::fork_in_a_pid_namespace()
        },
        Mutations {
            unlink_regardless: true,
            ..Mutations::default()
        },
        names::NO_TWO_INSTANCES,
    );
    assert!(trace.contains("does NOT ask the sharers pipe"), "{trace}");
    assert!(
        trace.contains("child (pid 1): Run, has file A (locked)"),
        "{trace}"
    );
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

/// With SIGKILL sent to whoever holds the inode when the timeout runs out,
/// `stop --kill` kills the standby that took over: the holder dies of the
/// SIGTERM without removing its file (it has no handler yet, as with
/// `signals = "none"`), a second instance locks the same inode, checks it
/// and runs, and the timeout's SIGKILL reaches it.
#[test]
fn killing_whoever_holds_the_inode_kills_the_instance_that_took_over() {
    let trace = counterexample(
        Config {
            fork: false,
            leave: false,
            ..Config::fork_and_stop()
        },
        Mutations {
            kill_current_holders: true,
            ..Mutations::default()
        },
        names::SIGNAL_ONLY_HOLDERS,
    );
    // The process killed registered its guard after the stop's SIGTERM.
    let sigterm = trace.find("pidfd_send_signal(SIGTERM) reaches");
    let took_over = trace.rfind("the locked file: guard registered");
    assert!(
        matches!((sigterm, took_over), (Some(s), Some(t)) if s < t),
        "{trace}"
    );
    assert!(
        trace.contains("SIGKILL to whoever holds the inode now (MUTATION)"),
        "{trace}"
    );
}

/// Without the shared-lock probe and the replacement, a reader's shared
/// lock keeps a start from ever running: it is retried, then reported as
/// an instance nobody could verify.
#[test]
fn without_replacement_a_reader_blocks_a_start() {
    let trace = counterexample(
        Config::shared_reader(),
        Mutations {
            no_replacement: true,
            ..Mutations::default()
        },
        names::READERS_NEVER_BLOCK,
    );
    assert!(trace.contains("NO shared-lock probe (mutation)"), "{trace}");
    assert!(trace.contains("(shared lock)"), "{trace}");
}

/// Without turns, three starts replace the same frozen file at once: one
/// swaps in its file and runs; the other two each swap out a file that is
/// not the one they froze, and swap back in an order that leaves a third
/// file at the path and removes the running instance's, under a temporary
/// name. The third start then locks the file at the path and runs too.
#[test]
fn without_turns_three_starts_move_a_running_instances_file_away() {
    let trace = counterexample(
        Config {
            crash: false,
            leave: false,
            ..Config::shared_reader()
        },
        Mutations {
            no_turns: true,
            ..Mutations::default()
        },
        names::NO_TWO_INSTANCES,
    );
    assert!(trace.contains("NO turn (mutation)"), "{trace}");
    assert!(trace.contains("swaps back"), "{trace}");
    assert!(trace.contains("holds and runs on"), "{trace}");
}

/// The code before the model's findings replaced a file a reader holds
/// exclusively too, though it cannot be frozen, and looked again after the
/// swap. Between the start's look and its swap the reader lets go, and an
/// instance locks the old file, checks the path, runs and returns from
/// `main`: its `unlink_if_ours` fstatat sees its own file, the swap
/// happens, and its `unlinkat` removes the start's new file instead.
#[test]
fn replacing_a_file_a_reader_holds_exclusively_lets_a_release_remove_the_new_file() {
    let trace = counterexample(
        Config::exclusive_reader(),
        Mutations {
            replace_unfrozen: true,
            ..Mutations::default()
        },
        names::ONLY_OWNER_MODIFIES,
    );
    assert!(
        trace.contains("pinned, not frozen: replace it all the same (MUTATION)"),
        "{trace}"
    );
    assert!(trace.contains("renameat2(RENAME_EXCHANGE)"), "{trace}");
    assert!(trace.contains("which is NOT file A"), "{trace}");
}

/// The same, with the start killed before its second look: the instance
/// that locked the old file between the look and the swap keeps running
/// on it under the temporary name, the path names the dead start's file,
/// unlocked, and the next start takes it and runs too.
#[test]
fn replacing_a_file_a_reader_holds_exclusively_lets_a_killed_start_hide_an_instance() {
    let trace = counterexample(
        Config {
            instances: vec![Policy::Exit, Policy::Exit, Policy::Exit],
            leave: false,
            reader_holds_at_start: true,
            ..Config::exclusive_reader()
        },
        Mutations {
            replace_unfrozen: true,
            ..Mutations::default()
        },
        names::NO_TWO_INSTANCES,
    );
    assert!(trace.contains("the temporary name file A"), "{trace}");
    assert!(trace.contains("is killed (SIGKILL)"), "{trace}");
    assert!(
        trace.contains("I2 (pid 2): Write, has file A (locked), owner"),
        "{trace}"
    );
}

/// `Sharers::leave` forgetting its answer (the code before the model's
/// findings): an owner returning from `main` while its child shares the
/// lock reads `Shared` and goes on to name the child in the file; a SIGTERM
/// that arrives then (here a takeover's) runs `remove_held_files`, whose
/// `let_go` reads the pipe again: both ends are -1 now, which reads
/// `Alone`, and the file goes while the child holds the lock. A newcomer
/// creates a new one and runs beside the child.
#[test]
fn a_sharers_pipe_that_forgets_its_answer_lets_a_sigterm_remove_a_shared_file() {
    let trace = counterexample(
        Config::fork_and_takeover(),
        Mutations {
            leave_forgets: true,
            ..Mutations::default()
        },
        names::NO_TWO_INSTANCES,
    );
    assert!(trace.contains("(MUTATION: forgets)"), "{trace}");
    assert!(
        trace.contains("child (pid 3): Run, has file A (locked)"),
        "{trace}"
    );
}

/// A lock whose sharers pipe could not be made read as "alone" (the code
/// before the model's findings), like one never held across a fork: the
/// owner at its descriptor limit forks, exits and removes the file, and a
/// newcomer runs beside the child (FreeBSD's `pidfile_inherited` again).
#[test]
fn a_failed_sharers_pipe_read_as_alone_leaves_the_child_beside_a_newcomer() {
    let trace = counterexample(
        Config::fork_in_a_pid_namespace(),
        Mutations {
            failed_pipe_alone: true,
            ..Mutations::default()
        },
        names::NO_TWO_INSTANCES,
    );
    assert!(
        trace.contains("no sharers pipe (pipe2 failed): alone (MUTATION)"),
        "{trace}"
    );
    assert!(
        trace.contains("child (pid 1): Run, has file A (locked)"),
        "{trace}"
    );
}

/// A swap that finds the path gone returning the error (the code before
/// the model's findings): a start that froze a file and holds its turn
/// finds it removed from outside at its swap, and fails though nobody
/// holds the lock.
#[test]
fn a_swap_that_fails_on_a_vanished_path_fails_the_start() {
    let trace = counterexample(
        Config::outside_rm(),
        Mutations {
            vanished_swap_fails: true,
            ..Mutations::default()
        },
        names::SOLO_ACQUIRE,
    );
    assert!(
        trace.contains("renameat2(RENAME_EXCHANGE) -> ENOENT"),
        "{trace}"
    );
    assert!(
        trace.contains("will return the error (MUTATION)"),
        "{trace}"
    );
}

/// A waiting start that does not notice its file losing its name, and
/// has no shared probe either (the code before the model's findings): the
/// instance removes its file as it leaves, a reader that opened it before
/// takes a shared lock on the removed inode, and the standby waits behind
/// the reader for as long as the reader likes, while the path is free.
/// With the shared probe in, the probe alone ends this wait too (the
/// reader holds the removed file shared): without the name check alone,
/// no configuration breaks a property.
#[test]
fn a_wait_blind_to_the_name_is_blocked_by_a_reader_of_the_removed_file() {
    let trace = counterexample(
        Config::standby_and_reader(),
        Mutations {
            wait_ignores_name: true,
            wait_ignores_readers: true,
            ..Mutations::default()
        },
        names::READERS_NEVER_BLOCK,
    );
    assert!(trace.contains("unlinkat(path) removes file A"), "{trace}");
    assert!(trace.contains("I2 (pid 2): WaitLock"), "{trace}");
    assert!(trace.contains("is stuck at WaitLock"), "{trace}");
}

/// A waiting start that tries only the exclusive lock and the name (the
/// code before the model's findings): the instance it waits for is killed,
/// so its file keeps its name, and a reader takes a shared lock on it
/// before the standby's next try. The standby waits for as long as the
/// reader likes, though only a reader holds the file, which a start with
/// `on_conflict = "exit"` would replace at once.
#[test]
fn a_wait_blind_to_readers_is_blocked_by_a_reader_of_a_killed_instances_file() {
    let trace = counterexample(
        Config::standby_and_reader(),
        Mutations {
            wait_ignores_readers: true,
            ..Mutations::default()
        },
        names::READERS_NEVER_BLOCK,
    );
    assert!(trace.contains("waits for the lock"), "{trace}");
    assert!(trace.contains("is killed (SIGKILL)"), "{trace}");
    assert!(trace.contains("(shared lock)"), "{trace}");
    assert!(trace.contains("is stuck at WaitLock"), "{trace}");
}
