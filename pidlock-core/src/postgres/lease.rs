//! Keeping a held lock honest: the session thread and the watchdog.
//!
//! The **session thread** owns the connection. Between heartbeats it sits in
//! a read on the connection, so the moment the server ends the session (a
//! `FATAL` from `pg_terminate_backend`, a shutdown or `idle_session_timeout`,
//! or just a closed socket) it knows, and reports the lock lost at once.
//! Every heartbeat it asks the server, in one statement, whether this
//! backend still holds the key and this connection's marker and nobody
//! else's (see [`super::pooler`]).
//!
//! The **watchdog** enforces the lease on the monotonic clock: when the
//! session thread reports a loss, or when no confirmation has arrived for a
//! lease (whatever a hung query is doing), it stops the process: SIGTERM to
//! itself, so the program's own shutdown runs, and after the grace the PID
//! files this process holds are removed and it ends with `_exit`, which
//! runs no `atexit` handler and flushes no stdio buffer (either could hang
//! on a lock held by a stuck thread, and this exit must happen).

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::pooler::Marker;
use crate::messages::{self, Level};
use crate::pid::Pid;

/// How often the session thread looks up from its read to see whether the
/// guard was dropped: the longest a drop waits for the unlock.
const SLICE: Duration = Duration::from_millis(50);

/// The longest a dropped guard waits for the session thread's unlock.
const DROP_PATIENCE: Duration = Duration::from_secs(1);

/// The exit status of a holder that lost its lock and did not stop within
/// the grace period after SIGTERM (`EX_SOFTWARE`).
pub const LOST_LOCK_EXIT_CODE: i32 = 70;

/// What a lease needs to know about the lock it keeps.
pub(super) struct Terms {
    pub(super) key: String,
    pub(super) id: i64,
    pub(super) marker: Marker,
    pub(super) term: i64,
    pub(super) lease: Duration,
    pub(super) heartbeat: Duration,
    pub(super) grace: Duration,
}

/// How the session thread learned that the lock is gone.
enum Lost {
    /// The server ended the session (or said the lock is not ours): it has
    /// let go of the lock already.
    Released(String),
    /// The connection failed on our side (a timeout), or a pooler moved it:
    /// the server may still hold the session until it gives up on us.
    Broken(String),
}

/// What the session thread, the watchdog and the guard share.
struct Shared {
    started: Instant,
    /// Nanoseconds after `started` at which the last confirmed heartbeat
    /// was sent.
    confirmed: AtomicU64,
    released: AtomicBool,
    /// Why the session thread knows the lock is gone, if it does.
    lost: Mutex<Option<Lost>>,
}

impl Shared {
    fn since_confirmed(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.confirmed.load(Ordering::SeqCst)))
    }
}

/// A running lease: the two threads, stopped by [`Lease::release`].
pub(super) struct Lease {
    shared: Arc<Shared>,
    watchdog: Thread,
    unlocked: mpsc::Receiver<()>,
}

impl Lease {
    /// Starts both threads. If either cannot be started the connection is
    /// closed (which frees the lock) and the error returned: a lock nobody
    /// watches must not be handed to the program.
    /// `started` is when the server last heard from us before the lock was
    /// confirmed: the lease counts from there.
    pub(super) fn start(client: Client, terms: Terms, started: Instant) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            started,
            confirmed: AtomicU64::new(0),
            released: AtomicBool::new(false),
            lost: Mutex::new(None),
        });
        let terms = Arc::new(terms);
        let watchdog = {
            let (shared, terms) = (Arc::clone(&shared), Arc::clone(&terms));
            std::thread::Builder::new()
                .name("pidlock-watchdog".to_owned())
                .spawn(move || watch(&shared, &terms))?
                .thread()
                .clone()
        };
        let (unlocked_send, unlocked) = mpsc::channel();
        let session = {
            let (shared, watchdog) = (Arc::clone(&shared), watchdog.clone());
            std::thread::Builder::new()
                .name("pidlock-heartbeat".to_owned())
                .spawn(move || {
                    let mut client = client;
                    session(&mut client, &shared, &terms, &watchdog);
                    if shared.released.load(Ordering::SeqCst) {
                        // A clean release spares the next holder its
                        // handover. Then unlock explicitly: closing the
                        // connection frees the lock too, but only once the
                        // server has read the goodbye, after the guard's
                        // drop returned.
                        let _ = super::fencing::released(&mut client, &terms.key, terms.term);
                        let _ = client.batch_execute(&terms.marker.unlock_sql(terms.id));
                    }
                    drop(client);
                    let _ = unlocked_send.send(());
                })
        };
        if let Err(error) = session {
            // The closure, and with it the connection, is gone already.
            shared.released.store(true, Ordering::SeqCst);
            watchdog.unpark();
            return Err(error);
        }
        Ok(Self {
            shared,
            watchdog,
            unlocked,
        })
    }

    /// Stops both threads; the session thread unlocks and closes the
    /// connection. Waits a bounded time for that, so a hung network cannot
    /// hang the program's exit (the connection ends with the process).
    pub(super) fn release(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
        self.watchdog.unpark();
        let _ = self.unlocked.recv_timeout(DROP_PATIENCE);
    }
}

