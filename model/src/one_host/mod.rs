//! The lock protocol on one host (DESIGN.md, "The lock protocol (one
//! host)", "Exit paths", "Processes and places") as a state machine.
//!
//! A state is the directory's names, the inodes, the open file descriptions
//! and the processes ([`State`]). A step is one system call or one decision
//! of the code, taken by one process (module `steps`); any process may be killed
//! at any step, the file may be removed from outside, and a dead process's
//! PID may be given to an unrelated one. Module `properties` says what must hold
//! in every reachable state; the tests have stateright visit all of them.

mod kernel;
mod process;
mod properties;
pub mod render;
pub mod scenarios;
mod solo;
mod steps;

use stateright::{Model, Property};

pub use kernel::{Contents, Kernel, Lock, Pid, STALE_PID};
pub use process::{Leaving, Owner, Pc, Pipe, Policy, Proc, Role, Then};
pub use properties::names;
pub use solo::solo_steps;

/// Process slots; unused ones are [`Role::Absent`].
pub const SLOTS: usize = 5;

/// The code changes the mutation tests put back, one at a time, to show the
/// checker finds what each safeguard is there for. Several put back the
/// code as it was before the fixes of the model's findings (README, "What
/// is proven"). Constructor parameters, not cargo features: CI builds with
/// `--all-features`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// `lock_file` trusts a lock without the post-lock `fstatat`.
    pub no_identity_check: bool,
    /// `release_now` and `remove_held_files` skip `Owner::is_current`.
    pub no_owner_check: bool,
    /// `Owner::is_current` compares the PID number only, without the fork
    /// generation.
    pub owner_pid_only: bool,
    /// `let_go` removes the file without asking the sharers pipe.
    pub unlink_regardless: bool,
    /// `Sharers::leave` forgets its answer: asked again (a signal handler
    /// that runs while `release_now` leaves the file to sharers), it finds
    /// both ends -1 and answers `Alone`.
    pub leave_forgets: bool,
    /// A lock whose sharers pipe could not be made (`pipe2` failed in the
    /// fork hook) reads as `Alone`, like one never held across a fork.
    pub failed_pipe_alone: bool,
    /// `holders::find`/`holds` take the PID `/proc/locks` shows (whoever
    /// took the lock) instead of the processes whose descriptors hold it.
    pub holders_from_proc_locks: bool,
    /// `busy` never replaces a file that only readers hold: no shared-lock
    /// probe, readers ignored, the lock retried and then reported (the code
    /// before readers were told apart).
    pub no_replacement: bool,
    /// `replace` without turns: no replacement lock, no check that the path
    /// still names the pinned file before the swap.
    pub no_turns: bool,
    /// `busy` replaces a file a reader holds exclusively, which it cannot
    /// freeze, and looks again after the swap (`only_readers_hold`), in
    /// place of reporting the reader (`Error::Pinned`).
    pub replace_unfrozen: bool,
    /// `replace` returns the exchange's `ENOENT` (the path is gone) as an
    /// error instead of looking again.
    pub vanished_swap_fails: bool,
    /// A waiting start blocks in `flock(LOCK_EX)` without noticing that the
    /// file it waits on lost its name.
    pub wait_ignores_name: bool,
    /// A waiting start tries only the exclusive lock and the name, without
    /// the shared probe after them: readers of a killed instance's file,
    /// which keeps its name, keep it waiting (the code before the model's
    /// findings).
    pub wait_ignores_readers: bool,
    /// `stop` and takeover SIGKILL whoever holds the inode when their
    /// timeout runs out, not the pins that still hold it.
    pub kill_current_holders: bool,
}

