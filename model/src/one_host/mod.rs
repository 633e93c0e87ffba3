//! The lock protocol on one host (SPEC §4, §5, §10) as a state machine.
//!
//! A state is the directory entry, the inodes, the open file descriptions
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

pub use kernel::{Contents, Kernel, Pid, STALE_PID};
pub use process::{Leaving, Pc, Policy, Proc, Role};
pub use properties::names;
pub use solo::solo_steps;

/// Process slots; unused ones are [`Role::Absent`].
pub const SLOTS: usize = 5;

/// The code changes the mutation tests put back, one at a time, to show the
/// checker finds what each safeguard is there for. Constructor parameters,
/// not cargo features: CI builds with `--all-features`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// `lock_file` trusts a lock without the post-lock `fstatat`.
    pub no_identity_check: bool,
    /// `release_now` and `remove_held_files` skip `Owner::is_current`.
    pub no_owner_check: bool,
    /// `holders::find`/`holds` take the PID `/proc/locks` shows (whoever
    /// took the lock) instead of the processes whose descriptors hold it.
    pub holders_from_proc_locks: bool,
}

/// What a check explores.
#[derive(Clone, Debug)]
pub struct Config {
    /// Programs under `#[single_instance]`, with PIDs 1, 2, ...; each starts
    /// once, whenever it likes.
    pub instances: Vec<Policy>,
    /// The first instance may `fork()` once while it holds the lock.
    pub fork: bool,
    /// The fork child may call `daemonized()`.
    pub daemonize: bool,
    /// An owner may `restart()` (exec) once.
    pub restart: bool,
    /// Processes may be SIGKILLed at any step.
    pub crash: bool,
    /// How many times `rm` may remove the file from outside.
    pub outside_rm: u8,
    /// A `pidlock stop` runs.
    pub stopper: bool,
    /// A dead process's PID may be given to an unrelated process (once).
    pub pid_reuse: bool,
    /// What the directory holds at the start: nothing, or a file left by a
    /// process that died (stale PID, garbage).
    pub initial_files: Vec<Option<Contents>>,
    /// Property (e): how many of its own steps an acquirer needs, alone, to
    /// get a lock nobody else holds. Each configuration derives its own; the
    /// checker shows it is never exceeded and is reached.
    pub solo_bound: usize,
    pub mutations: Mutations,
}

impl Config {
    /// Three instances racing (one of them waits instead of giving up),
    /// with crashes, an outside `rm` and a restart.
    pub fn three_instances() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Exit, Policy::Wait],
            fork: false,
            daemonize: false,
            restart: true,
            crash: true,
            outside_rm: 1,
            stopper: false,
            pid_reuse: false,
            initial_files: vec![
                None,
                Some(Contents::Pid(STALE_PID)),
                Some(Contents::Garbage),
            ],
            // An acquirer whose flock met a holder that has since unlinked
            // its file and gone: holders::find (none), flock again, the
            // post-lock fstatat (stale), close, openat(O_EXCL) -> EEXIST
            // (a newcomer's file, not locked yet), fstatat,
            // openat, flock, fstatat, pwrite.
            solo_bound: 10,
            mutations: Mutations::default(),
        }
    }

    /// An instance that forks (the child may daemonize), one that takes
    /// over, `pidlock stop`, crashes and PID reuse.
    pub fn fork_and_reuse() -> Self {
        Self {
            instances: vec![Policy::Exit, Policy::Takeover],
            fork: true,
            daemonize: true,
            restart: false,
            crash: true,
            outside_rm: 0,
            stopper: true,
            pid_reuse: true,
            initial_files: vec![None, Some(Contents::Pid(STALE_PID))],
            // A takeover whose holder let go and unlinked the file after the
            // holders were found: pidfd_open, holds (no), the wait's flock,
            // the post-lock fstatat (stale), close, openat(O_EXCL), flock,
            // fstatat, pwrite.
            solo_bound: 9,
            mutations: Mutations::default(),
        }
    }

    #[must_use]
    pub fn with(mut self, mutations: Mutations) -> Self {
        self.mutations = mutations;
        self
    }

    /// Slot layout: instances, then the fork child, the stopper and the
    /// unrelated process. PIDs follow the slots; the unrelated process gets
    /// a reused one.
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
}

/// Sticky marks of a step that broke a rule; the properties read them.
pub mod broke {
    /// A process unlinked, wrote or truncated an inode it does not own.
    pub const MODIFY: u8 = 1;
    /// A signal reached a process that did not hold the lock when checked.
    pub const SIGNAL: u8 = 2;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub kernel: Kernel,
    pub procs: [Proc; SLOTS],
    pub rm_left: u8,
    pub reuse_left: bool,
    /// Bits of [`broke`].
    pub broke: u8,
}

/// A step: one process's next system call or decision, or something the
/// world does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
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
    /// `fork()`.
    Fork,
    /// `pidlock_core::restart()`.
    Exec,
    /// `pidlock_core::daemonized()`.
    Daemonize,
    /// A wait runs out (`acquire_timeout`, takeover's grace, daemonized's
    /// patience).
    GiveUp,
}

/// The model. `normalize` renumbers inodes and descriptions canonically
/// after each step so that states differing only in numbering are one
/// (off when replaying a trace, to keep file names stable).
#[derive(Clone, Debug)]
pub struct OneHost {
    pub config: Config,
    layout: Layout,
    normalize: bool,
}

impl OneHost {
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
        State {
            kernel: Kernel::new(file),
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
                .any(|p| p.fd == Some(description) || p.kept == Some(description))
        });
        if self.normalize {
            normalize(state);
        }
    }
}

/// Renumbers inodes (the one the path names first, then by the processes'
/// descriptors in slot order) and descriptions (by slot order).
fn normalize(state: &mut State) {
    let mut description_order = Vec::with_capacity(kernel::DESCRIPTIONS);
    for proc in &state.procs {
        for description in [proc.fd, proc.kept].into_iter().flatten() {
            if !description_order.contains(&description) {
                description_order.push(description);
            }
        }
    }
    let mut inode_order = Vec::with_capacity(kernel::INODES);
    inode_order.extend(state.kernel.entry);
    for &description in &description_order {
        let inode = state.kernel.inode_of(description);
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
    state.kernel = Kernel {
        entry: old.entry.map(|e| position(&inode_order, e)),
        inodes,
        descriptions,
        next_serial: 0,
    };
    for proc in &mut state.procs {
        proc.fd = proc.fd.map(|d| position(&description_order, d));
        proc.kept = proc.kept.map(|d| position(&description_order, d));
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
