//! Who holds the lock on a file, asked of the kernel (SPEC §10, "Who holds
//! it"): the one function the conflict report, `status`, `stop` and takeover
//! all use.
//!
//! A `flock` belongs to an open file description, and every process with a
//! descriptor for that description holds it: the process that took it may
//! have forked and exited (`daemon(3)`, `flock(1)`, `exec 9>f; flock 9` in a
//! shell), and its PID, which `/proc/locks` still shows, may since belong to
//! an unrelated process. So the holder is found the other way round: Linux
//! lists, in `/proc/<pid>/fdinfo/<fd>`, the locks held through that very
//! descriptor (`lock:` lines). A process is a holder when one of its
//! descriptors names our inode and carries an exclusive `FLOCK` line for it.
//!
//! What cannot be seen is not guessed: another user's descriptors (unless we
//! are root) and processes outside our PID namespace are invisible, and a
//! holder among them leaves the answer "not verified". Elsewhere than Linux
//! nothing can be verified.

use nix::sys::signal::Signal;

use crate::error::Holder;
use crate::pid::Pid;
use crate::process::Pinned;
use crate::sys::{self, Identity, LockKind};

/// The processes that hold the exclusive lock on a file, as this process's
/// PID namespace numbers them. Empty when none could be verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    /// Holders of the exclusive lock, in ascending PID order.
    pub(crate) exclusive: Vec<Pid>,
    /// Whether any visible process holds a *shared* lock on the file: an
    /// observer (`status`, `stop`, `wait`) probing it for an instant.
    pub(crate) shared: bool,
}

impl Holders {
    /// What to report: the verified holders, the one the file names first;
    /// else what the file claims, marked unverified.
    pub(crate) fn describe(&self, file_pid: Option<Pid>) -> Holder {
        let Some(&lowest) = self.exclusive.first() else {
            return file_pid.map_or(Holder::Unknown, Holder::File);
        };
        // The holder the file names: by our number, or by the number it has
        // in its own PID namespace (a container's PID 1).
        let pid = file_pid
            .and_then(|named| {
                self.exclusive
                    .iter()
                    .copied()
                    .find(|&pid| pid == named)
                    .or_else(|| {
                        self.exclusive
                            .iter()
                            .copied()
                            .find(|&pid| sys::own_namespace_pid(pid) == Some(named))
                    })
            })
            .or_else(|| {
                // Not named by the file: the process whose parent is not a
                // holder itself (a daemon, not one of its forked workers,
                // whose PIDs may be lower after the numbers wrapped).
                let roots: Vec<Pid> = self
                    .exclusive
                    .iter()
                    .copied()
                    .filter(|&pid| {
                        sys::parent_of(pid).is_none_or(|parent| !self.exclusive.contains(&parent))
                    })
                    .collect();
                (roots.len() == 1).then(|| roots[0])
            })
            .unwrap_or(lowest);
        let others = self
            .exclusive
            .iter()
            .copied()
            .filter(|&other| other != pid)
            .collect();
        let ns_pid = sys::own_namespace_pid(pid).filter(|&inner| inner != pid);
        Holder::Kernel {
            pid,
            others,
            ns_pid,
        }
    }
}

/// Sends `signal` to `pid` if, at that moment, it holds the exclusive lock
/// on `identity`; false if it does not (or has exited). The process is
/// pinned before the check and signalled through the pin (see
/// [`crate::process`]), so a reused PID is never hit.
pub(crate) fn signal_verified(pid: Pid, identity: Identity, signal: Signal) -> nix::Result<bool> {
    let Some(pinned) = Pinned::open(pid)? else {
        return Ok(false);
    };
    if !holds(pid, identity) {
        return Ok(false);
    }
    pinned.signal(signal)
}

/// Looks through every visible process for descriptors holding a lock on
/// `identity`. Allocates; normal context only.
pub(crate) fn find(identity: Identity) -> Holders {
    let mut holders = Holders::default();
    for (pid, kind) in sys::scan_locks(identity) {
        match kind {
            // In ascending order, kept as they come (a sort would link a
            // sorting routine into every program for a list of one or two).
            LockKind::Exclusive => {
                let at = holders.exclusive.partition_point(|&known| known < pid);
                holders.exclusive.insert(at, pid);
            }
            LockKind::Shared => holders.shared = true,
        }
    }
    holders
}

/// Whether `pid` holds the exclusive lock on `identity` right now, as far
/// as can be seen (never, where nothing can be verified).
pub(crate) fn holds(pid: Pid, identity: Identity) -> bool {
    sys::lock_held_by(pid, identity) == Some(LockKind::Exclusive)
}
