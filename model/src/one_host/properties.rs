//! What must hold in every reachable state (`always`), and what must be
//! reachable at all (`sometimes`: without them a model that lost a
//! behaviour would pass every `always` vacuously).

use stateright::Property;

use super::kernel::Lock;
use super::process::{Pc, Role, Then, once};
use super::steps::holds;
use super::{Config, OneHost, State, broke, solo};

/// The property names, for tests to ask the checker about.
pub mod names {
    /// `always`: safety (a).
    pub const ONE_OWNER_ON_PATH: &str =
        "(a) at most one owner holds the lock on the file the path names";
    /// `always`: safety (a'), the promise people care about.
    pub const NO_TWO_INSTANCES: &str =
        "(a') no two instances run (unless the file is removed from outside)";
    /// `always`: safety (b).
    pub const ONLY_OWNER_MODIFIES: &str =
        "(b) only the lock's owner unlinks, writes or truncates the file";
    /// `always`: safety (c).
    pub const FILE_NAMES_OWNER: &str =
        "(c) while an owner runs, the file the path names holds its PID";
    /// `always`: safety (d).
    pub const SIGNAL_ONLY_HOLDERS: &str = "(d) a signal reaches only a process of the instance verified when the stop or takeover began";
    /// `always`: bounded progress (e).
    pub const SOLO_ACQUIRE: &str =
        "(e) an acquirer alone acquires a free lock within a bounded number of its own steps";
    /// `always`: readers never block a start (f).
    pub const READERS_NEVER_BLOCK: &str = "(f) readers never block a start: with only readers' shared locks, an acquirer alone runs within the bound";

