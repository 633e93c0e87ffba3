//! The lock-file protocol on one host (SPEC §4), after FreeBSD's `flopen(3)`
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

use crate::error::{Error, Result};
use crate::guard::PidFileGuard;
use crate::holders;
use crate::messages::{self, Level, LogLevel};
use crate::pid::{Contents, Pid};
use crate::policy::{Next, OnConflict, Resolve, Resolver};
use crate::restart;
use crate::signal_context;
use crate::signals::{self, Signals};
use crate::sys::{self, Identity, Locked, Opened, flock, retry_eintr};
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
    /// How a busy lock is resolved, set by [`PidLock::on_conflict`]; `None`
    /// reports the conflict at once. Reached only through this pointer, so
    /// the wait and takeover code is linked only into programs that ask for
    /// them (`on_conflict = "exit"` programs never call `on_conflict`).
    resolve: Option<Resolve>,
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
            resolve: None,
            log_level: LogLevel::Info,
            notify_ready: false,
        }
    }

    /// What to do when another process holds the lock: fail at once (the
    /// default), wait, or take over; see [`OnConflict`].
    #[must_use]
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self.resolve = match on_conflict {
            OnConflict::Exit => None,
            OnConflict::Wait { .. } | OnConflict::Takeover { .. } => {
                Some(|resolver, file, identity, conflict| {
                    resolver.resolve(file, identity, conflict)
                })
            }
        };
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
        // For the reports that name a held file: the same relative path
        // started from another directory is another file, and another lock.
        let resolved_in = if self.path.is_relative() {
            std::env::current_dir().ok()
        } else {
            None
        };
        let (parent, name) = sys::split(&path)?;
        let dir = sys::open_dir(parent, &path)?;
        if self.signals == Signals::Auto {
            signals::install();
        }
        let announce = log_level.shows(Level::Info);
        if let Some(adopted) = restart::adopt(dir.as_fd(), &name) {
            let guard = PidFileGuard::new(path, dir, name, adopted, announce, resolved_in);
            if announce {
                messages::kept_across_restart(guard.pid(), guard.path());
            }
            self.notify_held(&guard);
            return Ok(guard);
        }
        let mut resolver = Resolver::new(self.on_conflict, &path, log_level);
        let locked = lock_file(&dir, &name, &path, self.resolve, &mut resolver)?;
        let previous = if locked.created {
            None
        } else {
            Some(sys::read_contents(
                locked.file.as_fd(),
                &locked.stat,
                &path,
            )?)
        };
        let mut guard = PidFileGuard::new(path, dir, name, locked, announce, resolved_in);
        guard.write_pid()?;
        if log_level.shows(Level::Warning) {
            match previous {
                Some(Contents::Pid(old)) => messages::stale(guard.path(), old, old.is_alive()),
                Some(Contents::Corrupted(quote)) => messages::corrupted(guard.path(), &quote),
                None => {}
            }
        }
        if announce {
            messages::acquired(guard.pid(), guard.path());
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
            messages::holding_status(guard.pid(), guard.path())
        );
        if self.notify_ready {
            state.push_str("\nREADY=1");
        }
        systemd::notify(&state);
    }
}

/// Steps 1–3 of SPEC §4: open (creating if needed), refuse anything but a
/// regular file, `flock` without blocking, then check the path still names
/// what we locked.
fn lock_file(
    dir: &OwnedFd,
    name: &CStr,
    path: &Path,
    resolve: Option<Resolve>,
    resolver: &mut Resolver<'_>,
) -> Result<Locked> {
    let mut replaced = 0;
    while replaced < OPEN_ATTEMPTS {
        let Opened {
            file,
            created,
            read_only,
        } = match sys::open_file(dir.as_fd(), name, path) {
            Ok(opened) => opened,
            // Removed between our O_EXCL attempt and the plain open: start again.
            Err(None) => {
                replaced += 1;
                continue;
            }
            Err(Some(error)) => return Err(error),
        };
        let stat = fstat(&file).map_err(|errno| Error::io(path, "inspect", errno))?;
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
                    Busy::Locked(file) => file,
                    Busy::Held(file, conflict) => {
                        let Some(resolve) = resolve else {
                            return Err(conflict);
                        };
                        match resolve(resolver, file, Identity::of(&stat), conflict)? {
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
    if signal_context::is_held(identity) {
        let error = Error::HeldByThisProcess {
            path: path.to_owned(),
        };
        return Busy::Held(file, error);
    }
    let started = sys::Stopwatch::start();
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
        if started.exceeded(patience) {
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
    match sys::read_contents(file, &stat, path) {
        Ok(Contents::Pid(pid)) => Some(pid),
        _ => None,
    }
}
