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

/// Holds for every type when the `postgres` or `redis` feature is on, for
/// none when both are off: the attribute's `url` value goes through
/// [`remote_url`], so a program that asks for the lock across hosts without
/// an engine does not compile, with this message on its `url`.
#[diagnostic::on_unimplemented(
    message = "`url` takes the lock in PostgreSQL or Redis, which needs pidlock-core's `postgres` or `redis` feature",
    label = "needs the `postgres` or `redis` feature",
    note = "in Cargo.toml: pidlock-core = {{ version = \"0.1\", features = [\"redis\"] }} (or \"postgres\")"
)]
pub trait RemoteLockAvailable {}

#[cfg(any(feature = "postgres", feature = "redis"))]
impl<T: ?Sized> RemoteLockAvailable for T {}

/// The attribute's `url`, unchanged; see [`RemoteLockAvailable`].
pub fn remote_url<T: RemoteLockAvailable>(url: T) -> T {
    url
}

/// A held lock across hosts, boxed: its drop code is reached through the
/// box's vtable, made only where the lock is taken, so a program without
/// `url` links none of it.
type RemoteHold = Box<dyn std::fmt::Debug + Send>;

/// Takes the lock across hosts for an entry; see [`Entry::url`].
type TakeRemote = fn(&Entry, &str) -> Result<RemoteHold>;

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
    /// [`take_remote`], set only by `url`: called through this pointer, so
    /// a program without `url` links no engine, whatever features the
    /// build has on (features are unified across a build).
    take_remote: Option<TakeRemote>,
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
            take_remote: None,
            remote_key: None,
        }
    }

    /// `url = ...`: also take the lock across hosts, in the engine the
    /// scheme names (`postgres://` with the `postgres` feature, `redis://`
    /// and `rediss://` with `redis`).
    pub fn url(mut self, url: impl AsRef<str>) -> Self {
        self.remote_url = Some(url.as_ref().to_owned());
        #[cfg(any(feature = "postgres", feature = "redis"))]
        {
            self.take_remote = Some(take_remote);
        }
        self
    }

    /// `key = ...`: the name of the lock across hosts (default: the
    /// binary's name).
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
    /// why (DESIGN.md, *Messages*).
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
        let remote = self.remote_url.is_some();
        // Before anything is locked: a local takeover would kill the local
        // holder, and the remote lock would then be refused anyway.
        if remote && matches!(self.on_conflict, OnConflict::Takeover { .. }) {
            return Err(Error::RemoteConfig {
                reason: "on_conflict = \"takeover\" works on one host only; with `url` the other instance may run on \
                         another host, where nothing can be signalled: use \"wait\" or \"exit\""
                    .to_owned(),
            });
        }
        // The local lock first: it is cheap, and it keeps a second copy on
        // this host from even connecting to the server.
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
        let remote = match (&self.remote_url, self.take_remote) {
            (Some(url), Some(take)) => Some(take(self, url)?),
            // Unreachable through the attribute, whose `url` does not
            // compile without an engine (see [`RemoteLockAvailable`]).
            (Some(_), None) => {
                return Err(Error::RemoteConfig {
                    reason: "this program was built without pidlock-core's `postgres` and `redis` features"
                        .to_owned(),
                });
            }
            (None, _) => None,
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

/// The attribute's lock across hosts, in the engine the URL's scheme names:
/// `redis://` and `rediss://` in Redis, `postgres://`, `postgresql://` and
/// libpq's `key=value` strings in PostgreSQL. A scheme whose engine this
/// program was built without is an error naming the feature.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn take_remote(entry: &Entry, url: &str) -> Result<RemoteHold> {
    let key = entry.remote_key.as_deref().unwrap_or(entry.name);
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "rediss") => {
            #[cfg(feature = "redis")]
            {
                crate::redis::RedisLock::new(url, key)
                    .on_conflict(entry.on_conflict)
                    .log_level(entry.log_level)
                    .acquire()
                    .map(|guard| Box::new(guard) as RemoteHold)
            }
            #[cfg(not(feature = "redis"))]
            Err(built_without("redis", scheme))
        }
        Some("postgres" | "postgresql") | None => {
            #[cfg(feature = "postgres")]
            {
                crate::postgres::PgLock::new(url, key)
                    .on_conflict(entry.on_conflict)
                    .log_level(entry.log_level)
                    .acquire()
                    .map(|guard| Box::new(guard) as RemoteHold)
            }
            #[cfg(not(feature = "postgres"))]
            Err(built_without("postgres", scheme))
        }
        Some(other) => Err(Error::RemoteConfig {
            reason: format!(
                "url scheme \"{other}://\" names no engine: use postgres:// (or a libpq key=value string) for \
                 PostgreSQL, redis:// or rediss:// for Redis"
            ),
        }),
    }
}

/// A url whose engine this program was built without.
#[cfg(all(
    any(feature = "postgres", feature = "redis"),
    not(all(feature = "postgres", feature = "redis"))
))]
fn built_without(feature: &str, scheme: Option<&str>) -> Error {
    Error::RemoteConfig {
        reason: format!(
            "a {}:// url needs pidlock-core's `{feature}` feature, which this program was built without",
            scheme.unwrap_or(feature)
        ),
    }
}

/// Every lock the attribute took; dropped after `main`'s body, it releases
/// them in the reverse order of acquisition (fields drop in declaration
/// order: the remote lock first, then the local one).
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct InstanceGuard {
    // Held for their `Drop`, never read.
    _remote: Option<RemoteHold>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_takeover_is_refused_before_the_local_lock_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bot.pid");
        let entry = Entry::new(None, "bot")
            .path(&path)
            .url("redis://127.0.0.1:1/0")
            .takeover(None);
        match entry.acquire() {
            Err(Error::RemoteConfig { reason }) => {
                assert!(reason.contains("works on one host only"), "{reason}")
            }
            other => panic!("expected RemoteConfig, got {other:?}"),
        }
        assert!(!path.exists(), "the local lock was taken");
    }

    #[cfg(any(feature = "postgres", feature = "redis"))]
    #[test]
    fn an_unknown_scheme_names_the_engines() {
        let entry = Entry::new(None, "bot").url("mysql://db/bot");
        match entry.acquire() {
            Err(Error::RemoteConfig { reason }) => {
                assert!(reason.contains("\"mysql://\" names no engine"), "{reason}")
            }
            other => panic!("expected RemoteConfig, got {other:?}"),
        }
    }
}
