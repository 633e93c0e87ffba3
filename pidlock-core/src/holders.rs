//! Who holds the lock on a file, asked of the kernel: the one answer the
//! conflict report, `status`, `stop` and takeover all use.
//!
//! A `flock` belongs to an open file description, and every process with a
//! descriptor for that description holds it: the process that took it may
//! have forked and exited (`daemon(3)`, `flock(1)`, `exec 9>f; flock 9` in a
//! shell), and its PID, which `/proc/locks` still shows, may since belong to
//! an unrelated process. So the holder is found the other way round: Linux
//! lists, in `/proc/<pid>/fdinfo/<fd>`, the locks held through that very
//! descriptor (`lock:` lines), and a process is a holder when one of its
//! descriptors carries a lock on our file.
//!
//! Not every holder is an instance. An instance holds the exclusive lock
//! through a descriptor opened for writing (or, as `flock(1)` does, through a
//! read-only one as the file's owner). A *reader* holds it otherwise: a
//! shared lock (an observer's probe, `flock -s`), or an exclusive one that
//! another user took through a read-only descriptor (anyone who can read a
//! file can `flock` it). Readers never count as a running instance.
//!
//! Looking costs a read of every descriptor of every process examined. The
//! likely holders are examined first — the process the file names, the
//! processes `/proc/locks` says took locks on it, and their children — and
//! the whole host is scanned only when none of them is the instance, or when
//! every sharer must be known (takeover, `stop` escalating to SIGKILL).
//!
//! What cannot be seen is not guessed: another user's descriptors (unless we
//! are root) and processes outside our PID namespace are invisible, and a
//! holder among them leaves the answer "not verified". Elsewhere than Linux
//! nothing can be verified.

use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::{Holder, Reader};
use crate::pid::Pid;
use crate::process::Pinned;
use crate::sys::{self, HeldLock, LockKey, LockKind};

/// The processes that hold a lock on a file, as this process's PID
/// namespace numbers them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    /// The instance: holders of the exclusive lock as an instance holds it,
    /// in ascending PID order.
    pub(crate) exclusive: Vec<Pid>,
    /// Holders that are not an instance (module docs).
    pub(crate) readers: Vec<Reader>,
    /// Whether every visible process was examined, so that `exclusive`
    /// lists every process sharing the instance's lock.
    pub(crate) complete: bool,
}

impl Holders {
    /// The likely holders of the lock on the file named `key`, owned by
    /// user `owner`, whose PID file names `file_pid` (module docs): cheap,
    /// and enough whenever they include the instance. Not `complete`.
    pub(crate) fn likely(key: &LockKey, file_pid: Option<Pid>, owner: u32) -> Self {
        let mut holders = Self::default();
        for pid in likely(key, file_pid) {
            if let Some(held) = sys::lock_held_by(pid, key) {
                holders.add(pid, held, owner);
            }
        }
        holders
    }

    /// Every visible holder: a read of every descriptor on the host.
    pub(crate) fn every(key: &LockKey, owner: u32) -> Self {
        let mut holders = Self {
            complete: true,
            ..Self::default()
        };
        for (pid, held) in sys::scan_locks(key) {
            holders.add(pid, held, owner);
        }
        holders
    }

    /// The likely holders, then every holder if they do not include the
    /// instance.
    pub(crate) fn find(key: &LockKey, file_pid: Option<Pid>, owner: u32) -> Self {
        let likely = Self::likely(key, file_pid, owner);
        if likely.exclusive.is_empty() {
            Self::every(key, owner)
        } else {
            likely
        }
    }

    fn add(&mut self, pid: Pid, held: HeldLock, owner: u32) {
        let foreign = || !held.writable && sys::user_of(pid).is_some_and(|uid| uid != owner);
        if held.kind == LockKind::Exclusive && !foreign() {
            // In ascending order, kept as they come (a sort would link a
            // sorting routine into every program for a list of one or two).
            if let Err(at) = self.exclusive.binary_search(&pid) {
                self.exclusive.insert(at, pid);
            }
        } else if !self.readers.iter().any(|reader| reader.pid == pid) {
            self.readers.push(Reader {
                pid,
                uid: sys::user_of(pid),
                command: sys::command_line(pid),
                shared: held.kind == LockKind::Shared,
            });
        }
    }

