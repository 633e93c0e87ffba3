//! The Redis engine: a key holding a random token, renewed and released by
//! scripts that check the token. What it promises, and the arithmetic, is
//! on [`RedisLock`]; the lease, the watchdog and the fencing term's
//! publication are shared with every engine (`crate::remote`).

mod conn;
mod scripts;

use std::io::Read;
use std::time::{Duration, Instant};

use ::redis::Value;

use self::conn::{Conn, Target};
use self::scripts::{Holding, Keys, Lua};
use crate::error::{Error, Result, Service};
use crate::messages::LogLevel;
use crate::pid::Pid;
use crate::policy::OnConflict;
use crate::remote::{self, Keeper, LeaseTiming, Lost, Previous, RemoteGuard, Taken};

/// The guard of a [`RedisLock`].
pub type RedisGuard = RemoteGuard;

/// A lock held in Redis, shared by every host that uses the same server,
/// database and key.
///
/// ```no_run
/// use pidlock_core::RedisLock;
///
/// let guard = RedisLock::new("rediss://:secret@cache.internal:6380/0", "my-bot").acquire()?;
/// println!("holding term {}", guard.term());
/// # Ok::<(), pidlock_core::Error>(())
/// ```
///
/// # The protocol
///
/// Each step is one script the server runs atomically (nothing runs
/// between its check and its write):
///
/// - **acquire**: if the key `pidlock:{KEY}` is free, set it to a random
///   128-bit token with this holder's term, PID and host, with the TTL `T`,
///   and bump the fencing term in the same script; otherwise return who
///   holds it and for how long.
/// - **renew**, every heartbeat: extend the TTL, only while the key still
///   holds our token.
/// - **release**, when the guard is dropped: delete the key, only while it
///   holds our token, record the clean release and wake one standby.
///
/// A standby (`OnConflict::Wait`) blocks on a list the release pushes to
/// (`BLPOP`), so a clean hand-over takes one round trip; after a holder that
/// crashed it wakes when the key's TTL runs out.
///
/// # What is promised, and the arithmetic behind it
///
/// The server lets go of the lock when the key's TTL `T` (15 s) runs out
/// without a renewal, or when the key is deleted, overwritten or lost. The
/// holder renews every *heartbeat* (1 s); a renewal sent at `t` reaches the
/// server at `t` or later and sets the key to expire at that moment plus
/// `T`, so the key cannot expire before `t + T`. A watchdog on the monotonic
/// clock counts the *lease* `L` (8 s) from the sending of the last renewal
/// the server confirmed: with no new confirmation by `t + L` it raises
/// SIGTERM on the process, so the program's own shutdown runs, and exits
/// hard after the *grace* `G` (5 s, exit status
/// [`LOST_LOCK_EXIT_CODE`](crate::LOST_LOCK_EXIT_CODE)). The holder is gone
/// by `t + L + G = t + 13 s`, two seconds before the key can expire at
/// `t + 15 s`. [`acquire`](Self::acquire) refuses settings without
/// `L + G < T`. The two seconds absorb clock drift between the holder's
/// monotonic clock and the server's, which Redis expires keys by; a server
/// clock *stepped* forward by more than that expires keys early, for every
/// client of that server.
///
/// When the lock is gone under the holder (the key deleted, overwritten by
/// hand, flushed, or the server restarted without its data), the next
/// renewal is refused and the holder stops at once, within a heartbeat and a
/// round trip. A standby could take the key in that window; so when the
/// previous holder did not release it and its key vanished before its TTL
/// (or the server lost its record of a holder this standby saw), the new
/// holder waits a *handover* (2 s, [`handover`](Self::handover)) before
/// `acquire` returns. After a clean release, or after a TTL that ran out
/// (the holder stopped itself by then), there is no wait.
///
/// The lock does not depend on its connection: a connection the server
/// closes (its `timeout` setting closes idle clients; a proxy, a restart)
/// is opened again at the next heartbeat, and only a renewal the server
/// refuses, or a lease without a confirmed renewal, stops the holder.
///
/// # Replicas and failover
///
/// Redis is not a consensus system: a write is acknowledged by the primary
/// alone and reaches replicas later. If the primary fails before the key
/// reaches a replica that is then promoted, the new primary has no lock,
/// and a standby takes it while the old holder still runs (it stops only
/// at the end of its lease, `L + G` after its last confirmation, since its
/// server is gone). [`replicas`](Self::replicas) closes most of that: the
/// acquisition returns only once `n` replicas acknowledged it (`WAIT`), and
/// a renewal counts as a confirmation only once `n` replicas acknowledged
/// it, so the key and its TTL are on `n` replicas whenever the lease runs.
/// What it cannot close: the failover manager may promote a replica that
/// was not among them, and a replica that acknowledged may still lose the
/// write if it restarts without persistence.
///
/// What the fencing term still protects in every case: it is the previous
/// term + 1 or the server's clock in milliseconds, whichever is larger, so
/// a new holder on a promoted replica or a restarted server gets a term
/// larger than every term handed out before (as long as the server clocks
/// are not more apart than the time between the two acquisitions). A store
/// that refuses writes tagged with an older term than it has seen (see
/// [`fencing_term`](crate::fencing_term)) stays correct when two holders
/// overlap.
///
/// # TLS and authentication
///
/// `rediss://` verifies the server's certificate chain and host name against
/// the system's trusted roots, or the CA in `?sslrootcert=PATH`; failures
/// say what failed (an unknown CA, a host name mismatch, a server that does
/// not speak TLS). A password (`redis://:PASSWORD@host`) or an ACL user and
/// password (`redis://USER:PASSWORD@host`) are sent with `AUTH`; the path
/// picks the database (`redis://host/2`). TLS is rustls with the ring
/// provider: no OpenSSL.
#[derive(Clone, Debug)]
pub struct RedisLock {
    url: String,
    key: String,
    timing: LeaseTiming,
    on_conflict: OnConflict,
    log_level: LogLevel,
    replicas: u32,
}

