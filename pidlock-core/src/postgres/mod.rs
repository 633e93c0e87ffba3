//! The PostgreSQL engine: a session advisory lock on a dedicated
//! connection of its own. What it promises, and the arithmetic, is on
//! [`PgLock`]; the lease, the watchdog and the fencing term's publication
//! are shared with every engine (`crate::remote`).
//!
//! Poolers that share a server session between clients are refused
//! ([`pooler`]); TLS follows libpq's `sslmode` and `sslrootcert` ([`tls`]).

mod fencing;
mod keeper;
mod pooler;
mod tls;

use std::time::{Duration, Instant};

use postgres::config::{Host, SslMode as WireMode};
use postgres::{Client, NoTls};

use self::keeper::PgKeeper;
use self::pooler::{Marker, Refusal};
use self::tls::{SslMode, Tls};
use crate::error::{Error, Result, Service};
use crate::messages::LogLevel;
use crate::policy::OnConflict;
use crate::remote::{self, LeaseTiming, RemoteGuard, Taken};

/// The guard of a [`PgLock`].
pub type PgGuard = RemoteGuard;

/// Server-side settings that end an idle session or transaction on their
/// own clock. The holder's session is idle between heartbeats, and its
/// lease arithmetic counts only on keepalives ending a silent session, so
/// each is pinned to 0 (off) for this session, and checked.
/// (`statement_timeout` and `lock_timeout` are set by the lock itself.)
const SESSION_TIMEOUTS: &[&str] = &[
    "idle_session_timeout",
    "idle_in_transaction_session_timeout",
    "transaction_timeout",
];

/// A lock held in PostgreSQL, shared by every host that uses the same server
/// and key: a session advisory lock on a dedicated, unpooled connection.
///
/// ```no_run
/// use pidlock_core::PgLock;
///
/// let guard = PgLock::new("postgres://bot@db.internal/bot?sslmode=verify-full", "my-bot").acquire()?;
/// println!("holding term {}", guard.term());
/// # Ok::<(), pidlock_core::Error>(())
/// ```
///
/// # What is promised, and the arithmetic behind it
///
/// The server holds the lock for as long as the holder's session lives, and
/// frees it the instant the session ends; a standby waiting in the server
/// (`OnConflict::Wait`) gets it then. A session ends in one of two ways.
///
/// **The server ends it**: `pg_terminate_backend`, a restart or shutdown, a
/// backend crash, or the holder's connection is closed. The server sends
/// its `FATAL` (or closes the socket) *before* it frees the lock, and the
/// holder is always reading its connection between heartbeats, so it learns
/// within one network delay and stops at once: SIGTERM to itself, so that
/// the program's own shutdown runs, and a hard exit after the *grace* `G`
/// (5 s, exit status [`LOST_LOCK_EXIT_CODE`](crate::LOST_LOCK_EXIT_CODE)).
/// A standby waiting in the server gets the lock in that same instant,
/// though, so a holder that did not release the lock itself is given a
/// *handover* (1 s, [`handover`](Self::handover)): its successor waits that
/// long before `acquire` returns, and the old holder has been told to stop
/// by then. Whether the previous holder released cleanly is recorded with
/// the fencing term, so a normal release hands on at once.
///
/// Settings that would end an idle session on their own clock
/// (`idle_session_timeout`, `idle_in_transaction_session_timeout`,
/// `transaction_timeout`, whether set for the server, the database or the
/// role) are turned off for the holder's session and checked; a server that
/// keeps one on is refused with a message, since it could free the lock
/// while a partitioned holder runs on.
///
/// **The holder goes silent** (a partition, a dead host, a frozen process):
/// the server ends the session once the connection has been silent for the
/// *server timeout* `S` (30 s), not sooner: this connection sets the
/// server's `tcp_keepalives_idle = S/3`, `tcp_keepalives_interval = S/3`,
/// `tcp_keepalives_count = 2` (`S/3 + 2 * S/3 = S`) and `tcp_user_timeout
/// = S`, under which Linux gives up on a peer only once it has been silent
/// for `S`. The holder confirms ownership every *heartbeat* (2 s) by asking
/// `pg_locks` whether its own backend holds the key (not `SELECT 1`: a
/// reconnected session answers that without holding anything). A watchdog,
/// on the monotonic clock, declares the lock lost when no confirmation has
/// arrived for the *lease* `L` (10 s), whatever a hung query is doing, and
/// stops the process the same way. The last confirmation was sent at some
/// time `t`; the server heard from the holder at `t` or later, so it cannot
/// drop the session before `t + S`, and the holder is gone by `t + L + G`.
/// [`acquire`](Self::acquire) refuses settings without `L + G < S`: with the
/// defaults 15 s < 30 s.
///
/// The holder never re-acquires silently. Every acquisition bumps a fencing
/// term ([`fencing_term`](crate::fencing_term), a row per key in the table
/// `pidlock_fencing`) for side effects that must be fenced anyway (a
/// process paused longer than its lease, e.g. by SIGSTOP).
///
/// # Failover
///
/// Advisory locks live in the primary's memory and are not replicated: a
/// promoted replica holds no lock at all, so a standby connected to it may
/// acquire at once, at promotion rather than `S` after the holder went
/// silent. The holder's connection to the old primary breaks when that
/// primary goes away: a primary that shuts down or whose server process
/// dies closes it, and the holder stops at once; a primary whose host
/// vanishes closes nothing, and the holder stops at the end of its lease
/// (`L + G` after its last confirmation). The fencing term is what keeps
/// such an overlap harmless: it is an ordinary table and is replicated, so
/// the next holder's term is larger, except when asynchronous replication
/// lost the very last bump (the next holder then gets that same number
/// again; replicate synchronously where terms must never repeat). An old
/// primary that stays up and reachable by the holder while another is
/// promoted is a split brain for every client of the database, this lock
/// included: fencing the old primary is the failover manager's job.
#[derive(Clone, Debug)]
pub struct PgLock {
    url: String,
    key: String,
    timing: LeaseTiming,
    on_conflict: OnConflict,
    log_level: LogLevel,
}