/// What a check explores.
#[derive(Clone, Debug)]
pub struct Config {
    /// Programs under `#[single_instance]`, with PIDs 1, 2, ...; each starts
    /// once, whenever it likes.
    pub instances: Vec<Policy>,
    /// Instances may return from `main` or call `exit`; if not, they run
    /// until they are killed.
    pub leave: bool,
    /// The first instance may `fork()` once while it holds the lock.
    pub fork: bool,
    /// The fork child has its parent's PID number: it is PID 1 of a nested
    /// PID namespace, and so is the parent in its container.
    pub child_same_pid: bool,
    /// The fork hook's `pipe2` may fail (`EMFILE`): the lock then has no
    /// sharers pipe.
    pub pipe_can_fail: bool,
    /// The fork child may call `daemonized()`.
    pub daemonize: bool,
    /// An owner may `restart()` (exec) once.
    pub restart: bool,
    /// Instances (and the fork child) may be SIGKILLed at any step.
    pub crash: bool,
    /// How many times `rm` may remove the file from outside.
    pub outside_rm: u8,
    /// A `pidlock stop --kill` runs.
    pub stopper: bool,
    /// A dead process's PID may be given to an unrelated process (once).
    pub pid_reuse: bool,
    /// A reader opens the file read-only and takes one of these locks
    /// (none: no reader). It is root, or for a shared lock maybe the
    /// owner's own observer: no other user may open a 0600 file.
    pub reader_locks: Vec<Lock>,
    /// The reader may let go (close) once; else it holds for ever.
    pub reader_lets_go: bool,
    /// The reader already holds the first of `reader_locks` on the file
    /// there at the start (it opened the crashed instance's file before);
    /// else it opens and locks whatever the path names when it likes.
    pub reader_holds_at_start: bool,
    /// What the directory holds at the start: nothing, or a file left by a
    /// process that died (stale PID, garbage).
    pub initial_files: Vec<Option<Contents>>,
    /// Properties (e) and (f): how many of its own steps an acquirer needs,
    /// alone, to get a lock nobody but readers holds. Each configuration
    /// derives its own; the checker shows it is never exceeded and is
    /// reached.
    pub solo_bound: usize,
    /// The safeguards taken out (none, for the code as it is).
    pub mutations: Mutations,
}

