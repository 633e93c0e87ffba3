//! The steps: each one the abstraction of one system call or decision in
//! `pidlock-core`, named in its comment. Steps with no effect another
//! process could see between them are merged (an `fstat` of our own
//! descriptor right after opening it, an owner check right before the
//! `fstatat` it guards): interleaving the others between them adds states
//! but no behaviour.

use super::kernel::{Pid, STALE_PID};
use super::process::{Leaving, Pc, Policy, Proc, Role, Target, once};
use super::{OneHost, State, Step, broke};

/// `lockfile::OPEN_ATTEMPTS`.
pub const OPEN_ATTEMPTS: u8 = 16;

/// `lockfile::UNVERIFIED_ATTEMPTS` is 20 tries 5 ms apart; the model has no
/// clock, so one retry stands for them (the holder that just let go is
/// then found gone; see README on what timing is not modelled).
pub const UNVERIFIED_RETRIES: u8 = 1;

impl OneHost {
    /// The steps process `slot` can take in `state`, the one its program
    /// counter names first (the solo run of property (e) takes that one).
    pub(crate) fn enabled(&self, state: &State, slot: usize) -> Vec<Step> {
        let proc = &state.procs[slot];
        if !proc.alive() {
            return Vec::new();
        }
        let mut steps = Vec::new();
        match proc.pc {
            Pc::Run => {
                steps.extend([Step::ReturnFromMain, Step::Exit]);
                let first_instance = slot == 0 && matches!(proc.role, Role::Instance(_));
                if self.config.fork && first_instance && !proc.has(once::FORKED) {
                    steps.push(Step::Fork);
                }
                if self.config.restart
                    && proc.is_owner()
                    && matches!(proc.role, Role::Instance(_))
                    && !proc.has(once::RESTARTED)
                {
                    steps.push(Step::Exec);
                }
                if self.config.daemonize
                    && proc.role == Role::Child
                    && !proc.is_owner()
                    && !proc.has(once::DAEMONIZED)
                {
                    steps.push(Step::Daemonize);
                }
            }
            // A blocking flock returns only once the lock is free.
            Pc::WaitLock => {
                let fd = proc.fd.expect("waiting on a descriptor");
                if state.kernel.can_lock(fd) {
                    steps.push(Step::Next);
                }
                steps.push(Step::GiveUp);
            }
            Pc::DaemonWait => {
                let pinned = proc.target.and_then(|t| t.pinned);
                if pinned.is_none_or(|p| !state.procs[usize::from(p)].alive()) {
                    steps.push(Step::Next);
                }
                steps.push(Step::GiveUp);
            }
            _ => steps.push(Step::Next),
        }
        let crashes = matches!(proc.role, Role::Instance(_) | Role::Child);
        if self.config.crash && crashes {
            steps.push(Step::Crash);
        }
        steps
    }

    /// Applies `step` of process `slot` (the caller checked it is enabled).
    pub(crate) fn apply(&self, state: &mut State, slot: usize, step: Step) {
        match step {
            Step::Next => self.next(state, slot),
            Step::Crash => state.procs[slot].die(),
            Step::ReturnFromMain => self.return_from_main(state, slot),
            Step::Exit => self.remove_held_files(state, slot, Leaving::Exit),
            Step::Fork => self.fork(state, slot),
            Step::Exec => {
                // restart(): close-on-exec cleared on the owned descriptor,
                // then execve. The new image keeps the PID and the open
                // description; the guard, its registration and the owner
                // cell are gone with the old image.
                let proc = &mut state.procs[slot];
                proc.owner = None;
                proc.done |= once::RESTARTED;
                proc.pc = Pc::Adopt;
            }
            Step::Daemonize => self.daemonize(state, slot),
            Step::GiveUp => {
                let proc = &mut state.procs[slot];
                proc.target = None;
                proc.pc = match proc.pc {
                    // acquire_timeout / takeover: TimedOut, the file closes.
                    Pc::WaitLock => Pc::Refuse,
                    // daemonized(): PreviousOwnerRunning; the child carries
                    // on without owning the lock.
                    _ => Pc::Run,
                };
            }
        }
    }