impl PgLock {
    /// A lock on `key` in the database at `url`: a libpq-style URL or
    /// `key=value` string. `sslmode` (`disable`, `allow`, `prefer`,
    /// `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file,
    /// or `system`) mean what they mean to libpq, and `PGSSLMODE` /
    /// `PGSSLROOTCERT` apply when the URL does not set them.
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key: key.into(),
            timing: LeaseTiming {
                lease: Duration::from_secs(10),
                heartbeat: Duration::from_secs(2),
                grace: Duration::from_secs(5),
                server_limit: Duration::from_secs(30),
                handover: Duration::from_secs(1),
            },
            on_conflict: OnConflict::Exit,
            log_level: LogLevel::Info,
        }
    }

    /// How long the holder may go without confirming ownership (10 s).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.timing.lease = lease;
        self
    }

    /// How often ownership is confirmed (2 s).
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.timing.heartbeat = heartbeat;
        self
    }

    /// How long after SIGTERM a holder that lost the lock is made to exit (5 s).
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.timing.grace = grace;
        self
    }

    /// How long the server lets a silent holder's session live (30 s).
    #[must_use]
    pub fn server_timeout(mut self, server_timeout: Duration) -> Self {
        self.timing.server_limit = server_timeout;
        self
    }

    /// How long a new holder waits before [`acquire`](Self::acquire)
    /// returns when the previous holder did not release the lock itself (it
    /// crashed, was killed, or its session was ended under it) (1 s).
    ///
    /// The server frees the lock the moment a session ends. When the server
    /// ended it (`pg_terminate_backend`, a restart), the old holder learns so
    /// within a network delay and is told to stop at once, but a standby
    /// that was waiting in the server gets the lock in the same instant: the
    /// handover is what makes the old holder stop before the new one
    /// starts. After a clean release there is no wait.
    #[must_use]
    pub fn handover(mut self, handover: Duration) -> Self {
        self.timing.handover = handover;
        self
    }

    /// Fail at once (default) or wait in the server; takeover is refused.
    #[must_use]
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self
    }

    /// Which of its lines the lock writes, as for
    /// [`PidLock::log_level`](crate::PidLock::log_level): `Info` (default)
    /// says when it waits, acquires and hands over; `Warn` and `Error` keep
    /// only the error a lost lock is reported with. `PIDLOCK_LOG` overrides
    /// it.
    ///
    /// ```
    /// use pidlock_core::{LogLevel, PgLock};
    ///
    /// let lock = PgLock::new("postgres://db/bot", "my-bot").log_level(LogLevel::Warn);
    /// # let _ = lock;
    /// ```
    #[must_use]
    pub fn log_level(mut self, log_level: LogLevel) -> Self {
        self.log_level = log_level;
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

    /// Connects, makes sure the server session is this connection's alone,
    /// takes the lock, bumps the fencing term and starts the threads that
    /// keep the lease.
    ///
    /// # Errors
    ///
    /// [`Error::RemoteHeld`] naming the holder's host and PID,
    /// [`Error::RemoteTimedOut`] for a wait that ran out, [`Error::Remote`]
    /// for a connection, TLS or query failure, a pooler in transaction or
    /// statement mode, a server that keeps a session timeout on, settings
    /// that break the lease promise, takeover, or threads that could not be
    /// started.
    pub fn acquire(&self) -> Result<PgGuard> {
        remote::check_policy(Service::Postgres, &self.key, self.on_conflict)?;
        self.timing
            .check("server timeout")
            .map_err(|reason| self.error(reason))?;
        let log_level = self.log_level.effective();
        let target = self.target()?;
        let mut client = target
            .connect()
            .map_err(|e| self.connect_error(&target, e))?;
        self.configure(&mut client)?;
        let marker = Marker::take(&mut client).map_err(|refusal| self.refused(refusal))?;
        let probe_target = target.clone();
        let shared = pooler::probe(
            move || probe_target.connect(),
            marker,
            self.timing.lease + Duration::from_secs(1),
        )
        .map_err(|e| {
            self.error(format!(
                "could not start the thread that checks for a pooler ({e})"
            ))
        })?;
        if let Some(seen) = shared {
            return Err(self.pooler_error(seen));
        }
        let id = Self::lock_id(&self.key);
        self.lock(&mut client, marker, id, log_level)?;
        let seen = marker.seen(&mut client, id).map_err(|e| self.pg_error(e))?;
        if let Some(seen) = seen.pooler() {
            return Err(self.pooler_error(seen));
        }
        if !seen.key {
            return Err(self.error(
                "the lock was granted, but pg_locks does not show this session holding it"
                    .to_owned(),
            ));
        }
        // The lease runs from when the server last heard from us, which is
        // when it received the bump below, not when its reply arrived: a
        // slow reply must not stretch the lease past the server's timeout.
        let last_sent = Instant::now();
        let (term, previous) =
            fencing::bump(&mut client, &self.key).map_err(|e| self.pg_error(e))?;
        let keeper = PgKeeper {
            client,
            key: self.key.clone(),
            id,
            marker,
            term,
        };
        remote::hold(
            Service::Postgres,
            &self.key,
            Taken {
                keeper,
                term: u64::try_from(term).unwrap_or(0),
                previous,
                last_sent,
            },
            self.timing,
            log_level,
        )
    }

    fn error(&self, reason: String) -> Error {
        Error::Remote {
            service: Service::Postgres,
            key: self.key.clone(),
            reason,
            source: None,
        }
    }

    /// The error with its cause: postgres' own text alone is often just
    /// "error connecting to server".
    fn pg_error(&self, error: postgres::Error) -> Error {
        let mut reason = error.to_string();
        if let Some(source) = std::error::Error::source(&error) {
            let source = source.to_string();
            if !reason.contains(&source) {
                reason.push_str(&format!(": {source}"));
            }
        }
        self.caused_by(reason, error)
    }

    /// [`Error::Remote`] keeping the client's error as its `source()`.
    fn caused_by(&self, reason: String, error: postgres::Error) -> Error {
        Error::Remote {
            service: Service::Postgres,
            key: self.key.clone(),
            reason,
            source: Some(Box::new(error)),
        }
    }

    fn connect_error(&self, target: &Target, error: postgres::Error) -> Error {
        match target.tls.explain(&error, &target.host) {
            Some(reason) => self.caused_by(reason, error),
            None => self.pg_error(error),
        }
    }

    fn pooler_error(&self, seen: &str) -> Error {
        self.error(format!(
            "{seen}: this connection goes through a pooler in transaction or statement mode (such as PgBouncer with \
             pool_mode = transaction), where a session lock does not stay with the program that took it; {}",
            pooler::USE_DIRECT
        ))
    }

    fn refused(&self, refusal: Refusal) -> Error {
        match refusal {
            Refusal::Pooler(seen) => self.pooler_error(seen),
            Refusal::Query(error) => self.pg_error(error),
        }
    }

    /// The URL, with TLS as libpq would do it and keepalives on both ends
    /// (module docs).
    fn target(&self) -> Result<Target> {
        let invalid = |reason: String| self.error(format!("invalid URL: {reason}"));
        let split = tls::split(&self.url).map_err(invalid)?;
        let mut config: postgres::Config = split
            .rest
            .parse()
            .map_err(|error: postgres::Error| invalid(error.to_string()))?;
        let tls = Tls::new(split.sslmode.as_deref(), split.sslrootcert.as_deref())
            .map_err(|reason| self.error(reason))?;
        config
            .application_name("pidlock")
            .connect_timeout(self.timing.lease)
            .keepalives(true)
            // TCP keepalive timers count whole seconds: 0 is refused.
            .keepalives_idle(self.timing.heartbeat.max(Duration::from_secs(1)))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(2)
            .tcp_user_timeout(self.timing.lease);
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        Ok(Target { config, tls, host })
    }

    /// The server's half of the keepalive arithmetic, heartbeats that
    /// cannot hang in the server, and no other clock that could end the
    /// session ([`SESSION_TIMEOUTS`]).
    fn configure(&self, client: &mut Client) -> Result<()> {
        let third = (self.timing.server_limit.as_secs() / 3).max(1);
        client
            .batch_execute(&format!(
                "SET tcp_keepalives_idle = {third}; SET tcp_keepalives_interval = {third}; \
                 SET tcp_keepalives_count = 2; SET tcp_user_timeout = {}; SET statement_timeout = {}",
                self.timing.server_limit.as_millis(),
                self.timing.heartbeat.as_millis()
            ))
            .map_err(|e| self.pg_error(e))?;
        // Only the settings this server knows (idle_session_timeout came in
        // PostgreSQL 14, transaction_timeout in 17): set_config for each
        // row pg_settings has, then read back what is still on.
        let names = SESSION_TIMEOUTS
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let still_on = client
            .simple_query(&format!(
                "SELECT set_config(name, '0', false) FROM pg_settings WHERE name IN ({names}); \
                 SELECT name, setting, unit FROM pg_settings WHERE name IN ({names}) AND setting <> '0'"
            ))
            .map_err(|e| self.pg_error(e))?;
        let on: Vec<String> = still_on
            .iter()
            .filter_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) if row.len() == 3 => Some(format!(
                    "{} = {}{}",
                    row.get(0).unwrap_or_default(),
                    row.get(1).unwrap_or_default(),
                    row.get(2).unwrap_or_default()
                )),
                _ => None,
            })
            .collect();
        if on.is_empty() {
            return Ok(());
        }
        Err(self.error(format!(
            "the server keeps {} for this session, which would end the holder's idle session \
             between heartbeats and free the lock while a cut-off holder still runs; turn it off \
             for this role or database (ALTER ROLE ... SET ... = 0)",
            on.join(", ")
        )))
    }

    /// Takes the key, in a statement that also checks that the session
    /// carries this connection's marker and nobody else's ([`pooler`]).
    fn lock(
        &self,
        client: &mut Client,
        marker: Marker,
        id: i64,
        log_level: LogLevel,
    ) -> Result<()> {
        let pg = |e: postgres::Error| self.pg_error(e);
        let refused = || self.pooler_error("the server session is not this connection's alone");
        match marker.lock(client, id, false).map_err(pg)? {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => return Err(refused()),
        }
        match self.on_conflict {
            OnConflict::Exit | OnConflict::Takeover { .. } => Err(self.held_error(client)),
            OnConflict::Wait { timeout } => {
                remote::waiting(Service::Postgres, &self.key, log_level);
                let started = Instant::now();
                let lock_timeout = timeout.map_or(0, |timeout| timeout.as_millis().max(1));
                client
                    .batch_execute(&format!(
                        "SET statement_timeout = 0; SET lock_timeout = {lock_timeout}"
                    ))
                    .map_err(pg)?;
                let waited = marker.lock(client, id, true);
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = 0; SET statement_timeout = {}",
                        self.timing.heartbeat.as_millis()
                    ))
                    .map_err(pg)?;
                match waited {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(refused()),
                    Err(error)
                        if error.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                    {
                        let (host, pid) = fencing::holder(client, &self.key);
                        Err(Error::RemoteTimedOut {
                            service: Service::Postgres,
                            key: self.key.clone(),
                            host,
                            pid,
                            waited: started.elapsed(),
                        })
                    }
                    Err(error) => Err(pg(error)),
                }
            }
        }
    }

    /// Who holds the key, from the row its holder wrote with its term.
    fn held_error(&self, client: &mut Client) -> Error {
        let (host, pid) = fencing::holder(client, &self.key);
        Error::RemoteHeld {
            service: Service::Postgres,
            key: self.key.clone(),
            host,
            pid,
        }
    }
}

