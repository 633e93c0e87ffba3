//! Telegram's "two pollers" error, recognised and explained.
//!
//! The Bot API allows one `getUpdates` poller per token. A second one makes
//! Telegram answer `409 Conflict: terminated by other getUpdates request;
//! make sure that only one bot instance is running`, and both pollers keep
//! knocking each other off. When a bot's error handler sees that error, the
//! useful question is whether the other poller could have been stopped by
//! the lock this process holds: if it holds one, the other poller is
//! elsewhere, and the report says where to look.
//!
//! The error reaches only the update listener's error handler, never the
//! handlers' (the dispatcher's `error_handler`). With the `teloxide`
//! feature, [`teloxide::Dispatcher`] puts the report there for a bot, and
//! [`InstanceConflictReport::handler`] is that error handler for a program
//! that builds its own listener.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::messages::{self, Level};
use crate::pid::Pid;
use crate::signal_context;

#[cfg(feature = "teloxide")]
mod dispatch;
#[cfg(feature = "teloxide")]
mod teloxide_handler;

pub mod teloxide {
    //! A teloxide bot that runs as a single instance, with one changed line
    //! (feature `teloxide`).
    //!
    //! Put the attribute above `main`, and start the dispatcher from this
    //! module's [`Dispatcher`] instead of teloxide's; everything else stays as
    //! teloxide's examples write it:
    //!
    //! ```no_run
    //! # #[cfg(feature = "teloxide")] mod bot {
    //! use teloxide::prelude::*;
    //!
    //! #[pidlock_core::single_instance(path = "data/bot.pid")]
    //! #[tokio::main]
    //! # pub
    //! async fn main() {
    //!     let bot = Bot::from_env();
    //!     let handler = Update::filter_message().endpoint(|bot: Bot, msg: Message| async move {
    //!         bot.send_message(msg.chat.id, "pong").await?;
    //!         respond(())
    //!     });
    //!     pidlock_core::teloxide::Dispatcher::builder(bot, handler) // the changed line
    //!         .enable_ctrlc_handler()
    //!         .build()
    //!         .dispatch()
    //!         .await;
    //! }
    //! # }
    //! # fn main() {}
    //! ```
    //!
    //! [`Dispatcher::dispatch`] then:
    //!
    //! - stops the bot cleanly on SIGINT (Ctrl-C) and SIGTERM (`systemctl
    //!   stop`, `docker stop`, `pidlock stop`), under load too: the update
    //!   listener stops, the updates already fetched are handled and confirmed
    //!   to Telegram (none is delivered twice), and `main` returns, which
    //!   releases the lock. A second signal while stopping exits at once.
    //! - writes the INSTANCE CONFLICT report when Telegram answers `getUpdates`
    //!   with 409 (another poller uses the token): once in full, then a line
    //!   per 409. Other listener errors are logged as teloxide logs them.
    //! - restarts the bot in place, keeping the lock (see
    //!   [`crate::restart`]), when a handler asks for it through [`Restart`].
    //!
    //! The pidlock-core dependency needs the `teloxide` feature, which also
    //! turns on the tokio features this needs:
    //! `pidlock-core = { version = "0.1", features = ["teloxide"] }`.