    fn next(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        match proc.pc {
            Pc::Open => open_exclusive(state, slot),
            Pc::Lstat => {
                // open_file: the fstatat after EEXIST; ENOENT means the file
                // vanished between the two calls: `Err(None)`, retry.
                if state.kernel.entry.is_none() {
                    retry(&mut state.procs[slot]);
                } else {
                    state.procs[slot].pc = Pc::OpenPlain;
                }
            }
            Pc::OpenPlain => match state.kernel.entry {
                // open_file: the plain openat (+ the fstat of lock_file).
                Some(inode) => {
                    let fd = state.kernel.open(inode);
                    let proc = &mut state.procs[slot];
                    proc.fd = Some(fd);
                    proc.pc = Pc::Flock;
                }
                None => retry(&mut state.procs[slot]),
            },
            Pc::Flock => {
                // lock_file: flock(LOCK_EX | LOCK_NB).
                let fd = proc.fd.expect("locking a descriptor");
                if state.kernel.can_lock(fd) {
                    state.kernel.lock(fd, proc.pid);
                    state.procs[slot].pc = Pc::Verify;
                } else {
                    state.procs[slot].pc = Pc::Busy { tries: 0 };
                }
            }
            Pc::Busy { tries } => self.busy(state, slot, tries),
            Pc::BusyFlock { tries } => {
                // busy(): after a pause, flock(LOCK_EX | LOCK_NB) again.
                let fd = proc.fd.expect("locking a descriptor");
                if state.kernel.can_lock(fd) {
                    state.kernel.lock(fd, proc.pid);
                    state.procs[slot].pc = Pc::Verify;
                } else {
                    state.procs[slot].pc = Pc::Busy { tries: tries + 1 };
                }
            }
            Pc::WaitLock => {
                // waiting::lock_exclusive returned Locked; the resolver's
                // Next::Locked resets `replaced` (a wait is not a
                // replacement).
                let fd = proc.fd.expect("waiting on a descriptor");
                state.kernel.lock(fd, proc.pid);
                let proc = &mut state.procs[slot];
                proc.replaced = 0;
                proc.pc = Pc::Verify;
            }
            Pc::Verify => self.verify(state, slot),
            Pc::CloseRetry => {
                // lock_file: `continue` drops the file (close), replaced += 1.
                let proc = &mut state.procs[slot];
                proc.fd = None;
                retry(proc);
            }
            // The conflict is returned; the file is dropped and `main`
            // never runs. An Unstable error ends the same way.
            Pc::Refuse | Pc::StopClose => state.procs[slot].die(),
            Pc::Pin => self.pin(state, slot),
            Pc::Check => self.check(state, slot),
            Pc::Signal => self.signal(state, slot),
            Pc::Write | Pc::DaemonWrite => {
                // write_pid: pwrite("<pid>\n", 0).
                let inode = state
                    .kernel
                    .inode_of(proc.fd.expect("writing a descriptor"));
                self.modify(state, slot, inode);
                let contents = state.kernel.contents_mut(inode);
                *contents = contents.after_pwrite(proc.pid);
                let daemon = proc.pc == Pc::DaemonWrite;
                let proc = &mut state.procs[slot];
                proc.pc = match (proc.truncate, daemon) {
                    (true, false) => Pc::Truncate,
                    (true, true) => Pc::DaemonTruncate,
                    (false, _) => Pc::Run,
                };
                if daemon && proc.pc == Pc::Run {
                    // daemonized(): owner.set_current() after the write.
                    proc.owner = Some(proc.pid);
                }
            }
            Pc::Truncate | Pc::DaemonTruncate => {
                // write_pid: ftruncate to the PID line's length.
                let inode = state
                    .kernel
                    .inode_of(proc.fd.expect("writing a descriptor"));
                self.modify(state, slot, inode);
                let contents = state.kernel.contents_mut(inode);
                *contents = contents.after_truncate();
                let proc = &mut state.procs[slot];
                if proc.pc == Pc::DaemonTruncate {
                    proc.owner = Some(proc.pid);
                }
                proc.truncate = false;
                proc.pc = Pc::Run;
            }
            Pc::Unlink | Pc::ExitUnlink(_) => {
                // unlink_if_ours: unlinkat(dir, name) removes whatever the
                // name names *now*; the fstatat before it is a separate step.
                if let Some(inode) = state.kernel.unlink() {
                    self.modify(state, slot, inode);
                }
                let proc = &mut state.procs[slot];
                if proc.pc == Pc::Unlink {
                    proc.pc = Pc::Close;
                } else {
                    // The handler re-raises, or exit() finishes: the process
                    // ends and the kernel closes the descriptor.
                    proc.die();
                }
            }
            // release_now: drop(file), then main returns and the process
            // exits (it holds nothing else).
            Pc::Close => state.procs[slot].die(),
            Pc::Handler => self.remove_held_files(state, slot, Leaving::Signal),
            Pc::Adopt => adopt(state, slot),
            Pc::DaemonWait => {
                let proc = &mut state.procs[slot];
                proc.target = None;
                proc.pc = Pc::DaemonFlock;
            }
            Pc::DaemonFlock => {
                // daemonized(): flock(LOCK_EX | LOCK_NB) on the inherited
                // descriptor; EWOULDBLOCK is LockLost.
                let fd = proc.fd.expect("a child shares its parent's descriptor");
                if state.kernel.can_lock(fd) {
                    state.kernel.lock(fd, proc.pid);
                    state.procs[slot].pc = Pc::DaemonCheck;
                } else {
                    state.procs[slot].pc = Pc::Run;
                }
            }
            Pc::DaemonCheck => {
                // daemonized(): fstat (nlink > 0) and fstatat (same inode);
                // the size for write_pid comes from that fstat.
                let inode = state.kernel.inode_of(proc.fd.expect("shared descriptor"));
                let node = state.kernel.inode(inode);
                let proc = &mut state.procs[slot];
                if node.linked && state.kernel.entry == Some(inode) {
                    proc.truncate = node.contents.longer_than_a_pid_line();
                    proc.pc = Pc::DaemonWrite;
                } else {
                    proc.pc = Pc::Run;
                }
            }
            Pc::StopOpen => match state.kernel.entry {
                // status::open_existing: open(O_RDONLY) + fstat; no file is
                // Stopped::NotRunning.
                Some(inode) => {
                    let fd = state.kernel.open(inode);
                    let proc = &mut state.procs[slot];
                    proc.fd = Some(fd);
                    proc.pc = Pc::StopFind;
                }
                None => state.procs[slot].die(),
            },
            Pc::StopFind => {
                // ops::stop: probe() = holders::find, then describe() picks
                // the holder the file names, else the lowest PID. With none
                // verified, stop reports NotRunning/HolderUnverified (the
                // shared-lock probe is not modelled: it changes no answer
                // that matters here).
                let inode = state
                    .kernel
                    .inode_of(proc.fd.expect("stopper's descriptor"));
                match self.describe(state, inode) {
                    Some(pid) => {
                        let proc = &mut state.procs[slot];
                        proc.target = Some(Target {
                            pid,
                            pinned: None,
                            held_when_checked: false,
                        });
                        proc.pc = Pc::Pin;
                    }
                    None => state.procs[slot].pc = Pc::StopClose,
                }
            }
            Pc::Alive => state.procs[slot].die(),
            Pc::Run | Pc::Dead => unreachable!("no Next step at {:?}", proc.pc),
        }
    }

