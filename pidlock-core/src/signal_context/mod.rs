//! Everything that runs in a signal handler, in `atexit` or around `fork()`,
//! and the state it reads: the registry of held files, the handler, the
//! `atexit` and `fork` hooks, and the raw calls they make.
//!
//! # The contract
//!
//! Code reachable from [`on_signal`], [`remove_on_exit`] or the `fork`
//! hooks may call only functions POSIX.1-2008 lists as async-signal-safe,
//! may not allocate or free, may not take a lock (a handler could interrupt
//! the lock's holder on the same thread and deadlock), and touches
//! descriptors only by number through the raw system calls, which fail with
//! `EBADF` on a number that is no longer open instead of being undefined
//! behaviour the way a `BorrowedFd` of a closed descriptor is. In order, the
//! signal handler calls:
//!
//! - `sigaction(sig, NULL, &old)` to see who is installed.
//! - [`remove_held_files`]: a read of the [`Registry`] (atomic loads and
//!   stores), `getpid`, for each file this process owns `close` and `read`
//!   on its sharers pipe (see "Sharing" below), then `fstatat` and
//!   `unlinkat` on names prepared as C strings when the lock was taken,
//!   `send(2)` of a constant `STOPPING=1` on the service manager's socket if
//!   an earlier notification connected one, and `write(2)` on fd 2 of the
//!   lines formatted when the lock was taken.
//! - `sigaction(sig, SIG_DFL)`, `raise(sig)`, `pthread_sigmask(SIG_UNBLOCK)`:
//!   the re-raised signal is delivered as soon as it is unblocked, with the
//!   default action, so the process ends there.
//! - `_exit(128 + sig)` if the process survived that: the first process of a
//!   PID namespace (PID 1 in a container) has no default action for these
//!   signals, and a process whose file is gone must not keep running.
//!
//! The `fork` hooks ([`before_fork`], [`in_fork_child`]) read the registry,
//! make sharers pipes with `pipe2` (or `pipe` and `fcntl`) and store atomics.
//!
//! `errno` is saved by an [`ErrnoGuard`] and restored when the handler
//! returns (it does when it is no longer the installed action, or when a
//! handler that replaced it chains to it).
//!
//! # Global state
//!
//! The [`Registry`] of held files is the crate's only global state besides
//! the signal dispositions, the fork generation and the service manager's
//! socket number. A guard adds its directory descriptor, file name and
//! inode when it locks, and takes them out before it closes its
//! descriptors; the registry's own docs say how a handler on another thread
//! never follows a dangling pointer. There is no limit on how many locks a
//! process holds: every one is on the exit paths.
//!
//! # Ownership
//!
//! Each registration names its owner: the process that acquired the lock,
//! as its PID and the *fork generation* it ran in. A child made by `fork()`
//! inherits the registry (and shares the kernel lock) but is not the owner:
//! the `fork` child hook bumps the generation, so the child is not the owner
//! whatever PID it has, even PID 1 of a new PID namespace, as the owner may
//! be in a container. The PID comparison remains for children made without
//! the `fork` hooks (a raw `clone(2)`). [`crate::daemonized`] moves
//! ownership to the child that carries on after its parent exited.
//!
//! # Sharing
//!
//! The lock belongs to the open file description, which a forked child
//! shares: the lock is held as long as any process holds it, so the owner
//! must not remove the file while a child still has it, or a new instance
//! would create a new file and run beside that child. Asking the kernel who
//! else holds a description means scanning every process, too slow for an
//! exit path and impossible in a handler. Instead, the first time a process
//! holding a lock forks, [`before_fork`] makes a *sharers pipe* for it: a
//! pipe nobody writes to, whose write end, like the lock's descriptor, is
//! inherited by `fork()` and closed by `exec` and by exit. When the owner
//! lets go it closes its own write end and reads the other: end of file
//! means no other process has a write end, so none shares the lock; "would
//! block" means one still does, and the file is left to it. A lock that was
//! never held across a `fork()` has no pipe and costs nothing.

mod registry;

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Once};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, raise, sigaction,
};

pub(crate) use self::registry::Registry;
use crate::sys::{self, Identity};

/// What the exit paths need to let go of one held file.
pub(crate) struct Registration {
    pub(crate) dir: RawFd,
    /// The locked descriptor, for [`crate::restart`] and
    /// [`crate::daemonized`].
    pub(crate) file: RawFd,
    pub(crate) name: CString,
    pub(crate) identity: Identity,
    pub(crate) owner: Owner,
    pub(crate) sharers: Sharers,
    /// For reports (never read in signal context).
    pub(crate) path: PathBuf,
    /// The working directory a relative path was resolved against, when the
    /// path was given relative (for reports, and for [`crate::restart`]).
    pub(crate) resolved_in: Option<PathBuf>,
    /// Whether the program prints INFO lines.
    pub(crate) announce: bool,
    /// The lines for the exit paths, formatted when the lock was taken;
    /// `None` when the program asked for quiet.
    pub(crate) exit_lines: Option<ExitLines>,
}

