//! Another process, pinned so that what we do to it reaches it and never a
//! later process that was given the same PID.
//!
//! On Linux a pidfd (`pidfd_open`, 5.3+) refers to one process for as long as
//! it is open: a signal sent through it after the process died fails with
//! `ESRCH` instead of hitting whoever got the number next. Checking something
//! about the process (that it holds our lock) *after* pinning it and then
//! signalling through the pin is sound: if the signal is delivered, the
//! process was alive through the check, so the check was about it. Kernels
//! without pidfds, and other systems, fall back to `kill` on the number,
//! where a small window remains between check and signal.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use crate::pid::Pid;
use crate::sys;

/// A process we may signal or wait for.
#[derive(Debug)]
pub(crate) struct Pinned {
    pid: Pid,
    /// `None` where pidfds are not available.
    pidfd: Option<OwnedFd>,
}

impl Pinned {
    /// Pins the process with this PID now; `None` if there is none.
    pub(crate) fn open(pid: Pid) -> nix::Result<Option<Self>> {
        match sys::pidfd_open(pid) {
            Ok(pidfd) => Ok(Some(Self {
                pid,
                pidfd: Some(pidfd),
            })),
            // ESRCH: no such process. ENOENT: recent kernels (seen on
            // 6.18) answer so for a process that is exiting, its PID not
            // yet released: gone all the same.
            Err(Errno::ESRCH | Errno::ENOENT) => Ok(None),
            // Kernels before 5.3, other systems: the number is all we have.
            Err(Errno::ENOSYS) => Ok(pid.is_alive().then_some(Self { pid, pidfd: None })),
            Err(errno) => Err(errno),
        }
    }

    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// The pidfd, which polls readable once the process has exited.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Whether the process has exited (a zombie counts), now.
    pub(crate) fn has_exited(&self) -> bool {
        if let Some(pidfd) = &self.pidfd {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            if let Ok(ready) = poll(&mut fds, PollTimeout::ZERO) {
                return ready > 0;
            }
        }
        !self.pid.is_alive() || sys::is_zombie(self.pid)
    }

    /// Sends `signal`; false if the process has exited meanwhile.
    pub(crate) fn signal(&self, signal: Signal) -> nix::Result<bool> {
        let sent = match &self.pidfd {
            Some(pidfd) => sys::pidfd_send_signal(pidfd.as_fd(), signal),
            None => nix::sys::signal::kill(self.pid.as_nix(), signal),
        };
        match sent {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(errno) => Err(errno),
        }
    }

    /// Blocks until the process has exited (a zombie counts) or `deadline`
    /// passes; true if it exited. With a pidfd the kernel wakes us; without,
    /// the PID is probed every few milliseconds.
    pub(crate) fn wait_for_exit(&self, deadline: Instant) -> bool {
        if let Some(pidfd) = &self.pidfd {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, timeout) {
                    Ok(0) => return false,
                    Ok(_) => return true,
                    Err(Errno::EINTR) => {}
                    // Cannot wait on it: fall back to probing below.
                    Err(_) => break,
                }
            }
        }
        const PROBE_EVERY: Duration = Duration::from_millis(5);
        loop {
            if !self.pid.is_alive() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(PROBE_EVERY));
        }
    }
}
