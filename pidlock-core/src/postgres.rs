//! The lock across hosts (SPEC §8): a PostgreSQL session advisory lock on a
//! dedicated, unpooled connection.
//!
//! # What is promised, and the arithmetic behind it
//!
//! The server holds the lock for as long as the holder's session lives. It
//! ends a dead holder's session once the connection has been silent for the
//! *server timeout* `S` (default 30 s): this connection sets the server's
//! `tcp_keepalives_idle = S/3`, `tcp_keepalives_interval = S/3`,
//! `tcp_keepalives_count = 2` and `tcp_user_timeout = S`, so
//! `S/3 + 2 * S/3 = S`. Only then can a standby get the lock.
//!
//! The holder confirms ownership every *heartbeat* (2 s) by asking `pg_locks`
//! whether its own backend holds the key (not `SELECT 1`: a reconnected
//! session answers that without holding anything). A watchdog thread, on the
//! monotonic clock, declares the lock lost when no confirmation has arrived
//! for the *lease* `L` (10 s), whatever a hung query is doing. The holder then
//! raises SIGTERM on itself, so that the program's own shutdown runs, and
//! exits hard after the *grace* `G` (5 s). It never re-acquires silently.
//!
//! The last confirmation was sent at some time `t`; the server heard from the
//! holder at `t` or later, so it cannot drop the session before `t + S`. The
//! holder is gone by `t + L + G`. [`PgLock::acquire`] refuses settings
//! without `L + G < S`: with the defaults, 15 s < 30 s, so the holder always
//! stops before anyone else can hold the lock. Every acquisition bumps a
//! fencing term ([`fencing_term`]) for side effects that must be fenced
//! anyway (a process paused longer than its lease, e.g. by SIGSTOP).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::backend::{Backend, Held};
use crate::error::{Error, Result};
use crate::messages::{self, Level};
use crate::pid::Pid;
use crate::policy::OnConflict;

/// The fencing term of the lock this process holds, for [`fencing_term`].
/// Global because the attribute's guard is not reachable from user code.
static TERM: AtomicI64 = AtomicI64::new(0);

/// The fencing term of the PostgreSQL lock this process holds: it grows with
/// every acquisition of the key, so a write tagged with an older term can be
/// refused by whatever receives it. `None` when no such lock is held.
///
/// ```
/// assert_eq!(pidlock_core::fencing_term(), None);
/// ```
#[must_use]
pub fn fencing_term() -> Option<u64> {
    u64::try_from(TERM.load(Ordering::SeqCst))
        .ok()
        .filter(|&term| term > 0)
}

/// The exit status of a holder that lost its lock and did not stop within
/// the grace period after SIGTERM (`EX_SOFTWARE`).
pub const LOST_LOCK_EXIT_CODE: i32 = 70;

/// A lock held in PostgreSQL, shared by every host that uses the same server
/// and key.
///
/// ```no_run
/// use pidlock_core::PgLock;
///
/// let guard = PgLock::new("postgres://bot@db.internal/bot", "my-bot").acquire()?;
/// println!("holding term {}", guard.term());
/// # Ok::<(), pidlock_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PgLock {
    url: String,
    key: String,
    lease: Duration,
    heartbeat: Duration,
    grace: Duration,
    server_timeout: Duration,
    on_conflict: OnConflict,
    quiet: bool,
}

