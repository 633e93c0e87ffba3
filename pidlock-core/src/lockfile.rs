//! The lock-file protocol on one host (SPEC §4), after FreeBSD's `flopen(3)`
//! and `pidfile(3)`.
//!
//! The kernel lock (`flock`) is the truth; the PID written in the file is for
//! people and tools. Every step that can race with another instance says which
//! race it closes.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, ftruncate, unlinkat};

use crate::backend::{Backend, Held};
use crate::error::{Error, FileKind, Result};
use crate::exit_cleanup::{self, Owner};
use crate::holders;
use crate::messages::{self, Level, LogLevel};
use crate::pid::{self, Contents, Pid};
use crate::policy::{Next, OnConflict, Resolver};
use crate::restart;
use crate::signals::{self, Signals};
use crate::systemd;

/// How often we open, lock and find the path replaced before giving up. Each
/// retry means another process removed or replaced the file between our open
/// and our lock, which a normal restart does at most once or twice.
const OPEN_ATTEMPTS: usize = 16;

/// A busy lock whose holder cannot be verified is tried again for this long
/// before it is reported: a holder that has locked but not written its PID
/// yet has written it by then (FreeBSD's `pidfile_open` waits the same
/// 100 ms), and a holder out of sight stays out of sight.
const UNVERIFIED_PATIENCE: Duration = Duration::from_millis(100);
const UNVERIFIED_PAUSE: Duration = Duration::from_millis(1);
/// How often the lock is tried between two looks for its holder (a look
/// reads the lock lines of every descriptor on the machine).
const RETRIES_PER_LOOK: u32 = 5;
/// When the only visible locks are observers' shared probes, keep trying
/// this long, this often: observers delay a start, never refuse it.
const OBSERVED_PATIENCE: Duration = Duration::from_secs(2);
const OBSERVED_PAUSE: Duration = Duration::from_micros(200);

/// The one-host lock: a PID file held with `flock(2)`.
///
/// The path is resolved against the working directory when [`acquire`] runs;
/// the guard keeps a descriptor of the directory, so the right file is
/// removed even if the program changes directory later.
///
/// ```
/// use pidlock_core::{Error, PidLock, Signals};
///
/// let dir = tempfile::tempdir()?;
/// let lock = PidLock::new(dir.path().join("worker.pid")).signals(Signals::None);
/// let mut guard = lock.acquire()?;
/// assert_eq!(std::fs::read_to_string(guard.path())?, format!("{}\n", std::process::id()));
///
/// // A second acquisition of the same file in this process is refused.
/// assert!(matches!(lock.acquire(), Err(Error::HeldByThisProcess { .. })));
///
/// guard.release()?;
/// assert!(!dir.path().join("worker.pid").exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`acquire`]: PidLock::acquire
#[derive(Clone, Debug)]
pub struct PidLock {
    path: PathBuf,
    signals: Signals,
    on_conflict: OnConflict,
    log_level: LogLevel,
    notify_ready: bool,
}

