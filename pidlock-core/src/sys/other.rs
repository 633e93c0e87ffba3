//! The BSDs and macOS: the same names as `linux.rs`, answering "not
//! available" where only Linux has the answer. Callers then fall back to
//! what POSIX offers (a holder reported as unverified, `kill` on a number,
//! a start's wait that tries again at growing intervals, a helper thread
//! for an observer's timed wait).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use super::{HeldLock, Identity, LockKind};
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
#[cfg(any(target_os = "freebsd", target_os = "linux"))]
pub(crate) const MSG_NOSIGNAL: nix::libc::c_int = nix::libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "freebsd", target_os = "linux")))]
pub(crate) const MSG_NOSIGNAL: nix::libc::c_int = 0;

/// A pipe for a lock's sharers (see [`crate::signal_context`]): both ends
/// close-on-exec, the read end non-blocking. macOS has no `pipe2`, so the
/// flags are set after `pipe`: a fork on another thread in between would
/// pass both ends to a child that `exec`s, which then keeps the file of a
/// lock it does not hold after its parent lets go (the safe side).
pub(crate) fn sharers_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let (read, write) = nix::unistd::pipe()?;
    for end in [&read, &write] {
        fcntl(end, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((read, write))
}

/// No `O_PATH` here.
pub(super) fn path_descriptor(_dir: BorrowedFd<'_>, _name: &std::ffi::CStr) -> Option<OwnedFd> {
    None
}

/// No atomic exchange of two names.
pub(crate) fn exchange(
    _dir: BorrowedFd<'_>,
    _a: &std::ffi::CStr,
    _b: &std::ffi::CStr,
) -> nix::Result<()> {
    Err(Errno::ENOSYS)
}

/// No pidfds: the caller keeps the PID number alone.
pub(crate) fn pidfd_open(_pid: Pid) -> nix::Result<OwnedFd> {
    Err(Errno::ENOSYS)
}

/// Never reached: [`pidfd_open`] makes no pidfd.
pub(crate) fn pidfd_send_signal(_pidfd: BorrowedFd<'_>, _signal: Signal) -> nix::Result<()> {
    Err(Errno::ENOSYS)
}

/// No lock listings to name a file in: nothing is ever looked up by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LockKey {}

/// No lock listings.
pub(crate) fn lock_key(_file: BorrowedFd<'_>, _identity: Identity) -> Option<LockKey> {
    None
}

/// Unreachable: there is no key.
pub(crate) fn lock_takers(key: &LockKey) -> Option<Vec<(LockKind, Option<Pid>)>> {
    match *key {}
}

/// No lock list here.
pub(crate) fn sees_every_lock() -> bool {
    false
}

/// Unreachable: there is no key.
pub(crate) fn scan_locks(key: &LockKey) -> Vec<(Pid, HeldLock)> {
    match *key {}
}

/// Unreachable: there is no key.
pub(crate) fn lock_held_by(_pid: Pid, key: &LockKey) -> Option<HeldLock> {
    match *key {}
}

/// Not looked up outside Linux.
pub(crate) fn children_of(_pid: Pid) -> Vec<Pid> {
    Vec::new()
}

/// Not looked up outside Linux.
pub(crate) fn user_of(_pid: Pid) -> Option<u32> {
    None
}

/// Not looked up outside Linux: `kill(pid, 0)` is all there is.
pub(crate) fn is_zombie(_pid: Pid) -> bool {
    false
}

/// Not looked up outside Linux.
pub(crate) fn runs_this_executable(_pid: Pid) -> bool {
    false
}

/// Not looked up outside Linux.
pub(crate) fn command_line(_pid: Pid) -> Option<String> {
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

/// No inotify: a start's wait tries again at growing intervals, and an
/// observer's timed wait runs a blocking `flock` on a helper thread.
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
