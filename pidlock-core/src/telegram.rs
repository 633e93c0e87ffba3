//! Telegram's "two pollers" error, recognised and explained (SPEC §6).
//!
//! The Bot API allows one `getUpdates` poller per token. A second one makes
//! Telegram answer `409 Conflict: terminated by other getUpdates request;
//! make sure that only one bot instance is running`, and both pollers keep
//! knocking each other off. When a bot's error handler sees that error, the
//! useful question is whether the other poller could have been stopped by
//! the local lock: if this process holds it, the other poller is elsewhere.
//!
//! With the `teloxide` feature, [`InstanceConflictReport`] is also a ready
//! teloxide `ErrorHandler`: one line in a bot's dispatcher.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::messages::{self, Level};
use crate::pid::Pid;
use crate::signal_context;

#[cfg(feature = "teloxide")]
mod teloxide_handler;

/// Markers of the conflict in the forms an error reaches a handler: the API's
/// description (teloxide's `Display`), and teloxide's variant name (`Debug`).
const MARKERS: [&str; 2] = [
    "terminated by other getUpdates request",
    "TerminatedByOtherGetUpdates",
];

/// Whether an error's text is Telegram's "another poller" conflict.
///
/// ```
/// let shown = "A Telegram's error: Conflict: terminated by other getUpdates request; \
///              make sure that only one bot instance is running";
/// assert!(pidlock_core::is_instance_conflict(shown));
/// assert!(!pidlock_core::is_instance_conflict("A network error: connection reset"));
/// ```
#[must_use]
pub fn is_instance_conflict(error: &str) -> bool {
    MARKERS.iter().any(|marker| error.contains(marker))
}

/// Writes the INSTANCE CONFLICT report when an error is Telegram's 409, for a
/// bot's error handler. Keep one per bot: the full report is written the
/// first time, a one-line reminder after, so the log says it once and does
/// not fill up while the conflict lasts.
///
/// ```
/// let report = pidlock_core::InstanceConflictReport::new();
/// // in the update listener's error handler:
/// let error = "A Telegram's error: Conflict: terminated by other getUpdates request; \
///              make sure that only one bot instance is running";
/// if !report.check(error) {
///     eprintln!("polling error: {error}");
/// }
/// ```
#[derive(Debug, Default)]
pub struct InstanceConflictReport {
    seen: AtomicU64,
}

impl InstanceConflictReport {
    /// A report that has seen nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// True if `error` is the conflict, after writing the report (to stderr
    /// and, with the features on, to `log`/`tracing`).
    pub fn check(&self, error: &str) -> bool {
        if !is_instance_conflict(error) {
            return false;
        }
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 {
            let held: Vec<String> = signal_context::owned()
                .iter()
                .map(|held| held.path.display().to_string())
                .collect();
            messages::emit(Level::Error, &report(Pid::current(), &held));
        } else {
            messages::emit(
                Level::Error,
                &format!(
                    "INSTANCE CONFLICT again (seen {seen} times): another getUpdates poller is still using this bot token."
                ),
            );
        }
        true
    }
}

/// The report's text for a process `pid` holding locks on `held`.
fn report(pid: Pid, held: &[String]) -> String {
    const INDENT: &str = "\n        ";
    let mut lines = vec!["INSTANCE CONFLICT: Telegram refused getUpdates because another poller is using this bot token.".to_owned()];
    if held.is_empty() {
        lines.push(format!("This process (PID {pid}) holds no pidlock lock: nothing stops a second copy of it on this host."));
        lines.push("To fix it:".to_owned());
        lines.push("  1. Stop the other poller: another copy on this host (`ps`), another server, a container, an old deployment.".to_owned());
        lines.push("  2. Add #[pidlock_core::single_instance(path = \"data/bot.pid\")] above `main`, so a second copy refuses to start.".to_owned());
    } else {
        lines.push(format!(
            "This process (PID {pid}) holds the local lock on {}.",
            held.join(", ")
        ));
        lines.push("So the other poller is not behind this lock: it runs on another host, in a container with its own".to_owned());
        lines.push("filesystem, with another PID file path, or without pidlock.".to_owned());
        lines.push("To fix it:".to_owned());
        lines.push("  1. Stop the other poller: check other servers, containers and old deployments that use this token.".to_owned());
        lines.push("  2. On one host, give every instance the same PID file path (`path` or its `env` override).".to_owned());
    }
    lines.push("  3. Across hosts, hold the lock in a shared service: #[single_instance(url = \"postgres://...\", key = \"my-bot\")].".to_owned());
    lines.push("  4. If the other poller cannot be found, revoke the token with @BotFather and deploy the new one.".to_owned());
    lines.join(INDENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What teloxide 0.17 shows for the error, through `Display` and `Debug`,
    /// and the API's own description.
    const TELOXIDE_DISPLAY: &str = "A Telegram's error: Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";
    const TELOXIDE_DEBUG: &str = "Api(TerminatedByOtherGetUpdates)";
    const API_BODY: &str = r#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"}"#;

    #[test]
    fn the_conflict_is_recognised_in_every_form_it_arrives_in() {
        for text in [TELOXIDE_DISPLAY, TELOXIDE_DEBUG, API_BODY] {
            assert!(is_instance_conflict(text), "{text}");
        }
    }

    #[test]
    fn other_telegram_errors_are_not_the_conflict() {
        for text in [
            "A Telegram's error: Unauthorized",
            "A network error: error sending request for url (https://api.telegram.org/...)",
            "A Telegram's error: Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            "Retry after 5s",
        ] {
            assert!(!is_instance_conflict(text), "{text}");
        }
    }

    #[test]
    fn a_lock_holder_is_told_the_other_poller_is_elsewhere() {
        let text = report(
            Pid::new(12345).unwrap(),
            &["/srv/bot/data/bot.pid".to_owned()],
        );
        assert!(
            text.contains(
                "This process (PID 12345) holds the local lock on /srv/bot/data/bot.pid."
            ),
            "{text}"
        );
        assert!(
            text.contains("the other poller is not behind this lock"),
            "{text}"
        );
        assert!(text.contains("url = \"postgres://...\""), "{text}");
    }

    #[test]
    fn a_process_without_a_lock_is_told_to_add_one() {
        let text = report(Pid::new(7).unwrap(), &[]);
        assert!(text.contains("holds no pidlock lock"), "{text}");
        assert!(
            text.contains("#[pidlock_core::single_instance(path = \"data/bot.pid\")]"),
            "{text}"
        );
    }

    #[test]
    fn only_the_first_conflict_gets_the_full_report() {
        let report = InstanceConflictReport::new();
        assert!(!report.check("A network error: timed out"));
        assert!(report.check(TELOXIDE_DISPLAY));
        assert!(report.check(TELOXIDE_DISPLAY));
        assert_eq!(report.seen.load(Ordering::Relaxed), 2);
    }
}