/// What the exit paths write to stderr as they are (they cannot format).
pub(crate) struct ExitLines {
    /// The file was removed.
    pub(crate) released: Box<[u8]>,
    /// The file was left to processes that share the lock.
    pub(crate) kept: Box<[u8]>,
}

/// Bumped in every `fork()` child (see "Ownership").
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The process that owns a lock: the one that acquired it, or the child
/// that took it over with [`crate::daemonized`].
#[derive(Debug)]
pub(crate) struct Owner {
    pid: AtomicI32,
    generation: AtomicU64,
}

impl Owner {
    /// Owned by the calling process.
    pub(crate) fn current() -> Self {
        Self {
            pid: AtomicI32::new(current_pid()),
            generation: AtomicU64::new(FORK_GENERATION.load(SeqCst)),
        }
    }

    /// Whether the calling process is the owner. Async-signal-safe.
    pub(crate) fn is_current(&self) -> bool {
        self.generation.load(SeqCst) == FORK_GENERATION.load(SeqCst)
            && self.pid.load(SeqCst) == current_pid()
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid.load(SeqCst)
    }

    pub(crate) fn set_current(&self) {
        // Generation first: in between, a handler sees "not the owner" and
        // leaves the file, the safe side.
        self.generation.store(FORK_GENERATION.load(SeqCst), SeqCst);
        self.pid.store(current_pid(), SeqCst);
    }
}

/// `getpid()`, async-signal-safe; never cached, so a forked child sees its own.
fn current_pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// A lock's sharers pipe, made the first time the process forks while
/// holding it (see "Sharing"), and what letting go of it answered.
#[derive(Debug)]
pub(crate) struct Sharers {
    state: AtomicU8,
    read: AtomicI32,
    write: AtomicI32,
}

/// How many times [`Sharers::ensure`] yields to another thread making the
/// pipe before it gives up waiting.
const MAKING_PATIENCE: u32 = 10_000;

/// [`Sharers`]' states.
mod sharers {
    /// Never held across a fork: nobody else has the lock.
    pub(super) const NEVER: u8 = 0;
    /// Held across a fork, and the pipe is open.
    pub(super) const OPEN: u8 = 1;
    /// Held across a fork, but no pipe could be made: nobody can tell who
    /// else has the lock, so a release keeps the file (the safe side).
    pub(super) const FAILED: u8 = 2;
    /// [`Sharers::leave`](super::Sharers::leave) is reading the pipe now.
    pub(super) const LEAVING: u8 = 3;
    /// [`Sharers::ensure`](super::Sharers::ensure) is making the pipe now.
    pub(super) const MAKING: u8 = 6;
    /// It answered: alone.
    pub(super) const LEFT_ALONE: u8 = 4;
    /// It answered: shared.
    pub(super) const LEFT_SHARED: u8 = 5;
}

/// Whether other processes still share a lock this process lets go of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// No other process holds it: the file may go.
    Alone,
    /// Another process (a forked child, or a command given the lock) still
    /// holds it: the file stays with the lock.
    Shared,
}

impl Sharers {
    pub(crate) const fn none() -> Self {
        Self {
            state: AtomicU8::new(sharers::NEVER),
            read: AtomicI32::new(-1),
            write: AtomicI32::new(-1),
        }
    }

    /// Sharers handed over across `exec` ([`crate::restart`]).
    pub(crate) fn adopted(read: RawFd, write: RawFd) -> Self {
        Self {
            state: AtomicU8::new(sharers::OPEN),
            read: AtomicI32::new(read),
            write: AtomicI32::new(write),
        }
    }

    /// Makes the pipe if there is none. Async-signal-safe (`pipe2`).
    pub(crate) fn ensure(&self) {
        if self
            .state
            .compare_exchange(sharers::NEVER, sharers::MAKING, SeqCst, SeqCst)
            .is_err()
        {
            // Made already, or being made by another thread forking at the
            // same moment: wait for it, so that our child inherits it too.
            // It is one system call away; the bound only guards against a
            // handler that forked on the very thread making it.
            for _ in 0..MAKING_PATIENCE {
                if self.state.load(SeqCst) != sharers::MAKING {
                    return;
                }
                std::thread::yield_now();
            }
            return;
        }
        match sys::sharers_pipe() {
            Ok((read, write)) => {
                self.read.store(read.into_raw_fd(), SeqCst);
                self.write.store(write.into_raw_fd(), SeqCst);
                self.state.store(sharers::OPEN, SeqCst);
            }
            // Without a pipe a later release cannot tell who else has the
            // lock: it keeps the file.
            Err(_) => self.state.store(sharers::FAILED, SeqCst),
        }
    }