impl PidLock {
    /// A lock on the PID file at `path` (relative paths are taken against the
    /// working directory at [`acquire`](Self::acquire) time).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            signals: Signals::Auto,
            on_conflict: OnConflict::Exit,
            log_level: LogLevel::Info,
            notify_ready: false,
        }
    }

    /// What to do when another process holds the lock: fail at once (the
    /// default), wait, or take over; see [`OnConflict`].
    #[must_use]
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self
    }

    /// Like [`acquire`](Self::acquire), but waits up to `timeout` for the
    /// holder to let go (woken by the kernel when it does).
    ///
    /// ```
    /// use std::time::Duration;
    /// use pidlock_core::{Error, PidLock, Signals};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("job.pid");
    /// let guard = PidLock::new(&path).signals(Signals::None).acquire_timeout(Duration::from_secs(1))?;
    /// # drop(guard);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), with [`Error::TimedOut`] in place of
    /// [`Error::AlreadyRunning`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<PidFileGuard> {
        self.clone()
            .on_conflict(OnConflict::Wait {
                timeout: Some(timeout),
            })
            .acquire()
    }

    /// Whether a terminating signal removes the file first (the default,
    /// [`Signals::Auto`]); see [`Signals`].
    #[must_use]
    pub fn signals(mut self, signals: Signals) -> Self {
        self.signals = signals;
        self
    }

    /// Turns off the INFO and WARNING lines of SPEC §6 (acquired, released,
    /// stale, corrupted): `quiet(true)` is `log_level(LogLevel::Error)`.
    /// Errors are returned, never printed, either way.
    #[must_use]
    pub fn quiet(self, quiet: bool) -> Self {
        self.log_level(if quiet {
            LogLevel::Error
        } else {
            LogLevel::Info
        })
    }

    /// The least severe lines to print (default [`LogLevel::Info`]); the
    /// `PIDLOCK_LOG` environment variable, when set, wins.
    #[must_use]
    pub fn log_level(mut self, log_level: LogLevel) -> Self {
        self.log_level = log_level;
        self
    }

    /// Sends `READY=1` to the service manager (systemd's `Type=notify`)
    /// once the lock is held, for a program whose readiness is holding the
    /// lock. Off by default: most programs are ready later, and say so
    /// themselves. `STATUS=` lines are sent either way when `NOTIFY_SOCKET`
    /// is set, and nothing is sent when it is not.
    #[must_use]
    pub fn notify_ready(mut self, notify_ready: bool) -> Self {
        self.notify_ready = notify_ready;
        self
    }

    /// The path as given.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock without waiting, writes this process's PID into the file
    /// and returns the guard that releases both.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] when another process holds it,
    /// [`Error::HeldByThisProcess`] when this one already does,
    /// [`Error::UnsafePath`] when the path is not a regular file, and
    /// [`Error::Io`] with the OS reason for everything else.
    pub fn acquire(&self) -> Result<PidFileGuard> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::InvalidPath {
                path: PathBuf::new(),
                reason: "it is empty",
            });
        }
        let log_level = self.log_level.effective();
        let path = std::path::absolute(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            action: "resolve the absolute path of",
            source,
        })?;
        let (parent, name) = split(&path)?;
        let dir = open_dir(parent, &path)?;
        if self.signals == Signals::Auto {
            signals::install();
        }
        let announce = log_level.shows(Level::Info);
        if let Some(adopted) = restart::adopt(dir.as_fd(), &name) {
            let guard = PidFileGuard::new(path, dir, name, adopted, announce);
            if announce {
                messages::kept_across_restart(guard.pid(), &guard.path);
            }
            self.notify_held(&guard);
            return Ok(guard);
        }
        let mut resolver = Resolver::new(self.on_conflict, &path, log_level);
        let locked = lock_file(&dir, &name, &path, &mut resolver)?;
        let previous = if locked.created {
            None
        } else {
            Some(read_contents(locked.file.as_fd(), &locked.stat, &path)?)
        };
        let mut guard = PidFileGuard::new(path, dir, name, locked, announce);
        guard.write_pid()?;
        if log_level.shows(Level::Warning) {
            match previous {
                Some(Contents::Pid(old)) => messages::stale(&guard.path, old, old.is_alive()),
                Some(Contents::Corrupted(quote)) => messages::corrupted(&guard.path, &quote),
                None => {}
            }
        }
        if announce {
            messages::acquired(guard.pid(), &guard.path);
        }
        self.notify_held(&guard);
        Ok(guard)
    }

    /// Tells the service manager, if any, who holds the lock now.
    fn notify_held(&self, guard: &PidFileGuard) {
        if !systemd::is_supervised() {
            return;
        }
        let mut state = format!(
            "STATUS={}",
            messages::holding_status(guard.pid(), &guard.path)
        );
        if self.notify_ready {
            state.push_str("\nREADY=1");
        }
        systemd::notify(&state);
    }
}

impl Backend for PidLock {
    fn acquire(&self) -> Result<Box<dyn Held>> {
        PidLock::acquire(self).map(|guard| Box::new(guard) as Box<dyn Held>)
    }
}

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
    cleanup: exit_cleanup::Ticket,
    announce: bool,
}

