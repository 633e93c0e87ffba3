//! The lock-file protocol on one host (DESIGN.md, *The lock protocol*), after FreeBSD's `flopen(3)`
//! and `pidfile(3)`.
//!
//! The kernel lock (`flock`) is the truth; the PID written in the file is for
//! people and tools. Every step that can race with another instance says which
//! race it closes.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

use crate::error::{Error, Holder, Reader, Result};
use crate::guard::{PidFileGuard, ResolvedPath};
use crate::holders::{self, Holders, Taken};
use crate::messages::{self, Level, LogLevel};
use crate::pid::{Contents, Pid};
use crate::policy::{ConflictHandler, HandleConflict, Next, OnConflict, OpenedAt};
use crate::replace::{self, Pinned, Replaced};
use crate::restart;
use crate::signal_context::{self, Sharers};
use crate::signals::{self, Signals};
use crate::sys::{self, HeldFile, Identity, OpenFailure, Opened, flock, retry_eintr};
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
    /// How a busy lock is resolved, set by [`PidLock::on_conflict`]; `None`
    /// reports the conflict at once. Reached only through this pointer, so
    /// the wait and takeover code is linked only into programs that ask for
    /// them (`on_conflict = "exit"` programs never call `on_conflict`).
    handle_conflict: Option<HandleConflict>,
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
            handle_conflict: None,
            log_level: LogLevel::Info,
            notify_ready: false,
        }
    }

    /// What to do when another process holds the lock: fail at once (the
    /// default), wait, or take over; see [`OnConflict`].
    #[must_use]
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self.handle_conflict = match on_conflict {
            OnConflict::Exit => None,
            OnConflict::Wait { .. } | OnConflict::Takeover { .. } => {
                Some(|handler, file, identity, conflict| handler.handle(file, identity, conflict))
            }
        };
        self
    }

    /// Like [`acquire`](Self::acquire), but waits up to `timeout` for the
    /// holder to let go (as [`OnConflict::Wait`] waits).
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
        let resolved = self.resolve_path()?;
        let path = resolved.path.clone();
        let (parent, name) = sys::split(&path)?;
        let dir = sys::open_dir(parent, &path)?;
        if self.signals == Signals::Auto {
            signals::install();
        }
        let announce = log_level.shows(Level::Info);
        if let Some((adopted, sharers)) = restart::adopt(dir.as_fd(), &name) {
            let guard = PidFileGuard::new(resolved, dir, name, adopted, sharers, announce);
            if announce {
                messages::kept_across_restart(guard.pid(), guard.path());
            }
            self.notify_held(&guard);
            return Ok(guard);
        }
        let mut handler = ConflictHandler::new(self.on_conflict, &path, log_level);
        let (locked, replaced) = lock_file(&dir, &name, &path, self.handle_conflict, &mut handler)?;
        let previous = if locked.created {
            None
        } else {
            Some(sys::read_contents(
                locked.file.as_fd(),
                &locked.stat,
                &path,
            )?)
        };
        let mut guard = PidFileGuard::new(resolved, dir, name, locked, Sharers::none(), announce);
        guard.write_pid()?;
        if log_level.shows(Level::Warning) {
            match previous {
                Some(Contents::Pid(old)) => {
                    messages::stale(guard.path(), old, old.is_alive() && !sys::is_zombie(old))
                }
                Some(Contents::Corrupted(quote)) => messages::corrupted(guard.path(), &quote),
                None => {}
            }
            if let Some(readers) = replaced {
                messages::replaced(guard.path(), &readers);
            }
        }
        if announce {
            messages::acquired(guard.pid(), guard.path());
        }
        self.notify_held(&guard);
        Ok(guard)
    }

    /// The absolute path, resolved once against the working directory (which
    /// is kept for reports when the path was relative).
    fn resolve_path(&self) -> Result<ResolvedPath> {
        let io = |source| Error::Io {
            path: self.path.clone(),
            action: "resolve the absolute path of",
            source,
        };
        let path = std::path::absolute(&self.path).map_err(io)?;
        let resolved_in = if self.path.is_relative() {
            Some(std::env::current_dir().map_err(io)?)
        } else {
            None
        };
        Ok(ResolvedPath { path, resolved_in })
    }

    /// Tells the service manager, if any, who holds the lock now.
    fn notify_held(&self, guard: &PidFileGuard) {
        if !systemd::is_supervised() {
            return;
        }
        let mut state = format!(
            "STATUS={}",
            messages::holding_status(guard.pid(), guard.path())
        );
        if self.notify_ready {
            state.push_str("\nREADY=1");
        }
        systemd::notify(&state);
    }
}