    /// The pipe's descriptors, if there is one: for a command given the
    /// lock ([`crate::PidFileGuard::share_with`]) and for [`crate::restart`].
    pub(crate) fn descriptors(&self) -> Option<(RawFd, RawFd)> {
        if self.state.load(SeqCst) != sharers::OPEN {
            return None;
        }
        let (read, write) = (self.read.load(SeqCst), self.write.load(SeqCst));
        (read >= 0 && write >= 0).then_some((read, write))
    }

    /// Lets go of this process's end and says whether another process still
    /// has one. Async-signal-safe (`close`, `read`), and answers the same
    /// every time it is asked: a signal handler that interrupts a release
    /// between this answer and the end of the release must not find the
    /// pipe's ends gone and conclude "alone".
    pub(crate) fn leave(&self) -> Sharing {
        loop {
            let state = self.state.load(SeqCst);
            let (to, answer) = match state {
                sharers::LEFT_ALONE => return Sharing::Alone,
                sharers::LEFT_SHARED => return Sharing::Shared,
                // Another context is reading or making the pipe right now:
                // this is a handler that interrupted it, and cannot wait.
                sharers::LEAVING | sharers::MAKING => return Sharing::Shared,
                sharers::NEVER => (sharers::LEFT_ALONE, Sharing::Alone),
                sharers::FAILED => (sharers::LEFT_SHARED, Sharing::Shared),
                _ => break,
            };
            if self
                .state
                .compare_exchange(state, to, SeqCst, SeqCst)
                .is_ok()
            {
                return answer;
            }
        }
        if self
            .state
            .compare_exchange(sharers::OPEN, sharers::LEAVING, SeqCst, SeqCst)
            .is_err()
        {
            return self.leave();
        }
        close_raw(self.write.swap(-1, SeqCst));
        let read = self.read.swap(-1, SeqCst);
        let mut byte = 0u8;
        // SAFETY: read(2) into one byte we own; the descriptor is ours and
        // non-blocking.
        let read_now = unsafe { libc::read(read, ptr::from_mut(&mut byte).cast(), 1) };
        close_raw(read);
        // End of file: no write end is open anywhere. "Would block" (a
        // write end is still open elsewhere), or an answer we do not
        // expect: keep the file, the safe side.
        let (state, answer) = if read_now == 0 {
            (sharers::LEFT_ALONE, Sharing::Alone)
        } else {
            (sharers::LEFT_SHARED, Sharing::Shared)
        };
        self.state.store(state, SeqCst);
        answer
    }

    /// Closes this process's ends without asking: a process that does not
    /// own the lock letting go of its copy. Async-signal-safe.
    pub(crate) fn forget(&self) {
        close_raw(self.write.swap(-1, SeqCst));
        close_raw(self.read.swap(-1, SeqCst));
    }
}

/// `close(2)` on a number, ignoring a number that is not open.
fn close_raw(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: close on a number we own (or EBADF); nothing else uses it.
        let _ = unsafe { libc::close(fd) };
    }
}

/// The held files of this process.
static HELD: Registry = Registry::new();

/// The service manager's socket, connected by an earlier notification
/// ([`crate::systemd`]), or -1.
static STOPPING_SOCKET: AtomicI32 = AtomicI32::new(-1);

// ---------------------------------------------------------------------------
// Normal context: filling and reading the registry.
// ---------------------------------------------------------------------------

/// Records a held file; returns what [`unregister`] takes out again. Its
/// `dir` and `file` must stay open until then.
pub(crate) fn register(registration: Registration) -> Arc<Registration> {
    static HOOKS: Once = Once::new();
    HOOKS.call_once(|| {
        // SAFETY: both hooks are `extern "C"` functions that never unwind and
        // keep to this module's contract. If a registration fails (the C
        // library's table is full) that exit path or the fork bookkeeping is
        // not covered; a fork child then still fails the PID comparison.
        unsafe {
            libc::atexit(remove_on_exit);
            libc::pthread_atfork(Some(before_fork), None, Some(in_fork_child));
        }
    });
    let registration = Arc::new(registration);
    HELD.add(Arc::clone(&registration));
    registration
}

