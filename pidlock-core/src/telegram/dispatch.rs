//! A teloxide dispatcher that stops the way a single-instance bot must: on
//! SIGINT and SIGTERM, through the update listener's stop token, with the
//! 409 report on the listener and `/restart` kept in place.
//!
//! Why the stop token and not teloxide's own Ctrl-C handler: that handler
//! asks the dispatcher through its `ShutdownToken`, and in teloxide 0.17 a
//! shutdown requested while the dispatcher is between two updates can be
//! lost; the bot then ignores every later Ctrl-C. The listener's stop token
//! is an abort flag that the polling stream reads each time it is polled,
//! so a stop is never lost: the stream drops its in-flight `getUpdates`,
//! hands over the updates it already fetched, confirms them to Telegram
//! (a last `getUpdates` with the next offset) and ends; the dispatcher then
//! waits for its handlers and returns.

use std::fmt::Debug;
use std::future::{Future, pending};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::signal::Signal;
use teloxide::dispatching::{self, DefaultKey, UpdateHandler};
use teloxide::dptree::di::DependencyMap;
use teloxide::error_handlers::ErrorHandler;
use teloxide::requests::Requester;
use teloxide::stop::StopToken;
use teloxide::types::Update;
use teloxide::update_listeners::{self, UpdateListener};
use tokio::signal::unix::{self as unix_signal, SignalKind};
use tokio::sync::Notify;

use super::InstanceConflictReport;
use super::teloxide_handler::UpdateListenerErrors;
use crate::messages::{self, Level};

/// teloxide's `Dispatcher`, run as a single instance: [`dispatch`] stops
/// cleanly on SIGINT and SIGTERM, reports Telegram's 409 from the update
/// listener, and restarts in place when a handler asks through
/// [`Restart`].
///
/// Built exactly like teloxide's: replace `Dispatcher::builder` (teloxide's)
/// with `pidlock_core::teloxide::Dispatcher::builder`, and keep the rest of
/// the chain.
///
/// ```no_run
/// # async fn run() {
/// use teloxide::prelude::*;
///
/// let bot = Bot::from_env();
/// let handler = Update::filter_message().endpoint(|bot: Bot, msg: Message| async move {
///     bot.send_message(msg.chat.id, "pong").await?;
///     respond(())
/// });
/// pidlock_core::teloxide::Dispatcher::builder(bot, handler)
///     .enable_ctrlc_handler()
///     .build()
///     .dispatch()
///     .await;
/// # }
/// ```
///
/// [`dispatch`]: Dispatcher::dispatch
pub struct Dispatcher<R, Err, Key> {
    inner: dispatching::Dispatcher<R, Err, Key>,
    /// teloxide's dispatcher keeps its bot to itself; the update listener
    /// needs one too.
    bot: R,
    restart: Restart,
    errors: Arc<UpdateListenerErrors>,
}

/// The builder of a [`Dispatcher`]: teloxide's `DispatcherBuilder`, method
/// for method.
pub struct DispatcherBuilder<R, Err, Key> {
    inner: dispatching::DispatcherBuilder<R, Err, Key>,
    bot: R,
    /// Handed to teloxide at [`build`](Self::build), with [`Restart`] added.
    dependencies: DependencyMap,
}

impl<R, Err> Dispatcher<R, Err, DefaultKey>
where
    R: Requester + Clone + Send + Sync + 'static,
    Err: Debug + Send + Sync + 'static,
{
    /// A builder with the bot and the handler tree, as teloxide's
    /// `Dispatcher::builder`.
    #[must_use]
    pub fn builder(bot: R, handler: UpdateHandler<Err>) -> DispatcherBuilder<R, Err, DefaultKey> {
        DispatcherBuilder {
            inner: dispatching::Dispatcher::builder(bot.clone(), handler),
            bot,
            dependencies: DependencyMap::new(),
        }
    }
}

