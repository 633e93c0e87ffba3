//! Every message pidlock prints (SPEC §6), and where it goes.
//!
//! Messages always go to stderr: the lock is taken before the program's logger
//! is usually set up, and a conflict must be seen even then. With the `log` or
//! `tracing` feature they are also emitted as records with target `pidlock`.
//! Each message is formatted once and written with a single `write` so lines
//! from concurrent processes on a shared terminal do not interleave.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Holder};
use crate::pid::{Pid, Quote};

/// Continuation lines line up under the text after "ERROR - ".
const INDENT: &str = "\n        ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Warning => "WARNING",
            Self::Info => "INFO",
        }
    }
}

/// Writes `text` to stderr as `LEVEL - text`, and to `log`/`tracing` when enabled.
pub(crate) fn emit(level: Level, text: &str) {
    let line = format!("{} - {text}\n", level.label());
    // Nothing sensible can be done if stderr is closed; the lock still works.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    forward(level, text);
}

#[cfg(feature = "log")]
fn forward_log(level: Level, text: &str) {
    let level = match level {
        Level::Error => log::Level::Error,
        Level::Warning => log::Level::Warn,
        Level::Info => log::Level::Info,
    };
    log::log!(target: "pidlock", level, "{text}");
}

#[cfg(feature = "tracing")]
fn forward_tracing(level: Level, text: &str) {
    match level {
        Level::Error => tracing::error!(target: "pidlock", "{text}"),
        Level::Warning => tracing::warn!(target: "pidlock", "{text}"),
        Level::Info => tracing::info!(target: "pidlock", "{text}"),
    }
}

#[allow(unused_variables)] // without either feature there is nowhere to forward to
fn forward(level: Level, text: &str) {
    #[cfg(feature = "log")]
    forward_log(level, text);
    #[cfg(feature = "tracing")]
    forward_tracing(level, text);
}

pub(crate) fn acquired(pid: Pid) {
    emit(Level::Info, &format!("PID file lock acquired (PID: {pid})"));
}

pub(crate) fn kept_across_restart(pid: Pid) {
    emit(
        Level::Info,
        &format!("PID file lock kept across restart (PID: {pid})"),
    );
}

pub(crate) fn restarting(pid: Pid, executable: &Path) {
    emit(
        Level::Info,
        &format!(
            "Restarting {} with the PID lock held (PID: {pid})...",
            executable.display()
        ),
    );
}

pub(crate) fn releasing() {
    emit(Level::Info, "Releasing PID lock...");
}

pub(crate) fn released() {
    emit(Level::Info, "PID file lock released");
}

/// The two release lines as one constant, for the exit paths that cannot
/// format or allocate (signal handlers, `atexit`).
pub(crate) const RELEASE_LINES: &[u8] =
    b"INFO - Releasing PID lock...\nINFO - PID file lock released\n";

pub(crate) fn stale(pid: Pid, alive: bool) {
    let text = if alive {
        // The PID was reused by an unrelated process: it is running, but it
        // does not hold the lock, so the file is still stale.
        format!(
            "Found stale PID file (PID {pid} is running but does not hold the lock). Removing..."
        )
    } else {
        format!("Found stale PID file (PID {pid} not running). Removing...")
    };
    emit(Level::Warning, &text);
}

pub(crate) fn corrupted(path: &Path, quote: &Quote) {
    emit(
        Level::Warning,
        &format!(
            "Found corrupted PID file {} (not a PID: {quote}). Overwriting...",
            path.display()
        ),
    );
}

/// "500ms", "30s", "1.5s", "5m 3s": how long, for people. Integer
/// arithmetic only: float formatting would add ~17 KB to every binary.
pub(crate) fn duration(duration: Duration) -> String {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    match millis {
        0..1_000 => format!("{millis}ms"),
        1_000..60_000 if millis.is_multiple_of(1_000) => format!("{}s", millis / 1_000),
        1_000..60_000 => format!("{}.{}s", millis / 1_000, millis % 1_000 / 100),
        _ => format!("{}m {}s", millis / 60_000, millis % 60_000 / 1_000),
    }
}

pub(crate) fn waiting(holder: &Holder, timeout: Option<Duration>) {
    let limit = timeout.map_or_else(String::new, |timeout| {
        format!(" (up to {})", duration(timeout))
    });
    emit(
        Level::Info,
        &format!("Another instance is running ({holder}); waiting for it to exit{limit}..."),
    );
}

