//! The Redis lease (`pidlock-core/src/redis/`) in discrete time, with
//! lost, delayed and duplicated messages, the key's TTL running out, and a
//! holder that may be paused (SIGSTOP, a long GC, a migrated VM).
//!
//! One holder, the server's key, and a standby that takes the key the
//! moment it is free (woken by the TTL running out: the release wakes it
//! too, but a holder in this model never releases). One tick = one second.
//! The model keeps ages, not clock readings, so its state space is finite:
//!
//! - the key: who it names (holder or standby) and its age since it was
//!   set or last renewed; at the TTL `T` it expires;
//! - the holder's watchdog: time since the sending of its last confirmed
//!   renewal; at the lease `L` it raises SIGTERM, and the process is gone at
//!   most the grace `G` later. Until then (its shutdown still running) its
//!   keeper keeps renewing, as the real one does;
//! - renewals: every heartbeat one request, never two at once; the network
//!   may lose it, delay it, or deliver it twice (each copy with its own
//!   delay). The server renews the key only while it names the holder (the
//!   token check), and answers; a refusal stops the holder at once;
//! - a pause: the holder's process takes no step while time passes (its
//!   watchdog is one of its threads).
//!
//! Two properties: [`names::HOLDER_STOPS_FIRST`] (the holder has stopped
//! before the standby runs) holds while the arithmetic does and no pause
//! outlasts it; [`names::FENCED`] (when two holders do run at once, the
//! newer holds the key and the larger term, and the older can get no
//! renewal confirmed) holds always. [`Mutations`] take out the safeguards
//! one at a time.

use stateright::{Model, Property};

/// What a check of the Redis lease explores: the timeouts in ticks, the
/// network, pauses, and the safeguards taken out.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `L`.
    pub lease: u8,
    /// `G`.
    pub grace: u8,
    /// `T`: the key's TTL.
    pub ttl: u8,
    /// Ticks between renewals.
    pub heartbeat: u8,
    /// The longest a message spends in the network, one way.
    pub max_delay: u8,
    /// Whether messages may be lost, and duplicated.
    pub loss: bool,
    /// Whether a renewal may reach the server twice.
    pub duplication: bool,
    /// The longest pause of the holder's process (0: none).
    pub max_pause: u8,
    /// The safeguards taken out (none, for the code as it is).
    pub mutations: Mutations,
}

/// Safeguards taken out, to show that each one matters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// Renewal without the token check: `SET key holder PX T`, whoever the
    /// key names.
    pub blind_renewal: bool,
    /// The lease counted from when a confirmation arrives, not from when
    /// its request was sent.
    pub lease_from_reply: bool,
}

impl RedisConfig {
    /// Small settings with the shipped proportions (lease 4, grace 2, TTL
    /// 8: `L + G < T` by two ticks, as 8 + 5 < 15 by two seconds).
    pub fn small(max_delay: u8, max_pause: u8) -> Self {
        Self {
            lease: 4,
            grace: 2,
            ttl: 8,
            heartbeat: 1,
            max_delay,
            loss: true,
            duplication: true,
            max_pause,
            mutations: Mutations::default(),
        }
    }
}

/// A renewal or its answer in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Message {
    /// Ticks until it arrives.
    pub left: u8,
    /// Ticks since the holder sent the renewal it belongs to (capped).
    pub sent_age: u8,
    /// For an answer: the key was renewed.
    pub renewed: bool,
}

/// The holder's process, as its keeper and watchdog see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// Running: the keeper renews, the watchdog counts.
    Running {
        /// Ticks since the sending of the last confirmed renewal (capped).
        silent: u8,
        /// Ticks until the keeper sends its next renewal.
        next_beat: u8,
        /// A renewal is outstanding.
        querying: bool,
    },
    /// SIGTERM raised (by the watchdog or a refused renewal): the shutdown
    /// runs, and the keeper too, for at most `left` ticks.
    Stopping {
        /// Ticks until the process is made to exit.
        left: u8,
        /// Ticks since the sending of the last confirmed renewal (capped).
        silent: u8,
        /// Ticks until the keeper sends its next renewal.
        next_beat: u8,
        /// A renewal is outstanding.
        querying: bool,
    },
    /// The process has exited.
    Stopped,
}

