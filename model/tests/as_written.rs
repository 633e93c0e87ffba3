//! What the model finds in the code as it is: each test shows one
//! counterexample, printed as a trace, and the configuration in
//! `one_host.rs` that would meet it leaves its cause out (and says so).
//! When the code changes, a test here that finds no counterexample any
//! more is the sign to widen that configuration and turn the test into a
//! mutation (`mutations.rs`).

use pidlock_model::checking::until;
use pidlock_model::one_host::{Config, OneHost, names, render::render};

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

/// A standby that waits (`on_conflict = "wait"`) behind an instance that
/// is killed (SIGKILL, the OOM killer): the file stays at the path, and a
/// reader that opened it takes a shared lock before the standby's next
/// try. The wait tries only the exclusive lock and whether the file still
/// has its name, which it has: the standby waits for as long as the reader
/// likes, though only a reader holds the file. The shared-lock probe and
/// the replacement run only before a wait begins; a start with
/// `on_conflict = "exit"` would replace the file at once.
#[test]
fn as_written_a_reader_of_a_killed_instances_file_blocks_a_waiting_standby() {
    let trace = counterexample(
        Config {
            crash: true,
            ..Config::standby_and_reader()
        },
        names::READERS_NEVER_BLOCK,
    );
    assert!(trace.contains("waits for the lock"), "{trace}");
    assert!(trace.contains("is killed (SIGKILL)"), "{trace}");
    assert!(trace.contains("(shared lock)"), "{trace}");
    assert!(trace.contains("is stuck at WaitLock"), "{trace}");
}
