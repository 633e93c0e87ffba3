//! Refusing poolers that share one server session between clients.
//!
//! A session advisory lock belongs to a server session. A pooler in
//! transaction or statement mode (PgBouncer's `pool_mode = transaction` or
//! `statement`) hands a server session to whichever client runs the next
//! transaction, so the lock would belong to whoever happens to be on that
//! session, and `pg_try_advisory_lock` is re-entrant: a second program on
//! the same server session "gets" the lock its first holder has. Checking
//! `pg_backend_pid()` and `pg_locks` cannot see that: both programs see the
//! same backend holding the key. Three things can:
//!
//! 1. **A marker per client.** Each connection first takes a session lock of
//!    its own, `(MARKER_CLASS, nonce)` with a random nonce, in pidlock's
//!    reserved key space (two-key advisory locks of class [`MARKER_CLASS`];
//!    the lock's own keys are one-key locks and never meet them). A server
//!    session carrying *another* client's marker is shared: the connection
//!    is refused. The key is taken only by a statement that checks, in the
//!    same statement, that the session carries our marker and nobody
//!    else's (a statement always runs on one server session, whatever the
//!    pooler), so the key is never taken on a session another pidlock
//!    client is on. Every heartbeat checks the same three facts in one
//!    statement: the key and our marker are held by this backend, no other
//!    marker is. A pooler that moves us to another server session, or puts
//!    another client on ours, is noticed at the next beat.
//! 2. **A probe.** A lone client through a transaction or statement pooler
//!    sees none of that: it keeps getting the same server session. So after
//!    taking its marker, a client opens a second connection and asks
//!    whether *its* backend holds the first connection's marker. Directly,
//!    or through a session-mode pooler, the probe gets a server session of
//!    its own: no. Through a transaction or statement pooler the first
//!    connection is idle, so its server session is free and the probe is
//!    given it (always with one server connection; with more, PgBouncer
//!    reuses the most recently used one first): yes, and the lock is
//!    refused before the key is touched. A probe that cannot connect, or
//!    gets no server within [`PROBE_PATIENCE`] (a session pooler with every
//!    server connection taken), proves nothing either way and the checks of
//!    1 carry on alone.
//!
//! No step uses a transaction block: a statement-mode pooler refuses those
//! by closing the connection, which would hide the reason.
//!
//! What is left: through a transaction pooler busy enough that the probe
//! lands elsewhere, mutual exclusion still holds (the key is only ever taken
//! on a session carrying the taker's marker alone), but a holder learns
//! that the pooler closed its server session only at the next heartbeat,
//! not at once. That is why such poolers are refused rather than tolerated.
//! A session-mode pooler works like a direct connection, provided it runs
//! `DISCARD ALL` when a client leaves (PgBouncer's default
//! `server_reset_query`), which releases the lock.

use std::sync::mpsc;
use std::time::Duration;

use postgres::{Client, GenericClient, SimpleQueryMessage};

/// The class of pidlock's session markers: "pidl" in ASCII.
pub(super) const MARKER_CLASS: i32 = 0x7069_646c;

/// How long the probe waits for an answer once connected.
pub(super) const PROBE_PATIENCE: Duration = Duration::from_secs(1);

/// Rows of `pg_locks` for this backend's granted advisory locks.
const OURS: &str = "locktype = 'advisory' AND granted AND pid = pg_backend_pid()";

/// What every refusal of a pooler ends with.
pub(super) const USE_DIRECT: &str = "use a direct or session-mode connection";

/// Why a connection was refused, or the query error that stopped the check.
pub(super) enum Refusal {
    /// The session is shared or moves between clients: what was seen.
    Pooler(&'static str),
    Query(postgres::Error),
}

impl From<postgres::Error> for Refusal {
    fn from(error: postgres::Error) -> Self {
        Self::Query(error)
    }
}

/// This connection's marker: the nonce of its `(MARKER_CLASS, nonce)` lock.
#[derive(Clone, Copy, Debug)]
pub(super) struct Marker {
    nonce: i32,
}

impl Marker {
    /// Takes a fresh marker on the connection's server session, refusing a
    /// session that carries another client's (one statement: the check and
    /// the lock run on the same server session).
    pub(super) fn take(client: &mut Client) -> Result<Self, Refusal> {
        // A nonce another session already holds is refused by the server
        // (the lock is exclusive); a few fresh draws always find a free one.
        for _ in 0..8 {
            let marker = Self {
                nonce: random_nonce(),
            };
            let sql = format!(
                "SELECT CASE WHEN NOT {} THEN pg_try_advisory_lock({MARKER_CLASS}, {}) END",
                marker.foreign_sql(),
                marker.nonce
            );
            match first(client, &sql)? {
                Some(true) => return Ok(marker),
                Some(false) => {}
                None => {
                    return Err(Refusal::Pooler(
                        "its server session already carries another client's marker",
                    ));
                }
            }
        }
        Err(Refusal::Pooler("no free session marker could be drawn"))
    }

    /// Takes the key `id` if this server session carries our marker and no
    /// other: `Ok(None)` when it does not (then nothing was taken),
    /// `Ok(Some(got))` otherwise. With `wait`, blocks in the server until
    /// the key is free (the caller sets the timeouts).
    pub(super) fn lock(
        &self,
        client: &mut Client,
        id: i64,
        wait: bool,
    ) -> Result<Option<bool>, postgres::Error> {
        // `pg_advisory_lock` returns void: its text is '' once granted.
        let take = if wait {
            format!("pg_advisory_lock({id})::text IS NOT NULL")
        } else {
            format!("pg_try_advisory_lock({id})")
        };
        // CASE evaluates its branch only when the condition holds, and the
        // lock functions are volatile, so nothing is taken otherwise.
        first(
            client,
            &format!(
                "SELECT CASE WHEN {} AND NOT {} THEN {take} END",
                self.mine_sql(),
                self.foreign_sql()
            ),
        )
    }