/// Who the key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    /// The first holder.
    Holder,
    /// The standby, once the key expired.
    Standby,
}

/// A state: the holder, the key, the standby, the messages in flight and the
/// terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedisState {
    /// The holder's process.
    pub holder: Holder,
    /// Ticks the holder's process stays paused (0: running).
    pub paused: u8,
    /// Whether the one pause was used.
    pub pause_used: bool,
    /// Who the key names, and its age; `None` once expired.
    pub key: Option<(KeyOwner, u8)>,
    /// The standby holds the key (and runs).
    pub standby: bool,
    /// Renewals on their way to the server, and answers on their way back
    /// (sorted: two copies of one message are one state, whatever order).
    pub to_server: Vec<Message>,
    /// Answers on their way back to the holder (sorted, as `to_server`).
    pub to_client: Vec<Message>,
    /// Terms: the holder's, and the standby's once it has one (each
    /// acquisition bumps the server's counter in the same script).
    pub holder_term: u8,
    /// The standby's term, once it has one.
    pub standby_term: u8,
    /// The holder had a renewal confirmed while the standby held the key.
    pub confirmed_unfenced: bool,
}

/// A step: time passing, a message sent or delivered, the holder acting or
/// paused, the key expiring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedisAction {
    /// One tick passes.
    Tick,
    /// The keeper sends a renewal: its copies' delays (`None`: lost).
    Renew(Option<u8>, Option<Option<u8>>),
    /// A renewal reaches the server; its answer takes this long, or is lost.
    ServerRenews(usize, Option<u8>),
    /// An answer reaches the holder.
    HolderReceives(usize),
    /// A renewal whose answer never comes errors out (the deadline).
    RenewalFails,
    /// The watchdog: no confirmed renewal for a lease. SIGTERM.
    WatchdogFires,
    /// The program's own shutdown finished after SIGTERM.
    ShutdownDone,
    /// The grace ran out: `std::process::exit`.
    ExitAfterGrace,
    /// The process is paused for this many ticks.
    Pause(u8),
    /// The key's TTL ran out; the standby takes the key.
    KeyExpires,
}

/// The property names.
pub mod names {
    /// `always`: without pauses, the holder has stopped before the standby
    /// runs.
    pub const HOLDER_STOPS_FIRST: &str = "the holder has stopped before the standby runs";
    /// `always`: two holders at once are always fenced.
    pub const FENCED: &str = "two holders never run un-fenced: the newer holds the key and the larger term, and the older gets no renewal confirmed";
    /// `sometimes`: the standby takes the key.
    pub const STANDBY_TAKES_OVER: &str = "the standby gets the lock";
    /// `sometimes`: the holder's watchdog fires.
    pub const WATCHDOG_FIRES: &str = "the holder's watchdog fires";
}

/// The model.
#[derive(Clone, Debug)]
pub struct RedisLease {
    /// What this check explores.
    pub config: RedisConfig,
}

impl RedisLease {
    /// The model of `config`.
    pub fn new(config: RedisConfig) -> Self {
        Self { config }
    }

    fn delays(&self) -> Vec<Option<u8>> {
        let mut delays: Vec<Option<u8>> = (0..=self.config.max_delay).map(Some).collect();
        if self.config.loss {
            delays.push(None);
        }
        delays
    }

    /// The holder's keeper fields, running or stopping.
    fn keeper(holder: &mut Holder) -> Option<(&mut u8, &mut u8, &mut bool)> {
        match holder {
            Holder::Running {
                silent,
                next_beat,
                querying,
            }
            | Holder::Stopping {
                silent,
                next_beat,
                querying,
                ..
            } => Some((silent, next_beat, querying)),
            Holder::Stopped => None,
        }
    }

    fn alive(state: &RedisState) -> bool {
        state.holder != Holder::Stopped
    }

