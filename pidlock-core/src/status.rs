//! Who holds a PID file, asked from outside without disturbing the holder.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, fstat, lstat};

use crate::error::{Error, Holder, Result};
use crate::holders::{self, Holders};
use crate::pid::{Contents, Pid};
use crate::sys::{self, Identity, retry_eintr};

/// What a PID file path says about its program (the LSB init-script states).
///
/// ```
/// use pidlock_core::{PidLock, Signals, Status};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("job.pid");
/// assert_eq!(pidlock_core::status(&path)?, Status::NotRunning);
///
/// let guard = PidLock::new(&path).signals(Signals::None).quiet(true).acquire()?;
/// let Status::Running(holder) = pidlock_core::status(&path)? else { panic!("not running") };
/// assert_eq!(holder.pid(), Some(guard.pid()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The lock is held.
    Running(Holder),
    /// The file exists but nobody holds the lock: its program died without
    /// cleaning up. `pid` is what the file says, if it says a PID.
    Stale {
        /// The PID in the file.
        pid: Option<Pid>,
    },
    /// There is no file.
    NotRunning,
}

/// Reports whether the lock at `path` is held and by whom.
///
/// On Linux the holder is verified with the kernel: the processes that have
/// the locking open file description open (`/proc/<pid>/fdinfo`), as this
/// process's PID namespace numbers them — not the PID in the file, and not
/// the PID `/proc/locks` shows (whoever *took* the lock, possibly long gone).
/// When no holder is visible, a shared non-blocking lock probes for an
/// instant whether the lock is held at all, by a process out of sight
/// (another user's, another PID namespace's): that is [`Holder::File`] or
/// [`Holder::Unknown`], never "not running". A program starting at that very
/// instant sees the probe for what it is and is not refused.
///
/// # Errors
///
/// [`Error::UnsafePath`] if the path is not a regular file, [`Error::Io`] if it
/// cannot be opened or read.
pub fn status(path: impl AsRef<Path>) -> Result<Status> {
    let path = path.as_ref();
    let Some((file, stat)) = open_existing(path)? else {
        return Ok(Status::NotRunning);
    };
    let file_pid = match sys::read_contents(file.as_fd(), &stat, path)? {
        Contents::Pid(pid) => Some(pid),
        Contents::Corrupted(_) => None,
    };
    let identity = Identity::of(&stat);
    Ok(match probe(&file, identity, path)? {
        Some(holders) => Status::Running(holders.describe(file_pid)),
        // Free now, but the holder may have released cleanly since we opened
        // it: its file is then gone (or replaced), which is "not running",
        // not "dead but the PID file exists".
        None if !still_named(path, identity) => Status::NotRunning,
        None => Status::Stale { pid: file_pid },
    })
}

/// Whether `path` still names the inode with `identity`.
fn still_named(path: &Path, identity: Identity) -> bool {
    lstat(path).is_ok_and(|now| Identity::of(&now) == identity && now.st_nlink > 0)
}

/// Who holds the lock on `file`: `None` if nobody does; the verified
/// holders, possibly none (held out of sight), if somebody does.
pub(crate) fn probe(file: &OwnedFd, identity: Identity, path: &Path) -> Result<Option<Holders>> {
    let holders = holders::find(identity);
    if !holders.exclusive.is_empty() {
        return Ok(Some(holders));
    }
    match sys::flock(file.as_fd(), nix::libc::LOCK_SH | nix::libc::LOCK_NB) {
        // Held: by a holder that got there after our look, or out of sight.
        Err(Errno::EWOULDBLOCK) => Ok(Some(holders::find(identity))),
        Err(errno) => Err(Error::io(path, "probe the lock on", errno)),
        // Free. Let go of the probe at once rather than when `file` closes.
        Ok(()) => {
            let _ = sys::flock(file.as_fd(), nix::libc::LOCK_UN);
            Ok(None)
        }
    }
}

/// Opens an existing PID file read-only, for looking at it from outside;
/// `None` if there is none. Anything but a regular file is refused, named
/// by what it is.
pub(crate) fn open_existing(path: &Path) -> Result<Option<(OwnedFd, FileStat)>> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_CLOEXEC
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY;
    let file = match retry_eintr(|| nix::fcntl::open(path, flags, Mode::empty())) {
        Ok(file) => file,
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => {
            return Err(
                match lstat(path).ok().and_then(|st| sys::unsafe_kind(&st)) {
                    Some(kind) => Error::UnsafePath {
                        path: path.to_owned(),
                        kind,
                    },
                    None => Error::io(path, "open", errno),
                },
            );
        }
    };
    let stat = fstat(&file).map_err(|errno| Error::io(path, "inspect", errno))?;
    if let Some(kind) = sys::unsafe_kind(&stat) {
        return Err(Error::UnsafePath {
            path: path.to_owned(),
            kind,
        });
    }
    Ok(Some((file, stat)))
}
