//! Property (e), bounded progress, checked as a safety property.
//!
//! stateright's `eventually` is only judged on paths that end (it says so:
//! a path closing a cycle, or joining a state seen before, is not treated as
//! terminal, so it can miss counterexamples), and it has no notion of
//! fairness. Any interleaving in which other processes keep interfering can
//! delay an acquirer: that is not a bug of a non-blocking lock. What the
//! protocol does promise is obstruction-freedom with a bound: from any
//! reachable state in which no other process holds a lock, an acquirer that
//! runs alone (nobody else moves, nobody kills it) holds the lock and runs
//! `main` within `Config::solo_bound` of its own steps. That is a condition on
//! each state, so it is checked as an `always` property by running the
//! acquirer alone from every reachable state. Property (f) says the same
//! where the other processes hold only readers' locks: a reader can delay a
//! start by a replacement, never keep it from running.

use super::kernel::Lock;
use super::process::{Pc, Role};
use super::steps::UNVERIFIED_RETRIES;
use super::{OneHost, State, Step};

/// Property (e): every acquirer in `state` that may still succeed, if no
/// other process holds a lock, gets it alone within the bound.
pub(crate) fn acquires_alone(model: &OneHost, state: &State) -> bool {
    alone_within_bound(model, state, Others::HoldNothing)
}

/// Property (f): the same where the only locks other processes hold are
/// readers' shared ones, at least one: such readers never keep a start from
/// running. (A reader's exclusive lock, which only root can take on a 0600
/// file, is reported instead: `Error::Pinned`.)
pub(crate) fn readers_never_block(model: &OneHost, state: &State) -> bool {
    alone_within_bound(model, state, Others::HoldOnlyReaderLocks)
}

/// Some acquirer alone needs exactly `Config::solo_bound` steps: the bound
/// is tight (checked as a `sometimes` property).
pub(crate) fn needs_the_whole_bound(model: &OneHost, state: &State) -> bool {
    (0..state.procs.len())
        .filter(|&slot| candidate(state, slot))
        .filter(|&slot| {
            [Others::HoldNothing, Others::HoldOnlyReaderLocks]
                .into_iter()
                .any(|others| others.hold(state, slot))
        })
        .any(|slot| solo_steps(model, state, slot) == Some(model.config.solo_bound))
}

fn alone_within_bound(model: &OneHost, state: &State, others: Others) -> bool {
    failing(model, state, others).is_none()
}

/// The acquirer that breaks (e) (`readers` false) or (f) in `state`, for
/// traces.
pub(crate) fn fails_alone(model: &OneHost, state: &State, readers: bool) -> Option<usize> {
    let others = if readers {
        Others::HoldOnlyReaderLocks
    } else {
        Others::HoldNothing
    };
    failing(model, state, others)
}

fn failing(model: &OneHost, state: &State, others: Others) -> Option<usize> {
    (0..state.procs.len())
        .filter(|&slot| candidate(state, slot))
        .filter(|&slot| others.hold(state, slot))
        .find(|&slot| solo_steps(model, state, slot).is_none_or(|n| n > model.config.solo_bound))
}

/// An instance inside `acquire` that has not already lost: a conflict it
/// saw while the lock was held stays reported (`Refuse`), and so does one
/// in `busy`'s last round after its shared probe failed (the model's one
/// retry stands for `busy`'s 100 ms of them; a lock taken by anyone, a
/// reader too, between that probe and the round's last `flock` is then
/// reported as a holder nobody could verify).
fn candidate(state: &State, slot: usize) -> bool {
    let proc = state.procs[slot];
    let last_round = matches!(
        proc.pc,
        Pc::Busy { tries } | Pc::BusyFlock { tries } if tries >= UNVERIFIED_RETRIES
    );
    proc.alive() && matches!(proc.role, Role::Instance(_)) && proc.pc.acquiring() && !last_round
}

/// What the other processes hold, for the two properties.
#[derive(Clone, Copy)]
enum Others {
    /// No lock at all.
    HoldNothing,
    /// Locks, all of them readers' shared ones.
    HoldOnlyReaderLocks,
}

impl Others {
    fn hold(self, state: &State, slot: usize) -> bool {
        let lockers: Vec<(Role, Lock)> = state
            .procs
            .iter()
            .enumerate()
            .filter(|(other, p)| *other != slot && p.alive())
            .flat_map(|(_, p)| {
                p.descriptors()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| state.kernel.description(d).lock)
                    .map(|lock| (p.role, lock))
            })
            .collect();
        match self {
            Self::HoldNothing => lockers.is_empty(),
            Self::HoldOnlyReaderLocks => {
                !lockers.is_empty()
                    && lockers
                        .iter()
                        .all(|&held| held == (Role::Reader, Lock::Shared))
            }
        }
    }
}

/// How many of its own steps `slot` needs alone to run `main` as owner;
/// `None` if it gives up or gets stuck.
pub fn solo_steps(model: &OneHost, state: &State, slot: usize) -> Option<usize> {
    let mut state = *state;
    for taken in 0..=model.config.solo_bound + 4 {
        let proc = state.procs[slot];
        if proc.is_owner() && proc.pc == Pc::Run {
            return Some(taken);
        }
        if !proc.alive() {
            return None;
        }
        // The step the program counter names; never a crash or a timeout.
        let step = model
            .enabled(&state, slot)
            .into_iter()
            .find(|s| *s == Step::Next)?;
        model.apply(&mut state, slot, step);
        model.settle(&mut state);
    }
    None
}
