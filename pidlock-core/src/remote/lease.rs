//! Keeping a held lock honest, for every engine: the keeper thread and the
//! watchdog.
//!
//! The **keeper thread** owns the engine's connection. Every heartbeat it
//! asks the server, through the engine's [`Keeper::confirm`], whether the
//! lock is still this holder's; in between it waits in
//! [`Keeper::idle`], which for an engine whose lock is its session
//! (PostgreSQL) is a read on the connection, so the moment the server ends
//! the session it knows.
//!
//! The **watchdog** enforces the lease on the monotonic clock: when the
//! keeper thread reports a loss, or when no confirmation has arrived for a
//! lease (whatever a hung request is doing), it stops the process: SIGTERM
//! to itself, so the program's own shutdown runs, and after the grace the
//! PID files this process holds are removed and it ends with `_exit`, which
//! runs no `atexit` handler and flushes no stdio buffer (either could hang
//! on a lock held by a stuck thread, and this exit must happen).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::{LeaseTiming, Lock};
use crate::messages::{self, Level};
use crate::pid::Pid;

/// How often the keeper thread looks up from its wait to see whether the
/// guard was dropped: the longest a drop waits for the keeper to notice.
const SLICE: Duration = Duration::from_millis(50);

/// The longest a dropped guard waits for the keeper's release on the server.
const DROP_PATIENCE: Duration = Duration::from_secs(1);

/// The exit status of a holder that lost its lock across hosts and did not
/// stop within the grace period after SIGTERM (`EX_SOFTWARE`).
///
/// A holder that loses the lock (the server let go of it, or ownership
/// could not be confirmed for a lease) raises SIGTERM on itself, so that
/// the program's own shutdown runs; if the program is still running a grace
/// period later, pidlock removes the PID files the process holds and ends
/// it with `_exit(LOST_LOCK_EXIT_CODE)`. A supervisor can tell this exit
/// from a crash.
///
/// ```
/// assert_eq!(pidlock_core::LOST_LOCK_EXIT_CODE, 70);
/// ```
pub const LOST_LOCK_EXIT_CODE: i32 = 70;

/// An engine's side of a held lock: everything the keeper thread asks of
/// the server. Called from the keeper thread only.
pub(crate) trait Keeper: Send + 'static {
    /// Waits up to `timeout` for the next heartbeat. `Err` when the server
    /// has meanwhile let go of the lock (an engine whose lock is not a
    /// session parks: a release unparks it).
    fn idle(&mut self, timeout: Duration) -> Result<(), Lost>;

    /// One confirmation round trip. `Ok(true)`: the server confirmed that
    /// the lock is ours (as of when the request was sent); `Ok(false)`: no
    /// verdict (slow, or a connection being rebuilt), which the watchdog
    /// judges by the lease; `Err`: the lock is gone.
    fn confirm(&mut self) -> Result<bool, Lost>;

    /// The guard was dropped: release the lock on the server, so that the
    /// next holder needs no handover.
    fn release(&mut self);
}

/// How the keeper learned that the lock is gone.
pub(crate) enum Lost {
    /// The server let go of the lock (or says it is not ours): another
    /// instance may hold it already.
    Released(String),
    /// The connection failed in a way that leaves the server holding the
    /// lock until it gives up on us (or a pooler moved the session). Only
    /// a session lock has this case: a keyed one reconnects.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Broken(String),
}

