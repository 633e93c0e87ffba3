//! The PostgreSQL lease (DESIGN.md, "Across hosts";
//! `pidlock-core/src/postgres.rs`) in
//! discrete time, with lost and delayed messages.
//!
//! One holder, its server session, and a standby blocked in
//! `pg_advisory_lock` that gets the lock the moment the session ends. Time
//! advances in ticks (one tick = one second with the defaults). What the
//! model keeps is ages, not clock readings, so the state space is finite:
//!
//! - the holder's watchdog: time since the last confirmation
//!   (`Shared::since_confirmed`); at the lease `L` it raises SIGTERM and the
//!   process is gone at most the grace `G` later;
//! - the heartbeat: every `heartbeat` ticks one `pg_locks` query, never two
//!   at once (the client is behind a mutex); a positive answer confirms as
//!   of the moment the query was *sent*;
//! - the server: time since it last heard from the holder. It ends a silent
//!   session no sooner than the server timeout `S` after that (keepalive and
//!   `tcp_user_timeout` on the server side), or when the holder's process
//!   has exited and closed the connection.
//!
//! Only the holder's queries count as "heard": keepalive answers and ACKs
//! the holder's kernel sends would make the server hear it *later*, which
//! only delays the end of the session, so leaving them out keeps every
//! unsafe behaviour.
//!
//! Where the lease clock starts is a parameter ([`LeaseStart`]): the code
//! starts it when the guard is built, after the acquisition's last reply
//! arrived; the module docs' argument needs it to start when the last
//! message the server heard was sent.

pub mod render;

use stateright::{Model, Property};

/// Where the watchdog's clock starts (`PgGuard::start`'s `confirmed = 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStart {
    /// As the code does: `started = Instant::now()` in `PgGuard::start`,
    /// once the acquisition's replies have arrived.
    GuardBuilt,
    /// When the acquisition's last query was sent (what "the last
    /// confirmation was sent at some time t" assumes), and `acquire` gives
    /// up when its reply comes a lease or more after that: a holder whose
    /// watchdog would fire at once could still run for the grace past `S`.
    LastQuerySent,
}

/// What a check of the PostgreSQL lease explores: the timeouts in ticks, the
/// network, how the acquisition is counted.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// `L`: how long the holder goes without confirmation before it stops.
    pub lease: u8,
    /// `G`: how long after SIGTERM the holder is made to exit.
    pub grace: u8,
    /// `S`: how long the server keeps a silent session.
    pub server_timeout: u8,
    /// Ticks between confirmations.
    pub heartbeat: u8,
    /// The longest a message spends in the network, one way. Below `S`:
    /// the server's `tcp_user_timeout` (= `S`) aborts a connection whose
    /// data stays unacknowledged that long, so a reply is delivered within
    /// `S` or never.
    pub max_delay: u8,
    /// Whether messages may be lost.
    pub loss: bool,
    /// What the lease is counted from when `acquire` returns.
    pub start: LeaseStart,
}

impl LeaseConfig {
    /// The shipped defaults (10 s, 5 s, 30 s, 2 s) in one-second ticks.
    pub fn defaults(max_delay: u8, start: LeaseStart) -> Self {
        Self {
            lease: 10,
            grace: 5,
            server_timeout: 30,
            heartbeat: 2,
            max_delay,
            loss: true,
            start,
        }
    }
}

/// A message in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// Ticks until it arrives.
    pub left: u8,
    /// Ticks since the holder sent the query it belongs to (capped).
    pub sent_age: u8,
    /// The reply to the acquisition (the fencing-term insert), not a
    /// heartbeat's.
    pub grant: bool,
}

/// The holder's process, as its lease and watchdog see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// `PgLock::acquire` waits for the reply to its last query.
    Acquiring,
    /// The guard is built: heartbeat and watchdog run.
    Running {
        /// Ticks since the confirmation the watchdog counts from (capped at
        /// the lease).
        silent: u8,
        /// Ticks until the heartbeat sends its next query.
        next_beat: u8,
        /// A heartbeat query is outstanding.
        querying: bool,
    },
    /// The watchdog fired: SIGTERM raised; the process exits within this
    /// many ticks (`std::process::exit` after the grace).
    /// The watchdog fired: SIGTERM raised; the process exits within `left`
    /// ticks (`std::process::exit` after the grace).
    Stopping {
        /// Ticks until the process exits.
        left: u8,
    },
    /// The process has exited (or `acquire` failed).
    Stopped,
}

