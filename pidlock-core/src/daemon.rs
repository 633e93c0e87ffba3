//! Handing the lock to the child that carries on after a fork: the daemon
//! pattern (DESIGN.md, *Processes and places*).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fstat, fstatat};

use crate::error::{Error, Result};
use crate::holders;
use crate::pid::Pid;
use crate::process::Pinned;
use crate::signal_context::{self, Registration};
use crate::sys::{self, Identity, flock, write_pid};

/// How long [`daemonized`] waits for the previous owner to exit. A parent
/// leaving through `daemon(3)` is gone within microseconds; one still there
/// after this long is not leaving, and two owners must never coexist.
const PREVIOUS_OWNER_PATIENCE: Duration = Duration::from_secs(10);

/// Makes the calling process the owner of every PID-file lock it inherited
/// through `fork()`: for the child that carries on after daemonizing.
///
/// The process that acquires a lock owns it; a forked child shares the kernel
/// lock but never removes or rewrites the file (DESIGN.md, *Messages*). A daemon is the
/// exception: its parent exits and the child *is* the instance from then on.
/// Call this in that child, once, after the fork(s). It waits for the previous
/// owner to exit, checks that this process still holds the lock on the file
/// its path names, writes this process's PID into it, and from then on this
/// process's exit paths (return, `exit`, SIGTERM...) remove the file.
///
/// The parent must leave without cleaning up, as `daemon(3)` does with
/// `_exit`: a parent that returns from `main` or calls `std::process::exit`
/// still owns the lock at that moment and removes the file, and this function
/// then reports [`Error::LockLost`].
///
/// ```no_run
/// #[pidlock_core::single_instance(path = "/run/mydaemon.pid")]
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // The lock is held: a second copy has already been refused. Detach:
///     // the parent _exit()s inside daemon(3), the child returns.
///     nix::unistd::daemon(false, false)?;
///     pidlock_core::daemonized()?;
///     // ... the daemon's work; the file names this process now ...
///     Ok(())
/// }
/// ```
///
/// Calling it in a process that inherited nothing, or that already owns all
/// its locks, does nothing.
///
/// # Errors
///
/// [`Error::PreviousOwnerRunning`] if the process that owned a lock is still
/// running after 10 s; [`Error::LockLost`] if the lock or the file went away
/// before this process took it over; [`Error::Io`] if the PID could not be
/// written. A lock that fails stays with its previous owner.
pub fn daemonized() -> Result<()> {
    for held in signal_context::held() {
        if !held.owner.is_current() {
            take_over(&held)?;
        }
    }
    Ok(())
}

fn take_over(held: &Registration) -> Result<()> {
    // Descriptors of our own for the guard's directory and file: the copy
    // of the registration only has their numbers, and the guard may be
    // dropped on another thread meanwhile. A number closed (or reused)
    // since fails the identity checks below.
    let io = |errno| Error::io(&held.path, "take over", errno);
    let dir = sys::dup_raw(held.dir).map_err(io)?;
    let file = sys::dup_raw(held.file).map_err(io)?;
    let (dir, file) = (dir.as_fd(), file.as_fd());
    let previous = Pid::new(held.owner.pid()).map(Pinned::open);
    // Wait only for an owner that still holds the lock: a parent gone
    // already may have had its PID given to an unrelated process.
    let still_holds = |previous: &Pinned| match sys::lock_key(file, held.identity) {
        Some(key) => holders::holds(previous.pid(), &key),
        None => !sys::VERIFIES_HOLDERS,
    };
    if let Some(Ok(Some(previous))) = previous
        && still_holds(&previous)
        && !previous.wait_for_exit(Instant::now() + PREVIOUS_OWNER_PATIENCE)
    {
        return Err(Error::PreviousOwnerRunning {
            path: held.path.clone(),
            pid: previous.pid(),
        });
    }
    let lost = || Error::LockLost {
        path: held.path.clone(),
    };
    // Our descriptor still shares the open file description that holds the
    // lock: taking it again succeeds at once. If it fails, the lock went away
    // (the previous owner released it, closing its copy, and someone else got
    // it); the file is not ours to write.
    match flock(file, nix::libc::LOCK_EX | nix::libc::LOCK_NB) {
        Ok(()) => {}
        Err(Errno::EWOULDBLOCK) => return Err(lost()),
        Err(errno) => return Err(Error::io(&held.path, "lock", errno)),
    }
    let stat = fstat(file).map_err(|errno| Error::io(&held.path, "inspect", errno))?;
    // The numbers came from the registry: if the guard was dropped meanwhile
    // and the numbers reused, the duplicate is some other file.
    if Identity::of(&stat) != held.identity {
        return Err(lost());
    }
    match fstatat(dir, held.name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(now) if Identity::of(&now) == held.identity && stat.st_nlink > 0 => {}
        Ok(_) | Err(Errno::ENOENT) => return Err(lost()),
        Err(errno) => return Err(Error::io(&held.path, "inspect", errno)),
    }
    write_pid(file, Pid::current(), stat.st_size, &held.path)?;
    held.owner.set_current();
    Ok(())
}