impl PidFileGuard {
    fn new(path: PathBuf, dir: OwnedFd, name: CString, locked: Locked, announce: bool) -> Self {
        let identity = Identity::of(&locked.stat);
        let owner = Owner::current();
        let cleanup = exit_cleanup::register(exit_cleanup::Registration {
            dir: dir.as_raw_fd(),
            file: locked.file.as_raw_fd(),
            name: name.clone(),
            identity,
            owner: Arc::clone(&owner),
            path: path.clone(),
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

    fn write_pid(&mut self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        write_pid(file.as_fd(), self.pid(), self.size_when_locked, &self.path)
    }

    fn release_now(&mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        if !self.owner.is_current() {
            // A fork child's copy: the file and the lock are the owner's.
            exit_cleanup::unregister(&mut self.cleanup);
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
        let removed = unlink_if_ours(self.dir.as_fd(), &self.name, self.identity);
        exit_cleanup::unregister(&mut self.cleanup);
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

impl Held for PidFileGuard {}

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
    exit_cleanup::held_paths()
}

/// Writes `"<pid>\n"` at offset 0, then truncates to that length if the file
/// was longer, never to zero first: truncating to zero and rewriting makes
/// ext4 flush the file on close (its `auto_da_alloc` heuristic), a disk write
/// per start, and a reader never sees an empty file.
pub(crate) fn write_pid(file: BorrowedFd<'_>, pid: Pid, size: i64, path: &Path) -> Result<()> {
    let mut buf = [0; 12];
    let text = pid::render(pid, &mut buf);
    match retry_eintr(|| nix::sys::uio::pwrite(file, text, 0)) {
        Ok(n) if n == text.len() => {}
        Ok(_) => {
            return Err(Error::Io {
                path: path.to_owned(),
                action: "write the PID into",
                source: io::Error::new(io::ErrorKind::WriteZero, "short write"),
            });
        }
        Err(errno) => return Err(Error::io(path, "write the PID into", errno)),
    }
    let len = text.len() as i64;
    if size > len {
        retry_eintr(|| ftruncate(file, len)).map_err(|errno| Error::io(path, "truncate", errno))?;
    }
    Ok(())
}

/// Which inode a path named when we locked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    // The casts widen `dev_t`/`ino_t`, whose width differs between platforms.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub(crate) fn of(stat: &FileStat) -> Self {
        Self::from_raw(stat.st_dev as u64, stat.st_ino as u64)
    }

    pub(crate) fn from_raw(dev: u64, ino: u64) -> Self {
        Self { dev, ino }
    }

    /// `dev` and `ino`, as written into the restart hand-over.
    pub(crate) fn raw(self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// How `/proc/locks` names this file: hex `major:minor`, then the inode.
    #[cfg(target_os = "linux")]
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub(crate) fn proc_locks_key(self) -> String {
        let dev = self.dev as nix::libc::dev_t;
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        format!("{major:02x}:{minor:02x}:{}", self.ino)
    }

    fn same_file(self, other: &FileStat) -> bool {
        self == Self::of(other)
    }
}

/// The inode a raw descriptor number refers to, if it is open. The raw
/// `fstat` takes a number, not a borrowed descriptor: on one that is not
/// open it fails with `EBADF`, which is all the callers need to know.
pub(crate) fn identity_of_raw(fd: RawFd) -> Option<(Identity, FileStat)> {
    let mut stat = std::mem::MaybeUninit::<nix::libc::stat>::uninit();
    // SAFETY: fstat on any number is defined (EBADF if closed) and fills
    // `stat` on success.
    let status = unsafe { nix::libc::fstat(fd, stat.as_mut_ptr()) };
    (status == 0).then(|| {
        // SAFETY: initialised by the successful call.
        let stat = unsafe { stat.assume_init() };
        (Identity::of(&stat), stat)
    })
}

/// Removes `name` from `dir` if it still names the inode we locked.
///
/// Async-signal-safe (`fstatat`, `unlinkat`; no allocation: the name is a
/// `CStr` already), so the signal handler and `atexit` use it too.
pub(crate) fn unlink_if_ours(
    dir: BorrowedFd<'_>,
    name: &CStr,
    identity: Identity,
) -> std::result::Result<bool, Errno> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(now) if identity.same_file(&now) => {}
        // Gone, or replaced by another instance's file: not ours to touch.
        Ok(_) | Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(errno),
    }
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// A file we hold the lock on, verified to be the one the path names.
pub(crate) struct Locked {
    pub(crate) file: OwnedFd,
    pub(crate) stat: FileStat,
    /// We created it just now, so it holds nothing to report on.
    pub(crate) created: bool,
}

fn split(path: &Path) -> Result<(&Path, CString)> {
    let invalid = |reason| Error::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid("it has no file name"));
    };
    let name = CString::new(name.as_bytes()).map_err(|_| invalid("it contains a NUL byte"))?;
    Ok((parent, name))
}

/// The directory is only ever used as the base of `openat`, `fstatat` and
/// `unlinkat`: on Linux `O_PATH` opens it without the permission check and
/// file setup a readable descriptor needs (measured: 2 µs less per
/// acquisition, see BENCHMARKS.md).
#[cfg(target_os = "linux")]
const DIRECTORY_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);
#[cfg(not(target_os = "linux"))]
const DIRECTORY_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Opens the directory the PID file lives in, creating it (0755) if missing.
fn open_dir(parent: &Path, path: &Path) -> Result<OwnedFd> {
    let open = || retry_eintr(|| nix::fcntl::open(parent, DIRECTORY_FLAGS, Mode::empty()));
    match open() {
        Ok(dir) => Ok(dir),
        Err(Errno::ENOENT) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| Error::Io {
                    path: path.to_owned(),
                    action: "create the directory of",
                    source,
                })?;
            open().map_err(|errno| Error::io(path, "open the directory of", errno))
        }
        Err(errno) => Err(Error::io(path, "open the directory of", errno)),
    }
}

