//! What to do when another instance holds the lock (the attribute's
//! `on_conflict`): give up, wait for it, or take over from it.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::AtFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::fstatat;

use crate::error::{Error, Holder, Result};
use crate::holders::{self, Holders};
use crate::messages::{self, Level, LogLevel};
use crate::process::Pinned;
use crate::sys::{self, Identity, LockKey, Stopwatch};
use crate::systemd;
use crate::waiting::{self, Waited};

/// How long a holder gets to exit after SIGKILL before takeover gives up:
/// SIGKILL cannot be caught, but a process stuck in uninterruptible I/O (a
/// hung NFS mount) dies only when that I/O ends.
pub(crate) const AFTER_SIGKILL: Duration = Duration::from_secs(5);

/// What [`PidLock::acquire`](crate::PidLock::acquire) does when another
/// process holds the lock.
///
/// ```
/// use std::time::Duration;
/// use pidlock_core::{OnConflict, PidLock};
///
/// // A cron job that waits up to a minute for the previous run to finish:
/// let lock = PidLock::new("/tmp/report.pid")
///     .on_conflict(OnConflict::Wait { timeout: Some(Duration::from_secs(60)) });
/// # let _ = lock;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// Fail at once with [`Error::AlreadyRunning`].
    #[default]
    Exit,
    /// Block until the holder releases the lock, or until `timeout` passes:
    /// then [`Error::TimedOut`]. On Linux the kernel wakes the wait (an
    /// inotify watch on the file's closes); elsewhere it tries again at
    /// intervals growing to a second. A file the holder left to readers is
    /// replaced; where it cannot be (no atomic exchange of names), the wait
    /// goes on until the readers let go, then [`Error::Pinned`] at the
    /// timeout.
    Wait {
        /// How long to wait; `None` waits as long as it takes.
        timeout: Option<Duration>,
    },
    /// Send SIGTERM to the holder, give it `timeout` to exit, then SIGKILL it
    /// (and every process sharing its lock), and take the lock. Only a
    /// process verified as holding the lock on this very file is ever
    /// signalled (Linux: its open descriptors, `/proc/<pid>/fdinfo`); where
    /// none can be verified, [`Error::HolderUnverified`] is returned instead.
    /// The whole takeover returns within `timeout` plus a fixed bound.
    Takeover {
        /// Grace period between SIGTERM and SIGKILL.
        timeout: Duration,
    },
}

impl OnConflict {
    /// The takeover grace period when none is given.
    pub const DEFAULT_TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);
}

/// How long a takeover may run past its grace period and [`AFTER_SIGKILL`]
/// before it gives up, whatever the holder does: room for the hand-over
/// after the holder dies, on a loaded machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(5);

/// How long to wait on the lock before looking again when the holder we
/// meant to signal let go just before the signal: the lock is on its way to
/// being free, and looking again at once would spin.
const RECHECK_AFTER: Duration = Duration::from_millis(20);

/// Carries a policy's progress across the retries of one acquisition.
pub(crate) struct ConflictHandler<'a> {
    policy: OnConflict,
    path: &'a Path,
    log_level: LogLevel,
    /// Started with the acquisition: timeouts count from there. A
    /// [`Stopwatch`], not an `Instant`, so that a program that never waits
    /// does not link `Instant::now` (see [`Stopwatch`]).
    stopwatch: Stopwatch,
    /// The same moment as an `Instant`, fixed at the first conflict, so that
    /// every deadline and every "waited" is measured from one value.
    started: Option<Instant>,
    announced: bool,
    /// The instance we signalled (every process sharing its lock, pinned),
    /// with what and when.
    signalled: Option<Signalled>,
}

struct Signalled {
    instance: Vec<Pinned>,
    key: LockKey,
    signal: Signal,
    at: Instant,
}

/// [`ConflictHandler::handle`], as the lock loop holds it.
pub(crate) type HandleConflict =
    fn(&mut ConflictHandler<'_>, OwnedFd, OpenedAt<'_>, Error) -> Result<Next>;

/// A file as the lock loop opened it: through this directory descriptor and
/// name, this inode.
#[derive(Clone, Copy)]
pub(crate) struct OpenedAt<'a> {
    pub(crate) dir: BorrowedFd<'a>,
    pub(crate) name: &'a CStr,
    pub(crate) identity: Identity,
}

impl OpenedAt<'_> {
    /// Whether the name still names the file, looked up as the lock loop
    /// looks it up (through the directory descriptor, not the path, whose
    /// directories may since have been renamed or re-pointed: the loop
    /// would then open the same file again and wait on it again, at once).
    pub(crate) fn still_named(&self) -> bool {
        fstatat(self.dir, self.name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|now| Identity::of(&now) == self.identity && now.st_nlink > 0)
    }
}

/// What the lock loop does next.
pub(crate) enum Next {
    /// We hold the lock on this descriptor; check it is still the path's file.
    Acquired(OwnedFd),
    /// Open the file again and retry.
    Retry,
}

