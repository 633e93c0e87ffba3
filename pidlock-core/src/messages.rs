//! Every message pidlock prints, and where it goes (DESIGN.md, *Messages*).
//!
//! A message goes to exactly one place: the installed `tracing` subscriber
//! (the `tracing` feature), else the installed `log` logger (the `log`
//! feature), else stderr — which is where it goes before the program sets
//! up its logger, as it usually does after the lock is taken. Each stderr
//! message is formatted once and written with a single `write` so lines from
//! concurrent processes on a shared terminal do not interleave.
//!
//! INFO and WARNING lines can be quieted ([`LogLevel`]: the attribute's
//! `log` key, [`PidLock::log_level`](crate::PidLock::log_level), or
//! `PIDLOCK_LOG=warn|error` in the environment); errors are always shown.

use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Holder, Reader};
use crate::human;
use crate::pid::{Pid, Quote};
use crate::signal_context::ExitLines;

/// Continuation lines line up under the text after "ERROR - ".
const INDENT: &str = "\n        ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    /// The syslog priority journald reads from a `<N>` line prefix.
    fn priority(self) -> &'static str {
        match self {
            Self::Error => "<3>",
            Self::Warning => "<4>",
            Self::Info => "<6>",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Warning => "WARNING",
            Self::Info => "INFO",
        }
    }
}

/// The least severe messages pidlock shows. Errors are always shown.
///
/// The environment variable `PIDLOCK_LOG` (`info`, `warn`, `error`), when set
/// to one of these, wins over what the program configured, so an operator
/// can quiet (or bring back) the lines without a rebuild.
///
/// ```
/// use pidlock_core::{LogLevel, PidLock};
///
/// // Only warnings (stale or corrupted file) and errors:
/// let lock = PidLock::new("/tmp/example-quiet.pid").log_level(LogLevel::Warn);
/// # let _ = lock;
/// assert_eq!("warn".parse::<LogLevel>(), Ok(LogLevel::Warn));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Everything: acquired, released, waiting, and the warnings (the default).
    #[default]
    Info,
    /// Warnings (stale or corrupted file, taking over) and errors.
    Warn,
    /// Errors only.
    Error,
}

impl LogLevel {
    /// The environment variable that overrides the configured level.
    pub const ENV: &'static str = "PIDLOCK_LOG";

    /// This level, unless `PIDLOCK_LOG` names another.
    pub(crate) fn effective(self) -> Self {
        std::env::var(Self::ENV)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(self)
    }

    /// Whether a message at `level` is shown.
    pub(crate) fn shows(self, level: Level) -> bool {
        match level {
            Level::Error => true,
            Level::Warning => self <= Self::Warn,
            Level::Info => self == Self::Info,
        }
    }
}

/// The error of parsing a [`LogLevel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLogLevelError;

impl std::fmt::Display for ParseLogLevelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("expected one of: info, warn, error")
    }
}

impl std::error::Error for ParseLogLevelError {}

impl FromStr for LogLevel {
    type Err = ParseLogLevelError;

    /// `info`, `warn` (or `warning`), `error`, in any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let is = |name: &str| text.eq_ignore_ascii_case(name);
        if is("info") {
            Ok(Self::Info)
        } else if is("warn") || is("warning") {
            Ok(Self::Warn)
        } else if is("error") {
            Ok(Self::Error)
        } else {
            Err(ParseLogLevelError)
        }
    }
}

/// Writes `text` at `level` to the installed subscriber or logger if there
/// is one, else to stderr as `LEVEL - text`.
pub(crate) fn emit(level: Level, text: &str) {
    if forward(level, text) {
        return;
    }
    let line = stderr_lines(level, text);
    // Nothing sensible can be done if stderr is closed; the lock still works.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `LEVEL - text` and a newline; when stderr is the journal, every line
/// (continuation lines too) starts with the level's syslog priority.
fn stderr_lines(level: Level, text: &str) -> String {
    let text = format!("{} - {text}\n", level.label());
    if !crate::systemd::stderr_is_journal() {
        return text;
    }
    let mut prefixed = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        prefixed.push_str(level.priority());
        prefixed.push_str(line);
        prefixed.push('\n');
    }
    prefixed
}

/// Hands the message to `tracing` if a subscriber is installed (globally or
/// for this thread).
#[cfg(feature = "tracing")]
fn forward_tracing(level: Level, text: &str) -> bool {
    let installed = tracing::dispatcher::get_default(|dispatch| {
        !dispatch.is::<tracing::subscriber::NoSubscriber>()
    });
    if installed {
        match level {
            Level::Error => tracing::error!(target: "pidlock", "{text}"),
            Level::Warning => tracing::warn!(target: "pidlock", "{text}"),
            Level::Info => tracing::info!(target: "pidlock", "{text}"),
        }
    }
    installed
}

