//! Everything that runs in a signal handler or in `atexit`, and the state it
//! reads: the table of held files, the handler, the `atexit` hook, and the
//! raw writes they make.
//!
//! # The contract
//!
//! Code reachable from [`on_signal`] or [`remove_on_exit`] may call only
//! functions POSIX.1-2008 lists as async-signal-safe, may not allocate or
//! free, may not take a lock (a handler could interrupt the lock's holder on
//! the same thread and deadlock), and touches descriptors only by number
//! through the raw system calls, which fail with `EBADF` on a number that is
//! no longer open instead of being undefined behaviour the way a
//! `BorrowedFd` of a closed descriptor is. In order, the handler calls:
//!
//! - `sigaction(sig, NULL, &old)` to see who is installed.
//! - [`remove_held_files`]: atomic loads and stores, `getpid`, `fstatat` and
//!   `unlinkat` on names prepared as C strings when the lock was taken,
//!   `send(2)` of a constant `STOPPING=1` on the service manager's socket if
//!   an earlier notification connected one, and `write(2)` on fd 2 of the
//!   release lines formatted when the lock was taken.
//! - `sigaction(sig, SIG_DFL)`, `raise(sig)`, `pthread_sigmask(SIG_UNBLOCK)`:
//!   the re-raised signal is delivered as soon as it is unblocked, with the
//!   default action, so the process ends there.
//! - `_exit(128 + sig)` if the process survived that: the first process of a
//!   PID namespace (PID 1 in a container) has no default action for these
//!   signals, and a process whose file is gone must not keep running (SPEC
//!   §10, "PID 1").
//!
//! `errno` is saved by an [`ErrnoGuard`] and restored when the handler
//! returns (it does when it is no longer the installed action, or when a
//! handler that replaced it chains to it).
//!
//! # Global state
//!
//! The table is the crate's only global state besides the signal
//! dispositions and the service manager's socket number. A guard registers
//! its directory descriptor, file name and inode in a fixed table of slots
//! when it locks, and takes them out before it closes its descriptors. It is
//! built from atomics only. A registration is freed only after it has left
//! the table and no reader is inside it (the `READERS` count), so a handler
//! running on another thread never follows a dangling pointer. A process
//! holding more than [`SLOTS`] locks at once still locks correctly; the extra
//! guards are just not covered on these exit paths.
//!
//! # Ownership (SPEC §10)
//!
//! Each registration names its owner: the process that acquired the lock. A
//! child made by `fork()` without `exec` inherits the table (and shares the
//! kernel lock) but is not the owner, so none of its exit paths removes the
//! file or announces a release. [`crate::daemonized`] moves ownership to the
//! child that carries on after its parent exited. The owner is a shared
//! atomic cell, compared with `getpid()` wherever a file would be removed.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Once};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, raise, sigaction,
};

use crate::sys::{self, Identity, Stopwatch};

/// How many locks the exit paths cover at once.
const SLOTS: usize = 8;

/// What the exit paths need to remove one held file.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) dir: RawFd,
    /// The locked descriptor, for [`crate::restart`] and
    /// [`crate::daemonized`].
    pub(crate) file: RawFd,
    pub(crate) name: CString,
    pub(crate) identity: Identity,
    pub(crate) owner: Arc<Owner>,
    /// For reports (never read in signal context).
    pub(crate) path: PathBuf,
    /// For reports: the working directory a relative path was resolved
    /// against; `None` when the path was given absolute.
    pub(crate) resolved_in: Option<PathBuf>,
    /// The release lines, formatted when the lock was taken; `None` when the
    /// program asked for quiet.
    pub(crate) release_lines: Option<Box<[u8]>>,
}

/// The PID of the process that owns a lock: the one that acquired it, or the
/// child that took it over with [`crate::daemonized`]. Shared by the guard and
/// its registration.
#[derive(Debug)]
pub(crate) struct Owner(AtomicI32);

impl Owner {
    /// Owned by the calling process.
    pub(crate) fn current() -> Arc<Self> {
        Arc::new(Self(AtomicI32::new(current_pid())))
    }

    /// Whether the calling process is the owner. Async-signal-safe.
    pub(crate) fn is_current(&self) -> bool {
        self.0.load(SeqCst) == current_pid()
    }

    pub(crate) fn pid(&self) -> i32 {
        self.0.load(SeqCst)
    }

    pub(crate) fn set_current(&self) {
        self.0.store(current_pid(), SeqCst);
    }
}

/// `getpid()`, async-signal-safe; never cached, so a forked child sees its own.
fn current_pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// How long [`unregister`] waits for readers before it leaks the registration
/// instead of freeing it. Readers run a handful of system calls; a count that
/// stays up is one inherited by a `fork()` child from a thread that was
/// reading at that moment and no longer exists in the child.
const READERS_PATIENCE: Duration = Duration::from_millis(100);

