//! The files to remove when the process ends without dropping its guards:
//! `std::process::exit` (through `atexit`) and fatal signals (through
//! [`crate::signals`]).
//!
//! # Global state
//!
//! This is the crate's only global state besides the signal dispositions.
//! A guard registers its directory descriptor, file name and inode in a
//! fixed table of slots when it locks, and takes them out before it closes
//! its descriptors. The table is read from signal handlers and `atexit`, so
//! it is built from atomics only: no locks (a handler could interrupt the
//! holder of a lock and deadlock) and no allocation while reading.
//!
//! A registration is freed only after it has left the table and no reader is
//! inside [`remove_held_files`] (the `READERS` count), so a handler running on
//! another thread never follows a dangling pointer. A process holding more
//! than [`SLOTS`] locks at once still locks correctly; the extra guards are
//! just not covered on these two exit paths.
//!
//! # Ownership (SPEC §10)
//!
//! Each registration names its owner: the process that acquired the lock. A
//! child made by `fork()` without `exec` inherits the table (and shares the
//! kernel lock) but is not the owner, so none of its exit paths removes the
//! file or announces a release: the parent still holds the lock and its file
//! must keep naming it. [`crate::daemonized`] moves ownership to the child
//! that carries on after its parent exited. The owner is a shared atomic cell,
//! read with `getpid()` (async-signal-safe) wherever a file would be removed.

use std::ffi::CString;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use crate::lockfile::{Identity, unlink_if_ours};

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

/// A guard's place in the table; empty if the table was full.
#[derive(Debug)]
pub(crate) struct Ticket(Option<usize>);

/// Records a held file. Its `dir` and `file` must stay open until
/// [`unregister`].
pub(crate) fn register(registration: Registration) -> Ticket {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: `remove_on_exit` is an `extern "C" fn()` that never unwinds.
        // If registration fails (the C library's table is full) the
        // `process::exit` path is simply not covered; nothing else changes.
        unsafe { nix::libc::atexit(remove_on_exit) };
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
    let started = Instant::now();
    while READERS.load(SeqCst) != 0 {
        if started.elapsed() > READERS_PATIENCE {
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

/// Every registered lock, owned or inherited, as copies (normal context
/// only: it allocates). The descriptors stay open while their guards live.
pub(crate) fn held() -> Vec<Registration> {
    let mut held = Vec::new();
    with_registrations(|registration| {
        held.push(registration.clone());
        false
    });
    held
}

/// The paths of the PID files this process owns (normal context only).
pub(crate) fn held_paths() -> Vec<PathBuf> {
    held()
        .into_iter()
        .filter(|held| held.owner.is_current())
        .map(|held| held.path)
        .collect()
}

/// Removes every file this process owns that its path still names, and
/// writes the release lines of each removed file to stderr. Inherited locks
/// (a `fork()` child's) are left alone.
///
/// Async-signal-safe: atomics and `getpid`, then `fstatat` and `unlinkat` on
/// a name that is already a C string, `write(2)` of bytes formatted when
/// the lock was taken, and `send(2)` of `STOPPING=1` to the service manager
/// (see [`crate::systemd::notify_stopping_raw`]).
pub(crate) fn remove_held_files() {
    let mut stopping_sent = false;
    with_registrations(|registration| {
        if !registration.owner.is_current() {
            return false;
        }
        // SAFETY: the guard keeps `dir` open until after it unregisters.
        let dir = unsafe { BorrowedFd::borrow_raw(registration.dir) };
        if !stopping_sent {
            crate::systemd::notify_stopping_raw();
            stopping_sent = true;
        }
        if unlink_if_ours(dir, &registration.name, registration.identity) == Ok(true)
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

/// Writes `bytes` to fd 2 with the raw system call: no formatting, no
/// allocation, no lock, and no borrowed descriptor that may be closed (a
/// closed fd 2 just fails with `EBADF`).
fn write_stderr(bytes: &[u8]) {
    // SAFETY: `bytes` is valid for reads of its length during the call.
    let _ = unsafe { nix::libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// `atexit` handler: `std::process::exit` from any thread skips the guards'
/// destructors, so the files are removed here. After `main` returns normally
/// the guards are already gone and this finds nothing.
extern "C" fn remove_on_exit() {
    remove_held_files();
}
