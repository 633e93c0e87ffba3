//! The guard of a held PID-file lock: what releases it, and who may.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::holders;
use crate::messages;
use crate::pid::Pid;
use crate::signal_context::{self, LetGo, Owner, Registration, Sharers};
use crate::sys::{self, Identity, Locked};

/// A held PID-file lock. Dropping it (or [`release`](Self::release)) removes
/// the file if it is still ours and no other process shares the lock, then
/// closes it, which drops this process's hold on the kernel lock.
///
/// The process that acquired the lock owns it. A child made by `fork()`
/// without `exec` has a copy of the guard and shares the kernel lock, but is
/// not the owner: dropping its copy, returning from `main`, `exit` or a
/// signal in the child only closes the child's descriptor, and the file keeps
/// naming the parent. A child that carries on after its parent exits (a
/// daemon) takes the lock over with [`daemonized`](crate::daemonized).
///
/// The lock is held for as long as any process holds it: when the owner
/// lets go while a forked child still shares the lock, the file stays with
/// the child (and says so: it then names the child), so that no new
/// instance can start beside it.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct PidFileGuard {
    registration: Arc<Registration>,
    /// Kept open for the registration, which names it by number.
    _dir: OwnedFd,
    /// `None` once released.
    file: Option<OwnedFd>,
    /// The file's size when we locked it, to skip a needless `ftruncate`.
    size_when_locked: i64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("path", &self.path)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Where a lock's path came from: the absolute path, and the working
/// directory that resolved it when it was given relative.
pub(crate) struct Resolved {
    pub(crate) path: PathBuf,
    pub(crate) resolved_in: Option<PathBuf>,
}

impl PidFileGuard {
    pub(crate) fn new(
        resolved: Resolved,
        dir: OwnedFd,
        name: CString,
        locked: Locked,
        sharers: Sharers,
        announce: bool,
    ) -> Self {
        let Resolved { path, resolved_in } = resolved;
        let registration = signal_context::register(Registration {
            dir: dir.as_raw_fd(),
            file: locked.file.as_raw_fd(),
            name,
            identity: Identity::of(&locked.stat),
            owner: Owner::current(),
            sharers,
            exit_lines: announce.then(|| messages::exit_lines(&path)),
            path,
            resolved_in,
            announce,
        });
        Self {
            registration,
            _dir: dir,
            file: Some(locked.file),
            size_when_locked: locked.stat.st_size,
        }
    }

    /// The absolute path of the PID file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.registration.path
    }

    /// The PID written into the file: the owner's (this process's, unless
    /// this is a `fork()` child that has not called
    /// [`daemonized`](crate::daemonized)).
    #[must_use]
    pub fn pid(&self) -> Pid {
        Pid::new(self.registration.owner.pid()).unwrap_or_else(Pid::current)
    }

    /// Whether this process owns the lock (it acquired it, or took it over
    /// with [`daemonized`](crate::daemonized)); false in a `fork()` child.
    #[must_use]
    pub fn is_owner(&self) -> bool {
        self.registration.owner.is_current()
    }

    /// Releases now, reporting a failure to remove the file. Dropping the guard
    /// does the same and ignores that failure. Releasing again is a no-op.
    ///
    /// In a process that does not own the lock (a `fork()` child), releasing
    /// only closes this process's descriptor: the file stays, and the owner
    /// keeps the kernel lock. When other processes still share the lock (the
    /// owner forked, and a child lives on with it), the file stays with them.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file could not be checked or removed; this
    /// process's hold on the kernel lock is dropped regardless.
    pub fn release(&mut self) -> Result<()> {
        self.release_now()
    }

    pub(crate) fn write_pid(&mut self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        sys::write_pid(file.as_fd(), self.pid(), self.size_when_locked, self.path())
    }

    fn release_now(&mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let registration = &self.registration;
        if !registration.owner.is_current() {
            // A fork child's copy: the file and the lock are the owner's.
            signal_context::unregister(registration);
            registration.sharers.forget();
            drop(file);
            return Ok(());
        }
        if registration.announce {
            messages::releasing();
        }
        // Unlink before close: once the descriptor closes, the kernel lock is
        // gone and a newcomer may lock and write this path; after that it is
        // not ours to remove. A newcomer that opened our inode before the
        // unlink sees it unlinked after locking and retries (see lock_file).
        let outcome = signal_context::let_go(registration);
        if outcome == Ok(LetGo::Kept) {
            self.leave_to_sharers(&file);
        }
        signal_context::unregister(registration);
        drop(file);
        match outcome {
            Ok(LetGo::Removed | LetGo::NotOurs) => {
                if registration.announce {
                    messages::released(self.path());
                }
                Ok(())
            }
            Ok(LetGo::Kept) => Ok(()),
            Err(errno) => Err(Error::io(self.path(), "remove", errno)),
        }
    }

    /// Other processes share the lock: the file stays, and names the one
    /// that carries on when it can be found, so that `cat` and `kill` reach
    /// a process that holds the lock rather than this one, which is leaving.
    fn leave_to_sharers(&self, file: &OwnedFd) {
        let me = Pid::current();
        let key = sys::lock_key(file.as_fd(), self.registration.identity);
        let sharer = key.and_then(|key| holders::sharer_of(&key, me));
        if let Some(sharer) = sharer {
            let _ = sys::rewrite_pid(file.as_fd(), sharer, self.path());
        }
        if self.registration.announce {
            messages::kept_for_sharers(self.path(), sharer);
        }
    }
}

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        // A failure here has nowhere to go; `release` reports it.
        let _ = self.release_now();
    }
}

/// The absolute paths of the PID files this process holds and owns right
/// now, in the order they were locked: what to pass to `pidlock status`.
///
/// ```
/// use pidlock_core::{PidLock, Signals};
///
/// let dir = tempfile::tempdir()?;
/// let guard = PidLock::new(dir.path().join("job.pid")).signals(Signals::None).quiet(true).acquire()?;
/// assert!(pidlock_core::held_pid_files().contains(&guard.path().to_path_buf()));
/// drop(guard);
/// assert!(pidlock_core::held_pid_files().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn held_pid_files() -> Vec<PathBuf> {
    signal_context::owned()
        .iter()
        .map(|held| held.path.clone())
        .collect()
}