/// What the keeper thread, the watchdog and the guard share.
struct Shared {
    started: Instant,
    /// Nanoseconds after `started` at which the last confirmed request was
    /// sent.
    confirmed: AtomicU64,
    released: AtomicBool,
    /// Why the keeper knows the lock is gone, if it does.
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
pub(crate) struct Lease {
    shared: Arc<Shared>,
    watchdog: Thread,
    /// Unparked by a release, so that a keeper waiting in
    /// [`Keeper::idle`] by parking notices at once.
    keeper: Thread,
    released: mpsc::Receiver<()>,
}

impl Lease {
    /// Starts both threads. If either cannot be started the keeper is
    /// dropped (an engine whose lock is its session frees it then; a keyed
    /// lock expires) and the error returned: a lock nobody watches must not
    /// be handed to the program. `started` is when the server last heard
    /// from us before the lock was confirmed: the lease counts from there.
    pub(crate) fn start(
        keeper: impl Keeper,
        lock: Lock,
        timing: LeaseTiming,
        started: Instant,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            started,
            confirmed: AtomicU64::new(0),
            released: AtomicBool::new(false),
            lost: Mutex::new(None),
        });
        let watchdog = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pidlock-watchdog".to_owned())
                .spawn(move || watch(&shared, &lock, timing))?
                .thread()
                .clone()
        };
        let (released_send, released) = mpsc::channel();
        let keeping = {
            let (shared, watchdog) = (Arc::clone(&shared), watchdog.clone());
            std::thread::Builder::new()
                .name("pidlock-heartbeat".to_owned())
                .spawn(move || {
                    let mut keeper = keeper;
                    keep(&mut keeper, &shared, timing.heartbeat, &watchdog);
                    if shared.released.load(Ordering::SeqCst) {
                        keeper.release();
                    }
                    drop(keeper);
                    let _ = released_send.send(());
                })
        };
        let keeper = match keeping {
            Ok(handle) => handle.thread().clone(),
            Err(error) => {
                // The closure, and with it the keeper, is gone already.
                shared.released.store(true, Ordering::SeqCst);
                watchdog.unpark();
                return Err(error);
            }
        };
        Ok(Self {
            shared,
            watchdog,
            keeper,
            released,
        })
    }

    /// Stops both threads; the keeper releases the lock on the server.
    /// Waits a bounded time for that, so a hung network cannot hang the
    /// program's exit (a session lock ends with the process, a keyed one
    /// expires).
    pub(crate) fn release(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
        self.watchdog.unpark();
        self.keeper.unpark();
        let _ = self.released.recv_timeout(DROP_PATIENCE);
    }
}

/// The keeper thread's loop: wait until the next heartbeat, confirm, again.
fn keep(keeper: &mut impl Keeper, shared: &Shared, heartbeat: Duration, watchdog: &Thread) {
    let lose = |lost: Lost| {
        *shared.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(lost);
        watchdog.unpark();
    };
    let mut next_beat = Instant::now() + heartbeat;
    loop {
        if shared.released.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if now < next_beat {
            if let Err(lost) = keeper.idle((next_beat - now).min(SLICE)) {
                return lose(lost);
            }
            continue;
        }
        next_beat = now + heartbeat;
        // The confirmation counts from when the request was sent: the
        // server heard from us then or later, never earlier.
        let sent = shared.started.elapsed();
        match keeper.confirm() {
            Ok(true) => shared.confirmed.store(
                u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            ),
            Ok(false) => {}
            Err(lost) => return lose(lost),
        }
    }
}

/// The watchdog (module docs).
fn watch(shared: &Shared, lock: &Lock, timing: LeaseTiming) {
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
        if silent >= timing.lease {
            break (
                format!(
                    "ownership not confirmed for {}",
                    crate::human::duration(timing.lease)
                ),
                "Stopping before another instance can take it",
            );
        }
        // Woken early by a loss or a release; a confirmation only moves the
        // deadline later, which the next round sees.
        std::thread::park_timeout(timing.lease - silent);
    };
    stop(lock, timing.grace, &reason, stopping);
}

/// SIGTERM now, the hard exit after the grace.
fn stop(lock: &Lock, grace: Duration, reason: &str, stopping: &str) {
    super::clear_term();
    let deadline = Instant::now() + grace;
    // The hard exit is armed before anything that could block (the message
    // below takes stderr's lock, or a logger's).
    let armed = std::thread::Builder::new()
        .name("pidlock-exit".to_owned())
        .spawn(move || hard_exit(deadline))
        .is_ok();
    messages::emit(
        Level::Error,
        &format!(
            "Lost the {} lock \"{}\" (term {}): {reason}.\n        \
             {stopping}: SIGTERM now, exit in {}.",
            lock.service,
            lock.key,
            lock.term,
            crate::human::duration(grace)
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