/// A state: the holder, the server's session and the standby, the messages in
/// flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseState {
    /// The holder's process.
    pub holder: Holder,
    /// The session holding the lock: ticks since the server last heard from
    /// the holder (capped at the timeout), or `None` once it ended.
    pub session: Option<u8>,
    /// The standby was granted the lock.
    pub standby: bool,
    /// The query on its way to the server, if any.
    pub to_server: Option<Message>,
    /// The reply on its way to the holder, if any.
    pub to_client: Option<Message>,
}

/// A step: time passing, a message sent or delivered, the holder's process
/// acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseAction {
    /// One tick passes.
    Tick,
    /// The heartbeat sends `pg_locks` confirmation query: delivered after
    /// this many ticks, or lost.
    Beat(Option<u8>),
    /// The query reaches the server; its reply takes this long, or is lost.
    ServerReplies(Option<u8>),
    /// A reply reaches the holder.
    ClientReceives,
    /// A query whose message was lost errors out in the client (TCP
    /// timeout); the heartbeat carries on.
    QueryFails,
    /// The acquisition's reply was lost: `acquire` fails, the program ends.
    AcquireFails,
    /// The watchdog: no confirmation for a lease. SIGTERM.
    WatchdogFires,
    /// The program's own shutdown finished after SIGTERM.
    ShutdownDone,
    /// The grace ran out: `std::process::exit(70)`.
    ExitAfterGrace,
    /// The server ends the session (silent for `S`, or the connection
    /// closed) and the standby's `pg_advisory_lock` returns.
    SessionEnds,
}

/// The model.
#[derive(Clone, Debug)]
pub struct Lease {
    /// What this check explores.
    pub config: LeaseConfig,
}

/// The property names.
pub mod names {
    /// `always`: the holder has stopped before the standby is granted the lock.
    pub const HOLDER_STOPS_FIRST: &str =
        "the holder has stopped before another session is granted the lock";
    /// `sometimes`: the standby is granted the lock.
    pub const STANDBY_TAKES_OVER: &str = "the standby gets the lock";
    /// `sometimes`: the holder's watchdog fires.
    pub const WATCHDOG_FIRES: &str = "the holder's watchdog fires";
}

impl Lease {
    /// The model of `config`.
    pub fn new(config: LeaseConfig) -> Self {
        Self { config }
    }

    /// Delivery choices for a message: each delay, or lost.
    fn delays(&self) -> impl Iterator<Item = Option<u8>> + '_ {
        (0..=self.config.max_delay)
            .map(Some)
            .chain(self.config.loss.then_some(None))
    }

    /// Something must happen before time may pass: a message due, the
    /// watchdog or the grace expiring, the heartbeat's turn.
    fn urgent(&self, state: &LeaseState) -> bool {
        let due = |m: &Option<Message>| m.is_some_and(|m| m.left == 0);
        let holder_due = match state.holder {
            Holder::Running {
                silent,
                next_beat,
                querying,
            } => silent >= self.config.lease || (next_beat == 0 && !querying),
            Holder::Stopping { left } => left == 0,
            _ => false,
        };
        due(&state.to_server) || due(&state.to_client) || holder_due
    }

    /// Nothing left to happen: the holder is gone and the lock moved on
    /// (an acquisition whose reply is still on its way is not over yet).
    fn over(&self, state: &LeaseState) -> bool {
        let gone = state.holder == Holder::Stopped && state.session.is_none();
        gone || (state.standby && state.holder != Holder::Acquiring)
    }

    fn tick(&self, state: &mut LeaseState) {
        let cap = self.config.lease;
        for message in [&mut state.to_server, &mut state.to_client]
            .into_iter()
            .flatten()
        {
            message.left -= 1;
            message.sent_age = (message.sent_age + 1).min(cap);
        }
        if let Some(heard) = &mut state.session {
            *heard = (*heard + 1).min(self.config.server_timeout);
        }
        match &mut state.holder {
            Holder::Running {
                silent, next_beat, ..
            } => {
                *silent = (*silent + 1).min(cap);
                *next_beat = next_beat.saturating_sub(1);
            }
            Holder::Stopping { left } => *left -= 1,
            _ => {}
        }
    }
}

impl Model for Lease {
    type State = LeaseState;
    type Action = LeaseAction;