static HELD: [AtomicPtr<Registration>; SLOTS] = [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS];
static READERS: AtomicUsize = AtomicUsize::new(0);

/// The service manager's socket, connected by an earlier notification
/// ([`crate::systemd`]), or -1.
static STOPPING_SOCKET: AtomicI32 = AtomicI32::new(-1);

/// A guard's place in the table; empty if the table was full.
#[derive(Debug)]
pub(crate) struct Ticket(Option<usize>);

// ---------------------------------------------------------------------------
// Normal context: filling and reading the table.
// ---------------------------------------------------------------------------

/// Records a held file. Its `dir` and `file` must stay open until
/// [`unregister`].
pub(crate) fn register(registration: Registration) -> Ticket {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: `remove_on_exit` is an `extern "C" fn()` that never unwinds.
        // If registration fails (the C library's table is full) the
        // `process::exit` path is simply not covered; nothing else changes.
        unsafe { libc::atexit(remove_on_exit) };
    });
    let registration = Box::into_raw(Box::new(registration));
    for (index, slot) in HELD.iter().enumerate() {
        if slot
            .compare_exchange(ptr::null_mut(), registration, SeqCst, SeqCst)
            .is_ok()
        {
            return Ticket(Some(index));
        }
    }
    // SAFETY: it was never published, so we own it alone.
    drop(unsafe { Box::from_raw(registration) });
    Ticket(None)
}

/// Takes a guard's file out of the table. Idempotent.
pub(crate) fn unregister(ticket: &mut Ticket) {
    let Some(index) = ticket.0.take() else {
        return;
    };
    let registration = HELD[index].swap(ptr::null_mut(), SeqCst);
    // A reader that loaded the pointer before the swap incremented READERS
    // before loading it; wait until it is done. Readers run a handful of
    // system calls and never block, so this wait is short; if the count does
    // not drop it was inherited across `fork()` from a thread that is gone,
    // and leaking one small allocation is the safe answer.
    let started = Stopwatch::start();
    while READERS.load(SeqCst) != 0 {
        if started.exceeded(READERS_PATIENCE) {
            return;
        }
        std::thread::yield_now();
    }
    if !registration.is_null() {
        // SAFETY: it left the table above and no reader still holds it.
        drop(unsafe { Box::from_raw(registration) });
    }
}

/// Whether a guard in this process holds the file with this identity (owned
/// or inherited across `fork()`: either way this process's records say it
/// has the locked descriptor).
pub(crate) fn is_held(identity: Identity) -> bool {
    with_registrations(|registration| registration.identity == identity)
}

/// Every registered lock, owned or inherited, as copies (it allocates). The
/// descriptor numbers in them are only ever used through raw system calls:
/// their guards may be dropped at any moment by another thread.
pub(crate) fn held() -> Vec<Registration> {
    let mut held = Vec::new();
    with_registrations(|registration| {
        held.push(registration.clone());
        false
    });
    held
}

/// The paths of the PID files this process owns.
pub(crate) fn held_paths() -> Vec<PathBuf> {
    held()
        .into_iter()
        .filter(|held| held.owner.is_current())
        .map(|held| held.path)
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
/// destructors, so the files are removed here. After `main` returns normally
/// the guards are already gone and this finds nothing.
extern "C" fn remove_on_exit() {
    let _errno = ErrnoGuard::save();
    remove_held_files();
}

/// Removes every file this process owns that its path still names, and
/// writes the release lines of each removed file to stderr. Inherited locks
/// (a `fork()` child's) are left alone. Also called in normal context, when a
/// lost PostgreSQL lock ends the program.
pub(crate) fn remove_held_files() {
    let mut stopping_sent = false;
    with_registrations(|registration| {
        if !registration.owner.is_current() {
            return false;
        }
        if !stopping_sent {
            notify_stopping();
            stopping_sent = true;
        }
        if unlink_if_ours(registration.dir, &registration.name, registration.identity) == Ok(true)
            && let Some(lines) = &registration.release_lines
        {
            write_stderr(lines);
        }
        false
    });
}

/// Calls `visit` on each registration until it returns true.
fn with_registrations(mut visit: impl FnMut(&Registration) -> bool) -> bool {
    READERS.fetch_add(1, SeqCst);
    let mut found = false;
    for slot in &HELD {
        // SAFETY: a non-null pointer in the table stays valid while READERS > 0.
        if let Some(registration) = unsafe { slot.load(SeqCst).as_ref() }
            && visit(registration)
        {
            found = true;
            break;
        }
    }
    READERS.fetch_sub(1, SeqCst);
    found
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