/// The session thread's loop: read until the next heartbeat, confirm, again.
fn session(client: &mut Client, shared: &Shared, terms: &Terms, watchdog: &Thread) {
    let lose = |lost: Lost| {
        *shared.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(lost);
        watchdog.unpark();
    };
    let mut next_beat = Instant::now() + terms.heartbeat;
    loop {
        if shared.released.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if now < next_beat {
            if let Err(reason) = read(client, (next_beat - now).min(SLICE)) {
                return lose(reason);
            }
            continue;
        }
        next_beat = now + terms.heartbeat;
        let sent = shared.started.elapsed();
        match terms.marker.seen(client, terms.id) {
            Ok(seen) if seen.pooler().is_some() => {
                return lose(Lost::Broken(format!(
                    "{}: this connection goes through a transaction- or statement-mode pooler; {}",
                    seen.pooler().unwrap_or_default(),
                    super::pooler::USE_DIRECT
                )));
            }
            Ok(seen) if !seen.key => {
                return lose(Lost::Released(
                    "the server no longer shows this session holding it".to_owned(),
                ));
            }
            Ok(_) => shared.confirmed.store(
                u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            ),
            Err(error) if client.is_closed() => return lose(ended(&error)),
            // A slow answer (statement_timeout) is not a verdict: the
            // watchdog decides when the lease runs out.
            Err(_) => {}
        }
    }
}

/// Waits up to `timeout` for anything from the server. `Err` when the
/// session is over: the server's `FATAL`, or the connection closed.
fn read(client: &mut Client, timeout: Duration) -> Result<(), Lost> {
    // Nothing LISTENs on this connection: what the read can return is the
    // end of the session, or a notification some other code could not have
    // asked for; that is ignored.
    let next = client.notifications().timeout_iter(timeout).next();
    match next {
        Err(error) => Err(ended(&error)),
        Ok(_) if client.is_closed() => Err(Lost::Released(
            "the server closed the connection".to_owned(),
        )),
        Ok(_) => Ok(()),
    }
}

/// Why the session ended, in the server's own words when it gave some.
fn ended(error: &postgres::Error) -> Lost {
    if let Some(db) = error.as_db_error() {
        return Lost::Released(format!(
            "the server ended the session ({}: {})",
            db.severity(),
            db.message()
        ));
    }
    let io =
        std::error::Error::source(error).and_then(|source| source.downcast_ref::<std::io::Error>());
    match io.map(std::io::Error::kind) {
        // The peer closed or reset the connection: the server's side is gone.
        None
        | Some(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof) => {
            Lost::Released(format!("the server closed the connection ({error})"))
        }
        // A timeout (ours: keepalive, tcp_user_timeout) says nothing about
        // whether the server has noticed yet.
        Some(_) => Lost::Broken(format!("the connection to the server broke ({error})")),
    }
}

/// The watchdog (module docs).
fn watch(shared: &Shared, terms: &Terms) {
    let (reason, stopping) = loop {
        if shared.released.load(Ordering::SeqCst) {
            return;
        }
        match shared
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(Lost::Released(reason)) => {
                break (
                    format!(
                        "{reason}; the server has let go of it, and another instance may take it now"
                    ),
                    "Stopping",
                );
            }
            Some(Lost::Broken(reason)) => {
                break (reason, "Stopping before another instance can take it");
            }
            None => {}
        }
        let silent = shared.since_confirmed();
        if silent >= terms.lease {
            break (
                format!(
                    "ownership not confirmed for {}",
                    crate::human::duration(terms.lease)
                ),
                "Stopping before another instance can take it",
            );
        }
        // Woken early by a loss or a release; a confirmation only moves the
        // deadline later, which the next round sees.
        std::thread::park_timeout(terms.lease - silent);
    };
    stop(terms, &reason, stopping);
}

/// SIGTERM now, the hard exit after the grace.
fn stop(terms: &Terms, reason: &str, stopping: &str) {
    super::clear_term();
    let deadline = Instant::now() + terms.grace;
    // The hard exit is armed before anything that could block (the message
    // below takes stderr's lock, or a logger's).
    let armed = std::thread::Builder::new()
        .name("pidlock-exit".to_owned())
        .spawn(move || hard_exit(deadline))
        .is_ok();
    messages::emit(
        Level::Error,
        &format!(
            "Lost the PostgreSQL lock \"{}\" (term {}): {reason}.\n        \
             {stopping}: SIGTERM now, exit in {}.",
            terms.key,
            terms.term,
            crate::human::duration(terms.grace)
        ),
    );
    let _ = nix::sys::signal::kill(Pid::current().as_nix(), nix::sys::signal::Signal::SIGTERM);
    if !armed {
        hard_exit(deadline);
    }
}

/// The program's own shutdown did not finish within the grace: remove the
/// PID files this process holds (their locks are released with the process)
/// and end at once.
fn hard_exit(deadline: Instant) {
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    crate::signal_context::remove_held_files();
    // SAFETY: `_exit` takes no pointers and never returns; skipping atexit
    // handlers and destructors is the point (module docs).
    unsafe { nix::libc::_exit(LOST_LOCK_EXIT_CODE) }
}