/// Where and how to connect: the parsed URL and its TLS settings.
#[derive(Clone)]
struct Target {
    config: postgres::Config,
    tls: Tls,
    /// The first host, for messages.
    host: String,
}

impl Target {
    /// One connection, trying TLS and plaintext in the order `sslmode`
    /// says: `prefer` falls back to plaintext when the handshake fails, and
    /// `allow` tries TLS when the server refuses plaintext, as libpq does.
    fn connect(&self) -> std::result::Result<Client, postgres::Error> {
        let mut config = self.config.clone();
        config.ssl_mode(self.tls.mode.first_try());
        let first = match self.tls.mode {
            SslMode::Disable | SslMode::Allow => config.connect(NoTls),
            _ => config.connect(self.tls.connector()),
        };
        match (self.tls.mode, first) {
            (SslMode::Prefer, Err(error)) if Tls::handshake_failed(&error) => {
                config.ssl_mode(WireMode::Disable).connect(NoTls)
            }
            (SslMode::Allow, Err(error)) if error.as_db_error().is_some() => config
                .ssl_mode(WireMode::Require)
                .connect(self.tls.connector()),
            (_, result) => result,
        }
    }
}

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

    #[test]
    fn tls_settings_are_checked_before_connecting() {
        let lock = PgLock::new(
            "postgres://localhost/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
            "k",
        );
        match lock.acquire() {
            Err(Error::Remote { reason, .. }) => {
                assert!(
                    reason.contains("cannot read sslrootcert /nonexistent/ca.crt"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