    /// `lockfile::busy`: who holds it (`holders::find`, then `file_pid`'s
    /// fstat + pread for the report), then the resolver's decision.
    fn busy(&self, state: &mut State, slot: usize, tries: u8) {
        let proc = state.procs[slot];
        let inode = state
            .kernel
            .inode_of(proc.fd.expect("busy on a descriptor"));
        let holder = self.describe(state, inode);
        if holder.is_none() && tries < UNVERIFIED_RETRIES {
            state.procs[slot].pc = Pc::BusyFlock { tries };
            return;
        }
        let Role::Instance(policy) = proc.role else {
            unreachable!("only instances acquire");
        };
        let proc = &mut state.procs[slot];
        proc.pc = match (policy, holder) {
            (Policy::Exit, _) => Pc::Refuse,
            // Waiting does not need a verified holder.
            (Policy::Wait, _) => Pc::WaitLock,
            // Takeover signals only a verified holder, once in the model
            // (the real one escalates to SIGKILL; a crash stands for it).
            (Policy::Takeover, Some(pid)) if !proc.has(once::SIGNALLED) => {
                proc.target = Some(Target {
                    pid,
                    pinned: None,
                    held_when_checked: false,
                });
                Pc::Pin
            }
            // HolderUnverified, or a holder after we already signalled one.
            (Policy::Takeover, _) => Pc::Refuse,
        };
    }

