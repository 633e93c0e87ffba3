//! The guard of a held PID-file lock: what releases it, and who may.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::messages;
use crate::pid::Pid;
use crate::signal_context::{self, Owner, Registration};
use crate::sys::{self, Identity, Locked};

/// A held PID-file lock. Dropping it (or [`release`](Self::release)) removes
/// the file if it is still ours, then closes it, which drops the kernel lock.
///
/// The process that acquired the lock owns it. A child made by `fork()`
/// without `exec` has a copy of the guard and shares the kernel lock, but is
/// not the owner: dropping its copy, returning from `main`, `exit` or a
/// signal in the child only closes the child's descriptor, and the file keeps
/// naming the parent. A child that carries on after its parent exits (a
/// daemon) takes the lock over with [`daemonized`](crate::daemonized).
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct PidFileGuard {
    path: PathBuf,
    owner: Arc<Owner>,
    dir: OwnedFd,
    name: CString,
    /// `None` once released.
    file: Option<OwnedFd>,
    identity: Identity,
    /// The file's size when we locked it, to skip a needless `ftruncate`.
    size_when_locked: i64,
    cleanup: signal_context::Ticket,
    announce: bool,
}

impl PidFileGuard {
    pub(crate) fn new(
        path: PathBuf,
        dir: OwnedFd,
        name: CString,
        locked: Locked,
        announce: bool,
        resolved_in: Option<PathBuf>,
    ) -> Self {
        let identity = Identity::of(&locked.stat);
        let owner = Owner::current();
        let cleanup = signal_context::register(Registration {
            dir: dir.as_raw_fd(),
            file: locked.file.as_raw_fd(),
            name: name.clone(),
            identity,
            owner: Arc::clone(&owner),
            path: path.clone(),
            resolved_in,
            release_lines: announce.then(|| messages::release_lines(&path)),
        });
        Self {
            path,
            owner,
            dir,
            name,
            file: Some(locked.file),
            identity,
            size_when_locked: locked.stat.st_size,
            cleanup,
            announce,
        }
    }

    /// The absolute path of the PID file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PID written into the file: the owner's (this process's, unless
    /// this is a `fork()` child that has not called
    /// [`daemonized`](crate::daemonized)).
    #[must_use]
    pub fn pid(&self) -> Pid {
        Pid::new(self.owner.pid()).unwrap_or_else(Pid::current)
    }

    /// Whether this process owns the lock (it acquired it, or took it over
    /// with [`daemonized`](crate::daemonized)); false in a `fork()` child.
    #[must_use]
    pub fn is_owner(&self) -> bool {
        self.owner.is_current()
    }

    /// Releases now, reporting a failure to remove the file. Dropping the guard
    /// does the same and ignores that failure. Releasing again is a no-op.
    ///
    /// In a process that does not own the lock (a `fork()` child), releasing
    /// only closes this process's descriptor: the file stays, and the owner
    /// keeps the kernel lock.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file could not be checked or removed; the kernel
    /// lock is dropped regardless.
    pub fn release(&mut self) -> Result<()> {
        self.release_now()
    }

    pub(crate) fn write_pid(&mut self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        sys::write_pid(file.as_fd(), self.pid(), self.size_when_locked, &self.path)
    }

    fn release_now(&mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        if !self.owner.is_current() {
            // A fork child's copy: the file and the lock are the owner's.
            signal_context::unregister(&mut self.cleanup);
            drop(file);
            return Ok(());
        }
        if self.announce {
            messages::releasing();
        }
        // Unlink before close: once the descriptor closes, the kernel lock is
        // gone and a newcomer may lock and write this path; after that it is
        // not ours to remove. A newcomer that opened our inode before the
        // unlink sees it unlinked after locking and retries (see lock_file).
        let removed =
            signal_context::unlink_if_ours(self.dir.as_raw_fd(), &self.name, self.identity);
        signal_context::unregister(&mut self.cleanup);
        drop(file);
        match removed {
            Ok(_) => {
                if self.announce {
                    messages::released(&self.path);
                }
                Ok(())
            }
            Err(errno) => Err(Error::io(&self.path, "remove", errno)),
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
    signal_context::held_paths()
}