/// Takes a guard's file out of the registry. Idempotent.
pub(crate) fn unregister(registration: &Arc<Registration>) {
    HELD.remove(registration);
}

/// Whether a guard in this process holds the file with this identity (owned
/// or inherited across `fork()`: either way this process's records say it
/// has the locked descriptor).
pub(crate) fn is_held(identity: Identity) -> bool {
    HELD.read()
        .iter()
        .any(|registration| registration.identity == identity)
}

/// Every registered lock, owned or inherited. The descriptor numbers in them
/// are only ever used through raw system calls: their guards may be dropped
/// at any moment by another thread.
pub(crate) fn held() -> Vec<Arc<Registration>> {
    HELD.read().to_vec()
}

/// The locks this process owns, in the order they were taken.
pub(crate) fn owned() -> Vec<Arc<Registration>> {
    HELD.read()
        .iter()
        .filter(|held| held.owner.is_current())
        .cloned()
        .collect()
}

/// Publishes the service manager's connected socket for the exit paths.
pub(crate) fn set_stopping_socket(fd: RawFd) {
    STOPPING_SOCKET.store(fd, SeqCst);
}

/// Installs [`on_signal`] for each of `signals` whose action is still the
/// default, leaving ignored and handled ones alone.
///
/// All of them are blocked while they are installed: each `sigaction`
/// installs ours and returns the previous action in one call, and a signal
/// that was not at its default (ignored under `nohup`, or handled) gets its
/// previous action back before it is unblocked. A signal arriving in between
/// stays pending and meets the right action: an ignored one is discarded when
/// `SIG_IGN` is restored (POSIX), a handled one reaches its handler. Seven
/// system calls instead of ten for query-then-install.
pub(crate) fn install_handler(signals: &[Signal]) {
    let ours = SigAction::new(
        SigHandler::Handler(on_signal),
        // SA_ONSTACK: run on the alternate stack Rust sets up, if any.
        SaFlags::SA_RESTART | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    let mut handled = SigSet::empty();
    for &signal in signals {
        handled.add(signal);
    }
    let mut previous_mask = SigSet::empty();
    if pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&handled),
        Some(&mut previous_mask),
    )
    .is_err()
    {
        return;
    }
    for &signal in signals {
        // SAFETY: `on_signal` keeps to this module's contract.
        if let Ok(previous) = unsafe { sigaction(signal, &ours) }
            && !matches!(previous.handler(), SigHandler::SigDfl)
        {
            // SAFETY: puts back exactly what was installed before.
            let _ = unsafe { sigaction(signal, &previous) };
        }
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous_mask), None);
}

// ---------------------------------------------------------------------------
// Signal context: everything below keeps to the contract above.
// ---------------------------------------------------------------------------

/// Restores `errno` when dropped: a handler that returns must leave it as
/// the interrupted code had it.
struct ErrnoGuard(i32);

impl ErrnoGuard {
    fn save() -> Self {
        Self(Errno::last_raw())
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        Errno::set_raw(self.0);
    }
}

/// The handler for the signals [`crate::signals`] covers.
extern "C" fn on_signal(raw: libc::c_int) {
    let _errno = ErrnoGuard::save();
    let Ok(signal) = Signal::try_from(raw) else {
        return;
    };
    if installed_handler(raw) == Some(on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t)
    {
        remove_held_files();
        die_of(signal);
    }
}

/// The handler currently installed for `signal` (`sa_sigaction`), if the
/// kernel answers. nix only offers `sigaction` as "install and return the
/// old", so the query goes to libc directly.
fn installed_handler(signal: libc::c_int) -> Option<libc::sighandler_t> {
    let mut current = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only reads the current one into `current`.
    let status = unsafe { libc::sigaction(signal, ptr::null(), current.as_mut_ptr()) };
    // SAFETY: initialised by the successful call.
    (status == 0).then(|| unsafe { current.assume_init() }.sa_sigaction)
}

/// Ends the process with `signal`'s default action, or `_exit(128 + signal)`
/// where it has none.
fn die_of(signal: Signal) -> ! {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring the default action is always sound.
    let _ = unsafe { sigaction(signal, &default) };
    let mut only = SigSet::empty();
    only.add(signal);
    let _ = raise(signal);
    // The signal is blocked while its handler runs; unblocking delivers the
    // pending one right here with the default action, and the process ends.
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
    // Still here: the kernel dropped the signal instead, as it does for the
    // first process of a PID namespace (a container without `--init`), which
    // gets no default action. The file is already gone, so the process must
    // not run on: end it as `docker run --init` (tini) would, with 128 + n.
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(128 + signal as libc::c_int) }
}

