//! Operations on another process's lock, for scripts and the `pidlock` CLI
//! (SPEC §9): stop the holder, wait until the lock is free.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::stat::FileStat;

use crate::error::{Error, Result};
use crate::holders::{self, signal_verified};
use crate::pid::{Contents, Pid};
use crate::policy::AFTER_SIGKILL;
use crate::status::{open_existing, probe};
use crate::sys::{Identity, read_contents};
use crate::waiting::{self, Waited};

/// How [`stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Nobody held the lock (there may be a stale file).
    NotRunning,
    /// The holder exited after SIGTERM.
    Exited(Pid),
    /// The holder ignored SIGTERM and was killed (with every process sharing
    /// its lock).
    Killed(Pid),
    /// The holder still runs after the timeout (and `kill` was not asked for,
    /// or it survived SIGKILL: stuck in uninterruptible I/O).
    StillRunning(Pid),
}

/// The signal [`stop_with`] asks the holder to exit with.
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

/// Sends SIGTERM to the process verified as the holder of the lock at
/// `path`, then waits up to `timeout` for the lock to be let go; with `kill`,
/// every process still holding it is then sent SIGKILL.
///
/// The holder is the process that has the locking open file description
/// open (see [`status`](crate::status)), pinned before it is checked and
/// signalled through the pin: never a PID read from the file, never a PID
/// that was reused.
///
/// ```no_run
/// use std::time::Duration;
/// use pidlock_core::Stopped;
///
/// match pidlock_core::stop("data/bot.pid", Duration::from_secs(10), true)? {
///     Stopped::Exited(pid) | Stopped::Killed(pid) => println!("stopped {pid}"),
///     Stopped::NotRunning => println!("was not running"),
///     Stopped::StillRunning(pid) => eprintln!("{pid} is still running"),
/// }
/// # Ok::<(), pidlock_core::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::HolderUnverified`] when the lock is held but no process can be
/// verified as its holder (another user's, another PID namespace's, or no
/// `/proc`); [`Error::UnsafePath`] and [`Error::Io`] as for
/// [`status`](crate::status).
pub fn stop(path: impl AsRef<Path>, timeout: Duration, kill: bool) -> Result<Stopped> {
    stop_with(path, StopSignal::Term, timeout, kill)
}

/// [`stop`] with another signal than SIGTERM: `StopSignal::Int` for a
/// program whose graceful shutdown runs on Ctrl-C only.
///
/// # Errors
///
/// As [`stop`].
pub fn stop_with(
    path: impl AsRef<Path>,
    signal: StopSignal,
    timeout: Duration,
    kill: bool,
) -> Result<Stopped> {
    let path = path.as_ref();
    let Some((file, stat)) = open_existing(path)? else {
        return Ok(Stopped::NotRunning);
    };
    let identity = Identity::of(&stat);
    let Some(holders) = probe(&file, identity, path)? else {
        return Ok(Stopped::NotRunning);
    };
    let holder = holders.describe(file_pid(&file, &stat, path));
    let Some(pid) = holder.pid().filter(|_| holder.is_verified()) else {
        return Err(Error::HolderUnverified {
            path: path.to_owned(),
            holder,
        });
    };
    let signal_error = |errno| Error::io(path, "signal the holder of", errno);
    if !signal_verified(pid, identity, signal.signal()).map_err(signal_error)? {
        // It let go between our look and our signal.
        return Ok(Stopped::Exited(pid));
    }
    let wait_error = |errno| Error::io(path, "wait for the holder of", errno);
    let file =
        match waiting::lock_shared(file, Some(Instant::now() + timeout)).map_err(wait_error)? {
            // The shared lock is held until `_` drops here: an instant.
            Waited::Locked(_) => return Ok(Stopped::Exited(pid)),
            Waited::TimedOut if !kill => return Ok(Stopped::StillRunning(pid)),
            Waited::TimedOut => open_existing(path)?,
        };
    // The file we asked about is gone or replaced: its holder let go at the
    // deadline, and whoever holds the new file (a standby) is not ours to kill.
    let Some((file, stat)) = file.filter(|(_, stat)| Identity::of(stat) == identity) else {
        return Ok(Stopped::Exited(pid));
    };
    let identity = Identity::of(&stat);
    // Everyone still holding it: the holder and any worker sharing its lock.
    let mut sent = false;
    for holder in holders::find(identity).exclusive {
        sent |= signal_verified(holder, identity, Signal::SIGKILL).map_err(signal_error)?;
    }
    if !sent {
        return Ok(Stopped::Exited(pid));
    }
    Ok(
        match waiting::lock_shared(file, Some(Instant::now() + AFTER_SIGKILL))
            .map_err(wait_error)?
        {
            Waited::Locked(_) => Stopped::Killed(pid),
            Waited::TimedOut => Stopped::StillRunning(pid),
        },
    )
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
    let Some((file, _)) = open_existing(path)? else {
        return Ok(true);
    };
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    match waiting::lock_shared(file, deadline)
        .map_err(|errno| Error::io(path, "wait for the lock on", errno))?
    {
        Waited::Locked(_) => Ok(true),
        Waited::TimedOut => Ok(false),
    }
}

/// The PID the file names, if any.
fn file_pid(file: &OwnedFd, stat: &FileStat, path: &Path) -> Option<Pid> {
    match read_contents(file.as_fd(), stat, path) {
        Ok(Contents::Pid(pid)) => Some(pid),
        _ => None,
    }
}