impl<'a> ConflictHandler<'a> {
    pub(crate) fn new(policy: OnConflict, path: &'a Path, log_level: LogLevel) -> Self {
        Self {
            policy,
            path,
            log_level,
            stopwatch: Stopwatch::start(),
            started: None,
            announced: false,
            signalled: None,
        }
    }

    /// What a conflict over a file this process may not open (another
    /// user's) comes to: nothing can be waited on or verified there, so a
    /// takeover refuses as it does for any holder it cannot verify.
    pub(crate) fn unopenable(&self, conflict: Error) -> Error {
        match (self.policy, conflict) {
            (OnConflict::Takeover { .. }, Error::AlreadyRunning { path, holder }) => {
                Error::HolderUnverified { path, holder }
            }
            (_, conflict) => conflict,
        }
    }

    /// Handles a busy lock on `file`; `conflict` is what [`OnConflict::Exit`]
    /// would report.
    pub(crate) fn handle(
        &mut self,
        file: OwnedFd,
        at: OpenedAt<'_>,
        conflict: Error,
    ) -> Result<Next> {
        self.started
            .get_or_insert_with(|| self.stopwatch.started_at());
        let holder = match &conflict {
            Error::AlreadyRunning { holder, .. } => holder.clone(),
            // Readers hold a file that cannot be replaced here: a start that
            // waits, waits for them too.
            Error::Pinned { .. } if matches!(self.policy, OnConflict::Wait { .. }) => {
                return self.wait_after_readers(file, at, conflict);
            }
            // Held by this process: waiting or signalling would be a deadlock
            // or a suicide.
            _ => return Err(conflict),
        };
        match self.policy {
            OnConflict::Exit => Err(conflict),
            OnConflict::Wait { timeout } => {
                if self.log_level.shows(Level::Info) && !self.announced {
                    messages::waiting(&holder, timeout);
                }
                self.announced = true;
                let deadline = timeout.map(|timeout| self.started() + timeout);
                if !systemd::is_supervised() {
                    return self.wait(file, deadline, holder, at);
                }
                // Under a service manager the wait goes in slices, each
                // announced with more start-up time, so `TimeoutStartSec=`
                // does not kill a standby that is waiting as it should.
                systemd::notify(&format!(
                    "STATUS={}\n{}",
                    messages::waiting_status(self.path, &holder),
                    systemd::extend_timeout()
                ));
                let slice_ends = Instant::now() + systemd::EXTEND_EVERY;
                match deadline {
                    Some(deadline) if deadline <= slice_ends => {
                        self.wait(file, Some(deadline), holder, at)
                    }
                    _ => self.wait_then_retry(file, slice_ends, holder, at),
                }
            }
            OnConflict::Takeover { timeout } => self.take_over(file, at, holder, timeout),
        }
    }

    /// When the acquisition started, as an `Instant` for deadlines (fixed
    /// by [`ConflictHandler::handle`] before anything asks).
    fn started(&self) -> Instant {
        self.started.unwrap_or_else(|| self.stopwatch.started_at())
    }

    fn wait(
        &self,
        file: OwnedFd,
        deadline: Option<Instant>,
        holder: Holder,
        at: OpenedAt<'_>,
    ) -> Result<Next> {
        // The holder removes the file on its way out; a reader may then keep
        // the removed inode locked while the path is free: look again.
        let named = move || at.still_named();
        match waiting::lock_exclusive(file, deadline, Some(&named)) {
            Ok(Waited::Acquired(file)) => Ok(Next::Acquired(file)),
            // Gone from the path (the next look opens the path again), or
            // left to readers (the next look replaces the file).
            Ok(Waited::Unnamed | Waited::OnlyShared) => Ok(Next::Retry),
            // Waited up to the deadline: say so in the units the user gave
            // (`timeout = "500ms"` reads "after waiting 500ms", not the few
            // milliseconds of scheduling noise on top).
            Ok(Waited::TimedOut) => Err(Error::TimedOut {
                path: self.path.to_owned(),
                holder,
                waited: deadline.map_or_else(
                    || self.started().elapsed(),
                    |deadline| deadline.saturating_duration_since(self.started()),
                ),
            }),
            Err(errno) => Err(Error::io(self.path, "wait for the lock on", errno)),
        }
    }

    /// Waits for readers to let go of a file that cannot be replaced here
    /// (no atomic exchange of names), up to the wait's timeout; then
    /// `pinned`, the error that names them.
    fn wait_after_readers(&self, file: OwnedFd, at: OpenedAt<'_>, pinned: Error) -> Result<Next> {
        let OnConflict::Wait { timeout } = self.policy else {
            return Err(pinned);
        };
        if self.log_level.shows(Level::Info) {
            messages::waiting_for_readers(self.path, timeout);
        }
        let deadline = timeout.map(|timeout| self.started() + timeout);
        let named = move || at.still_named();
        match waiting::lock_exclusive_after_readers(file, deadline, &named) {
            Ok(Waited::Acquired(file)) => Ok(Next::Acquired(file)),
            Ok(Waited::Unnamed | Waited::OnlyShared) => Ok(Next::Retry),
            Ok(Waited::TimedOut) => Err(pinned),
            Err(errno) => Err(Error::io(self.path, "wait for the lock on", errno)),
        }
    }