impl<R, Err, Key> DispatcherBuilder<R, Err, Key>
where
    R: Requester + Clone + Send + Sync + 'static,
    Err: Debug + Send + Sync + 'static,
{
    /// The dependencies handlers can take, as teloxide's. A [`Restart`] is
    /// always among them.
    #[must_use]
    pub fn dependencies(self, dependencies: DependencyMap) -> Self {
        Self {
            dependencies,
            ..self
        }
    }

    /// The handler of updates no branch took, as teloxide's.
    #[must_use]
    pub fn default_handler<H, Fut>(self, handler: H) -> Self
    where
        H: Fn(Arc<Update>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            inner: self.inner.default_handler(handler),
            ..self
        }
    }

    /// The handler of the errors that the *handlers* return, as teloxide's
    /// (by default, teloxide's `LoggingErrorHandler`). Telegram's 409 never
    /// reaches it: it comes from the update listener, whose error handler
    /// [`Dispatcher::dispatch`] sets.
    #[must_use]
    pub fn error_handler(self, handler: Arc<dyn ErrorHandler<Err> + Send + Sync>) -> Self {
        Self {
            inner: self.inner.error_handler(handler),
            ..self
        }
    }

    /// Accepted so that teloxide's examples build unchanged, and does
    /// nothing: [`Dispatcher::dispatch`] always stops on Ctrl-C (and
    /// SIGTERM), without teloxide's handler, which can miss the request.
    #[must_use]
    pub fn enable_ctrlc_handler(self) -> Self {
        self
    }

    /// The capacity of each worker's queue, as teloxide's (64).
    #[must_use]
    pub fn worker_queue_size(self, size: usize) -> Self {
        Self {
            inner: self.inner.worker_queue_size(size),
            ..self
        }
    }

    /// How updates are grouped to run in sequence, as teloxide's (by
    /// default, by chat).
    #[must_use]
    pub fn distribution_function<K>(
        self,
        f: fn(&Update) -> Option<K>,
    ) -> DispatcherBuilder<R, Err, K>
    where
        K: Hash + Eq,
    {
        DispatcherBuilder {
            inner: self.inner.distribution_function(f),
            bot: self.bot,
            dependencies: self.dependencies,
        }
    }

    /// The dispatcher.
    ///
    /// # Panics
    ///
    /// As teloxide's `build`: when the handler tree asks for a dependency
    /// that is not there.
    #[must_use]
    pub fn build(self) -> Dispatcher<R, Err, Key> {
        let Self {
            inner,
            bot,
            mut dependencies,
        } = self;
        let restart = Restart::default();
        dependencies.insert(restart.clone());
        Dispatcher {
            inner: inner.dependencies(dependencies).build(),
            bot,
            restart,
            errors: InstanceConflictReport::handler(),
        }
    }
}

impl<R, Err, Key> Dispatcher<R, Err, Key>
where
    R: Requester + Clone + Send + Sync + 'static,
    R::GetUpdates: Send,
    Err: Send + Sync + 'static,
    Key: Hash + Eq + Clone + Send,
{
    /// Polls Telegram and dispatches updates until SIGINT or SIGTERM, or a
    /// [`Restart`] request.
    ///
    /// - SIGINT and SIGTERM are listened for from the start of the call, so
    ///   one that comes the moment the bot is up is not missed (before the
    ///   call, pidlock's own handler removes the PID file and the signal
    ///   ends the program). Each stops the update listener: the updates it
    ///   fetched are handled and confirmed to Telegram, the handlers finish,
    ///   and this returns. Another SIGINT or SIGTERM after that (while
    ///   stopping, or after this returned) exits at once, with status
    ///   128 + the signal's number, removing the PID file.
    /// - Telegram's 409 (another poller) gets the INSTANCE CONFLICT report;
    ///   other listener errors are logged as teloxide logs them.
    /// - After a [`Restart`] request, the bot stops the same way and
    ///   re-executes itself keeping the lock ([`crate::restart`]). If that
    ///   fails, it says why and dispatches again.
    ///
    /// # Panics
    ///
    /// As teloxide's `dispatch`: when Telegram cannot be reached at the
    /// start (`getMe` fails: a wrong token, no network). The panic unwinds
    /// through `main`, which releases the lock. [`try_dispatch`] returns
    /// that error instead.
    ///
    /// [`try_dispatch`]: Self::try_dispatch
    pub async fn dispatch(&mut self) {
        if let Err(error) = self.try_dispatch().await {
            panic!(
                "the bot cannot start: Telegram's getMe failed ({error}); check the bot's token and the network"
            );
        }
    }

    /// [`dispatch`](Self::dispatch), returning the error when Telegram
    /// cannot be reached at the start (`getMe` fails).
    ///
    /// # Errors
    ///
    /// The `getMe` request's error.
    pub async fn try_dispatch(&mut self) -> Result<(), R::Err> {
        let watch = Watch::start(self.restart.clone());
        loop {
            // The listener is made after the signals are registered: a
            // signal while it is being made (teloxide asks Telegram about a
            // webhook) stops it as soon as it exists.
            let mut listener = update_listeners::polling_default(self.bot.clone()).await;
            watch.dispatching(listener.stop_token());
            let result = self
                .inner
                .try_dispatch_with_listener(listener, Arc::clone(&self.errors))
                .await;
            watch.ended();
            result?;
            // A signal wins over a restart asked for while stopping: the
            // operator wants the bot to stop.
            if !self.restart.take() || watch.signalled.load(SeqCst) {
                return Ok(());
            }
            // Returns only if the exec failed; the lock is still held then.
            let error = crate::restart();
            messages::emit(
                Level::Error,
                &format!("restart failed: {error}; the bot carries on without restarting."),
            );
            watch.restarting();
        }
    }

    /// A handle that makes [`dispatch`](Self::dispatch) restart the bot, for
    /// code outside the handlers (which get one as a dependency).
    #[must_use]
    pub fn restart_handle(&self) -> Restart {
        self.restart.clone()
    }
}