    pub use super::ListenerErrorHandler;
    #[cfg(feature = "teloxide")]
    pub use super::dispatch::{Dispatcher, DispatcherBuilder, Restart};
    #[cfg(feature = "teloxide")]
    pub use super::teloxide_handler::UpdateListenerErrors;
}

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

    /// The report as a teloxide update listener's error handler (feature
    /// `teloxide`), for a program that builds its own listener. Other
    /// listener errors are logged as teloxide's `dispatch()` logs them. A
    /// bot that starts from [`teloxide::Dispatcher`] has it already.
    ///
    /// ```no_run
    /// # #[cfg(feature = "teloxide")] mod bot {
    /// # use teloxide::prelude::*;
    /// # async fn run(bot: Bot, mut dispatcher: Dispatcher<Bot, teloxide::RequestError, teloxide::dispatching::DefaultKey>) {
    /// use pidlock_core::InstanceConflictReport;
    ///
    /// let listener = teloxide::update_listeners::polling_default(bot).await;
    /// dispatcher
    ///     .dispatch_with_listener(listener, InstanceConflictReport::handler())
    ///     .await;
    /// # }
    /// # }
    /// ```
    ///
    /// It is the listener's handler only: passed to the dispatcher's
    /// `error_handler`, which sees the handlers' errors and never the 409,
    /// it does not compile, and the compiler says what to do instead (see
    /// [`teloxide::ListenerErrorHandler`]).
    #[must_use]
    pub fn handler<H: ListenerErrorHandler>() -> H {
        H::new_handler()
    }

    /// True if `error` is the conflict, after writing the report (to stderr
    /// and, with the features on, to `log`/`tracing`).
    pub fn check(&self, error: &str) -> bool {
        if !is_instance_conflict(error) {
            return false;
        }
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 {
            messages::emit(Level::Error, &report(Pid::current(), &Holds::now()));
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

/// What [`InstanceConflictReport::handler`] returns: the update listener's
/// error handler, `Arc<UpdateListenerErrors>` (feature `teloxide`).
///
/// Nothing else implements it, so that the handler cannot be passed where
/// Telegram's 409 never arrives. teloxide's `DispatcherBuilder::error_handler`
/// takes the handlers' error hook; given `InstanceConflictReport::handler()`,
/// the program does not compile, and the error says where the report goes.
/// Without pidlock-core's `teloxide` feature the error names the feature.
#[cfg_attr(
    feature = "teloxide",
    diagnostic::on_unimplemented(
        message = "`InstanceConflictReport::handler()` is the update listener's error handler, not `{Self}`",
        label = "the dispatcher's `error_handler` sees the handlers' errors only; Telegram's 409 never reaches it",
        note = "drop this `error_handler`: `pidlock_core::teloxide::Dispatcher::builder(bot, handler)`, in place of teloxide's `Dispatcher::builder`, reports the 409 from the update listener",
        note = "with an update listener of your own: `dispatcher.dispatch_with_listener(listener, InstanceConflictReport::handler())`"
    )
)]
#[cfg_attr(
    not(feature = "teloxide"),
    diagnostic::on_unimplemented(
        message = "`InstanceConflictReport::handler()` is a teloxide error handler, which needs pidlock-core's `teloxide` feature",
        label = "needs the `teloxide` feature",
        note = "in Cargo.toml: pidlock-core = {{ version = \"0.1\", features = [\"teloxide\"] }}"
    )
)]
pub trait ListenerErrorHandler: sealed::Sealed {
    #[doc(hidden)]
    fn new_handler() -> Self
    where
        Self: Sized;
}

/// Keeps [`ListenerErrorHandler`] to the one type this crate gives it.
mod sealed {
    pub trait Sealed {}
}

/// What this process holds, as the report names it.
#[derive(Debug, Default)]
struct Holds {
    /// Each PID file this process owns: its absolute path, and the working
    /// directory it was resolved in when it was given relative.
    files: Vec<(PathBuf, Option<PathBuf>)>,
    /// The fencing term of the cross-host lock, when one is held.
    cross_host: Option<u64>,
}

impl Holds {
    fn now() -> Self {
        Self {
            files: signal_context::owned()
                .iter()
                .map(|held| (held.path.clone(), held.resolved_in.clone()))
                .collect(),
            cross_host: cross_host_term(),
        }
    }
}

/// The term of the cross-host lock this process holds, if any.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn cross_host_term() -> Option<u64> {
    crate::remote::fencing_term()
}

#[cfg(not(any(feature = "postgres", feature = "redis")))]
fn cross_host_term() -> Option<u64> {
    None
}

