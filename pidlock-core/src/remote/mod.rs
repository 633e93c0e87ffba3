//! The lock across hosts: what every engine shares, so that an engine is
//! one module that only talks to its server.
//!
//! Here, once: the lease arithmetic and its check ([`LeaseTiming`]), the
//! keeper thread and the watchdog that stop the holder when the lock is
//! gone ([`lease`]), the fencing term ([`fencing_term`]), the policies a
//! lock across hosts can follow (exit or wait; never take over), the
//! messages, the handover after a holder that did not release, and the
//! guard ([`RemoteGuard`]). TLS set-up is shared too ([`tls`]).
//!
//! An engine ([`crate::postgres`], [`crate::redis`]) connects, takes the
//! lock (waiting in its server when asked to), bumps the fencing term in
//! the same step and says how the previous holder let go ([`Taken`]); it
//! gives the keeper thread a [`Keeper`] that confirms, waits and releases.
//! [`hold`] does the rest.

mod lease;
pub(crate) mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use lease::LOST_LOCK_EXIT_CODE;
pub(crate) use lease::{Keeper, Lost};

use self::lease::Lease;
use crate::error::{Error, Result, Service};
use crate::messages::{self, Level, LogLevel};
use crate::pid::Pid;
use crate::policy::OnConflict;

/// The fencing term of the lock across hosts this process holds, for
/// [`fencing_term`]. Global because the attribute's guard is not reachable
/// from user code.
static TERM: AtomicU64 = AtomicU64::new(0);

/// The fencing term of the lock across hosts this process holds (in
/// PostgreSQL or Redis, whichever `url` named): it grows with every
/// acquisition of the key, so a write tagged with an older term can be
/// refused by whatever receives it. `None` when no such lock is held, and
/// from the moment the lock is lost.
///
/// A holder that is paused past its lease (SIGSTOP, a long GC, a migrated
/// VM) may wake up and write once before its watchdog stops it; a store
/// that remembers the highest term it has seen and refuses lower ones is
/// what makes that write harmless.
///
/// ```
/// assert_eq!(pidlock_core::fencing_term(), None);
/// ```
#[must_use]
pub fn fencing_term() -> Option<u64> {
    Some(TERM.load(Ordering::SeqCst)).filter(|&term| term > 0)
}

/// The lock is no longer held (released or lost).
fn clear_term() {
    TERM.store(0, Ordering::SeqCst);
}

/// The times a lease runs on, and the one rule between them.
///
/// The server lets go of a silent holder's lock no sooner than the
/// *server's limit* `S` after it last heard from it (PostgreSQL: the
/// keepalive timeout of the session; Redis: the key's TTL). The holder
/// counts its *lease* `L` from when it sent its last confirmed request, on
/// the monotonic clock: with no new confirmation by then, it raises SIGTERM
/// on itself and exits hard after the *grace* `G`. The server heard the
/// request at `t` or later, so it cannot let go before `t + S`; the holder
/// is gone by `t + L + G`. Hence `L + G < S`, checked before connecting,
/// and a heartbeat shorter than the lease, so that one slow round trip is
/// not a loss.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseTiming {
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) grace: Duration,
    /// `S`.
    pub(crate) server_limit: Duration,
    /// How long a new holder waits before it runs when the previous one
    /// may not have noticed yet that it lost the lock.
    pub(crate) handover: Duration,
}

impl LeaseTiming {
    /// `L + G < S` and heartbeat < lease; `limit` names `S` for the message.
    pub(crate) fn check(&self, limit: &str) -> std::result::Result<(), String> {
        if self.lease + self.grace >= self.server_limit || self.heartbeat >= self.lease {
            return Err(format!(
                "lease ({}) + grace ({}) must be shorter than the {limit} ({}), and the heartbeat ({}) shorter than the lease",
                crate::human::duration(self.lease),
                crate::human::duration(self.grace),
                crate::human::duration(self.server_limit),
                crate::human::duration(self.heartbeat)
            ));
        }
        Ok(())
    }
}

/// The lock a lease keeps, as messages name it.
#[derive(Clone, Debug)]
pub(crate) struct Lock {
    pub(crate) service: Service,
    pub(crate) key: String,
    pub(crate) term: u64,
}

/// How the previous holder let go, as far as the server knows: whether the
/// new holder must give it time to notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Previous {
    /// Nobody held it, or the holder released it, or its lease ran out
    /// (it stopped itself by then): nothing to wait for.
    Gone,
    /// The server let go of the lock without the holder releasing it (its
    /// session was ended, its key deleted): it learns so within a heartbeat
    /// and may still be running until then.
    Unreleased { host: String, pid: i32 },
    /// The server has no record of the lock, but this process saw it held
    /// a moment ago: the server lost its data (a restart without
    /// persistence, a flush) under a holder that may still be running.
    /// (Redis: a session lock cannot be forgotten under its holder.)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Forgotten,
}

/// What an engine hands over once it holds the lock.
pub(crate) struct Taken<K> {
    pub(crate) keeper: K,
    pub(crate) term: u64,
    pub(crate) previous: Previous,
    /// When the request that took the lock was sent: the server heard from
    /// us then or later, so the lease counts from here.
    pub(crate) last_sent: Instant,
}

/// What a lock across hosts does about another holder: it can fail or wait
/// in the server, not take over (there is no process on this host to
/// signal). Checked before anything is connected or locked.
pub(crate) fn check_policy(service: Service, key: &str, on_conflict: OnConflict) -> Result<()> {
    match on_conflict {
        OnConflict::Takeover { .. } => Err(Error::Remote {
            service,
            key: key.to_owned(),
            reason: TAKEOVER_REFUSED.to_owned(),
            source: None,
        }),
        OnConflict::Exit | OnConflict::Wait { .. } => Ok(()),
    }
}