/// Restarts the bot in place: the update listener stops (so the update that
/// asked is confirmed and not delivered again), the handlers finish, and the
/// program re-executes itself without ever letting go of its lock (see
/// [`crate::restart`]).
///
/// Handlers take it as a dependency, like the bot:
///
/// ```no_run
/// use pidlock_core::teloxide::Restart;
/// use teloxide::prelude::*;
///
/// async fn restart_command(bot: Bot, msg: Message, restart: Restart) -> ResponseResult<()> {
///     bot.send_message(msg.chat.id, "Restarting...").await?;
///     restart.request();
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Restart(Arc<RestartState>);

#[derive(Debug, Default)]
struct RestartState {
    requested: AtomicBool,
    /// Wakes the watcher; a request made while it is not waiting is kept
    /// as a permit, so none is lost.
    wake: Notify,
}

impl Restart {
    /// Asks for the restart; it happens once the handlers running now have
    /// finished. Asking again before then changes nothing.
    pub fn request(&self) {
        self.0.requested.store(true, SeqCst);
        self.0.wake.notify_one();
    }

    /// Whether a restart was asked for and has not happened yet.
    #[must_use]
    pub fn is_requested(&self) -> bool {
        self.0.requested.load(SeqCst)
    }

    fn take(&self) -> bool {
        self.0.requested.swap(false, SeqCst)
    }
}

/// Numbers every [`Dispatcher::try_dispatch`] call: a signal that comes
/// when no dispatch is waiting for it ends the process only through the
/// newest call's watcher, so an older, finished one does not cut short the
/// dispatch that followed it.
static DISPATCHES: AtomicU64 = AtomicU64::new(0);

/// Where a dispatch is, as its signal watcher sees it.
enum Phase {
    /// Signals are listened for, the update listener is not made yet; `stop`
    /// records a stop asked for in the meantime.
    Starting { stop: bool },
    /// Polling, with the listener's stop token.
    Dispatching(StopToken),
    /// The listener was told to stop.
    Stopping,
    /// Dispatching is over.
    Ended,
}

/// What to do about a stop request.
enum Then {
    /// The listener stops, or will as soon as it exists.
    Stop,
    /// Nothing: a restart asked for while stopping anyway.
    Nothing,
    /// Exit now: a signal while stopping or after the end.
    Exit { stopping: bool },
}

/// The state a dispatch shares with its signal watcher.
struct Watch {
    phase: Mutex<Phase>,
    generation: u64,
    restart: Restart,
    /// Whether a signal stopped the listener.
    signalled: AtomicBool,
}

