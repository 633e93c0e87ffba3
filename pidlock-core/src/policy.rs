//! What to do when another instance holds the lock (the attribute's
//! `on_conflict`): give up, wait for it, or take over from it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Error, Holder, Result};
use crate::lockfile::Identity;
use crate::messages;
use crate::pid::Pid;
use crate::status::kernel_lock_holder;
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
    /// Block until the holder releases the lock (woken by the kernel, not by
    /// polling), or until `timeout` passes: then [`Error::TimedOut`].
    Wait {
        /// How long to wait; `None` waits as long as it takes.
        timeout: Option<Duration>,
    },
    /// Send SIGTERM to the holder, give it `timeout` to exit, then SIGKILL it,
    /// and take the lock. Only a process the kernel names as the holder of
    /// this very file is ever signalled (Linux: `/proc/locks`); where the
    /// kernel cannot say, [`Error::HolderUnverified`] is returned instead.
    Takeover {
        /// Grace period between SIGTERM and SIGKILL.
        timeout: Duration,
    },
}

impl OnConflict {
    /// The takeover grace period when none is given.
    pub const DEFAULT_TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Carries a policy's progress across the retries of one acquisition.
pub(crate) struct Resolver<'a> {
    policy: OnConflict,
    path: &'a Path,
    quiet: bool,
    started: Instant,
    announced: bool,
    /// The holder we signalled, with what and when.
    signalled: Option<(Pid, Signal, Instant)>,
}

/// What the lock loop does next.
pub(crate) enum Next {
    /// We hold the lock on this descriptor; check it is still the path's file.
    Locked(OwnedFd),
    /// Open the file again and retry.
    Retry,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(policy: OnConflict, path: &'a Path, quiet: bool) -> Self {
        Self {
            policy,
            path,
            quiet,
            started: Instant::now(),
            announced: false,
            signalled: None,
        }
    }

    /// Handles a busy lock on `file`; `conflict` is what [`OnConflict::Exit`]
    /// would report.
    pub(crate) fn resolve(
        &mut self,
        file: OwnedFd,
        identity: Identity,
        conflict: Error,
    ) -> Result<Next> {
        let holder = match &conflict {
            Error::AlreadyRunning { holder, .. } => *holder,
            // Held by this process: waiting or signalling would be a deadlock
            // or a suicide.
            _ => return Err(conflict),
        };
        match self.policy {
            OnConflict::Exit => Err(conflict),
            OnConflict::Wait { timeout } => {
                if !self.quiet && !self.announced {
                    messages::waiting(holder, timeout);
                }
                self.announced = true;
                self.wait(file, timeout.map(|timeout| self.started + timeout), holder)
            }
            OnConflict::Takeover { timeout } => self.take_over(file, identity, holder, timeout),
        }
    }

    fn wait(&self, file: OwnedFd, deadline: Option<Instant>, holder: Holder) -> Result<Next> {
        match waiting::lock_exclusive(file, deadline) {
            Ok(Waited::Locked(file)) => Ok(Next::Locked(file)),
            Ok(Waited::TimedOut) => Err(Error::TimedOut {
                path: self.path.to_owned(),
                holder,
                waited: self.started.elapsed(),
            }),
            Err(errno) => Err(Error::io(self.path, "wait for the lock on", errno)),
        }
    }

    fn take_over(
        &mut self,
        file: OwnedFd,
        identity: Identity,
        claimed: Holder,
        timeout: Duration,
    ) -> Result<Next> {
        let Some(Some(pid)) = kernel_lock_holder(identity) else {
            return Err(Error::HolderUnverified {
                path: self.path.to_owned(),
                holder: claimed,
            });
        };
        let (signal, deadline) = match self.signalled {
            None => (Signal::SIGTERM, Instant::now() + timeout),
            Some((signalled, Signal::SIGTERM, at)) if signalled == pid => {
                if Instant::now() < at + timeout {
                    return match self.wait(file, Some(at + timeout), Holder::Kernel(pid)) {
                        Err(Error::TimedOut { .. }) => Ok(Next::Retry),
                        other => other,
                    };
                }
                (Signal::SIGKILL, Instant::now() + AFTER_SIGKILL)
            }
            Some((signalled, Signal::SIGKILL, at)) if signalled == pid => {
                return self.wait(file, Some(at + AFTER_SIGKILL), Holder::Kernel(pid));
            }
            // Another instance took the lock after the one we signalled let
            // go: that one is not ours to kill.
            Some(_) => {
                return Err(Error::AlreadyRunning {
                    path: self.path.to_owned(),
                    holder: Holder::Kernel(pid),
                });
            }
        };
        if !self.quiet {
            messages::taking_over(pid, signal, timeout);
        }
        if !signal_verified(pid, identity, signal)
            .map_err(|errno| Error::io(self.path, "signal the holder of", errno))?
        {
            // It let go (or died) between our check and our signal.
            return Ok(Next::Retry);
        }
        self.signalled = Some((pid, signal, Instant::now()));
        match self.wait(file, Some(deadline), Holder::Kernel(pid)) {
            Ok(next) => Ok(next),
            // Escalate (or give up) on the next round.
            Err(Error::TimedOut { .. }) if signal == Signal::SIGTERM => Ok(Next::Retry),
            Err(error) => Err(error),
        }
    }
}

/// Sends `signal` to `pid` if, at that moment, it is still the kernel's
/// holder of the lock on `identity`. Returns false if it no longer is.
///
/// On Linux the process is pinned with a pidfd before the check, and the
/// signal goes through that pidfd: a PID can be reused between a check and a
/// `kill`, a pidfd cannot.
#[cfg(target_os = "linux")]
pub(crate) fn signal_verified(pid: Pid, identity: Identity, signal: Signal) -> nix::Result<bool> {
    use nix::errno::Errno;
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd};

    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.get(), 0) };
    if raw < 0 {
        return match Errno::last() {
            Errno::ESRCH => Ok(false),
            // Kernels before 5.3: check, then kill (the small window remains).
            Errno::ENOSYS => {
                if kernel_lock_holder(identity) != Some(Some(pid)) {
                    return Ok(false);
                }
                nix::sys::signal::kill(pid.as_nix(), signal).map(|()| true)
            }
            errno => Err(errno),
        };
    }
    // SAFETY: a successful pidfd_open returned a descriptor we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    if kernel_lock_holder(identity) != Some(Some(pid)) {
        return Ok(false);
    }
    // SAFETY: a valid pidfd, a valid signal number, no siginfo, no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match Errno::result(sent) {
        Ok(_) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// Without a kernel lock table we never get here: the holder cannot be
/// verified, so takeover refuses before signalling anyone.
#[cfg(not(target_os = "linux"))]
pub(crate) fn signal_verified(
    _pid: Pid,
    _identity: Identity,
    _signal: Signal,
) -> nix::Result<bool> {
    Ok(false)
}
