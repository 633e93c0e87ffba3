//! The BSDs and macOS: the same names as `linux.rs`, answering "not
//! available" where only Linux has the answer. Callers then fall back to
//! what POSIX offers (a holder reported as unverified, `kill` on a number,
//! a helper thread for a timed wait).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use super::{Identity, LockKind};
use crate::pid::Pid;

/// A plain read-only directory descriptor (no `O_PATH` here).
pub(crate) const DIRECTORY_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Where root's PID files go.
pub(crate) const RUN_DIR: &str = "/var/run";

/// No holder can be verified here.
pub(crate) const VERIFIES_HOLDERS: bool = false;

/// `send(2)` flags: a closed peer must not raise SIGPIPE (macOS has no such
/// flag; its sockets to a supervisor are not in use there).
#[cfg(target_os = "freebsd")]
pub(crate) const MSG_NOSIGNAL: nix::libc::c_int = nix::libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "freebsd"))]
pub(crate) const MSG_NOSIGNAL: nix::libc::c_int = 0;

/// No pidfds: the caller keeps the PID number alone.
pub(crate) fn pidfd_open(_pid: Pid) -> nix::Result<OwnedFd> {
    Err(Errno::ENOSYS)
}

/// Never reached: [`pidfd_open`] makes no pidfd.
pub(crate) fn pidfd_send_signal(_pidfd: BorrowedFd<'_>, _signal: Signal) -> nix::Result<()> {
    Err(Errno::ENOSYS)
}

/// No per-descriptor lock listing: no holder can be verified.
pub(crate) fn scan_locks(_identity: Identity) -> Vec<(Pid, LockKind)> {
    Vec::new()
}

/// No per-descriptor lock listing.
pub(crate) fn lock_held_by(_pid: Pid, _identity: Identity) -> Option<LockKind> {
    None
}

/// Not looked up outside Linux.
pub(crate) fn parent_of(_pid: Pid) -> Option<Pid> {
    None
}

/// No PID namespaces.
pub(crate) fn own_namespace_pid(_pid: Pid) -> Option<Pid> {
    None
}

/// No inotify: a timed wait runs a blocking `flock` on a helper thread.
pub(crate) enum CloseWatch {}

impl CloseWatch {
    pub(crate) fn new(_file: BorrowedFd<'_>) -> Option<Self> {
        None
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        match *self {}
    }

    pub(crate) fn drain(&self) -> nix::Result<()> {
        match *self {}
    }
}

/// No abstract socket namespace.
pub(crate) fn connect_abstract(_name: &[u8]) -> std::io::Result<UnixDatagram> {
    Err(std::io::ErrorKind::Unsupported.into())
}
