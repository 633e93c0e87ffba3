//! The processes: who they are, where they are in the code (the program
//! counter), and what they hold.

use super::kernel::Pid;

/// What `on_conflict` asks for (`policy::OnConflict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// `"exit"`: report the conflict and end.
    Exit,
    /// `"wait"`: wait for the holder to let go.
    Wait,
    /// `"takeover"`: SIGTERM, then SIGKILL, the verified holder.
    Takeover,
}

/// Who a process is, for what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A slot not in use (yet): the fork child before `fork`, the unrelated
    /// process before it is given a reused PID.
    Absent,
    /// A program under `#[single_instance]`.
    Instance(Policy),
    /// A `fork()` child of an instance: shares the parent's descriptor.
    Child,
    /// A process that has nothing to do with the lock and was given a PID
    /// number a dead process had.
    Unrelated,
    /// `pidlock stop <path>` (`Stop::run`, escalating to SIGKILL).
    Stopper,
    /// A process that opens the file read-only and `flock`s it without
    /// being an instance (`holders.rs`): an observer's probe or `flock -s`
    /// (shared), or `flock -x` through a read-only descriptor of another
    /// user, which only root can be since PID files are 0600.
    Reader,
}

/// Why a process runs `signal_context::remove_held_files`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leaving {
    /// `std::process::exit` (the `atexit` handler).
    Exit,
    /// SIGTERM reached `on_signal`.
    Signal,
}

/// How a replacement (`replace::replace`) ends, once its turn is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Then {
    /// `Replaced::Locked`: the path names our new file.
    Locked,
    /// `Replaced::Retry`: look again from the start.
    Retry,
    /// An error (`exchange` failed): `acquire` returns it.
    Fail,
}

/// Where a process is; each names the step it takes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pc {
    // --- lockfile::lock_file / sys::open_file ---
    /// `openat(O_CREAT | O_EXCL)`; where every instance starts.
    Open,
    /// The `fstatat` after `EEXIST` that refuses anything but a file.
    Lstat,
    /// The plain `openat`.
    OpenPlain,
    /// `flock(LOCK_EX | LOCK_NB)`.
    Flock,
    /// `lockfile::busy`'s `flock(LOCK_SH | LOCK_NB)`: can it be frozen?
    BusyShared {
        /// How many of `busy`'s retries are done.
        tries: u8,
    },
    /// `busy`: `file_pid`'s fstat, then the holders (likely, then every).
    Busy {
        /// How many of `busy`'s retries are done.
        tries: u8,
    },
    /// `busy`'s `flock(LOCK_EX | LOCK_NB)` when no instance was found.
    BusyFlock {
        /// How many of `busy`'s retries are done.
        tries: u8,
    },
    /// A wait for the exclusive lock (`waiting::lock_exclusive`, given a
    /// check of the name): each wake-up tries `flock(LOCK_EX | LOCK_NB)`,
    /// asks whether the path still names the file, then tries
    /// `flock(LOCK_SH | LOCK_NB)` (only readers left?).
    WaitLock,
    /// The wait's shared probe was granted (nobody holds the file
    /// exclusively): `flock(LOCK_UN)`, then `Waited::OnlyShared`, the file
    /// closes and the lock loop opens the path again.
    WaitUnlock,
    /// The post-lock `fstatat`: does the path still name what we locked?
    Verify,
    /// The `close` at `continue` after a stale lock.
    CloseRetry,
    /// The `close` of a conflict reported: `main` never runs.
    Refuse,
    // --- replace::replace, for a file only readers hold ---
    /// `Turn::take`: `openat(.replace, O_CREAT)` + `fstat`.
    TurnOpen,
    /// `Turn::take`: `waiting::lock_exclusive` on it (with a deadline),
    /// then `fstatat(.replace)`: still the file we locked? Holding the
    /// turn: `fstatat(path)` (step 3), then `create_temporary`'s
    /// `openat(O_CREAT | O_EXCL)` and `flock` (step 4).
    TurnLock,
    /// `create_temporary` without a turn (the `no_turns` mutation).
    CreateTemp,
    /// `renameat2(RENAME_EXCHANGE)` (step 5), then `fstatat(temporary)`:
    /// is what we swapped out the pinned file?
    Exchange,
    /// `only_readers_hold`, the second look after swapping a file that
    /// could not be frozen: only with the `replace_unfrozen` mutation (the
    /// code before it refused such files).
    Recheck,
    /// `renameat2(RENAME_EXCHANGE)` again, to put it back; then `discard`:
    /// `unlinkat(temporary)`, `close` of the new file.
    SwapBack,
    /// For `Locked`, `unlinkat(temporary)`: the old file goes (step 6).
    /// Then `Turn::drop` (`fstatat`, `unlinkat`, `close` of the replacement
    /// lock), and the pinned file closes as `replace` returns.
    TurnOver(Then),
    // --- holders::pin_verified and signalling, for takeover and `stop` ---
    /// `Pinned::open` (`pidfd_open`) for every process of the instance.
    Pin,
    /// `holders::holds` for each pinned one.
    Check,
    /// `pidfd_send_signal(SIGTERM)` to the holder.
    Signal,
    /// Takeover's grace is over: SIGKILL to the pins that still hold it.
    Kill,
    // --- the guard ---
    /// `write_pid`'s `pwrite`.
    Write,
    /// `write_pid`'s `ftruncate`.
    Truncate,
    /// In `main`, holding the lock (or, for a child, sharing it).
    Run,
    /// `release_now`'s `unlinkat` (after its `fstatat` matched).
    Unlink,
    /// `release_now`'s `leave_to_sharers`: the file stays, rewritten with
    /// the PID of a process that shares the lock.
    Rewrite,
    /// `release_now`'s `close`, after which `main` returns and the process
    /// exits.
    Close,
    /// A signal arrived: `on_signal` runs next.
    Handler,
    /// `remove_held_files`' `unlinkat`, then the process dies.
    ExitUnlink(Leaving),
    // --- restart::restart / adopt ---
    /// The new image after `exec`: `adopt` looks at the handed-over
    /// descriptor.
    Adopt,
    // --- daemon::daemonized, in a fork child ---
    /// Waiting for the pinned previous owner to exit.
    DaemonWait,
    /// `flock(LOCK_EX | LOCK_NB)` on the inherited descriptor.
    DaemonFlock,
    /// `fstat` + `fstatat`: still the file the path names?
    DaemonCheck,
    /// `daemonized()`: `write_pid`'s `pwrite` of the child's PID.
    DaemonWrite,
    /// `daemonized()`: `write_pid`'s `ftruncate`.
    DaemonTruncate,
    // --- Stop::run ---
    /// `open_existing` (`open(O_RDONLY)`).
    StopOpen,
    /// `look` (the holders).
    StopFind,
    /// `wait_for_release` on the pins.
    StopWait,
    /// The timeout ran out: SIGKILL to the pins that still hold it.
    StopKill,
    /// The stopper's `close`.
    StopClose,
    // --- a reader ---
    /// `open(O_RDONLY)` of whatever the path names.
    ReaderOpen,
    /// `flock(LOCK_SH or LOCK_EX | LOCK_NB)`.
    ReaderLock,
    /// Holding it (or not, if the lock was taken), until it closes.
    ReaderHold,
    /// An unrelated process, running.
    Alive,
    /// Ended (or not started: an absent slot); holds nothing.
    Dead,
}