impl Config {
    /// Three instances racing (one of them waits instead of giving up),
    /// from no file, a stale file or garbage, with crashes and a restart.
    pub fn three_instances() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Exit, Policy::Wait],
            restart: true,
            crash: true,
            initial_files: vec![
                None,
                Some(Contents::Pid(STALE_PID)),
                Some(Contents::Garbage),
            ],
            // An acquirer whose flock met a holder that has since unlinked
            // its file and gone: the shared probe (now free, so frozen), the
            // turn's openat, its flock (+ fstatat(path): gone), the turn
            // over, openat(O_EXCL) (EEXIST: a newcomer's file, not locked
            // yet), fstatat, openat, flock, fstatat, pwrite.
            solo_bound: 10,
            ..Self::none()
        }
    }

    /// Two instances (one waits) with crashes and a restart, and an `rm`
    /// of the file from outside at any moment.
    pub fn outside_rm() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Wait],
            restart: true,
            crash: true,
            outside_rm: 1,
            initial_files: vec![
                None,
                Some(Contents::Pid(STALE_PID)),
                Some(Contents::Garbage),
            ],
            // As for three instances.
            solo_bound: 10,
            ..Self::none()
        }
    }

    /// An instance that forks (the child may daemonize, live on after its
    /// parent let go, or just exit) and one that takes over, with crashes.
    pub fn fork_and_takeover() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Takeover],
            fork: true,
            daemonize: true,
            crash: true,
            initial_files: vec![None, Some(Contents::Pid(STALE_PID))],
            // An acquirer whose flock met a holder that has since unlinked
            // its file and gone: the shared probe, the turn's openat, its
            // flock (the path names nothing now), the turn over,
            // openat(O_EXCL), flock, fstatat, pwrite.
            solo_bound: 8,
            ..Self::none()
        }
    }

    /// An instance that forks, `pidlock stop --kill`, and a second instance
    /// that may start on the file the stopped holder leaves; crashes.
    pub fn fork_and_stop() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Exit],
            fork: true,
            crash: true,
            stopper: true,
            initial_files: vec![None],
            // As for fork and takeover.
            solo_bound: 8,
            ..Self::none()
        }
    }

    /// An instance that forks (the child may daemonize), `pidlock stop
    /// --kill`, crashes, and a dead process's PID given to an unrelated
    /// process.
    pub fn fork_and_reuse() -> Self {
        Self {
            instances: vec![Policy::Exit],
            fork: true,
            daemonize: true,
            crash: true,
            stopper: true,
            pid_reuse: true,
            initial_files: vec![None, Some(Contents::Pid(STALE_PID))],
            // An acquirer whose holder was killed after it opened the file:
            // openat(O_EXCL) -> EEXIST, fstatat, openat, flock, fstatat,
            // pwrite.
            solo_bound: 6,
            ..Self::none()
        }
    }

    /// An instance that forks a child which lives on after the parent
    /// returns, exits or is killed; the child is PID 1 of a nested PID
    /// namespace, as its parent is of its container, and the fork hook's
    /// `pipe2` may fail. A second instance starts whenever it likes.
    pub fn fork_in_a_pid_namespace() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Exit],
            fork: true,
            child_same_pid: true,
            pipe_can_fail: true,
            crash: true,
            initial_files: vec![None],
            // As for fork and takeover.
            solo_bound: 8,
            ..Self::none()
        }
    }

    /// A reader takes a shared lock on the file the path
    /// names, when it likes (the stale file of a crashed instance, or one a
    /// start just made), and never lets go; three instances start (and may
    /// return, exit or be killed).
    pub fn shared_reader() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Exit, Policy::Exit],
            crash: true,
            reader_locks: vec![Lock::Shared],
            initial_files: vec![Some(Contents::Pid(STALE_PID))],
            // An acquirer that froze a file its holder unlinked, while a
            // newcomer's file at the path, not locked yet, is taken by the
            // reader: the shared probe, the turn (openat, flock + the path's
            // fstatat: another file), the turn over; openat(O_EXCL),
            // fstatat, openat, flock, the shared probe (frozen), the turn
            // (openat, flock + fstatat + the temporary), renameat2, the turn
            // over, fstatat, pwrite.
            solo_bound: 15,
            ..Self::none()
        }
    }

    /// A reader holds the stale file exclusively through a read-only
    /// descriptor (root: no other user can open a 0600 file), and may let
    /// go; two instances start, may return, exit or be killed. A start
    /// that meets the reader reports it (`Error::Pinned`): a file it cannot
    /// freeze is never replaced.
    pub fn exclusive_reader() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Exit],
            crash: true,
            reader_locks: vec![Lock::Exclusive],
            reader_lets_go: true,
            initial_files: vec![Some(Contents::Pid(STALE_PID))],
            // An acquirer that froze the old file after a start killed just
            // after its swap (the path names that start's new file, not
            // locked): the shared probe, the turn's openat, its flock (the
            // path names another file now), the turn over; openat(O_EXCL),
            // fstatat, openat, flock, fstatat, pwrite.
            solo_bound: 10,
            ..Self::none()
        }
    }

    /// A standby that waits (`on_conflict = "wait"`) behind an instance
    /// that may return, exit or be killed, and a reader that takes a shared
    /// lock on whatever file the path names, when it likes, and keeps it.
    /// A killed instance's file keeps its name: the standby's wait sees
    /// that only readers are left and looks again, to replace it.
    pub fn standby_and_reader() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Wait],
            crash: true,
            reader_locks: vec![Lock::Shared],
            initial_files: vec![Some(Contents::Pid(STALE_PID))],
            // A standby woken with only the reader left on the killed
            // instance's file: the wait's flocks (the shared probe
            // granted), flock(LOCK_UN) and close; openat(O_EXCL), fstatat,
            // openat, flock, the shared probe (frozen), the turn's openat,
            // its flock (+ fstatat(path) + the temporary), renameat2, the
            // turn over, fstatat, pwrite.
            solo_bound: 13,
            ..Self::none()
        }
    }

    /// Nothing but what a constructor sets.
    fn none() -> Self {
        Self {
            instances: Vec::new(),
            leave: true,
            fork: false,
            child_same_pid: false,
            pipe_can_fail: false,
            daemonize: false,
            restart: false,
            crash: false,
            outside_rm: 0,
            stopper: false,
            pid_reuse: false,
            reader_locks: Vec::new(),
            reader_lets_go: false,
            reader_holds_at_start: false,
            initial_files: vec![None],
            solo_bound: 0,
            mutations: Mutations::default(),
        }
    }

    /// This configuration with `mutations` taken out of the code.
    #[must_use]
    pub fn with(mut self, mutations: Mutations) -> Self {
        self.mutations = mutations;
        self
    }

    /// Slot layout: instances, then the fork child, the stopper, the
    /// unrelated process and the reader. PIDs follow the slots; the
    /// unrelated process gets a reused one.
    fn layout(&self) -> Layout {
        let mut next = self.instances.len();
        let mut take = |wanted: bool| {
            wanted.then(|| {
                next += 1;
                next - 1
            })
        };
        let layout = Layout {
            child: take(self.fork),
            stopper: take(self.stopper),
            unrelated: take(self.pid_reuse),
            reader: take(!self.reader_locks.is_empty()),
        };
        assert!(next <= SLOTS, "too many processes for {SLOTS} slots");
        layout
    }
}