impl PgLock {
    /// A lock on `key` in the database at `url` (a libpq-style URL or
    /// key=value string; TLS is not supported).
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key: key.into(),
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            grace: Duration::from_secs(5),
            server_timeout: Duration::from_secs(30),
            on_conflict: OnConflict::Exit,
            quiet: false,
        }
    }

    /// How long the holder may go without confirming ownership (10 s).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often ownership is confirmed (2 s).
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How long after SIGTERM a holder that lost the lock is made to exit (5 s).
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long the server lets a silent holder's session live (30 s).
    #[must_use]
    pub fn server_timeout(mut self, server_timeout: Duration) -> Self {
        self.server_timeout = server_timeout;
        self
    }

    /// Fail at once (default) or wait in the server; takeover is refused.
    #[must_use]
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self
    }

    /// No INFO lines.
    #[must_use]
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// The 64-bit advisory-lock key for a key name: FNV-1a, top bit cleared so
    /// it reads the same as a signed `bigint` everywhere.
    #[must_use]
    pub fn lock_id(key: &str) -> i64 {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        i64::try_from(hash >> 1).unwrap_or(i64::MAX)
    }

    /// Connects, takes the lock, checks the session really holds it, bumps
    /// the fencing term and starts the heartbeat and the watchdog.
    ///
    /// # Errors
    ///
    /// [`Error::RemoteHeld`] naming the holder's host and PID,
    /// [`Error::TimedOut`] for a wait that ran out, [`Error::Remote`] for a
    /// connection or query failure, a setup that cannot hold a session lock
    /// (a transaction-mode pooler) or settings that break the lease promise.
    pub fn acquire(&self) -> Result<PgGuard> {
        if self.lease + self.grace >= self.server_timeout || self.heartbeat >= self.lease {
            return Err(self.error(format!(
                "lease ({}) + grace ({}) must be shorter than the server timeout ({}), and the heartbeat ({}) shorter than the lease",
                messages::duration(self.lease),
                messages::duration(self.grace),
                messages::duration(self.server_timeout),
                messages::duration(self.heartbeat)
            )));
        }
        let mut client = self.connect()?;
        let id = Self::lock_id(&self.key);
        let backend = self.query_backend(&mut client)?;
        self.lock(&mut client, id)?;
        // A transaction-mode pooler (PgBouncer) may run each statement on
        // another server session: the lock would belong to a session we do
        // not own. Same backend, and pg_locks shows it, or we refuse.
        if self.query_backend(&mut client)? != backend
            || !confirm(&mut client, id).map_err(|e| self.pg_error(&e))?
        {
            return Err(self.error(
                "the session lock cannot hold on this connection (a transaction-mode pooler such as PgBouncer?); connect to the server directly".to_owned(),
            ));
        }
        let term = self.bump_term(&mut client)?;
        TERM.store(term, Ordering::SeqCst);
        if !self.quiet {
            messages::emit(
                Level::Info,
                &format!(
                    "PostgreSQL lock \"{}\" acquired (term {term}, PID: {})",
                    self.key,
                    Pid::current()
                ),
            );
        }
        Ok(PgGuard::start(self, client, id, term))
    }

    fn error(&self, reason: String) -> Error {
        Error::Remote {
            key: self.key.clone(),
            reason,
        }
    }

    /// The error with its cause: postgres' own text alone is often just
    /// "error connecting to server".
    fn pg_error(&self, error: &postgres::Error) -> Error {
        let mut reason = error.to_string();
        if let Some(source) = std::error::Error::source(error) {
            reason.push_str(&format!(": {source}"));
        }
        self.error(reason)
    }

    /// A dedicated connection with keepalives on both ends (module docs).
    fn connect(&self) -> Result<Client> {
        let mut config: postgres::Config = self
            .url
            .parse()
            .map_err(|error: postgres::Error| self.error(format!("invalid URL: {error}")))?;
        config
            .application_name("pidlock")
            .connect_timeout(self.lease)
            .keepalives(true)
            // TCP keepalive timers count whole seconds: 0 is refused.
            .keepalives_idle(self.heartbeat.max(Duration::from_secs(1)))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(2)
            .tcp_user_timeout(self.lease);
        let mut client = config.connect(NoTls).map_err(|e| self.pg_error(&e))?;
        let third = (self.server_timeout.as_secs() / 3).max(1);
        client
            .batch_execute(&format!(
                "SET tcp_keepalives_idle = {third}; SET tcp_keepalives_interval = {third}; \
                 SET tcp_keepalives_count = 2; SET tcp_user_timeout = {}; SET statement_timeout = {}",
                self.server_timeout.as_millis(),
                self.heartbeat.as_millis()
            ))
            .map_err(|e| self.pg_error(&e))?;
        Ok(client)
    }

    fn query_backend(&self, client: &mut Client) -> Result<i32> {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .map(|row| row.get(0))
            .map_err(|e| self.pg_error(&e))
    }

    fn lock(&self, client: &mut Client, id: i64) -> Result<()> {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&id])
            .map_err(|e| self.pg_error(&e))?
            .get(0);
        if got {
            return Ok(());
        }
        match self.on_conflict {
            OnConflict::Exit => Err(self.held_error(client)),
            OnConflict::Takeover { .. } => Err(self.error(
                "on_conflict = \"takeover\" works on one host only; a PostgreSQL lock can wait, not take over".to_owned(),
            )),
            OnConflict::Wait { timeout } => {
                if !self.quiet {
                    messages::emit(Level::Info, &format!("Waiting for the PostgreSQL lock \"{}\"...", self.key));
                }
                let started = Instant::now();
                let lock_timeout = timeout.map_or(0, |timeout| timeout.as_millis().max(1));
                client
                    .batch_execute(&format!("SET statement_timeout = 0; SET lock_timeout = {lock_timeout}"))
                    .map_err(|e| self.pg_error(&e))?;
                let waited = client.query_one("SELECT pg_advisory_lock($1)", &[&id]);
                client
                    .batch_execute(&format!("SET lock_timeout = 0; SET statement_timeout = {}", self.heartbeat.as_millis()))
                    .map_err(|e| self.pg_error(&e))?;
                match waited {
                    Ok(_) => Ok(()),
                    Err(error) if error.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                        Err(Error::TimedOut {
                            path: format!("postgres lock \"{}\"", self.key).into(),
                            holder: crate::Holder::Unknown,
                            waited: started.elapsed(),
                        })
                    }
                    Err(error) => Err(self.pg_error(&error)),
                }
            }
        }
    }

    /// Who holds the key, from the row its holder wrote with its term.
    fn held_error(&self, client: &mut Client) -> Error {
        let row = client
            .query_opt(
                "SELECT host, pid FROM pidlock_fencing WHERE key = $1",
                &[&self.key],
            )
            .ok()
            .flatten();
        Error::RemoteHeld {
            key: self.key.clone(),
            host: row.as_ref().map(|row| row.get::<_, String>(0)),
            pid: row.and_then(|row| Pid::new(row.get(1))),
        }
    }

    fn bump_term(&self, client: &mut Client) -> Result<i64> {
        let host = nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        // Two first holders of different keys may create the table at once;
        // PostgreSQL then fails one of them with a unique violation on its
        // catalog even with IF NOT EXISTS. The table exists either way.
        let created = client.batch_execute(
            "CREATE TABLE IF NOT EXISTS pidlock_fencing (
                key text PRIMARY KEY, term bigint NOT NULL, host text NOT NULL,
                pid integer NOT NULL, acquired_at timestamptz NOT NULL DEFAULT now())",
        );
        match created {
            Ok(()) => {}
            Err(error)
                if error.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
                    || error.code() == Some(&postgres::error::SqlState::DUPLICATE_TABLE) => {}
            Err(error) => return Err(self.pg_error(&error)),
        }
        client
            .query_one(
                "INSERT INTO pidlock_fencing AS f (key, term, host, pid) VALUES ($1, 1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET term = f.term + 1, host = $2, pid = $3, acquired_at = now()
                 RETURNING term",
                &[&self.key, &host, &Pid::current().get()],
            )
            .map(|row| row.get(0))
            .map_err(|e| self.pg_error(&e))
    }
}