    /// Waits on the lock until `until`; a timeout means "look again".
    fn wait_then_retry(
        &self,
        file: OwnedFd,
        until: Instant,
        holder: Holder,
        at: OpenedAt<'_>,
    ) -> Result<Next> {
        match self.wait(file, Some(until), holder, at) {
            Err(Error::TimedOut { .. }) => Ok(Next::Retry),
            other => other,
        }
    }

    fn take_over(
        &mut self,
        file: OwnedFd,
        at: OpenedAt<'_>,
        holder: Holder,
        timeout: Duration,
    ) -> Result<Next> {
        let now = Instant::now();
        // Whatever the holder does (ignores SIGTERM, survives SIGKILL in
        // uninterruptible I/O, keeps handing its lock to new processes), a
        // takeover ends within this bound.
        if now >= self.started() + timeout + AFTER_SIGKILL + TAKEOVER_SLACK {
            return Err(Error::TimedOut {
                path: self.path.to_owned(),
                holder,
                waited: self.started().elapsed(),
            });
        }
        let signal_error = |errno| Error::io(self.path, "signal the holder of", errno);
        let Some(signalled) = &mut self.signalled else {
            return self.signal_instance(file, at, holder, timeout);
        };
        // Only the processes pinned when we first signalled, and only while
        // they still hold the lock: a standby that took the lock after them
        // is another instance, never ours to signal.
        let key = &signalled.key;
        let holding: Vec<&Pinned> = signalled
            .instance
            .iter()
            .filter(|pin| !pin.has_exited() && holders::holds(pin.pid(), key))
            .collect();
        if holding.is_empty() {
            return Err(Error::AlreadyRunning {
                path: self.path.to_owned(),
                holder,
            });
        }
        if signalled.signal == Signal::SIGKILL {
            let until = signalled.at + AFTER_SIGKILL;
            return self.wait(file, Some(until), holder, at);
        }
        let grace_ends = signalled.at + timeout;
        if now < grace_ends {
            return self.wait_then_retry(file, grace_ends, holder, at);
        }
        if self.log_level.shows(Level::Warning) {
            messages::taking_over(holding[0].pid(), Signal::SIGKILL, timeout);
        }
        // SIGKILL ends every process of the instance that keeps the lock.
        for pin in &holding {
            pin.signal(Signal::SIGKILL).map_err(signal_error)?;
        }
        signalled.signal = Signal::SIGKILL;
        signalled.at = now;
        self.wait(file, Some(now + AFTER_SIGKILL), holder, at)
    }

    /// The first round of a takeover: pins every process of the instance,
    /// checked after pinning, and asks its holder to shut down with SIGTERM
    /// (its main process stops its workers).
    fn signal_instance(
        &mut self,
        file: OwnedFd,
        at: OpenedAt<'_>,
        holder: Holder,
        timeout: Duration,
    ) -> Result<Next> {
        let unverified = || Error::HolderUnverified {
            path: self.path.to_owned(),
            holder: holder.clone(),
        };
        let Some(main) = holder.pid().filter(|_| holder.is_verified()) else {
            return Err(unverified());
        };
        let stat =
            nix::sys::stat::fstat(&file).map_err(|errno| Error::io(self.path, "inspect", errno))?;
        let key = sys::lock_key(file.as_fd(), at.identity).ok_or_else(unverified)?;
        // Every process sharing the lock, for the SIGKILL that may follow.
        let mut instance = vec![main];
        instance.extend(
            Holders::every(&key, stat.st_uid)
                .exclusive
                .into_iter()
                .filter(|&pid| pid != main),
        );
        let pins = holders::pin_verified(&instance, &key)
            .map_err(|errno| Error::io(self.path, "signal the holder of", errno))?;
        let sent = match pins.first() {
            Some(first) if first.pid() == main => {
                if self.log_level.shows(Level::Warning) {
                    messages::taking_over(main, Signal::SIGTERM, timeout);
                }
                first
                    .signal(Signal::SIGTERM)
                    .map_err(|errno| Error::io(self.path, "signal the holder of", errno))?
            }
            _ => false,
        };
        if !sent {
            // It let go (or died) between our look and our pin: look again.
            return self.wait_then_retry(file, Instant::now() + RECHECK_AFTER, holder, at);
        }
        let now = Instant::now();
        self.signalled = Some(Signalled {
            instance: pins,
            key,
            signal: Signal::SIGTERM,
            at: now,
        });
        self.wait_then_retry(file, now + timeout, holder, at)
    }
}