/// Steps 1–3 of SPEC §4: open (creating if needed), refuse anything but a
/// regular file, `flock` without blocking, then check the path still names
/// what we locked.
fn lock_file(
    dir: &OwnedFd,
    name: &CStr,
    path: &Path,
    resolver: &mut Resolver<'_>,
) -> Result<Locked> {
    let mut replaced = 0;
    while replaced < OPEN_ATTEMPTS {
        let Opened {
            file,
            created,
            read_only,
        } = match open_file(dir.as_fd(), name, path) {
            Ok(opened) => opened,
            // Removed between our O_EXCL attempt and the plain open: start again.
            Err(None) => {
                replaced += 1;
                continue;
            }
            Err(Some(error)) => return Err(error),
        };
        let stat = fstat(&file).map_err(|errno| Error::io(path, "inspect", errno))?;
        if let Some(kind) = unsafe_kind(&stat) {
            return Err(Error::UnsafePath {
                path: path.to_owned(),
                kind,
            });
        }
        let file =
            match retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)) {
                Ok(()) => file,
                Err(Errno::EWOULDBLOCK) => match busy(file, &stat, path) {
                    Busy::Locked(file) => file,
                    Busy::Held(file, conflict) => {
                        match resolver.resolve(file, Identity::of(&stat), conflict)? {
                            Next::Locked(file) => {
                                // A wait is not a replacement: each hand-over
                                // may legitimately need one more round. The
                                // resolver bounds how many it allows.
                                replaced = 0;
                                file
                            }
                            Next::Retry => continue,
                        }
                    }
                },
                Err(errno) => return Err(Error::io(path, "lock", errno)),
            };
        // Between our open and our lock, the previous holder may have removed
        // the file (we then hold a lock on an unlinked inode) or another
        // instance may have replaced it. Only a lock on the inode the path
        // names now counts. What we read of it (size, links, owner, mode) is
        // read now, under the lock, not before it.
        let now = match fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(now) if Identity::of(&stat).same_file(&now) && now.st_nlink > 0 => now,
            Ok(_) | Err(Errno::ENOENT) => {
                replaced += 1;
                continue;
            }
            Err(errno) => return Err(Error::io(path, "inspect", errno)),
        };
        if !created {
            check_not_foreign(&file, &now, path, read_only)?;
        } else if now.st_mode & 0o7777 != 0o644 {
            // A umask such as 077 narrowed the mode: other users would get
            // "permission denied" instead of the conflict, and `cat` fails.
            nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(0o644))
                .map_err(|errno| Error::io(path, "set the mode of", errno))?;
        }
        return Ok(Locked {
            file,
            stat: now,
            created,
        });
    }
    Err(Error::Unstable {
        path: path.to_owned(),
    })
}

