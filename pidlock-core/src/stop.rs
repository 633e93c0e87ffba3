//! Stopping an instance from outside, and waiting for it to go: what the
//! `pidlock` command's `stop` and `wait` run, for scripts and supervisors.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Error, Holder, Result};
use crate::holders::{self, Holders};
use crate::pid::Pid;
use crate::policy::AFTER_SIGKILL;
use crate::process::Pinned;
use crate::status::{Look, Status, file_pid, look, open_existing, still_named};
use crate::sys::{self, Identity};
use crate::waiting::{self, Waited};

/// How [`Stop::run`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// No instance held the lock (there may be a stale file).
    NotRunning,
    /// The instance let go after the signal: `pid`, and every process that
    /// shared its lock, exited or released it. `now_held_by` is whoever
    /// holds the lock since (a standby that took over), if anyone.
    Exited {
        /// The instance's holder that was signalled.
        pid: Pid,
        /// The lock's holder now, if any.
        now_held_by: Option<Holder>,
    },
    /// The instance ignored the signal and was killed (the holder and every
    /// process sharing its lock that still held it).
    Killed {
        /// The instance's holder that was signalled.
        pid: Pid,
        /// The lock's holder now, if any.
        now_held_by: Option<Holder>,
    },
    /// The instance still holds the lock after the timeout (and no SIGKILL
    /// was asked for, or it survived SIGKILL: stuck in uninterruptible I/O).
    StillRunning(Pid),
}

/// The signal [`Stop`] asks the holder to exit with.
///
/// ```
/// use pidlock_core::StopSignal;
///
/// // A framework that shuts down gracefully on Ctrl-C only:
/// assert_eq!("INT".parse::<StopSignal>(), Ok(StopSignal::Int));
/// assert_eq!("SIGTERM".parse::<StopSignal>(), Ok(StopSignal::Term));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM, what `systemctl stop`, `docker stop` and `kill` send.
    #[default]
    Term,
    /// SIGINT, Ctrl-C: for programs that shut down gracefully only on it.
    Int,
    /// SIGHUP.
    Hup,
    /// SIGQUIT.
    Quit,
}

impl StopSignal {
    fn signal(self) -> Signal {
        match self {
            Self::Term => Signal::SIGTERM,
            Self::Int => Signal::SIGINT,
            Self::Hup => Signal::SIGHUP,
            Self::Quit => Signal::SIGQUIT,
        }
    }
}

impl std::str::FromStr for StopSignal {
    type Err = String;

    /// `TERM`, `INT`, `HUP`, `QUIT`, with or without `SIG`, in any case.
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let upper = text.to_ascii_uppercase();
        match upper.strip_prefix("SIG").unwrap_or(&upper) {
            "TERM" => Ok(Self::Term),
            "INT" => Ok(Self::Int),
            "HUP" => Ok(Self::Hup),
            "QUIT" => Ok(Self::Quit),
            _ => Err(format!(
                "unknown signal {text:?}; expected TERM, INT, HUP or QUIT"
            )),
        }
    }
}

/// What to do when the instance outlives the timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Escalation {
    /// Report it as still running (the default).
    #[default]
    Report,
    /// Send SIGKILL to every process of the instance that still holds the
    /// lock, and wait a little more for it to go.
    Kill,
}