    /// Something must happen before time may pass.
    fn urgent(&self, state: &RedisState) -> bool {
        let due = |messages: &[Message]| messages.iter().any(|m| m.left == 0);
        let expiring = state.key.is_some_and(|(_, age)| age >= self.config.ttl);
        let holder_due = state.paused == 0
            && match state.holder {
                Holder::Running {
                    silent,
                    next_beat,
                    querying,
                } => silent >= self.config.lease || (next_beat == 0 && !querying),
                Holder::Stopping {
                    left,
                    next_beat,
                    querying,
                    ..
                } => left == 0 || (next_beat == 0 && !querying),
                Holder::Stopped => false,
            };
        due(&state.to_server) || due(&state.to_client) || expiring || holder_due
    }

    fn tick(&self, state: &mut RedisState) {
        let cap = self.config.ttl;
        for message in state.to_server.iter_mut().chain(state.to_client.iter_mut()) {
            message.left -= 1;
            message.sent_age = (message.sent_age + 1).min(cap);
        }
        if let Some((_, age)) = &mut state.key {
            *age = (*age + 1).min(cap);
        }
        if let Some((silent, next_beat, _)) = Self::keeper(&mut state.holder) {
            *silent = (*silent + 1).min(cap);
            if state.paused == 0 {
                *next_beat = next_beat.saturating_sub(1);
            }
        }
        if let Holder::Stopping { left, .. } = &mut state.holder
            && state.paused == 0
        {
            *left = left.saturating_sub(1);
        }
        state.paused = state.paused.saturating_sub(1);
    }

    fn stop(&self, holder: Holder) -> Holder {
        match holder {
            Holder::Running {
                silent,
                next_beat,
                querying,
            } => Holder::Stopping {
                left: self.config.grace,
                silent,
                next_beat,
                querying,
            },
            other => other,
        }
    }
}

impl Model for RedisLease {
    type State = RedisState;
    type Action = RedisAction;

    /// The holder has just acquired: its key is fresh, its lease counts
    /// from the acquisition's sending.
    fn init_states(&self) -> Vec<RedisState> {
        vec![RedisState {
            holder: Holder::Running {
                silent: 0,
                next_beat: self.config.heartbeat,
                querying: false,
            },
            paused: 0,
            pause_used: false,
            key: Some((KeyOwner::Holder, 0)),
            standby: false,
            to_server: Vec::new(),
            to_client: Vec::new(),
            holder_term: 1,
            standby_term: 0,
            confirmed_unfenced: false,
        }]
    }

    fn actions(&self, state: &RedisState, actions: &mut Vec<RedisAction>) {
        use RedisAction::*;
        let over = !Self::alive(state)
            && state.standby
            && state.to_server.is_empty()
            && state.to_client.is_empty();
        if over {
            return;
        }
        if !self.urgent(state) {
            actions.push(Tick);
        }
        if state.key.is_some_and(|(_, age)| age >= self.config.ttl) {
            actions.push(KeyExpires);
        }
        for (index, message) in state.to_server.iter().enumerate() {
            if message.left == 0 {
                for delay in self.delays() {
                    actions.push(ServerRenews(index, delay));
                }
            }
        }
        if state.paused > 0 {
            return;
        }
        for (index, message) in state.to_client.iter().enumerate() {
            if message.left == 0 && Self::alive(state) {
                actions.push(HolderReceives(index));
            }
        }
        if !state.pause_used && Self::alive(state) && self.config.max_pause > 0 {
            for ticks in 1..=self.config.max_pause {
                actions.push(Pause(ticks));
            }
        }
        let in_flight = !state.to_server.is_empty() || !state.to_client.is_empty();
        let keeper = match state.holder {
            Holder::Running {
                silent,
                next_beat,
                querying,
            } => {
                if silent >= self.config.lease {
                    actions.push(WatchdogFires);
                }
                Some((next_beat, querying))
            }
            Holder::Stopping {
                left,
                next_beat,
                querying,
                ..
            } => {
                actions.push(if left == 0 {
                    ExitAfterGrace
                } else {
                    ShutdownDone
                });
                Some((next_beat, querying))
            }
            Holder::Stopped => None,
        };
        if let Some((next_beat, querying)) = keeper {
            if next_beat == 0 && !querying {
                for first in self.delays() {
                    actions.push(Renew(first, None));
                    if self.config.duplication && first.is_some() {
                        for second in self.delays().into_iter().flatten() {
                            if Some(second) >= first {
                                actions.push(Renew(first, Some(Some(second))));
                            }
                        }
                    }
                }
            }
            if querying && !in_flight {
                actions.push(RenewalFails);
            }
        }
    }