/// The report's text for a process `pid` holding `holds`.
fn report(pid: Pid, holds: &Holds) -> String {
    const INDENT: &str = "\n        ";
    let mut lines = vec!["INSTANCE CONFLICT: Telegram refused getUpdates because another poller is using this bot token.".to_owned()];
    let files: Vec<String> = holds
        .files
        .iter()
        .map(|(path, _)| path.display().to_string())
        .collect();
    let relative = holds
        .files
        .iter()
        .any(|(_, resolved_in)| resolved_in.is_some());
    match (holds.cross_host, files.is_empty()) {
        (None, true) => {
            lines.push(format!("This process (PID {pid}) holds no pidlock lock: nothing stops a second copy of it on this host."));
            lines.push("To fix it:".to_owned());
            lines.push("  1. Stop the other poller: another copy on this host (`ps`), another server, a container, an old deployment.".to_owned());
            lines.push("  2. Add #[pidlock_core::single_instance(path = \"data/bot.pid\")] above `main`, so a second copy refuses to start.".to_owned());
            lines.push(ACROSS_HOSTS.to_owned());
        }
        (None, false) => {
            lines.push(format!(
                "This process (PID {pid}) holds the local lock on {}.",
                files.join(", ")
            ));
            lines.extend(relative_lines(holds));
            lines.push("So the other poller is not behind this lock: it runs on another host, in a container with its own".to_owned());
            lines.push("filesystem, with another PID file path, or without pidlock.".to_owned());
            lines.push("To fix it:".to_owned());
            lines.push(STOP_IT.to_owned());
            lines.push(if relative {
                "  2. On one host, give every instance the same PID file: an absolute `path`, the `env` override, or one working directory (systemd's WorkingDirectory=).".to_owned()
            } else {
                "  2. On one host, give every instance the same PID file path (`path` or its `env` override).".to_owned()
            });
            lines.push(ACROSS_HOSTS.to_owned());
        }
        (Some(term), _) => {
            let local = if files.is_empty() {
                String::new()
            } else {
                format!(" and the local lock on {}", files.join(", "))
            };
            lines.push(format!(
                "This process (PID {pid}) holds the cross-host lock (fencing term {term}){local}."
            ));
            lines.extend(relative_lines(holds));
            lines.push("So the other poller does not take the same cross-host lock: it uses another `url` or `key`, or runs".to_owned());
            lines.push("without pidlock (an old deployment, a copy started by hand, another program with this token).".to_owned());
            lines.push("To fix it:".to_owned());
            lines.push(STOP_IT.to_owned());
            lines.push("  2. Give every instance the same `url` and `key`, so a second one is refused or waits.".to_owned());
        }
    }
    lines.push(format!(
        "  {}. If the other poller cannot be found, revoke the token with @BotFather and deploy the new one.",
        if holds.cross_host.is_some() { 3 } else { 4 }
    ));
    lines.join(INDENT)
}

const STOP_IT: &str = "  1. Stop the other poller: check other servers, containers and old deployments that use this token.";
const ACROSS_HOSTS: &str = "  3. Across hosts, hold the lock in a shared service: #[single_instance(url = \"postgres://...\" or \"redis://...\", key = \"my-bot\")].";