impl Pc {
    /// Inside `acquire`, not yet holding a verified lock: what properties
    /// (e) and (f) talk about.
    pub fn acquiring(self) -> bool {
        matches!(
            self,
            Self::Open
                | Self::Lstat
                | Self::OpenPlain
                | Self::Flock
                | Self::BusyShared { .. }
                | Self::Busy { .. }
                | Self::BusyFlock { .. }
                | Self::WaitLock
                | Self::WaitUnlock
                | Self::Verify
                | Self::CloseRetry
                | Self::TurnOpen
                | Self::TurnLock
                | Self::CreateTemp
                | Self::Exchange
                | Self::Recheck
                | Self::SwapBack
                | Self::TurnOver(_)
                | Self::Pin
                | Self::Check
                | Self::Signal
                | Self::Kill
                | Self::Adopt
        )
    }

    /// Running the program (or about to, past the lock): not on an exit
    /// path.
    pub fn runs(self) -> bool {
        matches!(
            self,
            Self::Write
                | Self::Truncate
                | Self::Run
                | Self::DaemonWait
                | Self::DaemonFlock
                | Self::DaemonCheck
                | Self::DaemonWrite
                | Self::DaemonTruncate
        )
    }

    /// Between a swap of a file that could not be frozen and the check
    /// that decides whether to swap back (the `replace_unfrozen` mutation
    /// only): the path may name the new file while an instance that locked
    /// the old one runs.
    pub fn unfrozen_swap(self) -> bool {
        matches!(self, Self::Recheck | Self::SwapBack)
    }
}

/// One-shot things a process has done.
pub(super) mod once {
    pub(crate) const FORKED: u8 = 1;
    pub(crate) const RESTARTED: u8 = 2;
    pub(crate) const SIGNALLED: u8 = 4;
    pub(crate) const DAEMONIZED: u8 = 8;
    /// Takeover: the SIGKILL round is done.
    pub(crate) const KILLED: u8 = 16;
    /// A reader: it has let go once.
    pub(crate) const LET_GO: u8 = 32;
    /// Takeover: the grace period after its SIGTERM is over.
    pub(crate) const GRACE_OVER: u8 = 64;
}