/// `atexit` handler: `std::process::exit` from any thread skips the guards'
/// destructors, so the files are let go of here. After `main` returns
/// normally the guards are already gone and this finds nothing.
extern "C" fn remove_on_exit() {
    let _errno = ErrnoGuard::save();
    remove_held_files();
}

/// `pthread_atfork` prepare hook, in the parent just before any `fork()`:
/// every held lock gets its sharers pipe, so that the child inherits a write
/// end with the lock (see "Sharing").
extern "C" fn before_fork() {
    let _errno = ErrnoGuard::save();
    for registration in HELD.read().iter() {
        registration.sharers.ensure();
    }
}

/// `pthread_atfork` child hook: this process is a new one, whatever its PID
/// (see "Ownership"), and no other thread of the parent came along.
extern "C" fn in_fork_child() {
    let _errno = ErrnoGuard::save();
    FORK_GENERATION.fetch_add(1, SeqCst);
    HELD.after_fork_in_child();
}

/// Lets go of every file this process owns: each is removed if its path
/// still names it and no other process shares its lock, else left to those
/// that do; the lines prepared for either are written to stderr. Inherited
/// locks (a `fork()` child's) are left alone. Also called in normal
/// context, when a lost lock across hosts ends the program.
pub(crate) fn remove_held_files() {
    let mut stopping_sent = false;
    for registration in HELD.read().iter() {
        if !registration.owner.is_current() {
            continue;
        }
        if !stopping_sent {
            notify_stopping();
            stopping_sent = true;
        }
        let outcome = let_go(registration);
        if let Some(lines) = &registration.exit_lines {
            match outcome {
                Ok(LetGo::Removed) => write_stderr(&lines.released),
                Ok(LetGo::Kept) => write_stderr(&lines.kept),
                Ok(LetGo::NotOurs) | Err(_) => {}
            }
        }
    }
}

/// What letting go of an owned file did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LetGo {
    /// The file was ours, nobody shared its lock, and it is gone.
    Removed,
    /// Other processes share its lock: the file stays with them.
    Kept,
    /// The path names another file now (or none): not ours to touch.
    NotOurs,
}

/// The owner's side of a release, shared by the guard and the exit paths:
/// asks the sharers pipe whether anyone else holds the lock, and removes the
/// file only if nobody does. The caller closes the locked descriptor after.
pub(crate) fn let_go(registration: &Registration) -> Result<LetGo, Errno> {
    if registration.sharers.leave() == Sharing::Shared {
        return Ok(LetGo::Kept);
    }
    Ok(
        if unlink_if_ours(registration.dir, &registration.name, registration.identity)? {
            LetGo::Removed
        } else {
            LetGo::NotOurs
        },
    )
}

/// Removes `name` from the directory open as `dir` if it still names the
/// inode we locked; true if it was removed. Also what a guard's release
/// calls, so both paths remove files the same way.
///
/// The directory goes by number to the raw `fstatat` and `unlinkat`, which
/// fail with `EBADF` if another thread closed it meanwhile; the name is a C
/// string already, so nothing is allocated.
pub(crate) fn unlink_if_ours(dir: RawFd, name: &CStr, identity: Identity) -> Result<bool, Errno> {
    let mut now = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated; `now` is filled on success.
    let status = unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            now.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match Errno::result(status) {
        // SAFETY: initialised by the successful call.
        Ok(_) if identity.same_file(&unsafe { now.assume_init() }) => {}
        // Gone, or replaced by another instance's file: not ours to touch.
        Ok(_) | Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(errno),
    }
    // SAFETY: as above; flags 0 removes a file, never a directory.
    match Errno::result(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) }) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// Sends `STOPPING=1` to the service manager, if an earlier notification
/// connected to one: an atomic load and `send(2)` of a constant.
fn notify_stopping() {
    const STOPPING: &[u8] = b"STOPPING=1\nSTATUS=Releasing the lock...";
    let fd = STOPPING_SOCKET.load(SeqCst);
    if fd >= 0 {
        // SAFETY: send(2) on a number is defined for any value (EBADF if it
        // is not open); the buffer is valid for its length.
        let _ = unsafe {
            libc::send(
                fd,
                STOPPING.as_ptr().cast(),
                STOPPING.len(),
                libc::MSG_DONTWAIT | sys::MSG_NOSIGNAL,
            )
        };
    }
}

/// Writes `bytes` to fd 2 with the raw system call: no formatting, no
/// allocation, no lock (a closed fd 2 just fails with `EBADF`).
fn write_stderr(bytes: &[u8]) {
    // SAFETY: `bytes` is valid for reads of its length during the call.
    let _ = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}
