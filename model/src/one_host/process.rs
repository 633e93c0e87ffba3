//! The processes: who they are, where they are in the code (the program
//! counter), and what they hold.

use super::kernel::Pid;

/// What `on_conflict` asks for (`policy::OnConflict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    Exit,
    Wait,
    Takeover,
}

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
    /// `pidlock stop <path>` (`ops::stop`).
    Stopper,
}

/// Why a process runs `signal_context::remove_held_files`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leaving {
    /// `std::process::exit` (the `atexit` handler).
    Exit,
    /// SIGTERM reached `signals::on_signal`.
    Signal,
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
    /// `lockfile::busy`: `holders::find`, with `tries` flock retries made.
    Busy {
        tries: u8,
    },
    /// `busy`'s retry of the `flock` when no holder could be verified.
    BusyFlock {
        tries: u8,
    },
    /// A blocking `flock(LOCK_EX)` (`waiting::lock_exclusive`).
    WaitLock,
    /// The post-lock `fstatat`: does the path still name what we locked?
    Verify,
    /// The `close` at `continue` after a stale lock.
    CloseRetry,
    /// The `close` of a conflict reported: `main` never runs.
    Refuse,
    // --- holders::signal_verified, for takeover and `stop` ---
    /// `Pinned::open(pid)` (`pidfd_open`).
    Pin,
    /// `holders::holds(pid, identity)`.
    Check,
    /// `pidfd_send_signal(SIGTERM)`.
    Signal,
    // --- the guard ---
    /// `write_pid`'s `pwrite`.
    Write,
    /// `write_pid`'s `ftruncate`.
    Truncate,
    /// In `main`, holding the lock (or, for a child, sharing it).
    Run,
    /// `release_now`'s `unlinkat` (after its `fstatat` matched).
    Unlink,
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
    DaemonWrite,
    DaemonTruncate,
    // --- ops::stop ---
    /// `open_existing` (`open(O_RDONLY)`).
    StopOpen,
    /// `holders::find`.
    StopFind,
    /// The stopper's `close`.
    StopClose,
    /// An unrelated process, running.
    Alive,
    Dead,
}

impl Pc {
    /// Inside `acquire`, not yet holding a verified lock: what liveness (e)
    /// talks about.
    pub fn acquiring(self) -> bool {
        matches!(
            self,
            Self::Open
                | Self::Lstat
                | Self::OpenPlain
                | Self::Flock
                | Self::Busy { .. }
                | Self::BusyFlock { .. }
                | Self::WaitLock
                | Self::Verify
                | Self::CloseRetry
                | Self::Pin
                | Self::Check
                | Self::Signal
                | Self::Adopt
        )
    }
}

/// One-shot things a process has done.
pub mod once {
    pub const FORKED: u8 = 1;
    pub const RESTARTED: u8 = 2;
    pub const SIGNALLED: u8 = 4;
    pub const DAEMONIZED: u8 = 8;
}

/// Whom a signal round is about (`holders::signal_verified`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The PID number chosen from the holders.
    pub pid: Pid,
    /// The process the pidfd pinned (a slot), if the number named one.
    pub pinned: Option<u8>,
    /// Ground truth for property (d): the pinned process held the lock
    /// when `holds` was asked. Never read by the modelled code.
    pub held_when_checked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    pub role: Role,
    pub pid: Pid,
    pub pc: Pc,
    /// The descriptor of the PID file (an index into the descriptions).
    pub fd: Option<u8>,
    /// A handed-over descriptor that `restart::adopt` did not adopt: it is
    /// neither adopted nor closed, so it stays open until the process ends.
    pub kept: Option<u8>,
    /// The guard's `Owner` cell, once registered in `signal_context`: the PID
    /// of the owner. A fork child inherits a copy that names its parent.
    pub owner: Option<Pid>,
    /// `write_pid` will truncate: the size read under the lock was larger
    /// than the PID line.
    pub truncate: bool,
    /// `lock_file`'s `replaced` count.
    pub replaced: u8,
    pub target: Option<Target>,
    /// Bits of [`once`].
    pub done: u8,
}

impl Proc {
    pub const ABSENT: Self = Self::new(Role::Absent, 0, Pc::Dead);

    pub const fn new(role: Role, pid: Pid, pc: Pc) -> Self {
        Self {
            role,
            pid,
            pc,
            fd: None,
            kept: None,
            owner: None,
            truncate: false,
            replaced: 0,
            target: None,
            done: 0,
        }
    }

    pub fn alive(&self) -> bool {
        self.role != Role::Absent && self.pc != Pc::Dead
    }

    /// Whether `signal_context`'s owner check passes (`Owner::is_current`).
    pub fn is_owner(&self) -> bool {
        self.owner == Some(self.pid)
    }

    pub fn has(&self, bit: u8) -> bool {
        self.done & bit != 0
    }

    /// The process ends: the kernel closes its descriptors.
    pub fn die(&mut self) {
        self.pc = Pc::Dead;
        self.fd = None;
        self.kept = None;
        self.owner = None;
        self.target = None;
        self.truncate = false;
        self.replaced = 0;
    }
}