    /// The acquisition's last query (the fencing-term insert) reached the
    /// server at time 0: the session was last heard then; its reply is on
    /// its way, with any delay, or lost.
    fn init_states(&self) -> Vec<LeaseState> {
        self.delays()
            .map(|delay| LeaseState {
                holder: Holder::Acquiring,
                session: Some(0),
                standby: false,
                to_server: None,
                to_client: delay.map(|left| Message {
                    left,
                    sent_age: 0,
                    grant: true,
                }),
            })
            .collect()
    }

    fn actions(&self, state: &LeaseState, actions: &mut Vec<LeaseAction>) {
        use LeaseAction::*;
        if self.over(state) {
            return;
        }
        if !self.urgent(state) {
            actions.push(Tick);
        }
        if state.to_server.is_some_and(|m| m.left == 0) {
            actions.extend(self.delays().map(ServerReplies));
        }
        if state.to_client.is_some_and(|m| m.left == 0) {
            actions.push(ClientReceives);
        }
        let in_flight = state.to_server.is_some() || state.to_client.is_some();
        match state.holder {
            Holder::Acquiring if !in_flight => actions.push(AcquireFails),
            Holder::Running {
                silent,
                next_beat,
                querying,
            } => {
                if silent >= self.config.lease {
                    actions.push(WatchdogFires);
                } else if next_beat == 0 && !querying {
                    actions.extend(self.delays().map(Beat));
                }
                if querying && !in_flight {
                    actions.push(QueryFails);
                }
            }
            Holder::Stopping { left } => {
                actions.push(if left == 0 {
                    ExitAfterGrace
                } else {
                    ShutdownDone
                });
            }
            _ => {}
        }
        let silent_long_enough = state
            .session
            .is_some_and(|heard| heard >= self.config.server_timeout);
        let closed = state.holder == Holder::Stopped && state.session.is_some();
        if silent_long_enough || closed {
            actions.push(SessionEnds);
        }
    }

    fn next_state(&self, state: &LeaseState, action: LeaseAction) -> Option<LeaseState> {
        use LeaseAction::*;
        let mut next = *state;
        match action {
            Tick => self.tick(&mut next),
            Beat(delay) => {
                if let Holder::Running { querying, .. } = &mut next.holder {
                    *querying = true;
                }
                next.to_server = delay.map(|left| Message {
                    left,
                    sent_age: 0,
                    grant: false,
                });
            }
            ServerReplies(delay) => {
                let query = next.to_server.take()?;
                // A query reaches a live session only; an ended one's
                // connection is reset, and the client's query fails.
                if next.session.is_some() {
                    next.session = Some(0);
                    next.to_client = delay.map(|left| Message { left, ..query });
                }
            }
            ClientReceives => {
                let reply = next.to_client.take()?;
                let stale_grant = self.config.start == LeaseStart::LastQuerySent
                    && reply.sent_age >= self.config.lease;
                next.holder = match next.holder {
                    Holder::Acquiring if stale_grant => Holder::Stopped,
                    Holder::Acquiring => Holder::Running {
                        silent: match self.config.start {
                            LeaseStart::GuardBuilt => 0,
                            LeaseStart::LastQuerySent => reply.sent_age,
                        },
                        next_beat: self.config.heartbeat,
                        querying: false,
                    },
                    // confirmed.store(sent): as of the query's sending.
                    Holder::Running { silent, .. } => Holder::Running {
                        silent: silent.min(reply.sent_age),
                        next_beat: self.config.heartbeat,
                        querying: false,
                    },
                    other => other,
                };
            }
            QueryFails => {
                if let Holder::Running {
                    querying,
                    next_beat,
                    ..
                } = &mut next.holder
                {
                    *querying = false;
                    *next_beat = self.config.heartbeat;
                }
            }
            AcquireFails | ShutdownDone | ExitAfterGrace => next.holder = Holder::Stopped,
            WatchdogFires => {
                next.holder = Holder::Stopping {
                    left: self.config.grace,
                }
            }
            SessionEnds => {
                next.session = None;
                next.standby = true;
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(names::HOLDER_STOPS_FIRST, |_, s: &LeaseState| {
                !s.standby || matches!(s.holder, Holder::Stopped | Holder::Acquiring)
            }),
            Property::sometimes(names::STANDBY_TAKES_OVER, |_, s: &LeaseState| s.standby),
            Property::sometimes(names::WATCHDOG_FIRES, |_, s: &LeaseState| {
                matches!(s.holder, Holder::Stopping { .. })
            }),
        ]
    }
}