    /// What to report: the verified instance, the process the file names
    /// first; else what the file claims, marked unverified.
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
            .or_else(|| root_of(&self.exclusive))
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

/// Of processes sharing a lock, the one whose parent is not among them (a
/// daemon, not one of its forked workers, whose PIDs may be lower after the
/// numbers wrapped), when there is exactly one such.
fn root_of(sharing: &[Pid]) -> Option<Pid> {
    let mut roots = sharing
        .iter()
        .copied()
        .filter(|&pid| sys::parent_of(pid).is_none_or(|parent| !sharing.contains(&parent)));
    let root = roots.next()?;
    roots.next().is_none().then_some(root)
}

/// How many processes the likely look examines at most: the file's PID,
/// the takers and their children are a handful; a fork bomb's are not.
const LIKELY_LIMIT: usize = 64;

/// The processes worth examining first, in order, without repeats.
fn likely(key: &LockKey, file_pid: Option<Pid>) -> Vec<Pid> {
    let mut candidates: Vec<Pid> = file_pid.into_iter().collect();
    let takers = sys::lock_takers(key).unwrap_or_default();
    for taker in takers.into_iter().filter_map(|(_, taker)| taker) {
        if !candidates.contains(&taker) {
            candidates.push(taker);
        }
    }
    // The takers' children before those of the process the file names: the
    // file may name a PID of another namespace (a container's command is
    // its PID 2), which here is an unrelated process, perhaps with many
    // children (PID 2 is kthreadd), that would fill the limit first.
    let mut parents = candidates.clone();
    parents.rotate_left(usize::from(file_pid.is_some()));
    for parent in parents {
        for child in sys::children_of(parent) {
            if candidates.len() >= LIKELY_LIMIT {
                return candidates;
            }
            if !candidates.contains(&child) {
                candidates.push(child);
            }
        }
    }
    candidates
}

/// Another process that shares this process's lock on `key`, for the file
/// an owner leaves behind: among this process's descendants (a forked child
/// shares the lock; its own children may too), the one whose parent does
/// not share it.
pub(crate) fn sharer_of(key: &LockKey, me: Pid) -> Option<Pid> {
    let mut sharing = Vec::new();
    let mut queue = sys::children_of(me);
    let mut examined = 0;
    while let Some(pid) = queue.pop() {
        examined += 1;
        if examined > LIKELY_LIMIT {
            break;
        }
        if sys::lock_held_by(pid, key).is_some_and(|held| held.kind == LockKind::Exclusive) {
            sharing.push(pid);
        }
        queue.extend(sys::children_of(pid));
    }
    sharing.sort_unstable();
    root_of(&sharing).or_else(|| sharing.first().copied())
}

/// What the kernel's lock list says of the exclusive lock on a file this
/// process may not open (another user's), whose holders' descriptors are
/// out of sight too.
pub(crate) enum Taken {
    /// Nobody holds it exclusively.
    Free,
    /// This process took it. Not verified: it may have exited, or forked
    /// and handed the lock on.
    By(Pid),
    /// Someone holds it that cannot be named from here (a process of
    /// another PID namespace), or the lock list cannot be read at all.
    OutOfSight,
}

/// [`Taken`] for the file `key` names; `None` for the key itself: the
/// lock list cannot be consulted (another platform, no `/proc`).
pub(crate) fn exclusive_taker(key: Option<&LockKey>) -> Taken {
    let Some(takers) = key.and_then(sys::lock_takers) else {
        return Taken::OutOfSight;
    };
    match takers
        .into_iter()
        .find(|&(kind, _)| kind == LockKind::Exclusive)
    {
        Some((_, Some(pid))) => Taken::By(pid),
        Some((_, None)) => Taken::OutOfSight,
        // Outside the initial PID namespace the list leaves out the locks
        // of takers this namespace cannot number: silence proves nothing.
        None if sys::sees_every_lock() => Taken::Free,
        None => Taken::OutOfSight,
    }
}

/// Whether `pid` holds the exclusive lock on `key` right now, as far as can
/// be seen.
pub(crate) fn holds(pid: Pid, key: &LockKey) -> bool {
    sys::lock_held_by(pid, key).is_some_and(|held| held.kind == LockKind::Exclusive)
}

/// Pins each of `pids` and keeps those that, once pinned, hold the lock on
/// `key`: what may be signalled, and waited for, from then on. A process
/// pinned and then found holding the lock was alive through the check, so
/// a signal through the pin reaches the very process that was checked,
/// never a later one given the same PID (see [`crate::process`]).
pub(crate) fn pin_verified(pids: &[Pid], key: &LockKey) -> nix::Result<Vec<Pinned>> {
    let mut pinned = Vec::new();
    for &pid in pids {
        if let Some(pin) = Pinned::open(pid)?
            && holds(pid, key)
        {
            pinned.push(pin);
        }
    }
    Ok(pinned)
}

/// How long a wait for pinned processes sleeps at most before it looks
/// again: a process can let go of the lock without exiting or closing a
/// descriptor (`flock(LOCK_UN)`), which wakes nobody.
const RECHECK_EVERY: Duration = Duration::from_millis(250);

/// Waits until every one of `pins` has exited or no longer holds the lock
/// on `key`, or until `deadline`; returns those that still hold it. Woken
/// by the kernel: each pidfd polls readable when its process exits, and
/// `watch` (a close watch on the file) when a descriptor of it closes.
pub(crate) fn wait_for_release<'a>(
    pins: &'a [Pinned],
    key: &LockKey,
    watch: Option<&sys::CloseWatch>,
    deadline: Instant,
) -> Vec<&'a Pinned> {
    loop {
        let holding: Vec<&Pinned> = pins
            .iter()
            .filter(|pin| !pin.has_exited() && holds(pin.pid(), key))
            .collect();
        let now = Instant::now();
        if holding.is_empty() || now >= deadline {
            return holding;
        }
        let mut fds: Vec<PollFd<'_>> = holding
            .iter()
            .filter_map(|pin| pin.pidfd())
            .chain(watch.map(sys::CloseWatch::as_fd))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let sleep = (deadline - now).min(RECHECK_EVERY);
        let timeout = PollTimeout::try_from(sleep).unwrap_or(PollTimeout::MAX);
        if fds.is_empty() {
            std::thread::sleep(sleep);
        } else {
            let _ = poll(&mut fds, timeout);
        }
        if let Some(watch) = watch {
            let _ = watch.drain();
        }
    }
}