/// Steps 1–3 of the protocol (module docs): open (creating if needed),
/// refuse anything but a regular file, `flock` without blocking, then check
/// the path still names what we locked. Also returns the readers of a file
/// that was replaced because they alone held it.
fn lock_file(
    dir: &OwnedFd,
    name: &CStr,
    path: &Path,
    handle_conflict: Option<HandleConflict>,
    handler: &mut ConflictHandler<'_>,
) -> Result<(HeldFile, Option<Vec<Reader>>)> {
    let mut replaced = 0;
    let mut replaced_readers = None;
    while replaced < OPEN_ATTEMPTS {
        let Opened {
            file,
            mut created,
            read_only,
        } = match sys::open_file(dir.as_fd(), name, path) {
            Ok(opened) => opened,
            // Removed between our O_EXCL attempt and the plain open: start again.
            Err(OpenFailure::Vanished) => {
                replaced += 1;
                continue;
            }
            Err(OpenFailure::Denied(stat)) => {
                return Err(handler.unopenable(denied(dir, name, path, &stat)));
            }
            Err(OpenFailure::Failed(error)) => return Err(error),
        };
        let mut stat = fstat(&file).map_err(|errno| Error::io(path, "inspect", errno))?;
        if let Some(kind) = sys::unsafe_kind(&stat) {
            return Err(Error::UnsafePath {
                path: path.to_owned(),
                kind,
            });
        }
        let file =
            match retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)) {
                Ok(()) => file,
                Err(Errno::EWOULDBLOCK) => match busy(file, &stat, path) {
                    Busy::Acquired(file) => file,
                    Busy::Pinned(pinned) => {
                        let readers = pinned.readers.clone();
                        match replace::replace(dir, name, path, pinned)? {
                            Replaced::New(new) => {
                                stat = replace::stat_of(&new, path)?;
                                created = true;
                                replaced_readers = Some(readers);
                                new
                            }
                            Replaced::Retry => {
                                replaced += 1;
                                continue;
                            }
                            Replaced::Unswappable(pinned) => {
                                let at = OpenedAt {
                                    dir: dir.as_fd(),
                                    name,
                                    identity: Identity::of(&stat),
                                };
                                match lock_once_readers_pass(pinned, at, path)? {
                                    ReadersPassed::Locked(file) => file,
                                    ReadersPassed::Changed => {
                                        replaced += 1;
                                        continue;
                                    }
                                    ReadersPassed::Stayed(file, pinned) => {
                                        let Some(handle) = handle_conflict else {
                                            return Err(pinned);
                                        };
                                        match handle(handler, file, at, pinned)? {
                                            Next::Acquired(file) => file,
                                            Next::Retry => continue,
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Busy::Held(file, conflict) => {
                        let Some(handle) = handle_conflict else {
                            return Err(conflict);
                        };
                        let at = OpenedAt {
                            dir: dir.as_fd(),
                            name,
                            identity: Identity::of(&stat),
                        };
                        match handle(handler, file, at, conflict)? {
                            Next::Acquired(file) => {
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
        } else if now.st_mode & 0o7777 != sys::FILE_MODE {
            // A umask such as 0277 narrowed the mode: the owner could no
            // longer write its own file.
            nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(sys::FILE_MODE))
                .map_err(|errno| Error::io(path, "set the mode of", errno))?;
        }
        let locked = HeldFile {
            file,
            stat: now,
            created,
        };
        return Ok((locked, replaced_readers));
    }
    Err(Error::Unstable {
        path: path.to_owned(),
    })
}

/// A file this process may not open at all: another user's (PID files are
/// 0600). Its instance, if it runs, is named by what the kernel can still
/// say: the process its lock list says took the lock (not verified: that
/// user's descriptors are out of sight too). Without a lock it is another
/// user's stale file, not ours to take over.
fn denied(dir: &OwnedFd, name: &CStr, path: &Path, stat: &FileStat) -> Error {
    if stat.st_uid == nix::unistd::geteuid().as_raw() {
        return Error::io(path, "open", Errno::EACCES);
    }
    let key = sys::path_descriptor(dir.as_fd(), name)
        .and_then(|named| sys::lock_key(named.as_fd(), Identity::of(stat)));
    let holder = match holders::exclusive_taker(key.as_ref()) {
        Taken::By(pid) => Holder::Taker(pid),
        // Perhaps running, perhaps not: never advise removing the file.
        Taken::OutOfSight => Holder::Unknown,
        Taken::Free => {
            return Error::ForeignOwner {
                path: path.to_owned(),
                owner: crate::error::user_name(stat.st_uid),
            };
        }
    };
    Error::AlreadyRunning {
        path: path.to_owned(),
        holder,
    }
}

/// A file we did not create must be ours alone before we write to it
/// (DESIGN.md, *Other users*): owned by the user we run
/// as, and with no other name (a hard link planted at the path would make
/// us overwrite the file it points to). A reused file's mode is set back to
/// 0600, so nobody else can write the PID that tools will signal, nor
/// take a lock on the file that would keep the program from starting.
// `nlink_t` is u64 on Linux/x86_64 and narrower elsewhere.
#[allow(clippy::useless_conversion)]
fn check_not_foreign(file: &OwnedFd, now: &FileStat, path: &Path, read_only: bool) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if now.st_uid != me {
        return Err(Error::ForeignOwner {
            path: path.to_owned(),
            owner: crate::error::user_name(now.st_uid),
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
    if now.st_mode & 0o7777 != sys::FILE_MODE {
        nix::sys::stat::fchmod(file, Mode::from_bits_truncate(sys::FILE_MODE))
            .map_err(|errno| Error::io(path, "set the mode of", errno))?;
    }
    Ok(())
}

/// What a busy lock turned out to be.
enum Busy {
    /// It was only busy for an instant (a holder on its way out): we hold
    /// it now.
    Acquired(OwnedFd),
    /// Readers alone hold it: replace it (see [`crate::replace`]).
    Pinned(Pinned),
    /// Another holder (what [`OnConflict::Exit`] reports), or an error.
    Held(OwnedFd, Error),
}

/// The lock is busy: find out who holds it.
///
/// A shared lock that can be had proves that no process holds the exclusive
/// one: only readers do, and the file is replaced. Otherwise the likely
/// holders are examined, then (once) every process: a verified instance is
/// reported at once, and a reader that holds it exclusively is named
/// ([`Error::Pinned`]). A holder nobody can see (another user's when we are not root,
/// another PID namespace's) is tried again for a moment, then reported with
/// what the file claims, marked unverified.
fn busy(file: OwnedFd, stat: &FileStat, path: &Path) -> Busy {
    let identity = Identity::of(stat);
    // Only this process's own records say "this process": a PID number in
    // the file that happens to equal ours may be another namespace's.
    if signal_context::is_held(identity) {
        let error = Error::HeldByThisProcess {
            path: path.to_owned(),
        };
        return Busy::Held(file, error);
    }
    let key = sys::lock_key(file.as_fd(), identity);
    let owner = stat.st_uid;
    let started = sys::Stopwatch::start();
    let mut looked_everywhere = false;
    loop {
        match retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_SH | nix::libc::LOCK_NB)) {
            Ok(()) => {
                // Named for the warning: neither this process's own shared
                // lock nor those of other starts of this program that are
                // freezing the file too are readers.
                let me = Pid::current();
                let readers = key
                    .as_ref()
                    .map(|key| Holders::every(key, owner).readers)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|reader| reader.pid != me && !sys::runs_this_executable(reader.pid))
                    .collect();
                return Busy::Pinned(Pinned {
                    frozen: file,
                    stat: *stat,
                    readers,
                });
            }
            Err(Errno::EWOULDBLOCK) => {}
            Err(errno) => return Busy::Held(file, Error::io(path, "lock", errno)),
        }
        let file_pid = file_pid(file.as_fd(), path);
        if let Some(key) = &key {
            let mut holders = Holders::likely(key, file_pid, owner);
            if holders.exclusive.is_empty() && !looked_everywhere {
                looked_everywhere = true;
                holders = Holders::every(key, owner);
            }
            if !holders.exclusive.is_empty() {
                let holder = holders.describe(file_pid);
                let path = path.to_owned();
                return Busy::Held(file, Error::AlreadyRunning { path, holder });
            }
            if holders.complete && holders.readers.iter().any(|reader| !reader.shared) {
                // A reader (another user, through a read-only descriptor)
                // holds it exclusively: not an instance, but not a file that
                // can be replaced safely either (see `crate::replace`).
                let path = path.to_owned();
                let readers = holders.readers;
                return Busy::Held(file, Error::Pinned { path, readers });
            }
        }
        match retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)) {
            Ok(()) => return Busy::Acquired(file),
            Err(Errno::EWOULDBLOCK) => {}
            Err(errno) => return Busy::Held(file, Error::io(path, "lock", errno)),
        }
        if started.exceeded(UNVERIFIED_PATIENCE) {
            let holder = Holders::default().describe(file_pid);
            let path = path.to_owned();
            return Busy::Held(file, Error::AlreadyRunning { path, holder });
        }
        std::thread::sleep(UNVERIFIED_PAUSE);
    }
}

/// What became of a file only readers held, which cannot be replaced.
enum ReadersPassed {
    /// They let go: locked exclusively on this descriptor.
    Locked(OwnedFd),
    /// An instance took the file meanwhile, or the name no longer names
    /// it: look again.
    Changed,
    /// They still hold it: the file (unlocked) and the error naming them.
    Stayed(OwnedFd, Error),
}

/// Where a file only readers hold cannot be replaced: gives up this
/// process's shared lock and tries the exclusive one for a moment, for
/// readers that are only passing (an observer's probe, another start
/// freezing the file).
fn lock_once_readers_pass(pinned: Pinned, at: OpenedAt<'_>, path: &Path) -> Result<ReadersPassed> {
    let Pinned {
        frozen: file,
        readers,
        ..
    } = pinned;
    let lock_error = |errno| Error::io(path, "lock", errno);
    retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_UN)).map_err(lock_error)?;
    let started = sys::Stopwatch::start();
    while !started.exceeded(UNVERIFIED_PATIENCE) {
        match retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)) {
            Ok(()) => return Ok(ReadersPassed::Locked(file)),
            Err(Errno::EWOULDBLOCK) => {}
            Err(errno) => return Err(lock_error(errno)),
        }
        std::thread::sleep(UNVERIFIED_PAUSE);
    }
    // Still only readers, on the file the name still names? Or has an
    // instance taken it, or the path moved on, meanwhile?
    match retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_SH | nix::libc::LOCK_NB)) {
        Ok(()) if at.still_named() => {
            retry_eintr(|| flock(file.as_fd(), nix::libc::LOCK_UN)).map_err(lock_error)?;
            let error = Error::Pinned {
                path: path.to_owned(),
                readers,
            };
            Ok(ReadersPassed::Stayed(file, error))
        }
        Ok(()) | Err(Errno::EWOULDBLOCK) => Ok(ReadersPassed::Changed),
        Err(errno) => Err(lock_error(errno)),
    }
}

/// The PID the file names, if it names one.
fn file_pid(file: BorrowedFd<'_>, path: &Path) -> Option<Pid> {
    let stat = fstat(file).ok()?;
    match sys::read_contents(file, &stat, path) {
        Ok(Contents::Pid(pid)) => Some(pid),
        _ => None,
    }
}
