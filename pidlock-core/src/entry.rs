//! What `#[single_instance]` expands to, as ordinary code: the macro only
//! emits a builder call into [`crate::__private`], and everything that runs at
//! run time lives here, testable without the macro.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::guard::PidFileGuard;
use crate::lockfile::PidLock;
use crate::messages::LogLevel;
use crate::pid::Pid;
use crate::policy::OnConflict;
use crate::signals::Signals;
use crate::sys;
use crate::systemd;

/// Where a program's PID file goes when the attribute names no `path`:
/// for root `/run/<name>.pid` (`/var/run` outside Linux); for any other
/// user `<home>/.local/state/pidlock/<name>.pid`, where `<home>` is that
/// user's home directory in the user database.
///
/// It depends on the user and the name only, never on the launching
/// environment (`HOME`, `XDG_RUNTIME_DIR`, `TMPDIR`, `RUNTIME_DIRECTORY`,
/// the working directory): a copy started from a login shell, from cron,
/// with `sudo -u` or as a service of the same user finds the same file, or
/// two instances would run. And no other user can create a file there
/// first: `/run` is root's, a home directory its user's. (A shared
/// directory such as `/tmp` would let any user plant the path and keep the
/// program from ever starting.)
///
/// A service whose unit hides home directories (`ProtectHome=`) or that
/// runs as a user without one (`DynamicUser=`) needs an explicit `path`.
///
/// ```
/// let path = pidlock_core::default_path("bot")?;
/// assert!(path.is_absolute());
/// assert_eq!(path.file_name().and_then(|name| name.to_str()), Some("bot.pid"));
/// # Ok::<(), pidlock_core::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::NoDefaultPath`] for a user other than root who has no home
/// directory in the user database.
pub fn default_path(name: &str) -> Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    let file = format!("{name}.pid");
    if uid.is_root() {
        return Ok(Path::new(sys::RUN_DIR).join(file));
    }
    let no_home = |reason| Error::NoDefaultPath {
        user: crate::error::user_name(uid.as_raw()),
        reason,
    };
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or_else(|| no_home("it is not in the user database"))?;
    if !user.dir.is_absolute() || user.dir == Path::new("/") {
        return Err(no_home("it has no home directory there"));
    }
    // `/nonexistent` and the like: the convention for users without one.
    if !user.dir.is_dir() {
        return Err(no_home("its home directory does not exist"));
    }
    Ok(user.dir.join(".local/state/pidlock").join(file))
}

/// Holds for every type when the `postgres` feature is on, for none when it
/// is off: the attribute's `url` value goes through [`remote_url`], so a
/// program that asks for the lock across hosts without the feature does not
/// compile, with this message on its `url`.
#[diagnostic::on_unimplemented(
    message = "`url` takes the lock in PostgreSQL, which needs pidlock-core's `postgres` feature",
    label = "needs the `postgres` feature",
    note = "in Cargo.toml: pidlock-core = {{ version = \"0.1\", features = [\"postgres\"] }}"
)]
pub trait RemoteLockAvailable {}

#[cfg(feature = "postgres")]
impl<T: ?Sized> RemoteLockAvailable for T {}

/// The attribute's `url`, unchanged; see [`RemoteLockAvailable`].
pub fn remote_url<T: RemoteLockAvailable>(url: T) -> T {
    url
}

/// The attribute's keys, collected by the generated code.
#[derive(Debug)]
#[must_use]
pub struct Entry {
    name: &'static str,
    path: Option<PathBuf>,
    env: Option<&'static str>,
    exit_code: u8,
    hint: Option<&'static str>,
    signals: Signals,
    log_level: LogLevel,
    notify_ready: bool,
    on_conflict: OnConflict,
    /// [`PidLock::on_conflict`], set only by `wait` and `takeover`: called
    /// through this pointer, so a program whose attribute says neither does
    /// not link the wait and takeover code.
    apply_on_conflict: Option<fn(PidLock, OnConflict) -> PidLock>,
    /// `url` and `key`: the lock across hosts.
    remote_url: Option<String>,
    remote_key: Option<String>,
}

impl Entry {
    /// `bin` is `option_env!("CARGO_BIN_NAME")` of the user's crate, `krate`
    /// its `CARGO_CRATE_NAME` (for targets that are not binaries).
    pub fn new(bin: Option<&'static str>, krate: &'static str) -> Self {
        Self {
            name: bin.unwrap_or(krate),
            path: None,
            env: None,
            exit_code: 1,
            hint: None,
            signals: Signals::Auto,
            log_level: LogLevel::Info,
            notify_ready: false,
            on_conflict: OnConflict::Exit,
            apply_on_conflict: None,
            remote_url: None,
            remote_key: None,
        }
    }

    /// `url = ...`: also take the lock in PostgreSQL (the `postgres` feature).
    pub fn url(mut self, url: impl AsRef<str>) -> Self {
        self.remote_url = Some(url.as_ref().to_owned());
        self
    }

    /// `key = ...`: the PostgreSQL lock's name (default: the binary's name).
    pub fn key(mut self, key: impl AsRef<str>) -> Self {
        self.remote_key = Some(key.as_ref().to_owned());
        self
    }

    /// `on_conflict = "wait"`, with `timeout` in milliseconds.
    pub fn wait(mut self, timeout_ms: Option<u64>) -> Self {
        self.on_conflict = OnConflict::Wait {
            timeout: timeout_ms.map(Duration::from_millis),
        };
        self.apply_on_conflict = Some(PidLock::on_conflict);
        self
    }

