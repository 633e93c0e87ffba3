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
//! acquirer alone from every reachable state.

use super::process::{Pc, Role};
use super::steps::UNVERIFIED_RETRIES;
use super::{OneHost, State, Step};

/// The property's condition: every acquirer in `state` that may still
/// succeed, if no other process holds a lock, gets it alone within the
/// bound.
pub(crate) fn acquires_alone(model: &OneHost, state: &State) -> bool {
    (0..state.procs.len())
        .filter(|&slot| candidate(state, slot))
        .filter(|&slot| no_other_lock(state, slot))
        .all(|slot| solo_steps(model, state, slot).is_some_and(|n| n <= model.config.solo_bound))
}

/// Some acquirer alone needs exactly `Config::solo_bound` steps: the bound
/// is tight (checked as a `sometimes` property).
pub(crate) fn needs_the_whole_bound(model: &OneHost, state: &State) -> bool {
    (0..state.procs.len())
        .filter(|&slot| candidate(state, slot))
        .filter(|&slot| no_other_lock(state, slot))
        .any(|slot| solo_steps(model, state, slot) == Some(model.config.solo_bound))
}

/// An instance inside `acquire` that has not already lost: a conflict it
/// saw while the lock was held stays reported (`Refuse`), and so does one
/// whose last `flock` retry in `busy` failed (the model's one retry stands
/// for `busy`'s twenty; what follows the last one is the report).
fn candidate(state: &State, slot: usize) -> bool {
    let proc = state.procs[slot];
    let out_of_retries = matches!(proc.pc, Pc::Busy { tries } if tries >= UNVERIFIED_RETRIES);
    proc.alive() && matches!(proc.role, Role::Instance(_)) && proc.pc.acquiring() && !out_of_retries
}

/// No description referred to by another process holds a lock.
fn no_other_lock(state: &State, slot: usize) -> bool {
    state
        .procs
        .iter()
        .enumerate()
        .filter(|(other, p)| *other != slot && p.alive())
        .flat_map(|(_, p)| [p.fd, p.kept])
        .flatten()
        .all(|d| !state.kernel.description(d).locked)
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
