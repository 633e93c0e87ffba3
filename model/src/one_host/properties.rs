//! What must hold in every reachable state (`always`), and what must be
//! reachable at all (`sometimes`: without them a model that lost a
//! behaviour would pass every `always` vacuously).

use stateright::Property;

use super::process::{Pc, Role, once};
use super::steps::holds;
use super::{Config, OneHost, State, broke, solo};

/// The property names, for tests to ask the checker about.
pub mod names {
    pub const ONE_OWNER_ON_PATH: &str =
        "(a) at most one owner holds the lock on the file the path names";
    pub const NO_TWO_INSTANCES: &str =
        "(a') no two instances run (unless the file is removed from outside)";
    pub const ONLY_OWNER_MODIFIES: &str =
        "(b) only the lock's owner unlinks, writes or truncates the file";
    pub const FILE_NAMES_OWNER: &str =
        "(c) while an owner runs, the file the path names holds its PID";
    pub const SIGNAL_ONLY_HOLDERS: &str =
        "(d) a signal reaches only a process verified as holding the lock";
    pub const SOLO_ACQUIRE: &str =
        "(e) an acquirer alone acquires a free lock within a bounded number of its own steps";

    pub const SOLO_TIGHT: &str = "(e) some acquirer alone needs the whole bound";
    pub const RUNS: &str = "an instance runs";
    pub const CONFLICT: &str = "a conflict is reported";
    pub const STALE_RETRY: &str = "a lock on a replaced or removed file is retried";
    pub const TRUNCATED: &str = "a longer stale file is truncated";
    pub const WAITED: &str = "the lock comes free for a waiting instance";
    pub const ADOPTED: &str = "a restarted image adopts its lock";
    pub const DAEMON_OWNS: &str = "a daemonized child owns the lock";
    pub const SIGNALLED: &str = "a holder runs its signal handler after takeover or stop";
    pub const REUSED_PID_IN_FILE: &str = "the file names a PID now used by an unrelated process";
    pub const RM_RACE: &str =
        "after an outside rm, a release can unlink a newcomer's file (known limit)";
}

pub(crate) fn all(config: &Config) -> Vec<Property<OneHost>> {
    use names::*;
    let mut properties = vec![
        Property::always(ONE_OWNER_ON_PATH, one_owner_on_path),
        Property::always(NO_TWO_INSTANCES, no_two_instances),
        Property::always(ONLY_OWNER_MODIFIES, only_owner_modifies),
        Property::always(FILE_NAMES_OWNER, file_names_owner),
        Property::always(SIGNAL_ONLY_HOLDERS, signal_only_holders),
        Property::always(SOLO_ACQUIRE, solo::acquires_alone),
        Property::sometimes(SOLO_TIGHT, solo::needs_the_whole_bound),
        Property::sometimes(RUNS, |_, s: &State| {
            s.procs.iter().any(|p| p.is_owner() && p.pc == Pc::Run)
        }),
        Property::sometimes(STALE_RETRY, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::CloseRetry)
        }),
    ];
    if config.instances.len() > 1 {
        properties.push(Property::sometimes(CONFLICT, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::Refuse)
        }));
    }
    if config
        .initial_files
        .iter()
        .flatten()
        .any(|c| c.longer_than_a_pid_line())
    {
        properties.push(Property::sometimes(TRUNCATED, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::Truncate)
        }));
    }
    if config
        .instances
        .iter()
        .any(|p| *p == super::Policy::Wait || *p == super::Policy::Takeover)
    {
        properties.push(Property::sometimes(WAITED, |_, s: &State| {
            s.procs
                .iter()
                .any(|p| p.pc == Pc::WaitLock && p.fd.is_some_and(|fd| s.kernel.can_lock(fd)))
        }));
    }
    if config.restart {
        properties.push(Property::sometimes(ADOPTED, |_, s: &State| {
            s.procs
                .iter()
                .any(|p| p.has(once::RESTARTED) && p.is_owner() && p.pc == Pc::Run)
        }));
    }
    if config.daemonize {
        properties.push(Property::sometimes(DAEMON_OWNS, |_, s: &State| {
            s.procs
                .iter()
                .any(|p| p.role == Role::Child && p.is_owner() && p.pc == Pc::Run)
        }));
    }
    if config.stopper || config.instances.contains(&super::Policy::Takeover) {
        properties.push(Property::sometimes(SIGNALLED, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::Handler)
        }));
    }
    if config.pid_reuse {
        properties.push(Property::sometimes(REUSED_PID_IN_FILE, |_, s: &State| {
            let named = s
                .kernel
                .entry
                .and_then(|i| s.kernel.inode(i).contents.pid());
            s.procs
                .iter()
                .any(|p| p.role == Role::Unrelated && p.alive() && Some(p.pid) == named)
        }));
    }
    if config.outside_rm > 0 {
        properties.push(Property::sometimes(RM_RACE, |m: &OneHost, s: &State| {
            m.outside_rm_happened(s) && s.broke & broke::MODIFY != 0
        }));
    }
    properties
}

/// The owners whose lock is on the inode the path names (SPEC §4: "the
/// kernel lock is the truth").
fn one_owner_on_path(_: &OneHost, state: &State) -> bool {
    let Some(named) = state.kernel.entry else {
        return true;
    };
    state
        .procs
        .iter()
        .filter(|p| p.alive() && p.is_owner() && holds(state, p, named))
        .count()
        <= 1
}

/// No two registered owners that have not yet given up their file (past
/// their `unlinkat`). An outside `rm` lets a second instance start while the
/// first runs on the removed inode: no file lock can prevent that, so this
/// is only promised while nobody removed the file behind the lock's back.
fn no_two_instances(model: &OneHost, state: &State) -> bool {
    model.outside_rm_happened(state)
        || state
            .procs
            .iter()
            .filter(|p| p.alive() && p.is_owner() && p.pc != Pc::Close)
            .count()
            <= 1
}

/// SPEC §4.6: "Never truncate or unlink a file that is not ours." After an
/// outside `rm`, `unlink_if_ours`' fstatat-then-unlinkat can hit a newcomer's
/// file (there is no unlink-by-descriptor): see [`names::RM_RACE`].
fn only_owner_modifies(model: &OneHost, state: &State) -> bool {
    state.broke & broke::MODIFY == 0 || model.outside_rm_happened(state)
}

/// While an owner runs `main` (past its write), the path names its file and
/// the file holds its PID: the PID people and tools read reaches the
/// instance. After an outside `rm` the path may name nothing or a newcomer's
/// file; if it names the owner's, that still holds its PID.
fn file_names_owner(model: &OneHost, state: &State) -> bool {
    state
        .procs
        .iter()
        .filter(|p| p.alive() && p.is_owner() && p.pc == Pc::Run)
        .all(|p| {
            let inode = state.kernel.inode_of(p.fd.expect("an owner has its file"));
            if state.kernel.entry == Some(inode) {
                state.kernel.inode(inode).contents == super::Contents::Pid(p.pid)
            } else {
                model.outside_rm_happened(state)
            }
        })
}

/// SPEC §10, "Who holds it": a signal from takeover or `stop` lands only on
/// the process that held the lock when `holds` was asked, never on a
/// process that got a holder's PID number later.
fn signal_only_holders(_: &OneHost, state: &State) -> bool {
    state.broke & broke::SIGNAL == 0
}
