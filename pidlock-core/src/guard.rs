//! The guard of a held PID-file lock: what releases it, and who may.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::holders;
use crate::messages;
use crate::pid::Pid;
use crate::restart::set_close_on_exec;
use crate::signal_context::{self, LetGo, Owner, Registration, Sharers};
use crate::sys::{self, HeldFile, Identity};
use crate::systemd;

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
pub(crate) struct ResolvedPath {
    pub(crate) path: PathBuf,
    pub(crate) resolved_in: Option<PathBuf>,
}

impl PidFileGuard {
    pub(crate) fn new(
        resolved: ResolvedPath,
        dir: OwnedFd,
        name: CString,
        locked: HeldFile,
        sharers: Sharers,
        announce: bool,
    ) -> Self {
        let ResolvedPath { path, resolved_in } = resolved;
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

    /// The owner's PID: this process's, unless this is a `fork()` child
    /// that has not called [`daemonized`](crate::daemonized). It is what the
    /// file says, unless [`name_holder`](Self::name_holder) named another
    /// process there.
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

    /// Lets the program that `command` starts share this lock: it inherits
    /// the locked descriptor, so the lock stays held for as long as that
    /// program runs, or anything it started that kept the descriptor (a
    /// daemon it forked), even if this process is killed. What
    /// `pidlock run` does.
    ///
    /// The descriptor, and the lock's sharers pipe with it (which tells this
    /// process's release whether another process still holds the lock),
    /// lose close-on-exec in the started child only, just before its
    /// `exec`: other children of this process, started at the same moment
    /// on other threads, never get them. This process remains the owner:
    /// when it lets go after the program has ended, the file is removed; if
    /// something the program left behind still holds the lock, the file
    /// stays with it and names it.
    ///
    /// If the guard is released before the command is spawned, the spawn
    /// fails with `EBADF` rather than hand the child some other descriptor
    /// that has the same number by then.
    ///
    /// ```
    /// use std::process::Command;
    /// use pidlock_core::{Pid, PidLock, Signals, Status};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("job.pid");
    /// let mut guard = PidLock::new(&path).signals(Signals::None).log_level(pidlock_core::LogLevel::Error).acquire()?;
    /// let mut command = Command::new("sleep");
    /// command.arg("60");
    /// let mut child = guard.share_with(&mut command).spawn()?;
    /// let pid = Pid::new(i32::try_from(child.id())?).expect("a child's PID is positive");
    /// guard.name_holder(pid)?;
    ///
    /// // Both hold the lock; the file, status and conflict reports name the child.
    /// # #[cfg(target_os = "linux")]
    /// # {
    /// let Status::Running(holder) = pidlock_core::status(&path)? else { panic!("not running") };
    /// assert_eq!(holder.pid(), Some(pid));
    /// # }
    ///
    /// child.kill()?;
    /// child.wait()?;
    /// guard.release()?; // nobody else holds it now: the file goes
    /// assert!(!path.exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn share_with<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        let Some(file) = &self.file else {
            // Released: there is nothing left to share.
            return command;
        };
        let registration = &self.registration;
        registration.sharers.ensure();
        let lock = Inherited {
            fd: file.as_raw_fd(),
            identity: registration.identity,
        };
        let sharers = registration
            .sharers
            .descriptors()
            .and_then(|(_, write)| Inherited::of(write));
        // SAFETY: the closure runs in the forked child before `exec`, and
        // only calls fstat(2) and fcntl(2), which are async-signal-safe, on
        // numbers (EBADF if closed); `io::Error::from_raw_os_error` does not
        // allocate.
        unsafe {
            command.pre_exec(move || {
                lock.inherit()?;
                if let Some(sharers) = sharers {
                    sharers.inherit()?;
                }
                Ok(())
            })
        }
    }

    /// Writes `pid` into the PID file in place of the owner's: for a process
    /// that shares this lock and does the work (see
    /// [`share_with`](Self::share_with)), so that `cat`, `pidlock status`,
    /// another instance's conflict report and `pidlock stop` name it. Under
    /// systemd, the `STATUS=` line names it too.
    ///
    /// This process stays the owner: its exit paths still remove the file.
    /// Name a process that holds the lock: a report names the process the
    /// file names only when the kernel shows that it holds the lock, and
    /// the owner otherwise. Does nothing once released, or in a process that
    /// does not own the lock (a `fork()` child, whose parent's file it is).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file could not be written; it then still names
    /// the owner, which holds the lock too.
    pub fn name_holder(&mut self, pid: Pid) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.registration.owner.is_current() {
            return Ok(());
        }
        sys::rewrite_pid(file.as_fd(), pid, self.path())?;
        if systemd::is_supervised() {
            systemd::notify(&format!(
                "STATUS={}",
                messages::holding_status(pid, self.path())
            ));
        }
        Ok(())
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

/// A descriptor a started command inherits, checked in the child to be the
/// file it was when the command was set up.
#[derive(Clone, Copy)]
struct Inherited {
    fd: RawFd,
    identity: Identity,
}

impl Inherited {
    fn of(fd: RawFd) -> Option<Self> {
        sys::identity_of_raw(fd).map(|(identity, _)| Self { fd, identity })
    }

    /// Clears close-on-exec, if the number still names the same file.
    /// Async-signal-safe: `fstat` and `fcntl` on a number.
    fn inherit(self) -> io::Result<()> {
        match sys::identity_of_raw(self.fd) {
            Some((identity, _)) if identity == self.identity => set_close_on_exec(self.fd, false),
            _ => Err(io::Error::from_raw_os_error(nix::libc::EBADF)),
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
/// let guard = PidLock::new(dir.path().join("job.pid")).signals(Signals::None).log_level(pidlock_core::LogLevel::Error).acquire()?;
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