    /// `EXISTS (...)`: this backend holds our marker.
    fn mine_sql(&self) -> String {
        format!(
            "EXISTS (SELECT 1 FROM pg_locks WHERE {OURS} AND classid = {MARKER_CLASS} AND objid = {} AND objsubid = 2)",
            self.nonce
        )
    }

    /// `EXISTS (...)`: this backend holds another client's marker.
    fn foreign_sql(&self) -> String {
        format!(
            "EXISTS (SELECT 1 FROM pg_locks WHERE {OURS} AND classid = {MARKER_CLASS} AND objid <> {} AND objsubid = 2)",
            self.nonce
        )
    }

    /// What this backend holds: the key `id`, our marker, another marker.
    /// One statement, so one server session answers all three.
    pub(super) fn seen(
        &self,
        client: &mut impl GenericClient,
        id: i64,
    ) -> Result<Seen, postgres::Error> {
        let (high, low) = (id >> 32, id & 0xffff_ffff);
        let nonce = self.nonce;
        // One pass over pg_locks (it briefly locks the whole lock table).
        let sql = format!(
            "SELECT coalesce(bool_or(objsubid = 1 AND classid::bigint = {high} AND objid::bigint = {low}), false), \
                    coalesce(bool_or(objsubid = 2 AND classid = {MARKER_CLASS} AND objid = {nonce}), false), \
                    coalesce(bool_or(objsubid = 2 AND classid = {MARKER_CLASS} AND objid <> {nonce}), false) \
             FROM pg_locks WHERE {OURS}"
        );
        let row = row(client, &sql)?;
        let at = |index: usize| row.get(index).copied().flatten().unwrap_or(false);
        Ok(Seen {
            key: at(0),
            marker: at(1),
            foreign: at(2),
        })
    }

    /// Releases the key and the marker, if this session still has them.
    pub(super) fn unlock_sql(&self, id: i64) -> String {
        format!(
            "SELECT pg_advisory_unlock({id}), pg_advisory_unlock({MARKER_CLASS}, {})",
            self.nonce
        )
    }

    /// The probe's question: does the probe's backend hold this marker?
    fn probe_sql(&self) -> String {
        format!("SELECT {}", self.mine_sql())
    }
}

/// What one backend holds (see [`Marker::seen`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) key: bool,
    pub(super) marker: bool,
    pub(super) foreign: bool,
}

impl Seen {
    /// Why this server session is not ours alone, if it is not.
    pub(super) fn pooler(self) -> Option<&'static str> {
        if !self.marker {
            Some("the statement ran on a server session without this connection's marker")
        } else if self.foreign {
            Some("the server session carries another client's marker")
        } else {
            None
        }
    }
}

/// Opens a second connection and asks whether it shares the first one's
/// server session (module docs, 2). `Err` only when the probe's thread
/// cannot be started: without it the check cannot run.
pub(super) fn probe(
    connect: impl FnOnce() -> Result<Client, postgres::Error> + Send + 'static,
    marker: Marker,
    connect_patience: Duration,
) -> std::io::Result<Option<&'static str>> {
    enum Step {
        Connected,
        Answered(bool),
        Failed,
    }
    let (send, steps) = mpsc::channel();
    let sql = marker.probe_sql();
    // The thread is left behind if the pooler keeps the probe waiting: it
    // ends when the pooler answers or gives up, and never touches the lock.
    std::thread::Builder::new()
        .name("pidlock-probe".to_owned())
        .spawn(move || {
            let Ok(mut client) = connect() else {
                let _ = send.send(Step::Failed);
                return;
            };
            let _ = send.send(Step::Connected);
            let answer = first(&mut client, &sql).ok().flatten();
            let _ = send.send(answer.map_or(Step::Failed, Step::Answered));
        })?;
    if !matches!(steps.recv_timeout(connect_patience), Ok(Step::Connected)) {
        return Ok(None);
    }
    Ok(match steps.recv_timeout(PROBE_PATIENCE) {
        Ok(Step::Answered(true)) => {
            Some("a second connection was given the same server session as the first")
        }
        _ => None,
    })
}

/// The first row of a simple query, as booleans (`None` for NULL). The
/// simple protocol needs no prepared statement, which a transaction pooler
/// could lose between statements.
fn row(client: &mut impl GenericClient, sql: &str) -> Result<Vec<Option<bool>>, postgres::Error> {
    let messages = client.simple_query(sql)?;
    Ok(messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|index| row.get(index).map(|value| value == "t"))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default())
}

/// The first column of [`row`].
fn first(client: &mut impl GenericClient, sql: &str) -> Result<Option<bool>, postgres::Error> {
    Ok(row(client, sql)?.first().copied().flatten())
}

/// A positive 31-bit nonce (so it reads the same as `objid`) from the
/// system's secure random source; time and PID if that fails, which keeps
/// nonces distinct between processes (only uniqueness matters here).
fn random_nonce() -> i32 {
    let mut bytes = [0; 4];
    let provider = rustls::crypto::ring::default_provider();
    if provider.secure_random.fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        bytes = (nanos ^ std::process::id().rotate_left(16)).to_le_bytes();
    }
    i32::from_le_bytes(bytes) & 0x7fff_ffff
}