    fn next_state(&self, state: &RedisState, action: RedisAction) -> Option<RedisState> {
        use RedisAction::*;
        let mut next = state.clone();
        match action {
            Tick => self.tick(&mut next),
            Renew(first, second) => {
                let (_, next_beat, querying) = Self::keeper(&mut next.holder)?;
                *querying = true;
                *next_beat = self.config.heartbeat;
                for delay in [first, second.flatten()].into_iter().flatten() {
                    next.to_server.push(Message {
                        left: delay,
                        sent_age: 0,
                        renewed: false,
                    });
                }
                next.to_server.sort();
            }
            ServerRenews(index, delay) => {
                let request = next.to_server.remove(index);
                let ours = matches!(next.key, Some((KeyOwner::Holder, _)));
                let renewed = ours || self.config.mutations.blind_renewal;
                if renewed {
                    next.key = Some((KeyOwner::Holder, 0));
                }
                if let Some(left) = delay {
                    next.to_client.push(Message {
                        left,
                        renewed,
                        ..request
                    });
                    next.to_client.sort();
                }
            }
            HolderReceives(index) => {
                let answer = next.to_client.remove(index);
                let standby_holds = next.standby;
                let lease_from_reply = self.config.mutations.lease_from_reply;
                let (silent, _, querying) = Self::keeper(&mut next.holder)?;
                *querying = false;
                if answer.renewed {
                    *silent = if lease_from_reply {
                        0
                    } else {
                        (*silent).min(answer.sent_age)
                    };
                    if standby_holds {
                        next.confirmed_unfenced = true;
                    }
                } else {
                    next.holder = self.stop(next.holder);
                }
            }
            RenewalFails => {
                let (_, _, querying) = Self::keeper(&mut next.holder)?;
                *querying = false;
            }
            WatchdogFires => next.holder = self.stop(next.holder),
            ShutdownDone | ExitAfterGrace => next.holder = Holder::Stopped,
            Pause(ticks) => {
                next.paused = ticks;
                next.pause_used = true;
            }
            KeyExpires => {
                // The standby's acquire script finds the key free and sets
                // it, bumping the term in the same step.
                next.key = Some((KeyOwner::Standby, 0));
                next.standby = true;
                next.standby_term = next.holder_term + 1;
                // The standby renews its key for as long as it runs; what
                // matters here is the holder, so its key never expires.
            }
        }
        // The standby keeps its key fresh (its own renewals, not modelled).
        if let Some((KeyOwner::Standby, age)) = &mut next.key {
            *age = 0;
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(names::HOLDER_STOPS_FIRST, |_, s: &RedisState| {
                !s.standby || s.holder == Holder::Stopped
            }),
            Property::always(names::FENCED, |_, s: &RedisState| {
                let both = s.standby && s.holder != Holder::Stopped;
                !both
                    || (matches!(s.key, Some((KeyOwner::Standby, _)))
                        && s.standby_term > s.holder_term
                        && !s.confirmed_unfenced)
            }),
            Property::sometimes(names::STANDBY_TAKES_OVER, |_, s: &RedisState| s.standby),
            Property::sometimes(names::WATCHDOG_FIRES, |_, s: &RedisState| {
                matches!(s.holder, Holder::Stopping { .. })
            }),
        ]
    }
}

/// A path as timed lines, for counterexamples.
pub fn render(path: &stateright::Path<RedisState, RedisAction>, property: &str) -> String {
    use std::fmt::Write as _;
    let mut out = format!("property: {property}\n");
    let mut now = 0u32;
    for (state, action) in path.clone().into_vec() {
        match action {
            Some(RedisAction::Tick) => now += 1,
            Some(action) => {
                let _ = writeln!(out, "t={now:>2}s {action:?}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "t={now:>2}s end: holder {:?}, key {:?}, standby {}, terms {}/{}, confirmed un-fenced: {}",
                    state.holder,
                    state.key,
                    if state.standby { "RUNNING" } else { "waiting" },
                    state.holder_term,
                    state.standby_term,
                    state.confirmed_unfenced
                );
            }
        }
    }
    out
}