/// A file we did not create must be ours alone before we write to it
/// (SPEC §10, "Other users and hostile files"): owned by the user we run
/// as, and with no other name (a hard link planted at the path would make
/// us overwrite the file it points to). A reused file's mode is set back to
/// 0644, so nobody else can write the PID that tools will signal.
// `nlink_t` is u64 on Linux/x86_64 and narrower elsewhere.
#[allow(clippy::useless_conversion)]
fn check_not_foreign(file: &OwnedFd, now: &FileStat, path: &Path, read_only: bool) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if now.st_uid != me {
        return Err(Error::ForeignOwner {
            path: path.to_owned(),
            owner: messages::user_name(now.st_uid),
        });
    }
    if now.st_nlink > 1 {
        return Err(Error::HardLinked {
            path: path.to_owned(),
            links: u64::from(now.st_nlink),
        });
    }
    if read_only {
        // Ours, but not writable to us (mode 0444?): say so.
        return Err(Error::io(path, "open for writing", Errno::EACCES));
    }
    if now.st_mode & 0o7777 != 0o644 {
        nix::sys::stat::fchmod(file, Mode::from_bits_truncate(0o644))
            .map_err(|errno| Error::io(path, "set the mode of", errno))?;
    }
    Ok(())
}

/// Opens the PID file, creating it if absent. `Err(None)` means "vanished
/// under us, try again".
///
/// `O_CREAT | O_EXCL` first tells us, without another system call, whether the
/// file is new (nothing to read) or was left behind (stale or corrupted). An
/// existing path is looked at before it is opened: a device is never opened
/// (opening one can have effects), and `O_NOCTTY` keeps a terminal swapped in
/// at the last moment from becoming ours. `O_NOFOLLOW` refuses a symlink;
/// `O_NONBLOCK` keeps a FIFO from blocking the open; `O_CLOEXEC` keeps
/// children from inheriting the lock. A file we may not write (another
/// user's) is opened read-only: enough to lock it and learn whether its
/// instance runs, which is what the user needs to hear.
fn open_file(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
) -> std::result::Result<Opened, Option<Error>> {
    let flags =
        OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let create = flags | OFlag::O_CREAT | OFlag::O_EXCL;
    let mode = Mode::from_bits_truncate(0o644);
    match retry_eintr(|| openat(dir, name, create, mode)) {
        Ok(file) => {
            return Ok(Opened {
                file,
                created: true,
                read_only: false,
            });
        }
        Err(Errno::EEXIST) => {}
        Err(errno) => return Err(Some(open_error(dir, name, path, "create", errno))),
    }
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(existing) => {
            if let Some(kind) = unsafe_kind(&existing) {
                return Err(Some(Error::UnsafePath {
                    path: path.to_owned(),
                    kind,
                }));
            }
        }
        Err(Errno::ENOENT) => return Err(None),
        Err(errno) => return Err(Some(Error::io(path, "inspect", errno))),
    }
    let (file, read_only) = match retry_eintr(|| openat(dir, name, flags, Mode::empty())) {
        Ok(file) => (file, false),
        Err(Errno::EACCES) => {
            let read_only = (flags - OFlag::O_RDWR) | OFlag::O_RDONLY;
            match retry_eintr(|| openat(dir, name, read_only, Mode::empty())) {
                Ok(file) => (file, true),
                Err(Errno::ENOENT) => return Err(None),
                Err(errno) => return Err(Some(open_error(dir, name, path, "open", errno))),
            }
        }
        Err(Errno::ENOENT) => return Err(None),
        Err(errno) => return Err(Some(open_error(dir, name, path, "open", errno))),
    };
    Ok(Opened {
        file,
        created: false,
        read_only,
    })
}

/// A PID file just opened.
struct Opened {
    file: OwnedFd,
    /// We created it, so it holds nothing to report on and is ours.
    created: bool,
    /// We may not write it: it is not ours, or not writable.
    read_only: bool,
}

/// Explains a failed open: a symlink (`ELOOP`, `EMLINK` on FreeBSD), a
/// directory (`EISDIR`) or a socket (`ENXIO`) is named as such.
fn open_error(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
    action: &'static str,
    errno: Errno,
) -> Error {
    let kind = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .and_then(|stat| unsafe_kind(&stat));
    match kind {
        Some(kind) => Error::UnsafePath {
            path: path.to_owned(),
            kind,
        },
        None => Error::io(path, action, errno),
    }
}

