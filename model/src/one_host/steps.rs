//! The steps: each one the abstraction of one system call or decision in
//! `pidlock-core`, named in its comment. Steps with no effect another
//! process could see between them are merged (an `fstat` of our own
//! descriptor right after opening it, an owner check right before the
//! `fstatat` it guards, the sharers pipe's `close` + `read` before that):
//! interleaving the others between them adds states but no behaviour.

use super::kernel::{Lock, Pid, STALE_PID};
use super::process::{Leaving, Pc, Pipe, Policy, Proc, Role, Target, Then, once};
use super::{OneHost, State, Step, broke};

/// `lockfile::OPEN_ATTEMPTS`.
pub(super) const OPEN_ATTEMPTS: u8 = 16;

/// `busy` retries a lock held by nobody it can verify for
/// `UNVERIFIED_PATIENCE` (100 ms); the model has no clock, so one retry
/// stands for them (the holder that just let go is then found gone; see
/// README on what timing is not modelled).
pub(super) const UNVERIFIED_RETRIES: u8 = 1;

/// `Sharers::leave`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sharing {
    Alone,
    Shared,
}

/// What `Holders` finds for an inode (`holders.rs`): the instance's
/// holders, and the readers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// By PID, ascending.
    pub exclusive: Vec<Pid>,
    /// Readers holding it exclusively (another user, root since PID files
    /// are 0600, through a read-only descriptor): a start reports them
    /// (`Error::Pinned`) rather than replace a file it cannot freeze.
    pub exclusive_readers: usize,
}

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
                if self.config.leave {
                    steps.extend([Step::ReturnFromMain, Step::Exit]);
                }
                let first_instance = slot == 0 && matches!(proc.role, Role::Instance(_));
                if self.config.fork && first_instance && !proc.has(once::FORKED) {
                    steps.push(Step::Fork { pipe: true });
                    if self.config.pipe_can_fail {
                        steps.push(Step::Fork { pipe: false });
                    }
                }
                if self.config.restart
                    && self.owner_check(proc)
                    && matches!(proc.role, Role::Instance(_))
                    && !proc.has(once::RESTARTED)
                {
                    steps.push(Step::Exec);
                }
                if self.config.daemonize
                    && proc.role == Role::Child
                    && !self.owner_check(proc)
                    && !proc.has(once::DAEMONIZED)
                {
                    steps.push(Step::Daemonize);
                }
            }
            // A wait returns once the lock is free; a start's wait also
            // once the file it waits on lost its name, or once nobody but
            // readers holds it (the turn's wait asks neither).
            Pc::WaitLock | Pc::TurnLock => {
                let fd = if proc.pc == Pc::WaitLock {
                    proc.fd
                } else {
                    proc.turn
                };
                let fd = fd.expect("waiting on a descriptor");
                let wakes = state.kernel.can_lock(fd, Lock::Exclusive)
                    || proc.pc == Pc::WaitLock
                        && (self.wait_sees_unnamed(state, fd)
                            || self.wait_sees_only_readers(state, fd));
                if wakes {
                    steps.push(Step::Next);
                }
                steps.push(Step::GiveUp);
            }
            Pc::DaemonWait => {
                let pinned = proc.target.map_or(0, |t| t.pinned);
                if !any_slot(pinned, |p| state.procs[p].alive()) {
                    steps.push(Step::Next);
                }
                steps.push(Step::GiveUp);
            }
            Pc::StopWait => {
                if self.still_holding(state, slot).is_empty() {
                    steps.push(Step::Next);
                }
                steps.push(Step::GiveUp);
            }
            Pc::ReaderLock => steps.extend(self.config.reader_locks.iter().map(|&l| Step::Take(l))),
            Pc::ReaderHold => {
                if self.config.reader_lets_go {
                    steps.push(Step::LetGo);
                }
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
            Step::Fork { pipe } => self.fork(state, slot, pipe),
            Step::Exec => {
                // restart(): close-on-exec cleared on the owned descriptor
                // (and the sharers pipe), then execve. The new image keeps
                // the PID and the open description; the guard, its
                // registration and the owner cell are gone with the old
                // image.
                let proc = &mut state.procs[slot];
                proc.owner = None;
                proc.done |= once::RESTARTED;
                proc.pc = Pc::Adopt;
            }
            Step::Daemonize => self.daemonize(state, slot),
            Step::GiveUp => self.give_up(state, slot),
            Step::Take(lock) => {
                // A reader's flock(lock | LOCK_NB) (`flock -n -s` / `-x`):
                // taken, or it gives up and closes.
                let proc = state.procs[slot];
                let fd = proc.fd.expect("a reader locks its descriptor");
                if state.kernel.can_lock(fd, lock) {
                    state.kernel.lock(fd, lock, proc.pid);
                    state.procs[slot].pc = Pc::ReaderHold;
                } else {
                    state.procs[slot].die();
                }
            }
            Step::LetGo => {
                let proc = &mut state.procs[slot];
                proc.done |= once::LET_GO;
                proc.die();
            }
        }
    }

    fn give_up(&self, state: &mut State, slot: usize) {
        let proc = &mut state.procs[slot];
        proc.pc = match proc.pc {
            // Takeover, after its SIGTERM: the grace period is over.
            // wait_then_retry times out, the lock loop opens the file again
            // and, finding it still busy, take_over SIGKILLs.
            Pc::WaitLock if proc.target.is_some() && !proc.has(once::KILLED) => {
                proc.done |= once::GRACE_OVER;
                proc.fd = None;
                Pc::Open
            }
            // acquire_timeout / takeover: TimedOut, the file closes. The
            // turn that does not come: the readers are reported (Pinned).
            Pc::WaitLock | Pc::TurnLock => Pc::Refuse,
            // stop's timeout: SIGKILL the pins that still hold it.
            Pc::StopWait => Pc::StopKill,
            // daemonized(): PreviousOwnerRunning; the child carries on
            // without owning the lock.
            _ => {
                proc.target = None;
                Pc::Run
            }
        };
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
                    let fd = state.kernel.open(inode, false);
                    let proc = &mut state.procs[slot];
                    proc.fd = Some(fd);
                    proc.pc = Pc::Flock;
                }
                None => retry(&mut state.procs[slot]),
            },
            Pc::Flock => {
                // lock_file: flock(LOCK_EX | LOCK_NB).
                let fd = proc.fd.expect("locking a descriptor");
                if state.kernel.can_lock(fd, Lock::Exclusive) {
                    state.kernel.lock(fd, Lock::Exclusive, proc.pid);
                    state.procs[slot].pc = Pc::Verify;
                } else {
                    state.procs[slot].pc = Pc::BusyShared { tries: 0 };
                }
            }
            Pc::BusyShared { tries } => {
                // busy(): flock(LOCK_SH | LOCK_NB). Taken, it proves nobody
                // holds the lock exclusively and keeps anyone from taking it:
                // only readers hold the file, frozen, and it is replaced.
                let fd = proc.fd.expect("busy on a descriptor");
                if !self.config.mutations.no_replacement && state.kernel.can_lock(fd, Lock::Shared)
                {
                    state.kernel.lock(fd, Lock::Shared, proc.pid);
                    let proc = &mut state.procs[slot];
                    proc.frozen = true;
                    proc.pc = self.first_replacement_step();
                } else {
                    state.procs[slot].pc = Pc::Busy { tries };
                }
            }
            Pc::Busy { tries } => self.busy(state, slot, tries),
            Pc::BusyFlock { tries } => {
                // busy(): flock(LOCK_EX | LOCK_NB) again; after the last
                // try, the holder nobody could verify is reported.
                let fd = proc.fd.expect("locking a descriptor");
                if state.kernel.can_lock(fd, Lock::Exclusive) {
                    state.kernel.lock(fd, Lock::Exclusive, proc.pid);
                    state.procs[slot].pc = Pc::Verify;
                } else if tries < UNVERIFIED_RETRIES {
                    state.procs[slot].pc = Pc::BusyShared { tries: tries + 1 };
                } else {
                    self.resolve(state, slot, None);
                }
            }
            Pc::WaitLock => {
                // waiting::lock_exclusive (notified::lock_until): each
                // wake-up tries flock(LOCK_EX | LOCK_NB), then asks
                // `still_named` (an lstat of the path), then tries
                // flock(LOCK_SH | LOCK_NB). The three calls are one step:
                // a wake-up that finds none of them answering sleeps again,
                // which changes nothing (the step is enabled only when one
                // answers). Acquired: the resolver's Next::Acquired resets
                // `replaced` (a wait is not a replacement). Unnamed:
                // Next::Retry, the file closes and the lock loop opens the
                // path again (`continue`, with no count). The shared probe
                // granted: it is given back next (WaitUnlock).
                let fd = proc.fd.expect("waiting on a descriptor");
                if state.kernel.can_lock(fd, Lock::Exclusive) {
                    state.kernel.lock(fd, Lock::Exclusive, proc.pid);
                    let proc = &mut state.procs[slot];
                    proc.replaced = 0;
                    proc.pc = Pc::Verify;
                } else if self.wait_sees_unnamed(state, fd) {
                    let proc = &mut state.procs[slot];
                    proc.fd = None;
                    proc.pc = Pc::Open;
                } else {
                    state.kernel.lock(fd, Lock::Shared, proc.pid);
                    state.procs[slot].pc = Pc::WaitUnlock;
                }
            }
            Pc::WaitUnlock => {
                // only_shared: flock(LOCK_UN); the wait ends with
                // Waited::OnlyShared, which the resolver makes Next::Retry:
                // the file closes and the lock loop opens the path again
                // (`continue`, with no count), to replace the file.
                let proc = &mut state.procs[slot];
                proc.fd = None;
                proc.pc = Pc::Open;
            }
            Pc::Verify => self.verify(state, slot),
            Pc::CloseRetry => {
                // lock_file: `continue` drops the file (close), replaced += 1.
                let proc = &mut state.procs[slot];
                proc.fd = None;
                retry(proc);
            }
            // The conflict (or an error) is returned; the files are dropped
            // and `main` never runs.
            Pc::Refuse | Pc::StopClose => state.procs[slot].die(),
            Pc::TurnOpen
            | Pc::TurnLock
            | Pc::CreateTemp
            | Pc::Exchange
            | Pc::Recheck
            | Pc::SwapBack
            | Pc::TurnOver(_) => self.replace(state, slot),
            Pc::Pin => self.pin(state, slot),
            Pc::Check => self.check(state, slot),
            Pc::Signal => self.signal(state, slot),
            Pc::Kill => {
                // take_over, the grace over: SIGKILL to every pin that still
                // holds the lock, then a wait of AFTER_SIGKILL.
                self.kill_round(state, slot);
                let proc = &mut state.procs[slot];
                proc.done |= once::KILLED;
                proc.pc = Pc::WaitLock;
            }
            Pc::Write | Pc::DaemonWrite => {
                // write_pid: pwrite("<pid>\n", 0), padded to the old length.
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
                    proc.owner = Some(proc.me());
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
                    proc.owner = Some(proc.me());
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
            Pc::Rewrite => self.leave_to_sharers(state, slot),
            // release_now: unregister, drop(file), then main returns and the
            // process exits (it holds nothing else).
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
                if state.kernel.can_lock(fd, Lock::Exclusive) {
                    state.kernel.lock(fd, Lock::Exclusive, proc.pid);
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
                if state.kernel.entry == Some(inode) {
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
                    let fd = state.kernel.open(inode, false);
                    let proc = &mut state.procs[slot];
                    proc.fd = Some(fd);
                    proc.pc = Pc::StopFind;
                }
                None => state.procs[slot].die(),
            },
            Pc::StopFind => {
                // Stop::run: look() (holders, likely then every; with --kill
                // every), then describe() picks the holder the file names,
                // else the lowest PID. With none verified, stop reports
                // NotRunning/HolderUnverified (look's shared-lock probe is
                // not modelled: it changes no answer that matters here).
                let inode = state
                    .kernel
                    .inode_of(proc.fd.expect("stopper's descriptor"));
                match self.describe(state, inode) {
                    Some(pid) => {
                        let proc = &mut state.procs[slot];
                        proc.target = Some(Target::about(pid));
                        proc.pc = Pc::Pin;
                    }
                    None => state.procs[slot].pc = Pc::StopClose,
                }
            }
            Pc::StopWait => {
                // wait_for_release: every pin exited or let go.
                state.procs[slot].pc = Pc::StopClose;
            }
            Pc::StopKill => {
                // Escalation::Kill: SIGKILL to every pin that still holds it.
                self.kill_round(state, slot);
                state.procs[slot].pc = Pc::StopClose;
            }
            Pc::ReaderOpen => match state.kernel.entry {
                // open(O_RDONLY) by a reader (`flock -s path` of a file
                // that is there).
                Some(inode) => {
                    let fd = state.kernel.open(inode, true);
                    let proc = &mut state.procs[slot];
                    proc.fd = Some(fd);
                    proc.pc = Pc::ReaderLock;
                }
                None => state.procs[slot].die(),
            },
            Pc::Alive => state.procs[slot].die(),
            Pc::Run | Pc::Dead | Pc::ReaderLock | Pc::ReaderHold => {
                unreachable!("no Next step at {:?}", proc.pc)
            }
        }
    }

    /// A wake-up of a start's wait: `still_named` says the path no longer
    /// names the file `fd` is of (mutated: never asked).
    pub(crate) fn wait_sees_unnamed(&self, state: &State, fd: u8) -> bool {
        !self.config.mutations.wait_ignores_name
            && state.kernel.entry != Some(state.kernel.inode_of(fd))
    }

    /// A wake-up of a start's wait, the file still named: `only_shared`'s
    /// flock(LOCK_SH | LOCK_NB) would be granted, nobody holding the file
    /// exclusively (mutated: never tried).
    pub(crate) fn wait_sees_only_readers(&self, state: &State, fd: u8) -> bool {
        !self.config.mutations.wait_ignores_readers && state.kernel.can_lock(fd, Lock::Shared)
    }

    /// `Owner::is_current`: the PID and the fork generation (mutated: the
    /// PID number only).
    pub(crate) fn owner_check(&self, proc: &Proc) -> bool {
        match proc.owner {
            None => false,
            Some(owner) if self.config.mutations.owner_pid_only => owner.pid == proc.pid,
            Some(owner) => owner == proc.me(),
        }
    }

    /// Where a replacement starts: its turn (mutated: the temporary file at
    /// once).
    fn first_replacement_step(&self) -> Pc {
        if self.config.mutations.no_turns {
            Pc::CreateTemp
        } else {
            Pc::TurnOpen
        }
    }

    /// `lockfile::busy`, once the shared probe failed: `file_pid`'s fstat +
    /// pread, then `Holders::likely` and, if they hold no instance,
    /// `Holders::every`. Which verified holder is found first changes only
    /// whom the report names: the decisions below depend on whether an
    /// instance holds it at all, and on the readers, which `every` sees.
    fn busy(&self, state: &mut State, slot: usize, tries: u8) {
        let proc = state.procs[slot];
        let inode = state
            .kernel
            .inode_of(proc.fd.expect("busy on a descriptor"));
        let found = self.holders(state, inode);
        if !found.exclusive.is_empty() {
            let holder = self.describe(state, inode);
            self.resolve(state, slot, holder);
        } else if found.exclusive_readers > 0 && self.config.mutations.replace_unfrozen {
            // Mutated: readers alone, one of them exclusive: pinned, not
            // frozen, replaced all the same.
            let proc = &mut state.procs[slot];
            proc.frozen = false;
            proc.pc = self.first_replacement_step();
        } else if found.exclusive_readers > 0 && !self.config.mutations.no_replacement {
            // A reader holds it exclusively: Error::Pinned, whatever the
            // policy (the resolver handles AlreadyRunning only).
            state.procs[slot].pc = Pc::Refuse;
        } else {
            state.procs[slot].pc = Pc::BusyFlock { tries };
        }
    }

    /// The resolver's decision on a conflict with `holder` (verified, or
    /// `None`: nobody could be).
    fn resolve(&self, state: &mut State, slot: usize, holder: Option<Pid>) {
        let Role::Instance(policy) = state.procs[slot].role else {
            unreachable!("only instances acquire");
        };
        let holding = self.still_holding(state, slot);
        let proc = &mut state.procs[slot];
        proc.pc = match (policy, holder) {
            (Policy::Exit, _) => Pc::Refuse,
            // Waiting does not need a verified holder.
            (Policy::Wait, _) => Pc::WaitLock,
            // take_over after the first round: only the processes pinned
            // then, and only while they still hold the lock; none left
            // means another instance holds it now (AlreadyRunning). Before
            // the grace is over, and after the SIGKILL, it waits.
            (Policy::Takeover, _) if proc.target.is_some() => {
                if holding.is_empty() {
                    Pc::Refuse
                } else if proc.has(once::GRACE_OVER) && !proc.has(once::KILLED) {
                    Pc::Kill
                } else {
                    Pc::WaitLock
                }
            }
            // signal_instance: only a verified holder is signalled; one
            // round in the model (a round that found its holder gone does
            // not start another).
            (Policy::Takeover, Some(pid)) if !proc.has(once::SIGNALLED) => {
                proc.target = Some(Target::about(pid));
                Pc::Pin
            }
            // HolderUnverified.
            (Policy::Takeover, _) => Pc::Refuse,
        };
    }

    /// `replace::replace` (module docs there). Calls on our own temporary
    /// name and our new file, which nobody else knows, go with the step
    /// before or after them; so do the reads made while holding the turn,
    /// whose answers only a turn holder could change.
    fn replace(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let old = state
            .kernel
            .inode_of(proc.fd.expect("replacing a pinned file"));
        let next = match proc.pc {
            Pc::TurnOpen => {
                // Turn::take: openat(.replace, O_CREAT, 0600) + fstat.
                let inode = match state.kernel.turn {
                    Some(inode) => inode,
                    None => state.kernel.create_turn(),
                };
                state.procs[slot].turn = Some(state.kernel.open(inode, false));
                Pc::TurnLock
            }
            Pc::TurnLock => {
                // waiting::lock_exclusive returned Locked; fstatat(.replace):
                // a turn just over removes the file it locked, so only the
                // one the name names counts.
                let turn = proc.turn.expect("the turn's descriptor");
                state.kernel.lock(turn, Lock::Exclusive, proc.pid);
                if state.kernel.turn != Some(state.kernel.inode_of(turn)) {
                    state.procs[slot].turn = None;
                    Pc::TurnOpen
                } else if state.kernel.entry != Some(old) {
                    // Step 3: another start replaced it before our turn.
                    Pc::TurnOver(Then::Retry)
                } else {
                    self.create_temp(state, slot);
                    Pc::Exchange
                }
            }
            Pc::CreateTemp => {
                self.create_temp(state, slot);
                Pc::Exchange
            }
            Pc::Exchange => {
                // Step 5: renameat2(temporary, path, RENAME_EXCHANGE);
                // ENOENT (the path names nothing) discards the new file and
                // looks again (mutated: returns the error). Then
                // fstatat(temporary): what we swapped out is the pinned
                // file?
                if !state.kernel.exchange(slot) {
                    self.discard(state, slot);
                    if self.config.mutations.vanished_swap_fails {
                        Pc::TurnOver(Then::Fail)
                    } else {
                        Pc::TurnOver(Then::Retry)
                    }
                } else if state.kernel.temps[slot] != Some(old) {
                    Pc::SwapBack
                } else if proc.frozen {
                    Pc::TurnOver(Then::Locked)
                } else {
                    Pc::Recheck
                }
            }
            Pc::Recheck => {
                // Only with `replace_unfrozen`, as the code was: the second
                // look after swapping a file that could not be frozen,
                // only_readers_hold: flock(LOCK_SH | LOCK_NB) on the old
                // file (taken: nobody holds it exclusively), else
                // Holders::every: no instance, and an exclusive reader.
                let fd = proc.fd.expect("the pinned file");
                if state.kernel.can_lock(fd, Lock::Shared) {
                    state.kernel.lock(fd, Lock::Shared, proc.pid);
                    state.procs[slot].frozen = true;
                    Pc::TurnOver(Then::Locked)
                } else {
                    let found = self.holders(state, old);
                    if found.exclusive.is_empty() && found.exclusive_readers > 0 {
                        Pc::TurnOver(Then::Locked)
                    } else {
                        Pc::SwapBack
                    }
                }
            }
            Pc::SwapBack => {
                // renameat2(RENAME_EXCHANGE) again (its error ignored), then
                // discard: unlinkat(temporary), close of the new file.
                state.kernel.exchange(slot);
                self.discard(state, slot);
                Pc::TurnOver(Then::Retry)
            }
            Pc::TurnOver(then) => {
                if then == Then::Locked
                    && let Some(inode) = state.kernel.unlink_temp(slot)
                {
                    // Step 7: unlinkat(temporary), the old file; its readers
                    // keep an inode nobody looks at again.
                    self.remove_replaced(state, slot, inode);
                }
                // Turn::drop: fstatat(.replace) still ours, unlinkat, close;
                // then `replace` returns and the pinned file closes. The lock
                // loop fstats the new file and checks the path names it.
                if let Some(turn) = proc.turn
                    && state.kernel.turn == Some(state.kernel.inode_of(turn))
                {
                    state.kernel.unlink_turn();
                }
                let proc = &mut state.procs[slot];
                proc.turn = None;
                proc.frozen = false;
                proc.fd = None;
                match then {
                    Then::Locked => {
                        proc.fd = proc.spare.take();
                        Pc::Verify
                    }
                    Then::Retry => {
                        retry(proc);
                        proc.pc
                    }
                    Then::Fail => Pc::Dead,
                }
            }
            _ => unreachable!("not a replacement step: {:?}", proc.pc),
        };
        if next == Pc::Dead {
            state.procs[slot].die();
        } else {
            state.procs[slot].pc = next;
        }
    }

    /// Step 4, `create_temporary`: openat(temporary, O_CREAT | O_EXCL) +
    /// flock(LOCK_EX | LOCK_NB); nobody else knows the name, so both
    /// succeed.
    fn create_temp(&self, state: &mut State, slot: usize) {
        let inode = state.kernel.create_temp(slot);
        let spare = state.kernel.open(inode, false);
        state
            .kernel
            .lock(spare, Lock::Exclusive, state.procs[slot].pid);
        state.procs[slot].spare = Some(spare);
    }

    /// `discard`: unlinkat(temporary), close of the new file.
    fn discard(&self, state: &mut State, slot: usize) {
        if let Some(inode) = state.kernel.unlink_temp(slot) {
            self.remove_replaced(state, slot, inode);
        }
        state.procs[slot].spare = None;
    }

    /// `lock_file`: the post-lock `fstatat`. Only a lock on the inode the
    /// path names now counts; then the guard is created and registered
    /// (`PidFileGuard::new`: `Owner::current()`), with the size read under
    /// the lock.
    fn verify(&self, state: &mut State, slot: usize) {
        let inode = state.kernel.inode_of(state.procs[slot].fd.expect("locked"));
        let node = state.kernel.inode(inode);
        let named = state.kernel.entry == Some(inode);
        let proc = &mut state.procs[slot];
        if named || self.config.mutations.no_identity_check {
            proc.target = None;
            proc.owner = Some(proc.me());
            proc.truncate = node.contents.longer_than_a_pid_line();
            proc.replaced = 0;
            proc.pc = Pc::Write;
        } else {
            proc.pc = Pc::CloseRetry;
        }
    }

    /// `Holders` for `inode`, from fdinfo: a live process whose descriptor's
    /// description holds the exclusive lock, opened as an instance opens
    /// it, is the instance's; a shared lock, or an exclusive one through
    /// another user's read-only descriptor, is a reader's. Mutated: the
    /// PIDs `/proc/locks` shows as takers.
    pub(crate) fn holders(&self, state: &State, inode: u8) -> Found {
        let mut exclusive: Vec<Pid> = if self.config.mutations.holders_from_proc_locks {
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
        exclusive.sort_unstable();
        exclusive.dedup();
        let exclusive_readers = state
            .procs
            .iter()
            .filter(|p| p.alive())
            .filter(|p| {
                p.descriptors().into_iter().flatten().any(|d| {
                    let d = state.kernel.description(d);
                    d.inode == inode && d.foreign && d.lock == Some(Lock::Exclusive)
                })
            })
            .count();
        Found {
            exclusive,
            exclusive_readers,
        }
    }

    /// `Holders::describe`: the PID to report or signal, if a holder is
    /// verified: the one the file names, else the lowest.
    fn describe(&self, state: &State, inode: u8) -> Option<Pid> {
        let holders = self.holders(state, inode).exclusive;
        let named = state.kernel.inode(inode).contents.pid();
        named
            .filter(|pid| holders.contains(pid))
            .or_else(|| holders.first().copied())
    }

    /// `holders::holds(pid, key)`: asked by number, like the code.
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

    /// `holders::pin_verified`, first half: `Pinned::open` (a pidfd) for
    /// the holder and every other process holding the lock now
    /// (`Holders::every`), whichever processes have those numbers.
    fn pin(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let mut target = proc.target.expect("a signal round has a target");
        let inode = state.kernel.inode_of(proc.fd.expect("a round has a file"));
        let mut pids = vec![target.pid];
        pids.extend(self.holders(state, inode).exclusive);
        target.pinned = pids
            .into_iter()
            .filter_map(|pid| live_with_pid(state, pid))
            .fold(0, |bits, p| bits | 1 << p);
        let proc = &mut state.procs[slot];
        proc.target = Some(target);
        proc.pc = if target.pinned != 0 {
            Pc::Check
        } else {
            after_signal_round(proc)
        };
    }

    /// `pin_verified`, second half: `holds(pid, key)` for each pinned
    /// process; the holder must be among those verified.
    fn check(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let mut target = proc.target.expect("a signal round has a target");
        let inode = state.kernel.inode_of(proc.fd.expect("a round has a file"));
        for p in slots(target.pinned) {
            let pinned = state.procs[p];
            if self.holds_by_number(state, pinned.pid, inode) {
                target.verified |= 1 << p;
            }
            if pinned.alive() && holds(state, &pinned, inode) {
                target.held |= 1 << p;
            }
        }
        let holder_verified = slots(target.verified).any(|p| state.procs[p].pid == target.pid);
        let proc = &mut state.procs[slot];
        proc.target = Some(target);
        proc.pc = if holder_verified {
            Pc::Signal
        } else {
            after_signal_round(proc)
        };
    }

    /// `Pinned::signal` (`pidfd_send_signal(SIGTERM)`) to the holder:
    /// reaches the pinned process if it is still alive, never a later owner
    /// of its number.
    fn signal(&self, state: &mut State, slot: usize) {
        let target = state.procs[slot]
            .target
            .expect("a signal round has a target");
        let holder = slots(target.verified).find(|&p| state.procs[p].pid == target.pid);
        let sent = holder.is_some_and(|p| state.procs[p].alive());
        if let Some(p) = holder.filter(|_| sent) {
            if target.held & 1 << p == 0 {
                state.broke |= broke::SIGNAL;
            }
            deliver_sigterm(&mut state.procs[p]);
        }
        let proc = &mut state.procs[slot];
        proc.done |= once::SIGNALLED;
        proc.pc = match proc.role {
            _ if !sent => after_signal_round(proc),
            Role::Stopper => Pc::StopWait,
            // wait_then_retry until the grace ends, the pins kept.
            _ => Pc::WaitLock,
        };
    }

    /// The verified pins that have not exited and still hold the lock
    /// (`!pin.has_exited() && holds(pin.pid(), key)`): the lock they were
    /// verified holding, which stays theirs while their descriptor does.
    pub(crate) fn still_holding(&self, state: &State, slot: usize) -> Vec<usize> {
        let Some(target) = state.procs[slot].target else {
            return Vec::new();
        };
        slots(target.verified)
            .filter(|&p| {
                let pinned = state.procs[p];
                pinned.alive()
                    && pinned.fd.is_some_and(|d| {
                        let d = state.kernel.description(d);
                        d.lock == Some(Lock::Exclusive) && !d.foreign
                    })
            })
            .collect()
    }

    /// SIGKILL to the pins that still hold the lock (mutated: to whoever
    /// holds the inode of the file it has open now).
    fn kill_round(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let target = proc.target.expect("a kill round follows a signal round");
        let victims = if self.config.mutations.kill_current_holders {
            let inode = state.kernel.inode_of(proc.fd.expect("a round has a file"));
            (0..state.procs.len())
                .filter(|&p| state.procs[p].alive() && holds(state, &state.procs[p], inode))
                .collect()
        } else {
            self.still_holding(state, slot)
        };
        for &p in &victims {
            if target.held & 1 << p == 0 {
                state.broke |= broke::SIGNAL;
            }
            state.procs[p].die();
        }
    }

    /// `release_now` (the guard dropped when `main` returns). The owner's
    /// side: the sharers pipe, then `unlink_if_ours`' fstatat; the file
    /// stays with the sharers if there are any. A process that does not
    /// own the lock (a fork child) only closes its copy (`forget`).
    fn return_from_main(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let checks_out = self.owner_check(&proc) || self.config.mutations.no_owner_check;
        if !checks_out {
            let proc = &mut state.procs[slot];
            proc.pipe = Pipe::None;
            proc.pc = Pc::Close;
            return;
        }
        state.procs[slot].pc = match self.leave(state, slot) {
            Sharing::Shared => Pc::Rewrite,
            Sharing::Alone if ours(state, &proc) => Pc::Unlink,
            Sharing::Alone => Pc::Close,
        };
    }

    /// `Sharers::leave`: closes this process's write end of the sharers
    /// pipe and reads the other end: end of file (no other process has a
    /// write end) is `Alone`. Never held across a fork: `Alone`. A pipe
    /// that could not be made: `Shared` (nobody can tell; mutated:
    /// `Alone`). Asked again (a signal handler during a release), the
    /// answer it remembers (mutated: both ends are -1 then, `Alone`).
    /// Mutated: never asked.
    pub(crate) fn leave(&self, state: &mut State, slot: usize) -> Sharing {
        let proc = state.procs[slot];
        let mutations = self.config.mutations;
        if proc.pipe != Pipe::None {
            state.procs[slot].pipe = Pipe::Left;
        }
        if mutations.unlink_regardless {
            return Sharing::Alone;
        }
        let shared = match proc.pipe {
            Pipe::None => false,
            Pipe::Failed => !mutations.failed_pipe_alone,
            Pipe::Left => !mutations.leave_forgets && proc.left_shared,
            Pipe::Open => state.procs.iter().enumerate().any(|(other, p)| {
                other != slot && p.alive() && p.pipe == Pipe::Open && p.fd == proc.fd
            }),
        };
        state.procs[slot].left_shared = shared;
        if shared {
            Sharing::Shared
        } else {
            Sharing::Alone
        }
    }

    /// `leave_to_sharers`: `holders::sharer_of` (a descendant that holds
    /// the lock: the child, if this process forked it), then `rewrite_pid` (fstat, pwrite of its PID over ours,
    /// the same length in the model). Then `release_now` unregisters and
    /// closes.
    fn leave_to_sharers(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let inode = state.kernel.inode_of(proc.fd.expect("the owner's file"));
        let sharer = state
            .procs
            .iter()
            .filter(|_| proc.has(once::FORKED))
            .find(|p| p.role == Role::Child && p.alive() && holds(state, p, inode))
            .map(|p| p.pid);
        if let Some(pid) = sharer {
            self.modify(state, slot, inode);
            *state.kernel.contents_mut(inode) = super::Contents::Pid(pid);
        }
        state.procs[slot].pc = Pc::Close;
    }

    /// `signal_context::remove_held_files` (from `atexit` or `on_signal`):
    /// for a registered file this process owns, `let_go` (the sharers pipe,
    /// then fstatat); then unlink or die.
    fn remove_held_files(&self, state: &mut State, slot: usize, why: Leaving) {
        let proc = state.procs[slot];
        let registered = proc.owner.is_some();
        let checks_out = self.owner_check(&proc) || self.config.mutations.no_owner_check;
        if !(registered && checks_out) {
            state.procs[slot].die();
            return;
        }
        match self.leave(state, slot) {
            Sharing::Alone if ours(state, &proc) => state.procs[slot].pc = Pc::ExitUnlink(why),
            _ => state.procs[slot].die(),
        }
    }

    /// `fork()`: the prepare hook gives the held lock its sharers pipe
    /// (`Sharers::ensure`, unless `pipe2` fails); the child gets copies of
    /// the descriptors (same open file descriptions, so it shares the lock
    /// and the pipe) and of the guard, whose owner cell still names the
    /// parent; the child hook bumps its fork generation.
    fn fork(&self, state: &mut State, slot: usize, pipe_made: bool) {
        let child = self.layout.child.expect("fork is configured");
        let parent = &mut state.procs[slot];
        if parent.owner.is_some() && parent.pipe != Pipe::Open {
            parent.pipe = if pipe_made { Pipe::Open } else { Pipe::Failed };
        }
        parent.done |= once::FORKED;
        let parent = *parent;
        let pid = if self.config.child_same_pid {
            parent.pid
        } else {
            state.procs[child].pid
        };
        state.procs[child] = Proc {
            fd: parent.fd,
            kept: parent.kept,
            owner: parent.owner,
            pipe: parent.pipe,
            generation: parent.generation + 1,
            ..Proc::new(Role::Child, pid, Pc::Run)
        };
    }

    /// `daemonized()`: pin the previous owner (by the PID its owner cell
    /// holds) and wait for it to exit.
    fn daemonize(&self, state: &mut State, slot: usize) {
        let proc = state.procs[slot];
        let previous = proc.owner.expect("a child inherits a registered guard").pid;
        let pinned = live_with_pid(state, previous).map_or(0, |p| 1 << p);
        let proc = &mut state.procs[slot];
        proc.done |= once::DAEMONIZED;
        proc.target = Some(Target {
            pinned,
            ..Target::about(previous)
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

    /// Marks the removal of a replaced (or discarded) file that an instance
    /// holds: only files no instance holds may go.
    fn remove_replaced(&self, state: &mut State, slot: usize, inode: u8) {
        let held_by_instance = state.procs.iter().enumerate().any(|(other, p)| {
            other != slot && p.alive() && p.owner.is_some() && holds(state, p, inode)
        });
        if held_by_instance {
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
    let inode = state.kernel.create();
    let fd = state.kernel.open(inode, false);
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
/// our own description); the guard is registered and `acquire` returns
/// without writing (the PID is the same). Otherwise it returns None and
/// acquire starts afresh, and the handed-over descriptor is left open.
fn adopt(state: &mut State, slot: usize) {
    let fd = state.procs[slot].fd.expect("exec keeps the descriptor");
    let inode = state.kernel.inode_of(fd);
    let proc = &mut state.procs[slot];
    if state.kernel.entry == Some(inode) && state.kernel.can_lock(fd, Lock::Exclusive) {
        state.kernel.lock(fd, Lock::Exclusive, proc.pid);
        proc.owner = Some(proc.me());
        proc.pc = Pc::Run;
    } else {
        proc.kept = proc.fd.take();
        proc.pc = Pc::Open;
    }
}

/// Where a signal round ends without a signal: the stopper closes and
/// exits; a takeover waits for the lock (`wait_then_retry`).
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

/// Whether `unlink_if_ours`' fstatat finds the path naming the inode of
/// `proc`'s file.
fn ours(state: &State, proc: &Proc) -> bool {
    proc.fd
        .is_some_and(|fd| state.kernel.entry == Some(state.kernel.inode_of(fd)))
}

/// Whether `proc` has a descriptor whose description holds the exclusive
/// lock on `inode`, opened as an instance opens it: the ground truth
/// `holders::find` reads from fdinfo.
pub(crate) fn holds(state: &State, proc: &Proc, inode: u8) -> bool {
    proc.descriptors().into_iter().flatten().any(|d| {
        let description = state.kernel.description(d);
        description.inode == inode
            && description.lock == Some(Lock::Exclusive)
            && !description.foreign
    })
}

fn live_with_pid(state: &State, pid: Pid) -> Option<usize> {
    debug_assert!(pid != 0 && (usize::from(pid) <= super::SLOTS || pid == STALE_PID));
    state.procs.iter().position(|p| p.alive() && p.pid == pid)
}

/// The slots whose bits are set.
pub(crate) fn slots(bits: u8) -> impl Iterator<Item = usize> {
    (0..super::SLOTS).filter(move |&p| bits & 1 << p != 0)
}

fn any_slot(bits: u8, test: impl Fn(usize) -> bool) -> bool {
    slots(bits).any(test)
}