impl Watch {
    /// Registers SIGINT and SIGTERM with tokio and starts the watcher task.
    fn start(restart: Restart) -> Arc<Self> {
        let watch = Arc::new(Self {
            phase: Mutex::new(Phase::Starting { stop: false }),
            generation: DISPATCHES.fetch_add(1, SeqCst) + 1,
            restart,
            signalled: AtomicBool::new(false),
        });
        // Registering takes over from pidlock's own handler: from now on the
        // signals are delivered here, and pidlock's handler, which tokio
        // calls first, sees it is no longer installed and does nothing.
        // tokio needs its I/O driver for this; teloxide's HTTP client needs
        // it too, so a runtime that runs teloxide has it.
        let interrupt = listen(Signal::SIGINT, SignalKind::interrupt());
        let terminate = listen(Signal::SIGTERM, SignalKind::terminate());
        tokio::spawn(watch_signals(Arc::clone(&watch), interrupt, terminate));
        watch
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // Nothing that can panic runs under the lock; a poisoned one still
        // holds a consistent phase.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The listener exists: stop it now if that was asked for meanwhile
    /// (a restart too: its wake-up may have gone to no watcher).
    fn dispatching(&self, stop: StopToken) {
        let mut phase = self.phase();
        if matches!(*phase, Phase::Starting { stop: true }) || self.restart.is_requested() {
            stop.stop();
            *phase = Phase::Stopping;
        } else {
            *phase = Phase::Dispatching(stop);
        }
    }

    fn ended(&self) {
        *self.phase() = Phase::Ended;
    }

    /// A failed restart: dispatching starts again.
    fn restarting(&self) {
        *self.phase() = Phase::Starting { stop: false };
    }

    fn request_stop(&self, by_signal: bool) -> Then {
        let mut phase = self.phase();
        if by_signal && matches!(*phase, Phase::Starting { .. } | Phase::Dispatching(_)) {
            self.signalled.store(true, SeqCst);
        }
        match &*phase {
            Phase::Starting { stop: false } => {
                *phase = Phase::Starting { stop: true };
                Then::Stop
            }
            Phase::Dispatching(token) => {
                token.stop();
                *phase = Phase::Stopping;
                Then::Stop
            }
            Phase::Starting { stop: true } | Phase::Stopping if by_signal => {
                Then::Exit { stopping: true }
            }
            Phase::Ended if by_signal => Then::Exit { stopping: false },
            Phase::Starting { stop: true } | Phase::Stopping | Phase::Ended => Then::Nothing,
        }
    }
}

/// A tokio listener for `signal`, or `None` (said once) if it cannot be
/// had: the signal then keeps pidlock's handling (the file is removed and
/// the signal ends the program), without the clean stop.
fn listen(signal: Signal, kind: SignalKind) -> Option<unix_signal::Signal> {
    match unix_signal::signal(kind) {
        Ok(listener) => Some(listener),
        Err(error) => {
            messages::emit(
                Level::Error,
                &format!(
                    "cannot listen for {signal} ({error}): it will end the bot without confirming the updates it handled."
                ),
            );
            None
        }
    }
}

/// The next delivery of a signal, or never when it is not listened for or
/// the runtime is shutting down.
async fn next(listener: &mut Option<unix_signal::Signal>) {
    let delivered = match listener {
        Some(listener) => listener.recv().await.is_some(),
        None => false,
    };
    if !delivered {
        pending::<()>().await;
    }
}

/// The watcher task: turns SIGINT, SIGTERM and restart requests into a stop
/// of the update listener, and a signal that comes when the listener is
/// already stopping (or dispatching is over) into an exit.
async fn watch_signals(
    watch: Arc<Watch>,
    mut interrupt: Option<unix_signal::Signal>,
    mut terminate: Option<unix_signal::Signal>,
) {
    let newer_dispatch = || DISPATCHES.load(SeqCst) != watch.generation;
    loop {
        let signal = tokio::select! {
            () = next(&mut interrupt) => Signal::SIGINT,
            () = next(&mut terminate) => Signal::SIGTERM,
            () = watch.restart.0.wake.notified() => {
                if newer_dispatch() && matches!(*watch.phase(), Phase::Ended) {
                    // The same dispatcher dispatches again: the wake-up is
                    // for its new watcher. This one is done.
                    watch.restart.0.wake.notify_one();
                    return;
                }
                if watch.restart.is_requested() {
                    watch.request_stop(false);
                }
                continue;
            }
        };
        if let Then::Exit { stopping } = watch.request_stop(true) {
            if newer_dispatch() {
                // A newer dispatch listens for this signal too.
                return;
            }
            exit_now(signal, stopping);
        }
    }
}

/// Ends the process for a signal the bot is no longer waiting to stop on,
/// with status 128 + the signal's number as a shell reports it. The PID file
/// is removed by pidlock's `atexit` hook.
fn exit_now(signal: Signal, stopping: bool) -> ! {
    let when = if stopping {
        "while the bot was stopping: exiting now, without waiting for the handlers still running"
    } else {
        "after the bot stopped: exiting now"
    };
    messages::emit(Level::Warning, &format!("{} {when}.", signal.as_str()));
    std::process::exit(128 + signal as i32)
}
