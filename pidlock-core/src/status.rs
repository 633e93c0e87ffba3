//! Who holds a PID file, asked from outside without disturbing the holder.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, fstat, lstat};

use crate::error::{Error, Holder, Result};
use crate::lockfile::{self, Identity, retry_eintr};
use crate::pid::{Contents, Pid};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
/// On Linux the kernel's lock table (`/proc/locks`) answers without touching
/// the lock, and names the holder even before it writes its PID. Elsewhere a
/// shared non-blocking lock probes it, which a program starting at that very
/// instant could see as a conflict.
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
    let file_pid = match lockfile::read_contents(file.as_fd(), &stat, path)? {
        Contents::Pid(pid) => Some(pid),
        Contents::Corrupted(_) => None,
    };
    if let Some(kernel) = kernel_lock_holder(Identity::of(&stat)) {
        return Ok(match kernel {
            Some(pid) => Status::Running(Holder::Kernel(pid)),
            None => Status::Stale { pid: file_pid },
        });
    }
    match lockfile::flock(file.as_fd(), nix::libc::LOCK_SH | nix::libc::LOCK_NB) {
        Err(Errno::EWOULDBLOCK) => Ok(Status::Running(
            file_pid.map_or(Holder::Unknown, Holder::File),
        )),
        Err(errno) => Err(Error::io(path, "probe the lock on", errno)),
        // Our probe lock goes away when `file` closes on return.
        Ok(()) => Ok(Status::Stale { pid: file_pid }),
    }
}

/// Opens an existing PID file read-only, for looking at it from outside;
/// `None` if there is none. Anything but a regular file is refused, named
/// by what it is.
pub(crate) fn open_existing(path: &Path) -> Result<Option<(OwnedFd, FileStat)>> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
    let file = match retry_eintr(|| nix::fcntl::open(path, flags, Mode::empty())) {
        Ok(file) => file,
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => {
            return Err(
                match lstat(path).ok().and_then(|st| lockfile::unsafe_kind(&st)) {
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
    if let Some(kind) = lockfile::unsafe_kind(&stat) {
        return Err(Error::UnsafePath {
            path: path.to_owned(),
            kind,
        });
    }
    Ok(Some((file, stat)))
}

/// The process holding a `flock` on this inode, per the kernel: `Some(None)`
/// when nobody does, `None` when the kernel cannot be asked.
#[cfg(target_os = "linux")]
pub(crate) fn kernel_lock_holder(identity: Identity) -> Option<Option<Pid>> {
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    Some(parse_proc_locks(&table, identity))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn kernel_lock_holder(_identity: Identity) -> Option<Option<Pid>> {
    None
}

/// Finds the FLOCK holder of `identity` in `/proc/locks`, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF` (device as hex
/// major:minor, then the inode). Lines with `->` are waiters, not holders.
#[cfg(target_os = "linux")]
fn parse_proc_locks(table: &str, identity: Identity) -> Option<Pid> {
    let wanted = identity.proc_locks_key();
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == wanted => {
                pid.parse().ok().and_then(Pid::new)
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        // Device 0xfe00 is major 0xfe, minor 0 (how /dev/vda reads on Linux).
        let identity = Identity::from_raw(0xfe00, 10010769);
        let table = "1: POSIX  ADVISORY  WRITE 3785 fe:00:10010769 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 77 fe:00:10010769 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 99 fe:01:10010769 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF\n";
        assert_eq!(parse_proc_locks(table, identity), Pid::new(5152));
        let unheld = "1: POSIX  ADVISORY  WRITE 3785 fe:00:10010769 0 EOF\n\
                      2: -> FLOCK  ADVISORY  WRITE 77 fe:00:10010769 0 EOF\n";
        assert_eq!(parse_proc_locks(unheld, identity), None);
    }
}