    /// `lock_file`: the post-lock `fstatat`. Only a lock on the inode the
    /// path names now (and with a link) counts; then the guard is created
    /// and registered (`PidFileGuard::new`: `Owner::current()`), with the
    /// size read under the lock.
    fn verify(&self, state: &mut State, slot: usize) {
        let inode = state.kernel.inode_of(state.procs[slot].fd.expect("locked"));
        let node = state.kernel.inode(inode);
        let named = node.linked && state.kernel.entry == Some(inode);
        let proc = &mut state.procs[slot];
        if named || self.config.mutations.no_identity_check {
            proc.owner = Some(proc.pid);
            proc.truncate = node.contents.longer_than_a_pid_line();
            proc.replaced = 0;
            proc.pc = Pc::Write;
        } else {
            proc.pc = Pc::CloseRetry;
        }
    }

    /// `holders::find` and `Holders::describe`: the PID to report or signal,
    /// if a holder is verified.
    fn describe(&self, state: &State, inode: u8) -> Option<Pid> {
        let holders = self.find(state, inode);
        let named = state.kernel.inode(inode).contents.pid();
        named
            .filter(|pid| holders.contains(pid))
            .or_else(|| holders.first().copied())
    }

    /// `holders::find`, sorted. By default: the live processes with a
    /// descriptor whose description holds the lock (`/proc/<pid>/fdinfo`).
    /// Mutated: the PID `/proc/locks` shows for the lock, whoever has it now.
    pub(crate) fn find(&self, state: &State, inode: u8) -> Vec<Pid> {
        let mut pids: Vec<Pid> = if self.config.mutations.holders_from_proc_locks {
            state
                .kernel
                .lockers(inode)
                .map(|d| state.kernel.description(d).taker)
                .collect()
        } else {
            state
                .procs
                .iter()
                .filter(|p| p.alive() && holds(state, p, inode))
                .map(|p| p.pid)
                .collect()
        };
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// `holders::holds(pid, identity)`: asked by number, like the code.
    fn holds_by_number(&self, state: &State, pid: Pid, inode: u8) -> bool {
        if self.config.mutations.holders_from_proc_locks {
            state
                .kernel
                .lockers(inode)
                .any(|d| state.kernel.description(d).taker == pid)
        } else {
            state
                .procs
                .iter()
                .any(|p| p.alive() && p.pid == pid && holds(state, p, inode))
        }
    }

    /// `Pinned::open(pid)`: a pidfd for whichever process has the number now.
    fn pin(&self, state: &mut State, slot: usize) {
        let mut target = state.procs[slot]
            .target
            .expect("a signal round has a target");
        target.pinned = live_with_pid(state, target.pid).map(|p| p as u8);
        let proc = &mut state.procs[slot];
        proc.target = Some(target);
        proc.pc = if target.pinned.is_some() {
            Pc::Check
        } else {
            after_signal_round(proc)
        };
    }

    /// `signal_verified`: `holds(pid, identity)` after pinning.
    fn check(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let mut target = proc.target.expect("a signal round has a target");
        let inode = state.kernel.inode_of(proc.fd.expect("a round has a file"));
        let pinned = target.pinned.map(|p| state.procs[usize::from(p)]);
        target.held_when_checked = pinned.is_some_and(|p| p.alive() && holds(state, &p, inode));
        let verified = self.holds_by_number(state, target.pid, inode);
        let proc = &mut state.procs[slot];
        proc.target = Some(target);
        proc.pc = if verified {
            Pc::Signal
        } else {
            after_signal_round(proc)
        };
    }

    /// `Pinned::signal` (`pidfd_send_signal(SIGTERM)`): reaches the pinned
    /// process if it is still alive, never a later owner of its number.
    fn signal(&self, state: &mut State, slot: usize) {
        let target = state.procs[slot]
            .target
            .expect("a signal round has a target");
        if let Some(pinned) = target.pinned.map(usize::from)
            && state.procs[pinned].alive()
        {
            if !target.held_when_checked {
                state.broke |= broke::SIGNAL;
            }
            deliver_sigterm(&mut state.procs[pinned]);
        }
        let proc = &mut state.procs[slot];
        proc.done |= once::SIGNALLED;
        proc.pc = after_signal_round(proc);
    }

    /// `release_now` (the guard dropped when `main` returns): the owner
    /// check, then `unlink_if_ours`' fstatat. A fork child only closes.
    fn return_from_main(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let checks_out = proc.is_owner() || self.config.mutations.no_owner_check;
        let ours = proc
            .fd
            .is_some_and(|fd| state.kernel.entry == Some(state.kernel.inode_of(fd)));
        state.procs[slot].pc = if checks_out && ours {
            Pc::Unlink
        } else {
            Pc::Close
        };
    }

    /// `signal_context::remove_held_files` (from `atexit` or `on_signal`): for
    /// a registered file this process owns, fstatat; then unlink or die.
    fn remove_held_files(&self, state: &mut State, slot: usize, why: Leaving) {
        let proc = state.procs[slot];
        let registered = proc.owner.is_some();
        let checks_out = proc.is_owner() || self.config.mutations.no_owner_check;
        let ours = proc
            .fd
            .is_some_and(|fd| state.kernel.entry == Some(state.kernel.inode_of(fd)));
        if registered && checks_out && ours {
            state.procs[slot].pc = Pc::ExitUnlink(why);
        } else {
            state.procs[slot].die();
        }
    }

    /// `fork()`: the child gets copies of the descriptors (same open file
    /// descriptions, so it shares the lock) and of the guard, whose owner
    /// cell still names the parent.
    fn fork(&self, state: &mut State, slot: usize) {
        let child = self.layout.child.expect("fork is configured");
        let parent = state.procs[slot];
        state.procs[child] = Proc {
            fd: parent.fd,
            kept: parent.kept,
            owner: parent.owner,
            ..Proc::new(Role::Child, state.procs[child].pid, Pc::Run)
        };
        state.procs[slot].done |= once::FORKED;
    }

    /// `daemonized()`: pin the previous owner (by the PID its owner cell
    /// holds) and wait for it to exit.
    fn daemonize(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let previous = proc.owner.expect("a child inherits a registered guard");
        let pinned = live_with_pid(state, previous).map(|p| p as u8);
        let proc = &mut state.procs[slot];
        proc.done |= once::DAEMONIZED;
        proc.target = Some(Target {
            pid: previous,
            pinned,
            held_when_checked: false,
        });
        proc.pc = Pc::DaemonWait;
    }

    /// Marks a write, truncation or unlink of `inode` by a process that does
    /// not own the lock on it: it must hold the lock, and no other live
    /// process may be that lock's owner (a daemon child taking over writes
    /// after its parent is gone, before it sets itself as owner).
    fn modify(&self, state: &mut State, slot: usize, inode: u8) {
        let actor = state.procs[slot];
        let owned_by_other =
            state.procs.iter().enumerate().any(|(other, p)| {
                other != slot && p.alive() && p.is_owner() && holds(state, p, inode)
            });
        if !holds(state, &actor, inode) || owned_by_other {
            state.broke |= broke::MODIFY;
        }
    }
}

/// `open_file`: openat(O_CREAT | O_EXCL) (+ lock_file's fstat of the new
/// descriptor); EEXIST goes on to the fstatat.
fn open_exclusive(state: &mut State, slot: usize) {
    if state.kernel.entry.is_some() {
        state.procs[slot].pc = Pc::Lstat;
        return;
    }
    let inode = state.kernel.create(super::Contents::Empty);
    let fd = state.kernel.open(inode);
    let proc = &mut state.procs[slot];
    proc.fd = Some(fd);
    proc.pc = Pc::Flock;
}

/// `lock_file`'s bounded retry: after OPEN_ATTEMPTS replacements it gives
/// up with `Error::Unstable`.
fn retry(proc: &mut Proc) {
    proc.replaced += 1;
    if proc.replaced >= OPEN_ATTEMPTS {
        proc.die();
    } else {
        proc.pc = Pc::Open;
    }
}

/// `restart::adopt` in the new image: fstatat(path) must name the handed
/// over descriptor's inode (then fstat, and flock, which succeeds at once on
/// our own description). Otherwise it returns None and acquire starts
/// afresh, and the handed-over descriptor is left open.
fn adopt(state: &mut State, slot: usize) {
    let fd = state.procs[slot].fd.expect("exec keeps the descriptor");
    let inode = state.kernel.inode_of(fd);
    let proc = &mut state.procs[slot];
    if state.kernel.entry == Some(inode) && state.kernel.can_lock(fd) {
        state.kernel.lock(fd, proc.pid);
        proc.owner = Some(proc.pid);
        proc.truncate = state.kernel.inode(inode).contents.longer_than_a_pid_line();
        proc.pc = Pc::Write;
    } else {
        proc.kept = proc.fd.take();
        proc.pc = Pc::Open;
    }
}

/// Where a signal round ends: the stopper closes and exits; a takeover
/// waits for the lock (`wait_then_retry`).
fn after_signal_round(proc: &mut Proc) -> Pc {
    proc.target = None;
    if proc.role == Role::Stopper {
        Pc::StopClose
    } else {
        Pc::WaitLock
    }
}

/// SIGTERM with `Signals::Auto`: a process with a registered guard runs
/// `on_signal` (remove_held_files, then dies); one without (still
/// acquiring, a new image before adopt, or after unregistering) dies of
/// the default action; an unrelated process dies.
fn deliver_sigterm(target: &mut Proc) {
    let registered = target.owner.is_some();
    match target.pc {
        Pc::Handler | Pc::ExitUnlink(_) => {}
        Pc::Close => target.die(),
        _ if registered && matches!(target.role, Role::Instance(_) | Role::Child) => {
            target.pc = Pc::Handler;
        }
        _ => target.die(),
    }
}

/// Whether `proc` has a descriptor whose description holds the lock on
/// `inode`: the ground truth `holders::find` reads from fdinfo.
pub(crate) fn holds(state: &State, proc: &Proc, inode: u8) -> bool {
    [proc.fd, proc.kept].into_iter().flatten().any(|d| {
        let description = state.kernel.description(d);
        description.inode == inode && description.locked
    })
}

fn live_with_pid(state: &State, pid: Pid) -> Option<usize> {
    debug_assert!(pid != 0 && (usize::from(pid) <= super::SLOTS || pid == STALE_PID));
    state.procs.iter().position(|p| p.alive() && p.pid == pid)
}