#[derive(Clone, Copy, Debug)]
struct Layout {
    child: Option<usize>,
    stopper: Option<usize>,
    unrelated: Option<usize>,
    reader: Option<usize>,
}

/// Sticky marks of a step that broke a rule; the properties read them.
pub mod broke {
    /// A process unlinked, wrote or truncated an inode it does not own.
    pub const MODIFY: u8 = 1;
    /// A signal reached a process that was not verified as holding the lock
    /// when the stop or takeover began.
    pub const SIGNAL: u8 = 2;
}

/// A state of the host: the kernel, the processes, and what the world may still
/// do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The directory, the inodes and the open file descriptions.
    pub kernel: Kernel,
    /// The processes, by slot.
    pub procs: [Proc; SLOTS],
    /// How many more times `rm` may remove the file from outside.
    pub rm_left: u8,
    /// Whether a dead process's PID may still be given to an unrelated one.
    pub reuse_left: bool,
    /// Bits of [`broke`].
    pub broke: u8,
}

/// A step: one process's next system call or decision, or something the
/// world does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Process `slot` takes a step.
    Proc(u8, Step),
    /// `rm` of the PID file by someone else.
    OutsideRm,
    /// An unrelated process starts and gets this (dead process's) PID.
    ReusePid(Pid),
}

/// What a process does: the step its program counter names, or one of the
/// choices a program has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// The system call or decision the program counter names.
    Next,
    /// SIGKILL, the OOM killer, power loss: no cleanup.
    Crash,
    /// `main` returns: the guard is dropped (`release_now`).
    ReturnFromMain,
    /// `std::process::exit` (the `atexit` handler).
    Exit,
    /// `fork()`; false when the fork hook's `pipe2` failed.
    /// `fork()`; `pipe` false when the fork hook's `pipe2` failed.
    Fork {
        /// The fork hook made the sharers pipe (or there was one).
        pipe: bool,
    },
    /// `pidlock_core::restart()`.
    Exec,
    /// `pidlock_core::daemonized()`.
    Daemonize,
    /// A wait runs out (`acquire_timeout`, takeover's grace, daemonized's
    /// patience, the turn's patience, `stop`'s timeout).
    GiveUp,
    /// A reader's `flock` of this mode.
    Take(Lock),
    /// A reader closes its descriptor.
    LetGo,
}

/// The model. `normalize` renumbers inodes and descriptions canonically
/// after each step so that states differing only in numbering are one
/// (off when replaying a trace, to keep file names stable).
#[derive(Clone, Debug)]
pub struct OneHost {
    /// What this check explores.
    pub config: Config,
    layout: Layout,
    normalize: bool,
}

impl OneHost {
    /// The model of `config`, with states renumbered canonically.
    pub fn new(config: Config) -> Self {
        let layout = config.layout();
        Self {
            config,
            layout,
            normalize: true,
        }
    }

    /// The same model without renumbering, for readable traces.
    pub fn for_replay(&self) -> Self {
        Self {
            normalize: false,
            ..self.clone()
        }
    }

    fn initial(&self, file: Option<Contents>) -> State {
        let mut procs = [Proc::ABSENT; SLOTS];
        for (slot, policy) in self.config.instances.iter().enumerate() {
            procs[slot] = Proc::new(Role::Instance(*policy), slot as Pid + 1, Pc::Open);
        }
        if let Some(slot) = self.layout.child {
            // Not running until the fork; its PID is reserved for it.
            procs[slot].pid = slot as Pid + 1;
        }
        if let Some(slot) = self.layout.stopper {
            procs[slot] = Proc::new(Role::Stopper, slot as Pid + 1, Pc::StopOpen);
        }
        let mut kernel = Kernel::new(file);
        if let Some(slot) = self.layout.reader {
            procs[slot] = Proc::new(Role::Reader, slot as Pid + 1, Pc::ReaderOpen);
            if let (true, Some(inode), Some(&lock)) = (
                self.config.reader_holds_at_start,
                kernel.entry,
                self.config.reader_locks.first(),
            ) {
                let fd = kernel.open(inode, true);
                kernel.lock(fd, lock, slot as Pid + 1);
                procs[slot].fd = Some(fd);
                procs[slot].pc = Pc::ReaderHold;
            }
        }
        State {
            kernel,
            procs,
            rm_left: self.config.outside_rm,
            reuse_left: self.config.pid_reuse,
            broke: 0,
        }
    }

