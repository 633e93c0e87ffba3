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
//! The swap must never hide an instance:
//!
//! 1. The start takes a shared lock on the old file itself. It succeeds only
//!    when nobody holds the file exclusively, so no instance holds it; and
//!    from then on no process can take the exclusive lock on it, so no
//!    instance can appear there ("frozen"). A file some process holds
//!    exclusively is never replaced, even by a reader: an instance could
//!    lock it the moment that reader lets go, and then remove the new file
//!    when it leaves (its release checks the path, then unlinks it).
//! 2. Starts that replace take turns: each holds the *replacement lock*, a
//!    file `.<name>.replace` beside the PID file, mode 0600 (so no other
//!    user can open it, let alone hold it), locked and removed with the
//!    same protocol as the PID file itself. Without turns, a start that
//!    swapped the wrong file out and swapped it back could, with two others
//!    doing the same, move a running instance's file away for good.
//! 3. Holding it, the start checks that the path still names the old file
//!    (else another start replaced it: look again from the start).
//! 4. The new file is made under a temporary name in the same directory,
//!    created exclusively and locked exclusively before anyone can know it.
//! 5. `renameat2(RENAME_EXCHANGE)` swaps the two names in one step: the path
//!    names the new file, the temporary name the old one. While the start
//!    holds its turn and the old file is frozen, nothing else changes the
//!    path: other starts only open a file that is there, and only an owner
//!    removes one, and the frozen file has none. (Should it have been
//!    removed from outside and made again, the start swaps back and looks
//!    again.)
//! 6. The temporary name (now the old file) is removed; its readers keep an
//!    inode nobody will look at again. Then the turn is over.
//!
//! A start that crashes between 4 and 6 leaves a file under the temporary
//! name (`.<name>.<pid>.<n>.pidlock`); nothing reads it, and it can be
//! removed.
//!
//! Only Linux can swap two names atomically. Elsewhere, and on filesystems
//! that cannot (`EINVAL`), the lock loop waits a moment for readers that
//! are only passing (an observer's probe, another start freezing the
//! file), then reports those that stay ([`Error::Pinned`]), or waits for
//! them under `on_conflict = "wait"`, rather than risk two instances. A
//! file a reader holds exclusively is reported at once. A file owned by another user is never
//! replaced. The file's mode (0600) keeps other users from taking any lock
//! on it in the first place; readers are the owner's own processes, or
//! root's.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::{Error, Reader, Result};
use crate::pid::Pid;
use crate::sys::{self, Identity, flock, retry_eintr};
use crate::waiting::{self, Waited};

/// A busy file that only readers hold, as the lock loop found it.
pub(crate) struct Pinned {
    /// The old file, with this process's shared lock on it (step 1), kept
    /// until the swap is done.
    pub(crate) frozen: OwnedFd,
    pub(crate) stat: FileStat,
    pub(crate) readers: Vec<Reader>,
}

/// What became of the attempt.
pub(crate) enum Replaced {
    /// The path names a new file, locked on this descriptor.
    New(OwnedFd),
    /// Something changed meanwhile: look again from the start.
    Retry,
    /// The file cannot be replaced here (no atomic exchange of two names on
    /// this platform or filesystem): the caller waits a moment for readers
    /// that are only passing, and reports those that stay.
    Unswappable(Pinned),
}

/// How many temporary names are tried before giving up: another process
/// would have to have made each of them first.
const TEMPORARY_NAMES: u32 = 8;

/// How long a start waits for its turn. Turns last a few system calls; a
/// turn held longer belongs to a start that is stopped or stuck, and then
/// the readers are reported instead.
const TURN_PATIENCE: Duration = Duration::from_secs(2);

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
    if !sys::VERIFIES_HOLDERS {
        return Ok(Replaced::Unswappable(pinned));
    }
    let Some(turn) = Turn::take(dir, name, path)? else {
        return Err(pinned_error(path, pinned.readers));
    };
    let old = Identity::of(&pinned.stat);
    let still_there = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW);
    if !still_there.is_ok_and(|now| old.same_file(&now)) {
        // Another start replaced it before our turn (step 3).
        return Ok(Replaced::Retry);
    }
    let Some((temporary, new)) = create_temporary(dir, name, path)? else {
        return Ok(Replaced::Retry);
    };
    let discard = |new: OwnedFd| {
        let _ = unlinkat(dir, temporary.as_c_str(), UnlinkatFlags::NoRemoveDir);
        drop(new);
    };
    match sys::exchange(dir.as_fd(), &temporary, name) {
        Ok(()) => {}
        // The path is gone (removed from outside): look again from the
        // start, as the open does.
        Err(Errno::ENOENT) => {
            discard(new);
            return Ok(Replaced::Retry);
        }
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            discard(new);
            drop(turn);
            return Ok(Replaced::Unswappable(pinned));
        }
        Err(errno) => {
            discard(new);
            return Err(Error::io(path, "replace", errno));
        }
    }
    let swapped_out = fstatat(dir, temporary.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
    if !swapped_out.is_ok_and(|out| old.same_file(&out)) {
        // Step 5: not what we looked at (removed from outside and made
        // again meanwhile): put it back and look again.
        let _ = sys::exchange(dir.as_fd(), &temporary, name);
        discard(new);
        return Ok(Replaced::Retry);
    }
    match unlinkat(dir, temporary.as_c_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(Error::io(path, "remove the replaced", errno)),
    }
    // The turn first: another start waiting for it then finds the path
    // naming our file, which it cannot freeze.
    drop(turn);
    drop(pinned.frozen);
    Ok(Replaced::New(new))
}