impl RedisLock {
    /// A lock on `key` in the Redis server at `url` (`redis://` or
    /// `rediss://`; see the type's docs for what the URL may hold).
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key: key.into(),
            timing: LeaseTiming {
                lease: Duration::from_secs(8),
                heartbeat: Duration::from_secs(1),
                grace: Duration::from_secs(5),
                server_limit: Duration::from_secs(15),
                handover: Duration::from_secs(2),
            },
            on_conflict: OnConflict::Exit,
            log_level: LogLevel::Info,
            replicas: 0,
        }
    }

    /// How long the holder may go without a confirmed renewal (8 s).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.timing.lease = lease;
        self
    }

    /// How often the key is renewed (1 s).
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

    /// The key's time to live, set again by every renewal (15 s): how long
    /// the lock outlives a holder that crashed. Lease + grace must be
    /// shorter.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.timing.server_limit = ttl;
        self
    }

    /// How long a new holder waits before [`acquire`](Self::acquire)
    /// returns when the previous holder's key vanished before its TTL
    /// without a release (deleted, flushed, lost in a restart), so that the
    /// previous holder, which learns so at its next renewal, has stopped
    /// (2 s). After a clean release or an expired TTL there is no wait.
    #[must_use]
    pub fn handover(mut self, handover: Duration) -> Self {
        self.timing.handover = handover;
        self
    }

    /// Fail at once (default) or wait for the holder to release or expire;
    /// takeover is refused.
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
    #[must_use]
    pub fn log_level(mut self, log_level: LogLevel) -> Self {
        self.log_level = log_level;
        self
    }

    /// Acquisition and every renewal count only once `n` replicas have
    /// acknowledged them (`WAIT n`, within a heartbeat) (0: the primary
    /// alone). See "Replicas and failover" above for what this closes and
    /// what it cannot.
    ///
    /// ```
    /// use pidlock_core::RedisLock;
    ///
    /// let lock = RedisLock::new("redis://cache.internal", "my-bot").replicas(1);
    /// # let _ = lock;
    /// ```
    #[must_use]
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Connects, takes the lock (waiting for it when asked to), bumps the
    /// fencing term in the same step and starts the threads that keep the
    /// lease.
    ///
    /// # Errors
    ///
    /// [`Error::RemoteHeld`] naming the holder's host and PID,
    /// [`Error::RemoteTimedOut`] for a wait that ran out, [`Error::Remote`]
    /// for an invalid URL, a connection, TLS or authentication failure, a
    /// script the server refused, too few replicas, settings that break the
    /// lease promise, takeover, or threads that could not be started.
    pub fn acquire(&self) -> Result<RedisGuard> {
        remote::check_policy(Service::Redis, &self.key, self.on_conflict)?;
        self.timing
            .check("TTL")
            .map_err(|reason| self.error(reason))?;
        let log_level = self.log_level.effective();
        let target = Target::parse(&self.url)
            .map_err(|reason| self.error(format!("invalid URL: {reason}")))?;
        let token = token().map_err(|e| self.error(format!("cannot draw a random token: {e}")))?;
        let keys = Keys::new(&self.key);
        let pid = Pid::current().get().to_string();
        let host = remote::host_name();
        let ttl_ms = self.timing.server_limit.as_millis().to_string();
        let acquire = Lua::acquire();
        let started = Instant::now();
        let deadline = match self.on_conflict {
            OnConflict::Wait {
                timeout: Some(timeout),
            } => Some(started + timeout),
            _ => None,
        };
        let mut conn = Some(
            Conn::open(&target, started + self.timing.lease)
                .map_err(|reason| self.error(reason))?,
        );
        // Whether this process saw the lock held: if the server then has no
        // record of it at all, it lost its data under that holder.
        let mut saw_holder = false;
        // Who held it when we last looked, for a wait that times out.
        let mut last_seen: Option<Holding> = None;
        let (conn, value, previous, last_sent) = loop {
            let open = match conn.take() {
                Some(open) => open,
                None => match Conn::open(&target, Instant::now() + self.timing.lease) {
                    Ok(open) => open,
                    Err(_) => {
                        // Waiting, and the server went away: keep waiting
                        // (bounded by the timeout), as a standby should.
                        self.pause_or_time_out(deadline, started, last_seen.as_ref())?;
                        continue;
                    }
                },
            };
            let mut open = open;
            let last_sent = Instant::now();
            let reply = eval(
                &mut open,
                &acquire,
                &[&keys.lock, &keys.fence, &keys.released],
                &[&token, &pid, &host, &ttl_ms],
                last_sent + self.timing.lease,
            );
            let fields = match reply {
                Ok(Value::Array(fields)) => fields,
                Ok(other) if !saw_holder => return Err(self.unexpected(&other)),
                Err(reason) if !saw_holder => return Err(self.error(reason)),
                // A standby rides out what a restart or a failover says on
                // the way (LOADING, READONLY, a closed connection).
                Ok(_) => {
                    conn = Some(open);
                    self.pause_or_time_out(deadline, started, last_seen.as_ref())?;
                    continue;
                }
                Err(_) => {
                    self.pause_or_time_out(deadline, started, last_seen.as_ref())?;
                    continue;
                }
            };
            let text = |index: usize| fields.get(index).and_then(scripts::text);
            if fields.first().and_then(scripts::int) == Some(1) {
                let value = text(1).unwrap_or_default();
                let previous = match text(2).as_deref() {
                    Some("unreleased") => Previous::Unreleased {
                        host: text(3).unwrap_or_default(),
                        pid: text(4).and_then(|pid| pid.parse().ok()).unwrap_or(0),
                    },
                    Some("none") if saw_holder => Previous::Forgotten,
                    _ => Previous::Gone,
                };
                break (open, value, previous, last_sent);
            }
            let holding = Holding::parse(&text(1).unwrap_or_default());
            let pttl = fields.get(2).and_then(scripts::int).unwrap_or(-1);
            if !matches!(self.on_conflict, OnConflict::Wait { .. }) {
                return Err(Error::RemoteHeld {
                    service: Service::Redis,
                    key: self.key.clone(),
                    host: holding.host,
                    pid: holding.pid.and_then(Pid::new),
                });
            }
            if !saw_holder {
                remote::waiting(Service::Redis, &self.key, log_level);
                saw_holder = true;
            }
            // Until the release wakes us, or the key's time runs out (a
            // holder that crashed), or the timeout.
            let mut wait = match u64::try_from(pttl) {
                Ok(ms) => Duration::from_millis(ms + 5),
                // No TTL (set by hand): look again a TTL from now.
                Err(_) if pttl == -1 => self.timing.server_limit,
                // Gone since the script ran: try again at once.
                Err(_) => Duration::ZERO,
            };
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.timed_out(started, &holding));
                }
                wait = wait.min(left);
            }
            last_seen = Some(holding);
            if wait.is_zero() {
                conn = Some(open);
                continue;
            }
            let mut blpop = ::redis::cmd("BLPOP");
            blpop.arg(&keys.released).arg(format!(
                "{}.{:03}",
                wait.as_secs(),
                wait.subsec_millis()
            ));
            // The server answers within `wait`; the rest is the network.
            if open
                .call(&blpop, Instant::now() + wait + self.timing.heartbeat)
                .is_ok()
            {
                conn = Some(open);
            }
        };
        let mut conn = conn;
        let holding = Holding::parse(&value);
        if self.replicas > 0 {
            let acked = wait_for_replicas(&mut conn, self.replicas, self.timing.heartbeat);
            if acked < i64::from(self.replicas) {
                let _ = eval(
                    &mut conn,
                    &Lua::release(),
                    &[&keys.lock, &keys.fence, &keys.released],
                    &[&value, &ttl_ms],
                    Instant::now() + self.timing.heartbeat,
                );
                return Err(self.error(format!(
                    "only {} of {} replicas acknowledged the lock within {} (WAIT); it was released (is a replica down or lagging?)",
                    acked.max(0),
                    self.replicas,
                    crate::human::duration(self.timing.heartbeat)
                )));
            }
        }
        let keeper = RedisKeeper {
            target,
            conn: Some(conn),
            keys,
            value,
            ttl_ms,
            heartbeat: self.timing.heartbeat,
            replicas: self.replicas,
            renew_script: Lua::renew(),
            release_script: Lua::release(),
        };
        remote::hold(
            Service::Redis,
            &self.key,
            Taken {
                keeper,
                term: holding.term,
                previous,
                last_sent,
            },
            self.timing,
            log_level,
        )
    }

    /// A standby that lost its connection: wait a heartbeat before trying
    /// again, or give up when the timeout has passed.
    fn pause_or_time_out(
        &self,
        deadline: Option<Instant>,
        started: Instant,
        holding: Option<&Holding>,
    ) -> Result<()> {
        let mut pause = self.timing.heartbeat;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let unknown = Holding {
                    term: 0,
                    pid: None,
                    host: None,
                };
                return Err(self.timed_out(started, holding.unwrap_or(&unknown)));
            }
            pause = pause.min(left);
        }
        std::thread::sleep(pause);
        Ok(())
    }

    fn timed_out(&self, started: Instant, holding: &Holding) -> Error {
        Error::RemoteTimedOut {
            service: Service::Redis,
            key: self.key.clone(),
            host: holding.host.clone(),
            pid: holding.pid.and_then(Pid::new),
            waited: started.elapsed(),
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::Remote {
            service: Service::Redis,
            key: self.key.clone(),
            reason,
            source: None,
        }
    }

    fn unexpected(&self, reply: &Value) -> Error {
        match reply {
            Value::ServerError(error) => self.error(format!(
                "the server refused the lock's script: {}{}",
                conn::server_error_text(error),
                match error.code() {
                    "READONLY" => " (the URL names a replica; use the primary)",
                    "NOPERM" => " (the user needs EVAL, EVALSHA and BLPOP on pidlock:* keys)",
                    _ => "",
                }
            )),
            other => self.error(format!("unexpected reply from the server: {other:?}")),
        }
    }
}