/// Hands the message to `log` if a logger is installed: `log` offers no way
/// to ask, but its maximum level stays `Off` until a logger sets it.
#[cfg(feature = "log")]
fn forward_log(level: Level, text: &str) -> bool {
    if log::max_level() == log::LevelFilter::Off {
        return false;
    }
    let level = match level {
        Level::Error => log::Level::Error,
        Level::Warning => log::Level::Warn,
        Level::Info => log::Level::Info,
    };
    log::log!(target: "pidlock", level, "{text}");
    true
}

/// True if a logger took the message.
#[allow(unused_variables)] // without either feature there is nowhere to forward to
fn forward(level: Level, text: &str) -> bool {
    #[cfg(feature = "tracing")]
    if forward_tracing(level, text) {
        return true;
    }
    #[cfg(feature = "log")]
    if forward_log(level, text) {
        return true;
    }
    false
}

pub(crate) fn acquired(pid: Pid, path: &Path) {
    emit(
        Level::Info,
        &format!("PID file lock acquired (PID: {pid}): {}", path.display()),
    );
}

pub(crate) fn kept_across_restart(pid: Pid, path: &Path) {
    emit(
        Level::Info,
        &format!(
            "PID file lock kept across restart (PID: {pid}): {}",
            path.display()
        ),
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

pub(crate) fn released(path: &Path) {
    emit(
        Level::Info,
        &format!("PID file lock released: {}", path.display()),
    );
}

/// The lines the exit paths write for `path`, prepared when the lock is
/// taken: signal handlers and `atexit` cannot format or allocate, so they
/// write these to stderr as they are.
pub(crate) fn exit_lines(path: &Path) -> ExitLines {
    let releasing = stderr_lines(Level::Info, "Releasing PID lock...");
    let mut released = releasing.clone();
    released.push_str(&stderr_lines(
        Level::Info,
        &format!("PID file lock released: {}", path.display()),
    ));
    let mut kept = releasing;
    kept.push_str(&stderr_lines(Level::Info, &kept_text(path, None)));
    ExitLines {
        released: released.into_bytes().into_boxed_slice(),
        kept: kept.into_bytes().into_boxed_slice(),
    }
}

/// The owner let go while other processes still share the lock.
pub(crate) fn kept_for_sharers(path: &Path, sharer: Option<Pid>) {
    emit(Level::Info, &kept_text(path, sharer));
}

fn kept_text(path: &Path, sharer: Option<Pid>) -> String {
    match sharer {
        Some(pid) => format!(
            "PID file kept: PID {pid} (forked from this process) still holds the lock on {}",
            path.display()
        ),
        None => format!(
            "PID file kept: a process forked from this one still holds the lock on {}",
            path.display()
        ),
    }
}

/// A start replaced a file that readers alone held.
pub(crate) fn replaced(path: &Path, readers: &[Reader]) {
    let mut text = format!(
        "Found PID file {} held by readers, not by a running instance",
        path.display()
    );
    for (index, reader) in readers.iter().enumerate() {
        text.push_str(if index == 0 { " (" } else { ", " });
        text.push_str(&reader.to_string());
    }
    if !readers.is_empty() {
        text.push(')');
    }
    text.push_str(". Replaced it with a new file.");
    emit(Level::Warning, &text);
}

pub(crate) fn stale(path: &Path, pid: Pid, alive: bool) {
    let text = if alive {
        // The PID was reused by an unrelated process: it is running, but it
        // does not hold the lock, so the file is still stale.
        format!(
            "Found stale PID file {} (PID {pid} is running but does not hold the lock). Removing...",
            path.display()
        )
    } else {
        format!(
            "Found stale PID file {} (PID {pid} not running). Removing...",
            path.display()
        )
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

/// The holder line of `systemctl status` (`STATUS=`) and `pidlock status`.
pub(crate) fn holding_status(pid: Pid, path: &Path) -> String {
    format!("PID {pid} holds the lock on {}", path.display())
}

/// `STATUS=` of a standby.
pub(crate) fn waiting_status(path: &Path, holder: &Holder) -> String {
    format!(
        "Waiting for the lock on {}, held by {holder}",
        path.display()
    )
}

pub(crate) fn waiting(holder: &Holder, timeout: Option<Duration>) {
    let limit = timeout.map_or_else(String::new, |timeout| {
        format!(" (up to {})", human::duration(timeout))
    });
    emit(
        Level::Info,
        &format!("Another instance is running ({holder}); waiting for it to exit{limit}..."),
    );
}

/// A waiting start before it waits for readers of a file that cannot be
/// replaced here.
pub(crate) fn waiting_for_readers(path: &Path, timeout: Option<Duration>) {
    let limit = timeout.map_or_else(String::new, |timeout| {
        format!(" (up to {})", human::duration(timeout))
    });
    emit(
        Level::Info,
        &format!(
            "No instance is running, but readers hold {} and it cannot be replaced here; waiting for them to let go{limit}...",
            path.display()
        ),
    );
}

pub(crate) fn taking_over(pid: Pid, signal: Signal, grace: Duration) {
    let text = if signal == Signal::SIGKILL {
        format!(
            "PID {pid} did not exit within {}; sending SIGKILL...",
            human::duration(grace)
        )
    } else {
        format!("Another instance is running (PID: {pid}); sending it {signal} to take over...")
    };
    emit(Level::Warning, &text);
}

impl Error {
    /// This error as `#[single_instance]` reports it when it cannot take
    /// the lock: for a program (or a wrapper, as `pidlock run` is) that
    /// takes the lock itself and must say why it did not start in the same
    /// words, with the same priority and in the same place.
    ///
    /// ```
    /// use pidlock_core::{Error, Holder, Pid};
    ///
    /// let error = Error::AlreadyRunning {
    ///     path: "/var/lib/bot/bot.pid".into(),
    ///     holder: Holder::Kernel { pid: Pid::new(12345).unwrap(), others: Vec::new(), ns_pid: None },
    /// };
    /// assert_eq!(
    ///     error.report().hint("Or use /restart in the chat.").to_string(),
    ///     "Another instance is already running (PID: 12345).
    ///         Only one instance can run at a time.
    ///         PID file: /var/lib/bot/bot.pid
    ///         To stop the existing instance:
    ///           kill 12345
    ///         Or use /restart in the chat."
    /// );
    /// ```
    pub fn report(&self) -> ErrorReport<'_> {
        ErrorReport {
            error: self,
            hint: None,
        }
    }
}

/// An [`Error`] as `#[single_instance]` reports it (see
/// [`Error::report`]). Its `Display` is the text after `ERROR - `: for a
/// conflict, the holder, the PID file and how to stop the holder, on lines
/// indented to line up under the first; for other errors, one sentence.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct ErrorReport<'a> {
    error: &'a Error,
    hint: Option<&'a str>,
}

impl<'a> ErrorReport<'a> {
    /// An extra line at the end of a conflict report (the attribute's
    /// `hint`): how else to reach the running instance.
    pub fn hint(self, hint: &'a str) -> Self {
        Self {
            hint: Some(hint),
            ..self
        }
    }

    /// Writes the report where pidlock writes its own lines: to the
    /// installed `tracing` subscriber or `log` logger (with the features of
    /// those names), else to stderr as `ERROR - ...`, each line with the
    /// `<3>` priority prefix when stderr is the journal. Under systemd, the
    /// service's status becomes `Not started: ...` too.
    pub fn emit(&self) {
        emit(Level::Error, &self.to_string());
        crate::systemd::notify(&format!("STATUS=Not started: {}", self.error));
    }
}

impl std::fmt::Display for ErrorReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&failure(self.error, self.hint))
    }
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
                human::duration(*waited)
            ),
            path,
            holder,
        ),
        Error::RemoteHeld { host, pid, .. } | Error::RemoteTimedOut { host, pid, .. } => {
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

/// An error's text as a sentence: capitalised, with a full stop. Our texts
/// start with an English word or an absolute path, so only an ASCII letter
/// is ever raised (and Unicode's case tables stay out of the binary).
fn sentence(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let mut sentence = format!("{text}.");
    if let Some(first) = sentence.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    sentence
}

fn conflict(headline: &str, path: &Path, holder: &Holder) -> String {
    let mut text = format!(
        "{headline}{INDENT}Only one instance can run at a time.{INDENT}PID file: {}",
        path.display()
    );
    if let Some(user) = foreign_owner(path) {
        text.push_str(&format!(" (owned by user {user})"));
    }
    match holder {
        // Only a verified PID is ever offered to `kill`.
        Holder::Kernel { pid, .. } => {
            text.push_str(INDENT);
            text.push_str("To stop the existing instance:");
            text.push_str(&format!("{INDENT}  kill {pid}"));
        }
        Holder::File(_) | Holder::Taker(_) | Holder::Unknown => {
            text.push_str(&format!(
                "{INDENT}A process holds the lock on {} but cannot be verified from here{}.{INDENT}To find it:{INDENT}  fuser -v {}",
                path.display(),
                match holder {
                    Holder::Taker(_) => " (the file is another user's, and only it and root may open it)",
                    Holder::File(_) => " (another user's, or in another PID namespace such as a container)",
                    _ => " (it may not have written its PID yet)",
                },
                path.display()
            ));
        }
    }
    text
}

/// The owner of `path`, if it is not the user we run as: the instance is
/// another user's.
fn foreign_owner(path: &Path) -> Option<String> {
    let owner = nix::sys::stat::stat(path).ok()?.st_uid;
    if owner == nix::unistd::geteuid().as_raw() {
        return None;
    }
    Some(crate::error::user_name(owner))
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
                ns_pid: None,
            },
        };
        assert_eq!(
            failure(&error, Some("Or use the /restart command from Telegram.")),
            "Another instance is already running (PID: 12345).\n\
             \x20       Only one instance can run at a time.\n\
             \x20       PID file: data/bot.pid\n\
             \x20       To stop the existing instance:\n\
             \x20         kill 12345\n\
             \x20       Or use the /restart command from Telegram."
        );
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
                "Another instance is already running (PID: 1 per its PID file, not verified)."
            ),
            "{text}"
        );
        assert!(text.contains("another PID namespace"), "{text}");
        assert!(!text.contains("kill"), "{text}");
    }
}