    /// `on_conflict = "takeover"`, with `timeout` in milliseconds.
    pub fn takeover(mut self, timeout_ms: Option<u64>) -> Self {
        self.on_conflict = OnConflict::Takeover {
            timeout: timeout_ms.map_or(OnConflict::DEFAULT_TAKEOVER_TIMEOUT, Duration::from_millis),
        };
        self.apply_on_conflict = Some(PidLock::on_conflict);
        self
    }

    /// `path = ...`.
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_owned());
        self
    }

    /// `env = "..."`.
    pub fn env(mut self, var: &'static str) -> Self {
        self.env = Some(var);
        self
    }

    /// `exit_code = ...`.
    pub fn exit_code(mut self, code: u8) -> Self {
        self.exit_code = code;
        self
    }

    /// `hint = "..."`.
    pub fn hint(mut self, hint: &'static str) -> Self {
        self.hint = Some(hint);
        self
    }

    /// `signals = "..."`.
    pub fn signals(mut self, signals: Signals) -> Self {
        self.signals = signals;
        self
    }

    /// `log = "..."`.
    pub fn log_level(mut self, log_level: LogLevel) -> Self {
        self.log_level = log_level;
        self
    }

    /// Takes every lock or ends the process with the exit code after printing
    /// why (SPEC §6).
    pub fn acquire_or_exit(self) -> InstanceGuard {
        match self.acquire() {
            Ok(guard) => guard,
            Err(error) => {
                let report = error.report();
                match self.hint {
                    Some(hint) => report.hint(hint).emit(),
                    None => report.emit(),
                }
                std::process::exit(i32::from(self.exit_code));
            }
        }
    }

    /// `notify_ready = true`: send `READY=1` once every lock is held.
    pub fn notify_ready(mut self, notify_ready: bool) -> Self {
        self.notify_ready = notify_ready;
        self
    }

    fn acquire(&self) -> Result<InstanceGuard> {
        // The local lock first: it is cheap, and it keeps a second copy on
        // this host from even connecting to the server.
        let remote = self.remote_url.is_some();
        let local = if !remote || self.path.is_some() || self.env.is_some() {
            let mut lock = PidLock::new(self.resolve_path()?)
                .signals(self.signals)
                .log_level(self.log_level)
                // With a remote lock to take too, ready means both are held.
                .notify_ready(self.notify_ready && !remote);
            if let Some(apply) = self.apply_on_conflict {
                lock = apply(lock, self.on_conflict);
            }
            Some(lock.acquire()?)
        } else {
            None
        };
        // On failure, the local lock is released as `local` drops.
        let remote = match &self.remote_url {
            Some(url) => Some(self.remote(url)?),
            None => None,
        };
        if remote.is_some() && self.notify_ready {
            systemd::notify("READY=1");
        }
        Ok(InstanceGuard {
            _remote: remote,
            _local: local,
            notifier: systemd::is_supervised().then(Pid::current),
        })
    }

    #[cfg(feature = "postgres")]
    fn remote(&self, url: &str) -> Result<RemoteGuard> {
        let key = self.remote_key.as_deref().unwrap_or(self.name);
        crate::postgres::PgLock::new(url, key)
            .on_conflict(self.on_conflict)
            .quiet(self.log_level.effective() != LogLevel::Info)
            .acquire()
    }

    /// Unreachable through the attribute, whose `url` does not compile
    /// without the feature (see [`RemoteLockAvailable`]).
    #[cfg(not(feature = "postgres"))]
    fn remote(&self, _url: &str) -> Result<RemoteGuard> {
        Err(Error::Remote {
            key: self
                .remote_key
                .clone()
                .unwrap_or_else(|| self.name.to_owned()),
            reason: "this program was built without pidlock-core's `postgres` feature".to_owned(),
            source: None,
        })
    }

    /// The environment variable wins when set and non-empty; set but empty is
    /// a mistake worth stopping for, not a reason to fall back silently.
    fn resolve_path(&self) -> Result<PathBuf> {
        if let Some(var) = self.env {
            match std::env::var_os(var) {
                Some(value) if value.is_empty() => {
                    return Err(Error::EmptyEnvVar {
                        var: var.to_owned(),
                    });
                }
                Some(value) => return Ok(PathBuf::from(value)),
                None => {}
            }
        }
        Ok(match &self.path {
            Some(path) if path.as_os_str().is_empty() => {
                return Err(Error::InvalidPath {
                    path: PathBuf::new(),
                    reason: "it is empty",
                });
            }
            Some(path) => path.clone(),
            None => default_path(self.name)?,
        })
    }
}

/// The PostgreSQL lock's guard; nothing can be held there without the
/// `postgres` feature.
#[cfg(feature = "postgres")]
type RemoteGuard = crate::postgres::PgGuard;
#[cfg(not(feature = "postgres"))]
type RemoteGuard = std::convert::Infallible;

/// Every lock the attribute took; dropped after `main`'s body, it releases
/// them in the reverse order of acquisition (fields drop in declaration
/// order: the remote lock first, then the local one).
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct InstanceGuard {
    // Held for their `Drop`, never read.
    _remote: Option<RemoteGuard>,
    _local: Option<PidFileGuard>,
    /// Under a service manager, the process that took the locks: a `fork()`
    /// child's copy tells systemd nothing. (Not asked for otherwise: it
    /// would cost a system call for nothing.)
    notifier: Option<Pid>,
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        // `main` has returned: the program is ending.
        if self.notifier.is_some_and(|owner| owner == Pid::current()) {
            systemd::notify("STOPPING=1\nSTATUS=Releasing the lock...");
        }
    }
}