pub(crate) fn unsafe_kind(stat: &FileStat) -> Option<FileKind> {
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    Some(match kind {
        SFlag::S_IFREG => return None,
        SFlag::S_IFLNK => FileKind::Symlink,
        SFlag::S_IFDIR => FileKind::Directory,
        SFlag::S_IFIFO => FileKind::Fifo,
        SFlag::S_IFSOCK => FileKind::Socket,
        SFlag::S_IFCHR => FileKind::CharDevice,
        _ => FileKind::BlockDevice,
    })
}

/// What a busy lock turned out to be.
enum Busy {
    /// It was only busy for an instant (an observer's probe, or a holder on
    /// its way out): we hold it now.
    Locked(OwnedFd),
    /// Another holder (what [`OnConflict::Exit`] reports), or an error.
    Held(OwnedFd, Error),
}

/// The lock is busy: find out who holds it. A verified holder is reported at
/// once. When none can be verified, the lock may be an observer's shared
/// probe (`status`, `stop`, `wait` hold one for an instant) or a holder out of
/// our sight (another user, another PID namespace): keep trying the lock for
/// a moment, then report what the file claims, marked unverified.
fn busy(file: OwnedFd, stat: &FileStat, path: &Path) -> Busy {
    let identity = Identity::of(stat);
    // Only this process's own records say "this process": a PID number in
    // the file that happens to equal ours may be another namespace's.
    if exit_cleanup::is_held(identity) {
        let error = Error::HeldByThisProcess {
            path: path.to_owned(),
        };
        return Busy::Held(file, error);
    }
    let started = std::time::Instant::now();
    let mut patience = UNVERIFIED_PATIENCE;
    loop {
        let holders = holders::find(identity);
        if !holders.exclusive.is_empty() {
            let holder = holders.describe(file_pid(file.as_fd(), path));
            let path = path.to_owned();
            return Busy::Held(file, Error::AlreadyRunning { path, holder });
        }
        // A visible shared lock is an observer's probe (`status`, `stop`,
        // `wait`): it lasts microseconds, but observers running in a loop
        // on a loaded machine can be preempted while they hold it. They may
        // delay a start, never refuse it.
        let pause = if holders.shared {
            patience = OBSERVED_PATIENCE;
            OBSERVED_PAUSE
        } else {
            UNVERIFIED_PAUSE
        };
        for _ in 0..RETRIES_PER_LOOK {
            std::thread::sleep(pause);
            match retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)) {
                Ok(()) => return Busy::Locked(file),
                Err(Errno::EWOULDBLOCK) => {}
                Err(errno) => return Busy::Held(file, Error::io(path, "lock", errno)),
            }
        }
        if started.elapsed() >= patience {
            break;
        }
    }
    let holder = holders::Holders::default().describe(file_pid(file.as_fd(), path));
    let path = path.to_owned();
    Busy::Held(file, Error::AlreadyRunning { path, holder })
}

/// The PID the file names, if it names one.
fn file_pid(file: BorrowedFd<'_>, path: &Path) -> Option<Pid> {
    let stat = fstat(file).ok()?;
    match read_contents(file, &stat, path) {
        Ok(Contents::Pid(pid)) => Some(pid),
        _ => None,
    }
}

/// Reads what the file says, at most [`pid::READ_LIMIT`] bytes of it.
pub(crate) fn read_contents(
    file: BorrowedFd<'_>,
    stat: &FileStat,
    path: &Path,
) -> Result<Contents> {
    let mut head = [0; pid::READ_LIMIT];
    let n = retry_eintr(|| nix::sys::uio::pread(file, &mut head, 0))
        .map_err(|errno| Error::io(path, "read", errno))?;
    let len = u64::try_from(stat.st_size).unwrap_or(0).max(n as u64);
    Ok(Contents::parse(&head[..n], len))
}

/// `flock(2)`. nix's `Flock` wrapper unlocks on drop, which would add a system
/// call to every release and briefly free the lock before the unlink; the
/// lock must instead die with the descriptor, after the unlink.
pub(crate) fn flock(file: BorrowedFd<'_>, operation: i32) -> nix::Result<()> {
    // SAFETY: `file` is a valid open descriptor for the duration of the call.
    Errno::result(unsafe { nix::libc::flock(file.as_raw_fd(), operation) }).map(drop)
}

/// Repeats a system call interrupted by a signal.
pub(crate) fn retry_eintr<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}
