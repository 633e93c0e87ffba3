//! With the `log` / `tracing` features, messages are emitted as records with
//! target `pidlock` when a logger or subscriber is installed, and then only
//! there.
#![cfg(any(feature = "log", feature = "tracing"))]

use std::fs;
use std::sync::Mutex;

use pidlock_core::{PidLock, Signals};

static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(level: &str, target: &str, text: String) {
    if target == "pidlock" {
        RECORDS.lock().unwrap().push(format!("{level} {text}"));
    }
}

#[cfg(feature = "log")]
mod with_log {
    pub(crate) struct Collect;

    impl log::Log for Collect {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            super::record(
                record.level().as_str(),
                record.target(),
                record.args().to_string(),
            );
        }
        fn flush(&self) {}
    }

    pub(crate) fn install() {
        log::set_logger(&Collect).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    }
}

#[cfg(feature = "tracing")]
mod with_tracing {
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    pub(crate) struct Collect;

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Collect {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            let level = event.metadata().level().as_str();
            super::record(level, event.metadata().target(), message.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    pub(crate) fn install() {
        tracing::subscriber::set_global_default(Collect).unwrap();
    }
}

#[test]
fn messages_become_records_with_target_pidlock() {
    #[cfg(feature = "log")]
    with_log::install();
    #[cfg(feature = "tracing")]
    with_tracing::install();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    fs::write(&path, "garbage").unwrap();
    let mut guard = PidLock::new(&path)
        .signals(Signals::None)
        .acquire()
        .unwrap();
    guard.release().unwrap();

    let pid = std::process::id();
    let expected = [
        format!(
            "WARN Found corrupted PID file {} (not a PID: \"garbage\"). Overwriting...",
            path.display()
        ),
        format!(
            "INFO PID file lock acquired (PID: {pid}): {}",
            path.display()
        ),
        "INFO Releasing PID lock...".to_owned(),
        format!("INFO PID file lock released: {}", path.display()),
    ];
    // Each line once, to one place: the subscriber when `tracing` has one,
    // else the logger; never both, never stderr as well (DESIGN.md, *Messages*).
    let records = RECORDS.lock().unwrap().clone();
    assert_eq!(records, expected, "{records:#?}");
}
