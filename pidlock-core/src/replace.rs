//! Replacing a PID file that only readers hold, so that nobody but an
//! instance can keep an instance from starting.
//!
//! Anyone who can open a file can `flock` it: an observer probing it (a
//! shared lock for an instant), `flock -s`, or another user with a
//! read-only descriptor (even an exclusive lock). Such a *reader* is not an
//! instance, yet while it holds the file its lock is busy. A reader that
//! keeps it after the instance crashed (or a reader that never lets go)
//! would block every later start. So a start that finds the lock held by
//! readers only puts a new file, locked by itself, at the path, and leaves
//! the old inode to its readers.
//!
//! The swap must never hide an instance. Two starts may try it at once, and
//! an instance may lock the old file the moment its readers let go:
//!
//! 1. When the readers' locks are all shared, the start first takes a
//!    shared lock on the old file itself: from then on no process can take
//!    the exclusive lock on it, so no instance can appear there while the
//!    swap runs ("frozen").
//! 2. The new file is made under a temporary name in the same directory,
//!    created exclusively and locked exclusively before anyone can know it.
//! 3. `renameat2(RENAME_EXCHANGE)` swaps the two names in one step: the path
//!    names the new file, the temporary name the old one.
//! 4. The start checks that what it swapped out is the old file it looked
//!    at. If another start swapped first, it swaps back (the path names the
//!    other start's file again) and tries the whole lock again, to meet the
//!    other start as an instance.
//! 5. When the old file could not be frozen (a reader holds it exclusively),
//!    an instance may have locked it between the look and the swap, having
//!    passed its own check that the path named it. The start looks again,
//!    after the swap: if any process that is not a reader holds the old
//!    file, or its lock cannot be attributed to a visible reader, it swaps
//!    back and tries again (and then meets that instance).
//! 6. The temporary name (now the old file) is removed; its readers keep an
//!    inode nobody will look at again.
//!
//! A start that crashes between 2 and 6 leaves a file under the temporary
//! name (`.<name>.<pid>.<n>.pidlock`); nothing reads it, and it can be
//! removed.
//!
//! Only Linux can swap two names atomically; elsewhere, and on filesystems
//! that cannot (`EINVAL`), the start reports the readers
//! ([`Error::Pinned`]) rather than risk two instances. A file owned by
//! another user is never replaced.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

use crate::error::{Error, Reader, Result};
use crate::holders::Holders;
use crate::pid::Pid;
use crate::sys::{self, Identity, LockKey, flock, retry_eintr};

/// A busy file that only readers hold, as the lock loop found it.
pub(crate) struct Pinned {
    /// The old file, with a shared lock on it when `frozen`.
    pub(crate) file: OwnedFd,
    pub(crate) stat: FileStat,
    pub(crate) key: Option<LockKey>,
    /// This process holds a shared lock on `file` (see step 1).
    pub(crate) frozen: bool,
    pub(crate) readers: Vec<Reader>,
}

/// What became of the attempt.
pub(crate) enum Replaced {
    /// The path names a new file, locked on this descriptor.
    Locked(OwnedFd),
    /// Something changed meanwhile: look again from the start.
    Retry,
}

/// How many temporary names are tried before giving up: another process
/// would have to have made each of them first.
const TEMPORARY_NAMES: u32 = 8;