    /// `sometimes`: the bound of (e) and (f) is tight.
    pub const SOLO_TIGHT: &str = "(e) some acquirer alone needs the whole bound";
    /// `sometimes`: the model reaches a running instance.
    pub const RUNS: &str = "an instance runs";
    /// `sometimes`: a start is refused.
    pub const CONFLICT: &str = "a conflict is reported";
    /// `sometimes`: the post-lock check sends a start round again.
    pub const STALE_RETRY: &str = "a lock on a replaced or removed file is retried";
    /// `sometimes`: `write_pid` truncates.
    pub const TRUNCATED: &str = "a longer stale file is truncated";
    /// `sometimes`: a wait ends with the lock free.
    pub const WAITED: &str = "the lock comes free for a waiting instance";
    /// `sometimes`: `restart()` keeps the lock.
    pub const ADOPTED: &str = "a restarted image adopts its lock";
    /// `sometimes`: `daemonized()` hands the lock over.
    pub const DAEMON_OWNS: &str = "a daemonized child owns the lock";
    /// `sometimes`: a stop or takeover's SIGTERM runs the handler.
    pub const SIGNALLED: &str = "a holder runs its signal handler after takeover or stop";
    /// `sometimes`: the SIGKILL round has someone to kill.
    pub const KILLED: &str = "a verified holder that kept the lock is SIGKILLed";
    /// `sometimes`: the sharers pipe keeps the file.
    pub const KEPT_FOR_SHARERS: &str = "a release leaves the file to a child that shares the lock";
    /// `sometimes`: a fork child outlives its parent with the lock.
    pub const SHARER_RUNS_ALONE: &str = "a child holds the lock alone after its parent let go";
    /// `sometimes`: a start replaces a file readers hold.
    pub const REPLACED: &str = "a start replaces a file only readers hold";
    /// `sometimes`: a start reports a reader that holds the file exclusively.
    pub const PINNED: &str = "a start reports a file a reader holds exclusively (Pinned)";
    /// `sometimes`: a wait notices its file removed.
    pub const UNNAMED: &str = "a waiting start finds its file removed and opens the path again";
    /// `sometimes`: a wait finds only readers left.
    pub const ONLY_SHARED: &str =
        "a waiting start finds only readers' shared locks on its file and looks again";
    /// `sometimes`: a reader's exclusive lock is reached.
    pub const READER_HOLDS_EXCLUSIVE: &str = "a reader holds the file exclusively";
    /// `sometimes`: PID reuse reaches the file's PID.
    pub const REUSED_PID_IN_FILE: &str = "the file names a PID now used by an unrelated process";
    /// `sometimes`: the known limit after an outside `rm`.
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
        Property::always(READERS_NEVER_BLOCK, solo::readers_never_block),
        Property::sometimes(SOLO_TIGHT, solo::needs_the_whole_bound),
        Property::sometimes(RUNS, |_, s: &State| {
            s.procs.iter().any(|p| p.is_owner() && p.pc == Pc::Run)
        }),
    ];
    if config.instances.len() > 1 || config.outside_rm > 0 {
        properties.push(Property::sometimes(STALE_RETRY, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::CloseRetry)
        }));
    }
    if config
        .instances
        .iter()
        .any(|p| *p == super::Policy::Wait || *p == super::Policy::Takeover)
    {
        properties.push(Property::sometimes(UNNAMED, |_, s: &State| {
            s.procs.iter().any(|p| {
                p.pc == Pc::WaitLock
                    && p.fd.is_some_and(|fd| {
                        s.kernel.entry != Some(s.kernel.inode_of(fd))
                            && !s.kernel.can_lock(fd, Lock::Exclusive)
                    })
            })
        }));
    }
    if config.instances.contains(&super::Policy::Wait)
        && config.reader_locks.contains(&Lock::Shared)
    {
        properties.push(Property::sometimes(ONLY_SHARED, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::WaitUnlock)
        }));
    }
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
            s.procs.iter().any(|p| {
                p.pc == Pc::WaitLock
                    && p.fd
                        .is_some_and(|fd| s.kernel.can_lock(fd, Lock::Exclusive))
            })
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
    if config.fork && (config.stopper || config.instances.contains(&super::Policy::Takeover)) {
        properties.push(Property::sometimes(KILLED, |m: &OneHost, s: &State| {
            (0..s.procs.len()).any(|slot| {
                matches!(s.procs[slot].pc, Pc::Kill | Pc::StopKill)
                    && !m.still_holding(s, slot).is_empty()
            })
        }));
    }
    if config.fork {
        properties.push(Property::sometimes(KEPT_FOR_SHARERS, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::Rewrite)
        }));
        properties.push(Property::sometimes(SHARER_RUNS_ALONE, |_, s: &State| {
            s.procs.iter().any(|p| {
                p.role == Role::Child
                    && p.pc == Pc::Run
                    && !p.is_owner()
                    && p.fd
                        .is_some_and(|fd| s.kernel.description(fd).lock.is_some())
                    && s.procs.iter().filter(|q| q.alive() && q.fd == p.fd).count() == 1
            })
        }));
    }
    if config.reader_locks.contains(&Lock::Shared) {
        properties.push(Property::sometimes(REPLACED, |_, s: &State| {
            s.procs.iter().any(|p| p.pc == Pc::TurnOver(Then::Locked))
        }));
    }
    if config.reader_locks.contains(&Lock::Exclusive) {
        properties.push(Property::sometimes(
            READER_HOLDS_EXCLUSIVE,
            |_, s: &State| {
                s.kernel
                    .descriptions
                    .iter()
                    .flatten()
                    .any(|d| d.foreign && d.lock == Some(Lock::Exclusive))
            },
        ));
    }
    if config.reader_locks.contains(&Lock::Exclusive) {
        properties.push(Property::sometimes(PINNED, |_, s: &State| {
            s.procs.iter().any(|p| {
                p.pc == Pc::Refuse
                    && p.fd.is_some_and(|fd| {
                        let inode = s.kernel.inode_of(fd);
                        s.kernel.descriptions.iter().flatten().any(|d| {
                            d.inode == inode && d.foreign && d.lock == Some(Lock::Exclusive)
                        })
                    })
            })
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

/// The owners whose lock is on the inode the path names: the kernel's lock,
/// not the PID in the file, says who runs.
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

/// No two instances: the processes running under a guard (owners, and fork
/// children with their copy of it), not yet on an exit path, hold their
/// lock through one open file description at most. A fork child that lives
/// on after its parent let go is the same instance as its parent was. A
/// process on its way out (returned from `main`, exiting, or in its signal
/// handler) no longer runs the program; the file it leaves behind is what
/// (b) is about. An outside `rm` lets a second instance start while the
/// first runs on the removed inode: no file lock can prevent that, so this
/// is only promised while nobody removed the file behind the lock's back.
fn no_two_instances(model: &OneHost, state: &State) -> bool {
    model.outside_rm_happened(state) || instance_locks(state).len() <= 1
}

/// The descriptions instances hold the exclusive lock through.
pub(crate) fn instance_locks(state: &State) -> Vec<u8> {
    let mut locks: Vec<u8> = state
        .procs
        .iter()
        .filter(|p| p.alive() && p.owner.is_some() && p.pc.runs())
        .filter_map(|p| p.fd)
        .filter(|&d| state.kernel.description(d).lock == Some(Lock::Exclusive))
        .collect();
    locks.sort_unstable();
    locks.dedup();
    locks
}

/// Never truncate or unlink a file that is not ours (DESIGN.md, "The lock
/// protocol (one host)"). After an
/// outside `rm`, `unlink_if_ours`' fstatat-then-unlinkat can hit a newcomer's
/// file (there is no unlink-by-descriptor): see [`names::RM_RACE`].
fn only_owner_modifies(model: &OneHost, state: &State) -> bool {
    state.broke & broke::MODIFY == 0 || model.outside_rm_happened(state)
}

/// While an owner runs `main` (past its write), the path names its file and
/// the file holds its PID: the PID people and tools read reaches the
/// instance. After an outside `rm` the path may name nothing or a newcomer's
/// file; if it names the owner's, that still holds its PID. A start that
/// swapped out a file it could not freeze may have moved a running
/// instance's file away until its second look, which swaps it back: not
/// promised in that window (only the `replace_unfrozen` mutation swaps a
/// file it could not freeze).
fn file_names_owner(model: &OneHost, state: &State) -> bool {
    let swapping = state
        .procs
        .iter()
        .any(|p| p.alive() && p.pc.unfrozen_swap() && !p.frozen);
    state
        .procs
        .iter()
        .filter(|p| p.alive() && p.is_owner() && p.pc == Pc::Run)
        .all(|p| {
            let inode = state.kernel.inode_of(p.fd.expect("an owner has its file"));
            if state.kernel.entry == Some(inode) {
                state.kernel.inode(inode).contents == super::Contents::Pid(p.pid)
            } else {
                model.outside_rm_happened(state) || swapping
            }
        })
}

/// A signal from takeover or `stop` (SIGTERM to
/// the holder, SIGKILL to those that kept the lock) lands only on a process
/// that held the lock when `holds` was asked after pinning it, at the start
/// of that stop or takeover: never on a process that got a holder's PID
/// number later, nor on one that took the lock since (a standby).
fn signal_only_holders(_: &OneHost, state: &State) -> bool {
    state.broke & broke::SIGNAL == 0
}