impl Backend for PgLock {
    fn acquire(&self) -> Result<Box<dyn Held>> {
        PgLock::acquire(self).map(|guard| Box::new(guard) as Box<dyn Held>)
    }
}

/// Whether this session holds the advisory lock `id`, per `pg_locks`.
fn confirm(client: &mut Client, id: i64) -> std::result::Result<bool, postgres::Error> {
    let (high, low) = (id >> 32, id & 0xffff_ffff);
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND pid = pg_backend_pid() AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)",
            &[&high, &low],
        )
        .map(|row| row.get(0))
}

/// What the heartbeat, the watchdog and the guard share.
struct Shared {
    client: Mutex<Client>,
    /// Nanoseconds after `started` of the last confirmation.
    confirmed: AtomicU64,
    started: Instant,
    released: AtomicBool,
}

impl Shared {
    fn since_confirmed(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.confirmed.load(Ordering::SeqCst)))
    }
}

/// A held PostgreSQL lock; dropping it unlocks and closes the connection.
pub struct PgGuard {
    shared: Arc<Shared>,
    /// The process that took the lock: a `fork()` child shares the socket
    /// but must never speak on it (SPEC §10, "Ownership").
    owner: Pid,
    id: i64,
    term: i64,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PgGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgGuard")
            .field("id", &self.id)
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

impl PgGuard {
    fn start(lock: &PgLock, client: Client, id: i64, term: i64) -> Self {
        let started = Instant::now();
        let shared = Arc::new(Shared {
            client: Mutex::new(client),
            confirmed: AtomicU64::new(0),
            started,
            released: AtomicBool::new(false),
        });
        let heartbeat = {
            let (shared, every) = (Arc::clone(&shared), lock.heartbeat);
            std::thread::Builder::new()
                .name("pidlock-heartbeat".to_owned())
                .spawn(move || {
                    while !shared.released.load(Ordering::SeqCst) {
                        std::thread::park_timeout(every);
                        if shared.released.load(Ordering::SeqCst) {
                            break;
                        }
                        let mut client =
                            shared.client.lock().unwrap_or_else(PoisonError::into_inner);
                        let sent = shared.started.elapsed();
                        match confirm(&mut client, id) {
                            Ok(true) => shared.confirmed.store(
                                u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX),
                                Ordering::SeqCst,
                            ),
                            // Not ours any more (the session was replaced):
                            // stop confirming; the watchdog does the rest.
                            Ok(false) => break,
                            Err(_) => {}
                        }
                    }
                })
                .ok()
        };
        let (shared_for_watchdog, lease, grace, key) = (
            Arc::clone(&shared),
            lock.lease,
            lock.grace,
            lock.key.clone(),
        );
        let _ = std::thread::Builder::new()
            .name("pidlock-watchdog".to_owned())
            .spawn(move || {
                watchdog(&shared_for_watchdog, lease, grace, &key, term);
            });
        Self {
            shared,
            owner: Pid::current(),
            id,
            term,
            heartbeat,
        }
    }