/// Runs a script (cached, else sent whole) and returns its reply; `Err` when
/// the connection cannot be trusted any more.
fn eval(
    conn: &mut Conn,
    lua: &Lua,
    keys: &[&str],
    args: &[&str],
    deadline: Instant,
) -> std::result::Result<Value, String> {
    let (evalsha, eval) = lua.commands(keys, args);
    let reply = conn.call(&evalsha, deadline)?;
    if scripts::is_noscript(&reply) {
        return conn.call(&eval, deadline);
    }
    Ok(reply)
}

/// `WAIT replicas timeout`: how many replicas acknowledged this
/// connection's writes (-1 when the command failed).
fn wait_for_replicas(conn: &mut Conn, replicas: u32, timeout: Duration) -> i64 {
    let mut wait = ::redis::cmd("WAIT");
    wait.arg(replicas)
        .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    match conn.call(&wait, Instant::now() + timeout + Duration::from_secs(1)) {
        Ok(reply) => scripts::int(&reply).unwrap_or(-1),
        Err(_) => -1,
    }
}

/// 128 random bits, in hex: no other holder's token can match ours.
fn token() -> std::io::Result<String> {
    let mut bytes = [0_u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The Redis side of a held lock (see `remote::lease` for the thread and
/// the watchdog). The lock is a key, not the connection: a broken
/// connection is opened again at the next heartbeat, and only the server's
/// answer decides.
struct RedisKeeper {
    target: Target,
    conn: Option<Conn>,
    keys: Keys,
    /// The key's value while it is ours: token, term, PID, host.
    value: String,
    ttl_ms: String,
    heartbeat: Duration,
    replicas: u32,
    renew_script: Lua,
    release_script: Lua,
}

impl Keeper for RedisKeeper {
    fn idle(&mut self, timeout: Duration) -> std::result::Result<(), Lost> {
        // Parked, not asleep: a dropped guard unparks this thread, and the
        // release goes out at once.
        std::thread::park_timeout(timeout);
        Ok(())
    }

    fn confirm(&mut self) -> std::result::Result<bool, Lost> {
        // One heartbeat for the whole round trip, a new connection included:
        // the next beat is due then.
        let deadline = Instant::now() + self.heartbeat;
        if self.conn.is_none() {
            self.conn = Conn::open(&self.target, deadline).ok();
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        let reply = match eval(
            conn,
            &self.renew_script,
            &[&self.keys.lock, &self.keys.fence],
            &[&self.value, &self.ttl_ms],
            deadline,
        ) {
            Ok(reply) => reply,
            Err(_) => {
                self.conn = None;
                return Ok(false);
            }
        };
        let Value::Array(fields) = reply else {
            // A refusal of the command itself (READONLY from a demoted
            // primary, an ACL change): no verdict on the lock.
            return Ok(false);
        };
        if fields.first().and_then(scripts::int) == Some(1) {
            if self.replicas == 0 {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(conn) = self.conn.as_mut() else {
                return Ok(false);
            };
            let acked = wait_for_replicas(conn, self.replicas, left.max(Duration::from_millis(1)));
            if acked < 0 {
                self.conn = None;
            }
            return Ok(acked >= i64::from(self.replicas));
        }
        let now_held = fields.get(1).and_then(scripts::text).unwrap_or_default();
        Err(Lost::Released(if now_held.is_empty() {
            "the key is gone (deleted, flushed, or lost when the server restarted without its data)"
                .to_owned()
        } else {
            let other = Holding::parse(&now_held);
            format!(
                "the key now holds another holder's token (host {}, PID {}, term {})",
                other.host.as_deref().unwrap_or("unknown"),
                other
                    .pid
                    .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string()),
                other.term
            )
        }))
    }

    fn release(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        if self.conn.is_none() {
            self.conn = Conn::open(&self.target, deadline).ok();
        }
        if let Some(conn) = self.conn.as_mut() {
            let _ = eval(
                conn,
                &self.release_script,
                &[&self.keys.lock, &self.keys.fence, &self.keys.released],
                &[&self.value, &self.ttl_ms],
                deadline,
            );
        }
    }
}