pub(crate) fn taking_over(pid: Pid, signal: Signal, grace: Duration) {
    let text = if signal == Signal::SIGKILL {
        format!(
            "PID {pid} did not exit within {}; sending SIGKILL...",
            duration(grace)
        )
    } else {
        format!("Another instance is running (PID: {pid}); sending it {signal} to take over...")
    };
    emit(Level::Warning, &text);
}

/// The full report for a lock that was not obtained, with the user's `hint`
/// when the reason is another instance.
#[must_use]
pub(crate) fn failure(error: &Error, hint: Option<&str>) -> String {
    let mut text = match error {
        Error::AlreadyRunning { path, holder } => conflict(
            &format!("Another instance is already running ({holder})."),
            path,
            holder,
        ),
        Error::TimedOut {
            path,
            holder,
            waited,
        } => conflict(
            &format!(
                "Another instance is still running ({holder}) after waiting {}.",
                duration(*waited)
            ),
            path,
            holder,
        ),
        Error::RemoteHeld { host, pid, .. } => {
            let mut text = format!(
                "{}{INDENT}Only one instance can run at a time.",
                sentence(&error.to_string())
            );
            if let Some(pid) = pid {
                let place = host
                    .as_ref()
                    .map_or_else(String::new, |host| format!(", on {host}"));
                text.push_str(&format!(
                    "{INDENT}To stop the existing instance{place}:{INDENT}  kill {pid}"
                ));
            }
            text
        }
        other => return sentence(&other.to_string()),
    };
    if let Some(hint) = hint {
        text.push_str(INDENT);
        text.push_str(hint);
    }
    text
}

/// An error's text as a sentence: capitalised, with a full stop.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        format!("{}{}.", first.to_uppercase(), chars.as_str())
    })
}

fn conflict(headline: &str, path: &Path, holder: &Holder) -> String {
    let mut text = format!("{headline}{INDENT}Only one instance can run at a time.");
    match holder {
        // Only a verified PID is ever offered to `kill`.
        Holder::Kernel { pid, .. } => {
            text.push_str(INDENT);
            text.push_str("To stop the existing instance:");
            text.push_str(&format!("{INDENT}  kill {pid}"));
        }
        Holder::File(_) | Holder::Unknown => {
            text.push_str(&format!(
                "{INDENT}A process holds the lock on {} but cannot be verified from here{}.{INDENT}To find it:{INDENT}  fuser -v {}",
                path.display(),
                if holder.pid().is_some() {
                    " (another user's, or in another PID namespace such as a container)"
                } else {
                    " (it may not have written its PID yet)"
                },
                path.display()
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_report_matches_the_spec_layout() {
        let error = Error::AlreadyRunning {
            path: "data/bot.pid".into(),
            holder: Holder::Kernel {
                pid: Pid::new(12345).unwrap(),
                others: Vec::new(),
            },
        };
        assert_eq!(
            failure(&error, Some("Or use the /restart command from Telegram.")),
            "Another instance is already running (PID: 12345).\n\
             \x20       Only one instance can run at a time.\n\
             \x20       To stop the existing instance:\n\
             \x20         kill 12345\n\
             \x20       Or use the /restart command from Telegram."
        );
    }

    #[test]
    fn durations_read_like_the_attribute_values() {
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_secs(303)), "5m 3s");
    }

    #[test]
    fn unknown_holder_says_how_to_find_it() {
        let error = Error::AlreadyRunning {
            path: "/run/bot.pid".into(),
            holder: Holder::Unknown,
        };
        let text = failure(&error, None);
        assert!(text.starts_with("Another instance is already running (PID unknown)."));
        assert!(text.ends_with("fuser -v /run/bot.pid"));
        assert!(!text.contains("kill"));
    }

    #[test]
    fn an_unverified_pid_is_never_offered_to_kill() {
        let error = Error::AlreadyRunning {
            path: "/srv/data/bot.pid".into(),
            holder: Holder::File(Pid::new(1).unwrap()),
        };
        let text = failure(&error, None);
        assert!(
            text.starts_with(
                "Another instance is already running (PID unknown; the PID file says 1)."
            ),
            "{text}"
        );
        assert!(text.contains("another PID namespace"), "{text}");
        assert!(!text.contains("kill"), "{text}");
    }
}