/// For each file given as a relative path: which working directory made it,
/// since the same path from another directory is another lock.
fn relative_lines(holds: &Holds) -> impl Iterator<Item = String> + '_ {
    holds.files.iter().filter_map(|(path, resolved_in)| {
        let dir = resolved_in.as_ref()?;
        let given = path.strip_prefix(dir).unwrap_or(path);
        Some(format!(
            "{} is the relative path {} in the working directory {}: a copy started from another directory locks another file.",
            path.display(),
            given.display(),
            dir.display()
        ))
    })
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

    fn pid() -> Pid {
        Pid::new(12345).unwrap()
    }

    #[test]
    fn a_lock_holder_is_told_the_other_poller_is_elsewhere() {
        let holds = Holds {
            files: vec![(PathBuf::from("/srv/bot/data/bot.pid"), None)],
            cross_host: None,
        };
        assert_eq!(
            report(pid(), &holds),
            "INSTANCE CONFLICT: Telegram refused getUpdates because another poller is using this bot token.
        This process (PID 12345) holds the local lock on /srv/bot/data/bot.pid.
        So the other poller is not behind this lock: it runs on another host, in a container with its own
        filesystem, with another PID file path, or without pidlock.
        To fix it:
          1. Stop the other poller: check other servers, containers and old deployments that use this token.
          2. On one host, give every instance the same PID file path (`path` or its `env` override).
          3. Across hosts, hold the lock in a shared service: #[single_instance(url = \"postgres://...\" or \"redis://...\", key = \"my-bot\")].
          4. If the other poller cannot be found, revoke the token with @BotFather and deploy the new one."
        );
    }

    #[test]
    fn a_relative_path_names_the_working_directory_that_resolved_it() {
        let holds = Holds {
            files: vec![(
                PathBuf::from("/home/me/bot/data/bot.pid"),
                Some(PathBuf::from("/home/me/bot")),
            )],
            cross_host: None,
        };
        assert_eq!(
            report(pid(), &holds),
            "INSTANCE CONFLICT: Telegram refused getUpdates because another poller is using this bot token.
        This process (PID 12345) holds the local lock on /home/me/bot/data/bot.pid.
        /home/me/bot/data/bot.pid is the relative path data/bot.pid in the working directory /home/me/bot: a copy started from another directory locks another file.
        So the other poller is not behind this lock: it runs on another host, in a container with its own
        filesystem, with another PID file path, or without pidlock.
        To fix it:
          1. Stop the other poller: check other servers, containers and old deployments that use this token.
          2. On one host, give every instance the same PID file: an absolute `path`, the `env` override, or one working directory (systemd's WorkingDirectory=).
          3. Across hosts, hold the lock in a shared service: #[single_instance(url = \"postgres://...\" or \"redis://...\", key = \"my-bot\")].
          4. If the other poller cannot be found, revoke the token with @BotFather and deploy the new one."
        );
    }

    #[test]
    fn a_process_holding_only_the_cross_host_lock_says_so() {
        let holds = Holds {
            files: Vec::new(),
            cross_host: Some(7),
        };
        assert_eq!(
            report(pid(), &holds),
            "INSTANCE CONFLICT: Telegram refused getUpdates because another poller is using this bot token.
        This process (PID 12345) holds the cross-host lock (fencing term 7).
        So the other poller does not take the same cross-host lock: it uses another `url` or `key`, or runs
        without pidlock (an old deployment, a copy started by hand, another program with this token).
        To fix it:
          1. Stop the other poller: check other servers, containers and old deployments that use this token.
          2. Give every instance the same `url` and `key`, so a second one is refused or waits.
          3. If the other poller cannot be found, revoke the token with @BotFather and deploy the new one."
        );
    }

    #[test]
    fn a_process_holding_both_locks_names_both() {
        let holds = Holds {
            files: vec![(PathBuf::from("/srv/bot/data/bot.pid"), None)],
            cross_host: Some(3),
        };
        let text = report(pid(), &holds);
        assert!(
            text.contains("This process (PID 12345) holds the cross-host lock (fencing term 3) and the local lock on /srv/bot/data/bot.pid.\n"),
            "{text}"
        );
        assert!(!text.contains("Across hosts, hold the lock"), "{text}");
    }

    #[test]
    fn a_process_without_a_lock_is_told_to_add_one() {
        assert_eq!(
            report(pid(), &Holds::default()),
            "INSTANCE CONFLICT: Telegram refused getUpdates because another poller is using this bot token.
        This process (PID 12345) holds no pidlock lock: nothing stops a second copy of it on this host.
        To fix it:
          1. Stop the other poller: another copy on this host (`ps`), another server, a container, an old deployment.
          2. Add #[pidlock_core::single_instance(path = \"data/bot.pid\")] above `main`, so a second copy refuses to start.
          3. Across hosts, hold the lock in a shared service: #[single_instance(url = \"postgres://...\" or \"redis://...\", key = \"my-bot\")].
          4. If the other poller cannot be found, revoke the token with @BotFather and deploy the new one."
        );
    }

    /// The report reads the locks this process really holds: a file given
    /// relative comes with the working directory it was resolved in.
    #[test]
    fn the_report_names_the_held_files_and_where_a_relative_one_was_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let working_dir = std::env::current_dir().unwrap();
        // The temporary directory, reached from the working directory.
        let up = "../".repeat(working_dir.components().count() - 1);
        let relative = PathBuf::from(format!("{up}{}", dir.path().join("relative.pid").display()));
        let absolute = dir.path().join("absolute.pid");
        let quiet = |path: &PathBuf| {
            crate::PidLock::new(path)
                .signals(crate::Signals::None)
                .log_level(crate::LogLevel::Error)
                .acquire()
                .unwrap()
        };
        let (_relative, _absolute) = (quiet(&relative), quiet(&absolute));
        let files = Holds::now().files;
        assert!(files.contains(&(absolute.clone(), None)), "{files:?}");
        let (path, resolved_in) = files
            .iter()
            .find(|(path, _)| path.ends_with("relative.pid") && path.starts_with(&working_dir))
            .unwrap_or_else(|| panic!("{files:?}"));
        assert_eq!(resolved_in.as_deref(), Some(working_dir.as_path()));
        assert_eq!(path.strip_prefix(&working_dir).unwrap(), relative);
    }

    /// With the cross-host lock held and no PID file, the report says the
    /// process holds that lock (it used to say "holds no pidlock lock").
    #[cfg(feature = "postgres")]
    #[test]
    fn the_report_sees_the_cross_host_lock() {
        let url = std::env::var("PIDLOCK_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let guard = match crate::PgLock::new(&url, "pidlock-telegram-report-test")
            .log_level(crate::LogLevel::Error)
            .acquire()
        {
            Ok(guard) => guard,
            Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: no PostgreSQL at {url}: {error}");
                return;
            }
            Err(error) => panic!("CI=true and no PostgreSQL at {url}: {error}"),
        };
        let holds = Holds::now();
        assert_eq!(holds.cross_host, Some(guard.term()));
        let text = report(pid(), &holds);
        assert!(
            text.contains(&format!(
                "holds the cross-host lock (fencing term {})",
                guard.term()
            )),
            "{text}"
        );
        assert!(!text.contains("holds no pidlock lock"), "{text}");
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
