//! Who holds a PID file, asked from outside without disturbing the holder.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, fstat, lstat};

use crate::error::{Error, Holder, Reader, Result};
use crate::holders::{self, Holders, Taken};
use crate::pid::{Contents, Pid};
use crate::sys::{self, Identity, LockKey, retry_eintr};

/// What a PID file path says about its program (the LSB init-script states).
///
/// ```
/// use pidlock_core::{PidLock, Signals, Status};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("job.pid");
/// assert_eq!(pidlock_core::status(&path)?, Status::NotRunning);
///
/// let guard = PidLock::new(&path).signals(Signals::None).log_level(pidlock_core::LogLevel::Error).acquire()?;
/// let Status::Running(holder) = pidlock_core::status(&path)? else { panic!("not running") };
/// assert_eq!(holder.pid(), Some(guard.pid()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// An instance holds the lock.
    Running(Holder),
    /// The file exists but no instance holds the lock: its program died
    /// without cleaning up. `pid` is what the file says, if it says a PID;
    /// `readers` are processes that hold the file open with a lock of
    /// their own without being an instance (the next start replaces the
    /// file; see [`Reader`]).
    Stale {
        /// The PID in the file.
        pid: Option<Pid>,
        /// Who pins the file, as far as can be seen.
        readers: Vec<Reader>,
    },
    /// There is no file.
    NotRunning,
}

/// How often `status` looks again when the file was replaced while it
/// looked (a start replacing a file that readers held).
const LOOKS: usize = 3;

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
    for _ in 0..LOOKS {
        let (file, stat) = match open_existing(path) {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(Status::NotRunning),
            Err(error) if is_denied(&error) => return denied(path, error),
            Err(error) => return Err(error),
        };
        let file_pid = file_pid(&file, &stat, path);
        match look(&file, &stat, path)? {
            Look::Held(holders) => return Ok(Status::Running(holders.describe(file_pid))),
            Look::Unverified => return Ok(Status::Running(Holders::default().describe(file_pid))),
            // Free now, but the holder may have released cleanly since we
            // opened it, or a start replaced the file: look at what the path
            // names now.
            Look::Free { .. } if !still_named(path, Identity::of(&stat)) => {}
            Look::Free { readers } => {
                return Ok(Status::Stale {
                    pid: file_pid,
                    readers,
                });
            }
        }
    }
    Ok(Status::NotRunning)
}

/// Whether opening the file failed for want of permission.
pub(crate) fn is_denied(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.raw_os_error() == Some(nix::libc::EACCES))
}

/// The status of a file this process may not open (another user's, 0600):
/// held if the kernel's lock list says someone took the exclusive lock on
/// it (not verified: that user's descriptors are out of sight too), stale
/// if it says nobody did, and held by someone unknown if it cannot say.
/// `error` (the open's) for anything else: a directory this user may not
/// search, or a file of its own it may not open.
fn denied(path: &Path, error: Error) -> Result<Status> {
    let stat = match lstat(path) {
        Ok(stat) => stat,
        Err(nix::errno::Errno::ENOENT) => return Ok(Status::NotRunning),
        Err(_) => return Err(error),
    };
    if stat.st_uid == nix::unistd::geteuid().as_raw() {
        return Err(error);
    }
    let key = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .ok()
        .and_then(|name| sys::path_descriptor(nix::fcntl::AT_FDCWD, &name))
        .and_then(|named| sys::lock_key(named.as_fd(), Identity::of(&stat)));
    Ok(match holders::exclusive_taker(key.as_ref()) {
        Taken::By(pid) => Status::Running(Holder::Taker(pid)),
        Taken::OutOfSight => Status::Running(Holder::Unknown),
        Taken::Free => Status::Stale {
            pid: None,
            readers: Vec::new(),
        },
    })
}

/// Whether `path` still names the inode with `identity`.
pub(crate) fn still_named(path: &Path, identity: Identity) -> bool {
    lstat(path).is_ok_and(|now| Identity::of(&now) == identity && now.st_nlink > 0)
}

/// What a look at a PID file's lock found.
pub(crate) enum Look {
    /// No instance holds it; readers may.
    Free { readers: Vec<Reader> },
    /// An instance holds it: these are the verified processes.
    Held(Holders),
    /// Something holds it exclusively that cannot be seen from here.
    Unverified,
}

/// Who holds the lock on `file`. Never leaves a lock behind: a shared
/// probe is let go of at once.
pub(crate) fn look(file: &OwnedFd, stat: &FileStat, path: &Path) -> Result<Look> {
    let key = sys::lock_key(file.as_fd(), Identity::of(stat));
    let file_pid = file_pid(file, stat, path);
    if let Some(key) = &key {
        let holders = Holders::likely(key, file_pid, stat.st_uid);
        if !holders.exclusive.is_empty() {
            return Ok(Look::Held(holders));
        }
    }
    match sys::flock(file.as_fd(), nix::libc::LOCK_SH | nix::libc::LOCK_NB) {
        // Nobody holds it exclusively: let go of the probe at once rather
        // than when `file` closes, then name any readers.
        Ok(()) => {
            let _ = sys::flock(file.as_fd(), nix::libc::LOCK_UN);
            Ok(Look::Free {
                readers: readers(key.as_ref(), stat),
            })
        }
        Err(Errno::EWOULDBLOCK) => {
            let Some(key) = &key else {
                return Ok(Look::Unverified);
            };
            let holders = Holders::find(key, file_pid, stat.st_uid);
            if !holders.exclusive.is_empty() {
                Ok(Look::Held(holders))
            } else if holders.readers.iter().any(|reader| !reader.shared) {
                // Held exclusively by another user through a read-only
                // descriptor: a reader, not an instance.
                Ok(Look::Free {
                    readers: holders.readers,
                })
            } else {
                Ok(Look::Unverified)
            }
        }
        Err(errno) => Err(Error::io(path, "probe the lock on", errno)),
    }
}

/// The readers of a file no instance holds; looked for only when the
/// kernel lists some lock on it.
fn readers(key: Option<&LockKey>, stat: &FileStat) -> Vec<Reader> {
    match key {
        Some(key) if sys::lock_takers(key).is_some_and(|takers| !takers.is_empty()) => {
            Holders::every(key, stat.st_uid).readers
        }
        _ => Vec::new(),
    }
}

/// The PID the file names, if any.
pub(crate) fn file_pid(file: &OwnedFd, stat: &FileStat, path: &Path) -> Option<Pid> {
    match sys::read_contents(file.as_fd(), stat, path) {
        Ok(Contents::Pid(pid)) => Some(pid),
        _ => None,
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
