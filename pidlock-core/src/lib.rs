//! Make a program refuse to run twice, with one line.
//!
//! A Telegram bot started twice fights itself: the Bot API allows one
//! `getUpdates` poller per token and answers the second with
//! `409 Conflict: terminated by other getUpdates request`. Daemons, workers
//! and cron jobs that must not overlap have the same problem. With pidlock,
//! the second instance stops at once with a message that says who is running
//! and how to stop it:
//!
//! ```no_run
//! #[pidlock_core::single_instance(path = "data/bot.pid")]
//! fn main() {
//!     // unchanged
//! }
//! ```
//!
//! ```text
//! ERROR - Another instance is already running (PID: 12345).
//!         Only one instance can run at a time.
//!         To stop the existing instance:
//!           kill 12345
//! ```
//!
//! The lock is a kernel `flock` on the PID file: it cannot go stale, because
//! the kernel drops it when the process dies however it dies. The PID written
//! into the file is for people and tools. The file is removed on every exit
//! path the process lives through (return, panic, `std::process::exit`,
//! SIGTERM and friends); after SIGKILL or a power cut the next start finds
//! the stale file, says so, and takes over.
//!
//! The attribute is a thin layer over [`PidLock`], which can be used directly:
//!
//! ```
//! use pidlock_core::{Error, PidLock};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("cron-job.pid");
//! let guard = match PidLock::new(&path).acquire() {
//!     Ok(guard) => guard,
//!     Err(Error::AlreadyRunning { holder, .. }) => {
//!         eprintln!("previous run still going ({holder}), skipping this one");
//!         return Ok(());
//!     }
//!     Err(other) => return Err(other.into()),
//! };
//! // ... the job ...
//! drop(guard); // the file is removed, the lock released
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A program that is not a Rust `main` gets the same lock from the `pidlock`
//! command, `pidlock run data/bot.pid -- python3 bot.py`: the command shares
//! the lock ([`PidFileGuard::share_with`]) and the file names it
//! ([`PidFileGuard::name_holder`]).
//!
//! Features:
//!
//! - `log`, `tracing`: pidlock's lines become records with target `pidlock`
//!   when the program installed a logger or subscriber (each line goes to
//!   one place: a `tracing` subscriber, else a `log` logger, else stderr).
//! - `postgres`, `redis`: the lock across hosts, in PostgreSQL (`PgLock`)
//!   or Redis (`RedisLock`); the attribute's `url` picks the engine by its
//!   scheme (`postgres://`, `redis://`, `rediss://`). The engine's code is
//!   linked only into programs that use `url` or the engine's type.
//! - `telegram` (default): Telegram's 409 "another poller" error recognised
//!   and explained ([`InstanceConflictReport`]).
//! - `teloxide`: a teloxide bot as a single instance with one changed line
//!   ([`teloxide::Dispatcher`]: a clean stop on SIGINT and SIGTERM, the 409
//!   report, `/restart`).

// The layers, bottom up: each module imports (`crate::name`) only modules
// listed before it here, so imports run one way (tests/layers.rs checks it;
// README's "Layout" draws it).
//
// layer: pid, human, error          values and how they read
// layer: sys                        system calls; sys/linux.rs, sys/other.rs
// layer: signal_context             the exit-path table, the handler, atexit
// layer: process, holders           other processes, and who holds a lock
// layer: systemd, messages          what is said, and where
// layer: status                     a lock looked at from outside
// layer: waiting, policy            waiting for and taking over a lock
// layer: remote                     what every lock across hosts shares
// layer: postgres, redis            the engines across hosts
// layer: restart                    keeping the locks across exec
// layer: signals, guard, replace, lockfile   the PID-file lock and its guard
// layer: stop, daemon               a lock acted on from outside
// layer: telegram, entry            bots, and the attribute's entry point
mod daemon;
mod entry;
mod error;
mod guard;
mod holders;
mod human;
mod lockfile;
mod messages;
mod pid;
mod policy;
#[cfg(feature = "postgres")]
mod postgres;
mod process;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod remote;
mod replace;
mod restart;
mod signal_context;
mod signals;
mod status;
mod stop;
mod sys;
mod systemd;
#[cfg(feature = "telegram")]
mod telegram;
mod waiting;

#[cfg(feature = "postgres")]
pub use crate::postgres::{PgGuard, PgLock};
#[cfg(feature = "redis")]
pub use crate::redis::{RedisGuard, RedisLock};
#[cfg(any(feature = "postgres", feature = "redis"))]
pub use crate::remote::{LOST_LOCK_EXIT_CODE, RemoteGuard, fencing_term};
pub use daemon::daemonized;
pub use entry::default_path;
pub use error::{Error, FileKind, Holder, Reader, Result, Service};
pub use guard::{PidFileGuard, held_pid_files};
pub use lockfile::PidLock;
pub use messages::{ErrorReport, LogLevel, ParseLogLevelError};
pub use pid::Pid;
pub use pidlock_macros::single_instance;
pub use policy::OnConflict;
pub use restart::restart;
pub use signals::Signals;
pub use status::{Status, status};
pub use stop::{Escalation, Stop, StopSignal, Stopped, wait_until_free};
pub use systemd::notify_socket;
#[cfg(feature = "telegram")]
pub use telegram::{InstanceConflictReport, is_instance_conflict, teloxide};

/// What `#[single_instance]` expands to. Not a public API: it changes with the
/// macro, which pins this crate's exact version.
#[doc(hidden)]
pub mod __private {
    pub use crate::entry::{Entry, InstanceGuard, RemoteLockAvailable, remote_url};
    pub use crate::messages::LogLevel;
    pub use crate::signals::Signals;
}