/// Stops the instance holding the lock at a path: a signal (SIGTERM by
/// default) to the process verified as its holder, then a wait for it and
/// every process sharing its lock to let go; optionally SIGKILL after the
/// timeout.
///
/// The processes are those that hold the lock on the file when `run` looks
/// (see [`status`](crate::status)): pinned before they are checked, then
/// signalled and waited for through the pins, never through a PID read from
/// the file or looked up again later. A standby that takes the lock while
/// the instance stops is therefore never signalled, and is named in the
/// result ([`Stopped::Exited`]'s `now_held_by`).
///
/// ```no_run
/// use std::time::Duration;
/// use pidlock_core::{Escalation, Stop, Stopped};
///
/// let stop = Stop::new().timeout(Duration::from_secs(10)).escalation(Escalation::Kill);
/// match stop.run("data/bot.pid")? {
///     Stopped::Exited { pid, .. } | Stopped::Killed { pid, .. } => println!("stopped {pid}"),
///     Stopped::NotRunning => println!("was not running"),
///     Stopped::StillRunning(pid) => eprintln!("{pid} is still running"),
/// }
/// # Ok::<(), pidlock_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    signal: StopSignal,
    timeout: Duration,
    escalation: Escalation,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// SIGTERM, a 10 s wait, no SIGKILL.
    #[must_use]
    pub fn new() -> Self {
        Self {
            signal: StopSignal::Term,
            timeout: Duration::from_secs(10),
            escalation: Escalation::Report,
        }
    }

    /// The signal to send first (`StopSignal::Int` for a program whose
    /// graceful shutdown runs on Ctrl-C only).
    #[must_use]
    pub fn signal(mut self, signal: StopSignal) -> Self {
        self.signal = signal;
        self
    }

    /// How long to wait for the instance to let go after the signal.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do if it has not let go by then.
    #[must_use]
    pub fn escalation(mut self, escalation: Escalation) -> Self {
        self.escalation = escalation;
        self
    }

    /// Stops the instance holding the lock at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::HolderUnverified`] when the lock is held but no process can
    /// be verified as its holder (another user's, another PID namespace's,
    /// or no `/proc`); [`Error::UnsafePath`] and [`Error::Io`] as for
    /// [`status`](crate::status).
    pub fn run(&self, path: impl AsRef<Path>) -> Result<Stopped> {
        let path = path.as_ref();
        let (file, stat) = match open_existing(path) {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(Stopped::NotRunning),
            // Another user's file: its holder cannot be verified from here.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(nix::libc::EACCES) => {
                return match crate::status::status(path)? {
                    Status::Running(holder) => Err(Error::HolderUnverified {
                        path: path.to_owned(),
                        holder,
                    }),
                    _ => Ok(Stopped::NotRunning),
                };
            }
            Err(error) => return Err(error),
        };
        let holders = match look(&file, &stat, path)? {
            Look::Free { .. } => return Ok(Stopped::NotRunning),
            Look::Held(holders) => holders,
            Look::Unverified => {
                return Err(Error::HolderUnverified {
                    path: path.to_owned(),
                    holder: Holders::default().describe(file_pid(&file, &stat, path)),
                });
            }
        };
        let identity = Identity::of(&stat);
        let key = sys::lock_key(file.as_fd(), identity).ok_or_else(|| Error::HolderUnverified {
            path: path.to_owned(),
            holder: Holder::Unknown,
        })?;
        let holders = match self.escalation {
            // SIGKILL must reach every process that keeps the lock.
            Escalation::Kill if !holders.complete => Holders::every(&key, stat.st_uid),
            _ => holders,
        };
        let holder = holders.describe(file_pid(&file, &stat, path));
        let Some(main) = holder.pid().filter(|_| holder.is_verified()) else {
            return Err(Error::HolderUnverified {
                path: path.to_owned(),
                holder,
            });
        };
        // The instance, pinned and checked: the holder first.
        let mut instance = holder.verified_pids();
        instance.dedup();
        let signal_error = |errno| Error::io(path, "signal the holder of", errno);
        let pins = holders::pin_verified(&instance, &key).map_err(signal_error)?;
        let Some(first) = pins.first().filter(|pin| pin.pid() == main) else {
            // It let go between our look and our pin.
            return Ok(Stopped::Exited {
                pid: main,
                now_held_by: now_held_by(path),
            });
        };
        if !first.signal(self.signal.signal()).map_err(signal_error)? {
            return Ok(Stopped::Exited {
                pid: main,
                now_held_by: now_held_by(path),
            });
        }
        let watch = sys::CloseWatch::new(file.as_fd());
        let holding =
            holders::wait_for_release(&pins, &key, watch.as_ref(), Instant::now() + self.timeout);
        if holding.is_empty() {
            return Ok(Stopped::Exited {
                pid: main,
                now_held_by: now_held_by(path),
            });
        }
        if self.escalation == Escalation::Report {
            return Ok(Stopped::StillRunning(still_running(main, &holding)));
        }
        for pin in &holding {
            pin.signal(Signal::SIGKILL).map_err(signal_error)?;
        }
        let holding =
            holders::wait_for_release(&pins, &key, watch.as_ref(), Instant::now() + AFTER_SIGKILL);
        if holding.is_empty() {
            Ok(Stopped::Killed {
                pid: main,
                now_held_by: now_held_by(path),
            })
        } else {
            Ok(Stopped::StillRunning(still_running(main, &holding)))
        }
    }
}

/// The process to name as still running: the holder, if it still is one.
fn still_running(main: Pid, holding: &[&Pinned]) -> Pid {
    holding
        .iter()
        .map(|pin| pin.pid())
        .find(|&pid| pid == main)
        .or_else(|| holding.first().map(|pin| pin.pid()))
        .unwrap_or(main)
}

/// Whoever holds the lock at `path` now, if an instance does.
fn now_held_by(path: &Path) -> Option<Holder> {
    match crate::status::status(path) {
        Ok(Status::Running(holder)) => Some(holder),
        _ => None,
    }
}

/// Blocks until nobody holds the lock at `path` (woken by the kernel), or
/// until `timeout`; true if it is free.
///
/// To see that the lock is free it takes a shared lock for an instant; a
/// program starting at that very instant sees it for what it is (a shared
/// lock with no exclusive holder) and tries again instead of being refused.
///
/// ```no_run
/// use std::time::Duration;
///
/// if pidlock_core::wait_until_free("data/bot.pid", Some(Duration::from_secs(30)))? {
///     println!("the bot has exited");
/// }
/// # Ok::<(), pidlock_core::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::UnsafePath`] and [`Error::Io`] as for [`status`](crate::status).
pub fn wait_until_free(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<bool> {
    let path = path.as_ref();
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    loop {
        let Some((file, stat)) = open_existing(path)? else {
            return Ok(true);
        };
        match waiting::lock_shared(file, deadline)
            .map_err(|errno| Error::io(path, "wait for the lock on", errno))?
        {
            // Free, unless a start replaced the file meanwhile (readers
            // held it): then wait on the file the path names now.
            Waited::Acquired(_) if still_named(path, Identity::of(&stat)) => return Ok(true),
            Waited::Acquired(_) | Waited::Unnamed | Waited::OnlyShared => {}
            Waited::TimedOut => return Ok(false),
        }
    }
}