    /// This acquisition's fencing term.
    #[must_use]
    pub fn term(&self) -> u64 {
        u64::try_from(self.term).unwrap_or(0)
    }
}

/// Declares the lock lost once no confirmation arrived for a lease, on the
/// monotonic clock, whatever the heartbeat's query is doing (module docs).
fn watchdog(shared: &Shared, lease: Duration, grace: Duration, key: &str, term: i64) {
    loop {
        if shared.released.load(Ordering::SeqCst) {
            return;
        }
        let silent = shared.since_confirmed();
        if silent >= lease {
            break;
        }
        std::thread::sleep((lease - silent).min(Duration::from_millis(100)));
    }
    messages::emit(
        Level::Error,
        &format!(
            "Lost the PostgreSQL lock \"{key}\" (term {term}): ownership not confirmed for {}.\n        \
             Stopping before another instance can take it: SIGTERM now, exit in {}.",
            messages::duration(lease),
            messages::duration(grace)
        ),
    );
    TERM.store(0, Ordering::SeqCst);
    let _ = nix::sys::signal::kill(Pid::current().as_nix(), nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(grace);
    // The program's own shutdown did not finish in time.
    std::process::exit(LOST_LOCK_EXIT_CODE);
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        if Pid::current() != self.owner {
            // A fork child's copy: its socket is the parent's session. An
            // unlock or a Terminate message sent from here would end the
            // parent's lock, so the connection is never touched or closed.
            std::mem::forget(Arc::clone(&self.shared));
            return;
        }
        self.shared.released.store(true, Ordering::SeqCst);
        TERM.store(0, Ordering::SeqCst);
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.thread().unpark();
        }
        // Unlock if the connection is free now; if the heartbeat is stuck in
        // a query, closing the connection (when its thread lets go) ends the
        // session, which releases the lock just the same.
        if let Ok(mut client) = self.shared.client.try_lock() {
            let _ = client.query_one("SELECT pg_advisory_unlock($1)", &[&self.id]);
        }
    }
}

impl Held for PgGuard {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids_are_stable_and_non_negative() {
        assert_eq!(PgLock::lock_id("my-bot"), PgLock::lock_id("my-bot"));
        assert_ne!(PgLock::lock_id("my-bot"), PgLock::lock_id("my-bot-2"));
        for key in ["", "a", "my-bot", "ünïcödé", &"x".repeat(1000)] {
            assert!(PgLock::lock_id(key) >= 0);
        }
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c; shifted right once.
        assert_eq!(PgLock::lock_id("a"), 0x57b1_ee26_4300_f646);
    }

    #[test]
    fn settings_that_break_the_lease_promise_are_refused() {
        // 26 s lease + 5 s grace is not shorter than the 30 s server timeout.
        let lock = PgLock::new("postgres://localhost/x", "k").lease(Duration::from_secs(26));
        match lock.acquire() {
            Err(Error::Remote { reason, .. }) => {
                assert!(reason.contains("must be shorter"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