/// A lock's sharers pipe, as this process has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pipe {
    /// None (-1, -1): never held across a fork, or let go of (`forget`).
    None,
    /// Both ends open.
    Open,
    /// `pipe2` failed in the fork hook: (-1, -1) as well.
    Failed,
    /// `leave` closed this process's ends: (-1, -1).
    Left,
}

/// `signal_context::Owner`: the PID and the fork generation of the process
/// that owns a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The owner's PID number, as `getpid()` returned it.
    pub pid: Pid,
    /// The owner's fork generation.
    pub generation: u8,
}

/// Who a stop or takeover is about: the instance as it was verified when it
/// began (`pin_verified`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The holder the SIGTERM goes to.
    pub pid: Pid,
    /// The processes (slot bits) the pidfds pinned: whichever processes had
    /// the numbers when they were opened.
    pub pinned: u8,
    /// Of those, the ones `holds` confirmed: what may be signalled.
    pub verified: u8,
    /// Ground truth for property (d): the pinned processes that held the
    /// lock when `holds` was asked. Never read by the modelled code.
    pub held: u8,
}

impl Target {
    pub fn about(pid: Pid) -> Self {
        Self {
            pid,
            pinned: 0,
            verified: 0,
            held: 0,
        }
    }
}

/// A process: its role, where it is, and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    /// Who it is.
    pub role: Role,
    /// What `getpid()` returns in the process's own PID namespace, and (in
    /// every configuration but the nested namespace) what others see.
    pub pid: Pid,
    /// `FORK_GENERATION`: bumped by the `pthread_atfork` child hook.
    pub generation: u8,
    /// Where it is: the step it takes next.
    pub pc: Pc,
    /// The descriptor of the PID file (an index into the descriptions); for
    /// a reader, its read-only one; during a replacement, the pinned file.
    pub fd: Option<u8>,
    /// A handed-over descriptor that `restart::adopt` did not adopt: it is
    /// neither adopted nor closed, so it stays open until the process ends.
    pub kept: Option<u8>,
    /// During a replacement: the new file, under the temporary name.
    pub spare: Option<u8>,
    /// During a replacement: the replacement lock's descriptor.
    pub turn: Option<u8>,
    /// The guard's `Owner` cell, once registered in `signal_context`. A fork
    /// child inherits a copy that names its parent.
    pub owner: Option<Owner>,
    /// Its lock's sharers pipe (`Sharers`): made by the fork hook,
    /// inherited by the child.
    pub pipe: Pipe,
    /// What `Sharers::leave` answered, which it answers again when asked
    /// again.
    pub left_shared: bool,
    /// During a replacement: the pinned file is frozen (we hold a shared
    /// lock on it).
    pub frozen: bool,
    /// `write_pid` will truncate: the size read under the lock was larger
    /// than the PID line.
    pub truncate: bool,
    /// `lock_file`'s `replaced` count.
    pub replaced: u8,
    /// During a stop or takeover: whom it is about.
    pub target: Option<Target>,
    /// Bits of [`once`].
    pub done: u8,
}

impl Proc {
    /// An unused slot.
    pub const ABSENT: Self = Self::new(Role::Absent, 0, Pc::Dead);

    /// A process of `role` with PID `pid`, at `pc`, holding nothing.
    pub const fn new(role: Role, pid: Pid, pc: Pc) -> Self {
        Self {
            role,
            pid,
            generation: 0,
            pc,
            fd: None,
            kept: None,
            spare: None,
            turn: None,
            owner: None,
            pipe: Pipe::None,
            left_shared: false,
            frozen: false,
            truncate: false,
            replaced: 0,
            target: None,
            done: 0,
        }
    }

    /// Whether it runs (a used slot, not dead).
    pub fn alive(&self) -> bool {
        self.role != Role::Absent && self.pc != Pc::Dead
    }

    /// This process's identity as `Owner::current` records it.
    pub fn me(&self) -> Owner {
        Owner {
            pid: self.pid,
            generation: self.generation,
        }
    }

    /// Whether this process owns the lock it registered: the ground truth
    /// the properties use (the owner cell names this very process).
    pub fn is_owner(&self) -> bool {
        self.owner == Some(self.me())
    }

    /// Whether it has done the one-shot thing `bit` (of `once`).
    pub fn has(&self, bit: u8) -> bool {
        self.done & bit != 0
    }

    /// Its descriptors, PID file and others.
    pub fn descriptors(&self) -> [Option<u8>; 4] {
        [self.fd, self.kept, self.spare, self.turn]
    }

    /// The process ends: the kernel closes its descriptors.
    pub fn die(&mut self) {
        *self = Self {
            role: self.role,
            pid: self.pid,
            generation: self.generation,
            done: self.done,
            ..Self::new(self.role, self.pid, Pc::Dead)
        };
    }
}