/// Why takeover is refused across hosts.
pub(crate) const TAKEOVER_REFUSED: &str = "on_conflict = \"takeover\" works on one host only; a lock across hosts can exit or wait, not take over (the holder is on another host)";

/// The INFO line of a standby.
pub(crate) fn waiting(service: Service, key: &str, log_level: LogLevel) {
    if log_level.shows(Level::Info) {
        messages::emit(
            Level::Info,
            &format!("Waiting for the {service} lock \"{key}\"..."),
        );
    }
}

/// This host's name, as holders record it for conflict messages.
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A URL part with `%XX` escapes decoded (passwords, paths).
pub(crate) fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let byte = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in \"{text}\""))?;
            out.push(byte);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("\"{text}\" does not decode to UTF-8"))
}

/// Turns a lock an engine has taken into a held one: checks the reply was
/// not too late to trust, publishes the term, starts the lease, says so,
/// and waits the handover when the previous holder may still be running.
pub(crate) fn hold<K: Keeper>(
    service: Service,
    key: &str,
    taken: Taken<K>,
    timing: LeaseTiming,
    log_level: LogLevel,
) -> Result<RemoteGuard> {
    let Taken {
        mut keeper,
        term,
        previous,
        last_sent,
    } = taken;
    let error = |reason: String| Error::Remote {
        service,
        key: key.to_owned(),
        reason,
        source: None,
    };
    // The lease counts from the sending of the request that took the lock;
    // a reply that comes a lease later would start a holder whose watchdog
    // fires at once, while the server may let go within the grace.
    if last_sent.elapsed() >= timing.lease {
        let took = last_sent.elapsed();
        keeper.release();
        return Err(error(format!(
            "the server took {} to confirm the lock, longer than the {} lease; not trusting it (the lock is released)",
            crate::human::duration(took),
            crate::human::duration(timing.lease)
        )));
    }
    TERM.store(term, Ordering::SeqCst);
    let lock = Lock {
        service,
        key: key.to_owned(),
        term,
    };
    let lease = Lease::start(keeper, lock, timing, last_sent).map_err(|e| {
        clear_term();
        error(format!(
            "could not start the threads that keep the lease ({e}); the lock was released, since nothing would notice losing it"
        ))
    })?;
    let info = log_level.shows(Level::Info);
    if info {
        messages::emit(
            Level::Info,
            &format!(
                "{service} lock \"{key}\" acquired (term {term}, PID: {})",
                Pid::current()
            ),
        );
    }
    let why = match &previous {
        Previous::Gone => None,
        Previous::Unreleased { host, pid } => Some(format!(
            "The previous holder (host {host}, PID: {pid}) did not release it"
        )),
        Previous::Forgotten => Some(
            "The server lost its record of the previous holder (a restart without persistence?)"
                .to_owned(),
        ),
    };
    if let Some(why) = why
        && !timing.handover.is_zero()
    {
        // The lease is kept from here on: losing the lock during the wait
        // stops this process like any loss.
        if info {
            messages::emit(
                Level::Info,
                &format!(
                    "{why}: waiting {} for it to stop.",
                    crate::human::duration(timing.handover)
                ),
            );
        }
        std::thread::sleep(timing.handover);
    }
    Ok(RemoteGuard {
        lease,
        owner: Pid::current(),
        term,
    })
}

/// A held lock across hosts (from [`PgLock`](crate::PgLock) or
/// [`RedisLock`](crate::RedisLock)); dropping it releases the lock on the
/// server, so that a waiting standby takes over at once.
///
/// While it lives, a keeper thread confirms ownership every heartbeat, and
/// a watchdog stops the process (SIGTERM, then
/// [`LOST_LOCK_EXIT_CODE`] after the grace) when the lock is gone or cannot
/// be confirmed for a lease. A `fork()` child's copy does nothing when
/// dropped: only the process that took the lock releases it.
pub struct RemoteGuard {
    lease: Lease,
    /// The process that took the lock: a `fork()` child shares the socket
    /// but must never speak on it.
    owner: Pid,
    term: u64,
}

impl std::fmt::Debug for RemoteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteGuard")
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

impl RemoteGuard {
    /// This acquisition's fencing term (see [`fencing_term`]).
    #[must_use]
    pub fn term(&self) -> u64 {
        self.term
    }
}

impl Drop for RemoteGuard {
    fn drop(&mut self) {
        if Pid::current() != self.owner {
            // A fork child's copy. The connection lives in the keeper
            // thread, which the child does not have: nothing here can reach
            // the socket, and nothing is sent on the parent's behalf.
            return;
        }
        clear_term();
        self.lease.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_arithmetic_is_checked() {
        let timing = |lease: u64, grace: u64, limit: u64, heartbeat: u64| LeaseTiming {
            lease: Duration::from_secs(lease),
            heartbeat: Duration::from_secs(heartbeat),
            grace: Duration::from_secs(grace),
            server_limit: Duration::from_secs(limit),
            handover: Duration::ZERO,
        };
        assert!(timing(10, 5, 30, 2).check("server timeout").is_ok());
        assert!(timing(8, 5, 15, 1).check("TTL").is_ok());
        // L + G = S: the server may let go as the holder exits.
        let refused = timing(10, 5, 15, 2).check("TTL").unwrap_err();
        assert!(
            refused.contains("lease (10s) + grace (5s) must be shorter than the TTL (15s)"),
            "{refused}"
        );
        assert!(timing(2, 1, 30, 2).check("TTL").is_err());
    }
}