fn pinned_error(path: &Path, readers: Vec<Reader>) -> Error {
    Error::Pinned {
        path: path.to_owned(),
        readers,
    }
}

/// Makes the new file under a temporary name and locks it (step 4);
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
        let temporary = beside(name, &format!(".{me}.{attempt}.pidlock"), path)?;
        let file = match retry_eintr(|| {
            openat(
                dir,
                temporary.as_c_str(),
                flags,
                Mode::from_bits_truncate(sys::FILE_MODE),
            )
        }) {
            Ok(file) => file,
            Err(Errno::EEXIST) => continue,
            Err(errno) => return Err(Error::io(path, "create a replacement for", errno)),
        };
        if flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB).is_err() {
            let _ = unlinkat(dir, temporary.as_c_str(), UnlinkatFlags::NoRemoveDir);
            return Ok(None);
        }
        return Ok(Some((temporary, file)));
    }
    Err(Error::io(path, "create a replacement for", Errno::EEXIST))
}

/// `.<name><suffix>`: a hidden name beside the PID file.
fn beside(name: &CStr, suffix: &str, path: &Path) -> Result<CString> {
    let mut bytes = b".".to_vec();
    bytes.extend_from_slice(name.to_bytes());
    bytes.extend_from_slice(suffix.as_bytes());
    CString::new(bytes).map_err(|_| Error::InvalidPath {
        path: path.to_owned(),
        reason: "it contains a NUL byte",
    })
}

/// A start's turn to replace (step 2): the replacement lock, held.
struct Turn<'a> {
    dir: &'a OwnedFd,
    name: CString,
    file: Option<OwnedFd>,
    identity: Identity,
}

impl<'a> Turn<'a> {
    /// Waits (boundedly) for the turn; `None` if it did not come, or if the
    /// replacement lock is not ours to use (another user made it first, in
    /// a directory everyone may write).
    fn take(dir: &'a OwnedFd, name: &CStr, path: &Path) -> Result<Option<Self>> {
        let name = beside(name, ".replace", path)?;
        let deadline = Instant::now() + TURN_PATIENCE;
        let flags =
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY;
        let me = nix::unistd::geteuid().as_raw();
        // The same protocol as the PID file: lock, then check that the name
        // still names what we locked (a turn just over removes it).
        while Instant::now() < deadline {
            let file = match retry_eintr(|| {
                openat(dir, name.as_c_str(), flags, Mode::from_bits_truncate(0o600))
            }) {
                Ok(file) => file,
                Err(Errno::ENOENT) => continue,
                Err(Errno::EACCES | Errno::ELOOP | Errno::EMLINK) => return Ok(None),
                Err(errno) => return Err(Error::io(path, "open the replacement lock of", errno)),
            };
            let stat = fstat(&file).map_err(|errno| Error::io(path, "inspect", errno))?;
            if stat.st_uid != me || sys::unsafe_kind(&stat).is_some() || stat.st_nlink > 1 {
                return Ok(None);
            }
            let file = match waiting::lock_exclusive(file, Some(deadline), None) {
                Ok(Waited::Acquired(file)) => file,
                Ok(Waited::TimedOut | Waited::Unnamed | Waited::OnlyShared) => return Ok(None),
                Err(errno) => return Err(Error::io(path, "lock the replacement lock of", errno)),
            };
            let identity = Identity::of(&stat);
            match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(now) if identity.same_file(&now) && now.st_nlink > 0 => {
                    return Ok(Some(Self {
                        dir,
                        name,
                        file: Some(file),
                        identity,
                    }));
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(errno) => return Err(Error::io(path, "inspect", errno)),
            }
        }
        Ok(None)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Removed while held, as a PID file is: a start waiting for it finds
        // it gone once it gets the lock, and makes a new one.
        let still_ours = fstatat(self.dir, self.name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|now| self.identity.same_file(&now));
        if still_ours {
            let _ = unlinkat(self.dir, self.name.as_c_str(), UnlinkatFlags::NoRemoveDir);
        }
        drop(self.file.take());
    }
}

/// The new file's `stat`, for the lock loop's check that the path names it.
pub(crate) fn stat_of(file: &OwnedFd, path: &Path) -> Result<FileStat> {
    fstat(file).map_err(|errno| Error::io(path, "inspect", errno))
}