    /// Whether the file was ever removed from outside: the promises that
    /// hold only for a file nobody else deletes are off from then on.
    pub fn outside_rm_happened(&self, state: &State) -> bool {
        state.rm_left < self.config.outside_rm
    }

    /// PIDs the kernel may hand out again: dead processes' (and the stale
    /// file's), not in use by a live process.
    fn reusable_pids(&self, state: &State) -> Vec<Pid> {
        let mut pids: Vec<Pid> = state
            .procs
            .iter()
            .filter(|p| p.role != Role::Absent && p.pc == Pc::Dead)
            .map(|p| p.pid)
            .chain([STALE_PID])
            .filter(|&pid| !state.procs.iter().any(|p| p.alive() && p.pid == pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// After a step: the kernel frees what nobody refers to, then the state
    /// is put in canonical numbering.
    fn settle(&self, state: &mut State) {
        let procs = state.procs;
        state.kernel.collect(|description| {
            procs
                .iter()
                .filter(|p| p.alive())
                .any(|p| p.descriptors().contains(&Some(description)))
        });
        if self.normalize {
            normalize(state);
        }
    }
}

/// Renumbers inodes (those the names name first: the path, the replacement
/// lock, the temporary names by slot; then by the processes' descriptors in
/// slot order) and descriptions (by slot order).
fn normalize(state: &mut State) {
    let mut description_order = Vec::with_capacity(kernel::DESCRIPTIONS);
    for proc in &state.procs {
        for description in proc.descriptors().into_iter().flatten() {
            if !description_order.contains(&description) {
                description_order.push(description);
            }
        }
    }
    let mut inode_order = Vec::with_capacity(kernel::INODES);
    let named = [state.kernel.entry, state.kernel.turn]
        .into_iter()
        .chain(state.kernel.temps)
        .flatten();
    let opened = description_order
        .iter()
        .map(|&description| state.kernel.inode_of(description));
    for inode in named.chain(opened) {
        if !inode_order.contains(&inode) {
            inode_order.push(inode);
        }
    }
    let position =
        |order: &[u8], old: u8| order.iter().position(|&x| x == old).expect("renumbered") as u8;
    let old = state.kernel;
    let mut inodes = [None; kernel::INODES];
    for (new, &index) in inode_order.iter().enumerate() {
        inodes[new] =
            old.inodes[usize::from(index)].map(|inode| kernel::Inode { serial: 0, ..inode });
    }
    let mut descriptions = [None; kernel::DESCRIPTIONS];
    for (new, &index) in description_order.iter().enumerate() {
        descriptions[new] = old.descriptions[usize::from(index)].map(|d| kernel::Description {
            inode: position(&inode_order, d.inode),
            ..d
        });
    }
    let rename = |name: Option<u8>| name.map(|i| position(&inode_order, i));
    state.kernel = Kernel {
        entry: rename(old.entry),
        turn: rename(old.turn),
        temps: old.temps.map(rename),
        inodes,
        descriptions,
        next_serial: 0,
    };
    for proc in &mut state.procs {
        let renumber = |d: Option<u8>| d.map(|d| position(&description_order, d));
        proc.fd = renumber(proc.fd);
        proc.kept = renumber(proc.kept);
        proc.spare = renumber(proc.spare);
        proc.turn = renumber(proc.turn);
    }
}

impl Model for OneHost {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        self.config
            .initial_files
            .iter()
            .map(|&file| {
                let mut state = self.initial(file);
                self.settle(&mut state);
                state
            })
            .collect()
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for slot in 0..SLOTS {
            for step in self.enabled(state, slot) {
                actions.push(Action::Proc(slot as u8, step));
            }
        }
        if state.rm_left > 0 && state.kernel.entry.is_some() {
            actions.push(Action::OutsideRm);
        }
        if state.reuse_left && self.layout.unrelated.is_some() {
            actions.extend(self.reusable_pids(state).into_iter().map(Action::ReusePid));
        }
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        let mut next = *state;
        match action {
            Action::Proc(slot, step) => self.apply(&mut next, usize::from(slot), step),
            Action::OutsideRm => {
                next.kernel.unlink();
                next.rm_left -= 1;
            }
            Action::ReusePid(pid) => {
                let slot = self.layout.unrelated?;
                next.procs[slot] = Proc::new(Role::Unrelated, pid, Pc::Alive);
                next.reuse_left = false;
            }
        }
        self.settle(&mut next);
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all(&self.config)
    }
}