/// Puts a new, locked file at `name` in place of the pinned one (module
/// docs).
pub(crate) fn replace(dir: &OwnedFd, name: &CStr, path: &Path, pinned: Pinned) -> Result<Replaced> {
    let me = nix::unistd::geteuid().as_raw();
    if pinned.stat.st_uid != me {
        return Err(Error::ForeignOwner {
            path: path.to_owned(),
            owner: crate::error::user_name(pinned.stat.st_uid),
        });
    }
    let pinned_error = |readers: Vec<Reader>| Error::Pinned {
        path: path.to_owned(),
        readers,
    };
    if !sys::VERIFIES_HOLDERS {
        return Err(pinned_error(pinned.readers));
    }
    let Some((temporary, new)) = create_temporary(dir, name, path)? else {
        return Ok(Replaced::Retry);
    };
    let discard = |new: OwnedFd| {
        let _ = nix::unistd::unlinkat(
            dir,
            temporary.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        drop(new);
    };
    match sys::exchange(dir.as_fd(), &temporary, name) {
        Ok(()) => {}
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            discard(new);
            return Err(pinned_error(pinned.readers));
        }
        Err(errno) => {
            discard(new);
            return Err(Error::io(path, "replace", errno));
        }
    }
    let swap_back = |new: OwnedFd| {
        // The path names what it named before our swap again, and the
        // temporary name our file, which goes.
        let _ = sys::exchange(dir.as_fd(), &temporary, name);
        discard(new);
    };
    let swapped_out = fstatat(dir, temporary.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
    if !swapped_out.is_ok_and(|out| Identity::of(&pinned.stat).same_file(&out)) {
        // Another start replaced it first (step 4).
        swap_back(new);
        return Ok(Replaced::Retry);
    }
    if !pinned.frozen && !only_readers_hold(&pinned) {
        swap_back(new);
        return Ok(Replaced::Retry);
    }
    match nix::unistd::unlinkat(
        dir,
        temporary.as_c_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(Error::io(path, "remove the replaced", errno)),
    }
    Ok(Replaced::Locked(new))
}

/// Step 5: after the swap, whether the old file is still held by readers
/// alone. A shared lock on it now proves nobody holds it exclusively; else
/// every exclusive holder must be a visible reader.
fn only_readers_hold(pinned: &Pinned) -> bool {
    match flock(pinned.file.as_fd(), nix::libc::LOCK_SH | nix::libc::LOCK_NB) {
        Ok(()) => return true,
        Err(Errno::EWOULDBLOCK) => {}
        Err(_) => return false,
    }
    let Some(key) = &pinned.key else {
        return false;
    };
    let holders = Holders::every(key, pinned.stat.st_uid);
    holders.exclusive.is_empty() && holders.readers.iter().any(|reader| !reader.shared)
}

/// Makes the new file under a temporary name and locks it (step 2);
/// `None` if it could not be locked (someone opened it first).
fn create_temporary(dir: &OwnedFd, name: &CStr, path: &Path) -> Result<Option<(CString, OwnedFd)>> {
    let flags = OFlag::O_RDWR
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_CLOEXEC
        | OFlag::O_NOFOLLOW
        | OFlag::O_NOCTTY;
    let me = Pid::current();
    for attempt in 0..TEMPORARY_NAMES {
        let mut temporary = b".".to_vec();
        temporary.extend_from_slice(name.to_bytes());
        temporary.extend_from_slice(format!(".{me}.{attempt}.pidlock").as_bytes());
        let temporary = CString::new(temporary).map_err(|_| Error::InvalidPath {
            path: path.to_owned(),
            reason: "it contains a NUL byte",
        })?;
        let file = match retry_eintr(|| {
            openat(
                dir,
                temporary.as_c_str(),
                flags,
                Mode::from_bits_truncate(0o644),
            )
        }) {
            Ok(file) => file,
            Err(Errno::EEXIST) => continue,
            Err(errno) => return Err(Error::io(path, "create a replacement for", errno)),
        };
        if flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB).is_err() {
            let _ = nix::unistd::unlinkat(
                dir,
                temporary.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Ok(None);
        }
        return Ok(Some((temporary, file)));
    }
    Err(Error::io(path, "create a replacement for", Errno::EEXIST))
}

/// The new file's `stat`, for the lock loop's check that the path names it.
pub(crate) fn stat_of(file: &OwnedFd, path: &Path) -> Result<FileStat> {
    fstat(file).map_err(|errno| Error::io(path, "inspect", errno))
}
