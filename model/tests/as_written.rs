//! What the model found in the code as written: each test shows one
//! counterexample, printed as a trace. Where the model proposes a fix
//! (`one_host::Fixes`), the configuration in `one_host.rs` that would meet
//! the fault runs with it and holds; the others are kept out of those
//! configurations, which say so. When the code changes, a test here that
//! finds no counterexample any more is the sign to turn the fix on by
//! default, or to widen the configuration.

use pidlock_model::checking::until;
use pidlock_model::one_host::{Config, Lock, OneHost, Policy, names, render::render};

fn counterexample(config: Config, property: &'static str) -> String {
    let model = OneHost::new(config);
    let outcome = until(model.clone(), property);
    eprintln!("{}", outcome.summary("as written"));
    let path = outcome
        .discoveries
        .get(property)
        .unwrap_or_else(|| panic!("no counterexample to {property} any more"));
    let trace = render(&model, path, property);
    eprintln!("{trace}");
    trace
}

/// `Sharers::leave` forgets its answer. An owner returning from `main`
/// while its child shares the lock reads `Shared` and goes on to name the
/// child in the file; a SIGTERM that arrives then (here a takeover's)
/// runs `remove_held_files`, whose `let_go` reads the pipe again: both ends
/// are -1 now, which reads `Alone`, and the file goes while the child holds
/// the lock. A newcomer creates a new one and runs beside the child.
#[test]
fn as_written_a_sigterm_while_a_release_leaves_the_file_to_a_child_removes_it() {
    let trace = counterexample(
        Config::fork_and_takeover().as_written(),
        names::NO_TWO_INSTANCES,
    );
    assert!(
        trace.contains("the sharers pipe was read before, its ends are -1: alone"),
        "{trace}"
    );
    assert!(
        trace.contains("child (pid 3): Run, has file A (locked)"),
        "{trace}"
    );
}

/// `Sharers::ensure` says a lock whose pipe could not be made keeps its
/// file; `leave` cannot tell it from a lock never held across a fork (both
/// ends -1) and answers `Alone`: FreeBSD's `pidfile_inherited` again, for a
/// process at its descriptor limit when it forks.
#[test]
fn as_written_a_fork_whose_sharers_pipe_failed_leaves_the_child_beside_a_newcomer() {
    let trace = counterexample(
        Config::fork_in_a_pid_namespace().as_written(),
        names::NO_TWO_INSTANCES,
    );
    assert!(trace.contains("pipe2 failed"), "{trace}");
    assert!(
        trace.contains("child (pid 1): Run, has file A (locked)"),
        "{trace}"
    );
}

/// A file a reader holds exclusively cannot be frozen. Between the start's
/// look and its swap the reader lets go, and an instance locks the old
/// file, checks the path, runs and returns from `main`: its `unlink_if_ours`
/// fstatat sees its own file, the swap happens, and its `unlinkat` removes
/// the start's new file instead. (With a third start, that one then creates
/// a file at the empty path and runs; the first start's swap back moves it
/// away and its discard removes it, and the first start, looking again,
/// runs on the old file: two instances. README gives that trace.)
#[test]
fn as_written_a_release_during_an_unfrozen_swap_removes_the_new_file() {
    let trace = counterexample(
        Config {
            leave: true,
            ..Config::exclusive_reader()
        },
        names::ONLY_OWNER_MODIFIES,
    );
    assert!(trace.contains("renameat2(RENAME_EXCHANGE)"), "{trace}");
    assert!(trace.contains("which is NOT file A"), "{trace}");
}

/// A file a reader holds exclusively cannot be frozen, so an instance may
/// lock it between the look and the swap; the second look would swap it
/// back, but the start is killed first. The running instance's file stays
/// under the temporary name, the path names the dead start's file, now
/// unlocked, and the next start takes it and runs too.
#[test]
fn as_written_a_start_killed_during_an_unfrozen_swap_hides_the_running_instance() {
    let trace = counterexample(
        Config {
            instances: vec![Policy::Exit, Policy::Exit, Policy::Exit],
            crash: true,
            reader_holds_at_start: true,
            ..Config::exclusive_reader()
        },
        names::NO_TWO_INSTANCES,
    );
    assert!(trace.contains("the temporary name file A"), "{trace}");
    assert!(trace.contains("is killed (SIGKILL)"), "{trace}");
    assert!(
        trace.contains(": Write, has file A (locked), owner"),
        "{trace}"
    );
}

/// A start that froze a file and holds its turn finds the path gone at its
/// swap (here removed from outside): `renameat2` fails with `ENOENT` and
/// `replace` returns the error, where `open_file` would have looked again.
/// The start fails though nobody holds the lock.
#[test]
fn as_written_a_swap_that_finds_the_path_gone_fails_the_start() {
    let trace = counterexample(Config::outside_rm().as_written(), names::SOLO_ACQUIRE);
    assert!(
        trace.contains("renameat2(RENAME_EXCHANGE) -> ENOENT"),
        "{trace}"
    );
}

/// A standby that waits (`on_conflict = "wait"`) blocks in
/// `flock(LOCK_EX)` on the instance's file. The instance leaves, and a
/// reader of another user takes a shared lock on that file before the
/// standby's flock returns: the standby stays blocked for as long as the
/// reader likes, on a file that is not even at the path any more. The
/// shared-lock probe and the replacement run only before a wait begins.
#[test]
fn as_written_a_reader_that_takes_the_file_as_its_instance_leaves_blocks_a_waiting_standby() {
    let trace = counterexample(
        Config {
            instances: vec![Policy::Exit, Policy::Wait],
            reader_locks: vec![Lock::Shared],
            ..Config::shared_reader()
        },
        names::READERS_NEVER_BLOCK,
    );
    assert!(trace.contains("waits for the lock"), "{trace}");
    assert!(trace.contains("I2 (pid 2): WaitLock"), "{trace}");
}
