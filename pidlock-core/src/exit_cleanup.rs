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

use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

use crate::lockfile::{Identity, unlink_if_ours};
use crate::messages::RELEASE_LINES;

const SLOTS: usize = 8;

struct Registration {
    dir: RawFd,
    /// The locked descriptor, for [`crate::restart`].
    file: RawFd,
    name: CString,
    identity: Identity,
    /// For reports (never read in signal context).
    path: PathBuf,
}

static HELD: [AtomicPtr<Registration>; SLOTS] = [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS];
static READERS: AtomicUsize = AtomicUsize::new(0);

/// A guard's place in the table; empty if the table was full.
#[derive(Debug)]
pub(crate) struct Ticket(Option<usize>);

/// Records a held file. `dir` and `file` must stay open until [`unregister`].
pub(crate) fn register(
    dir: RawFd,
    file: RawFd,
    name: &CStr,
    identity: Identity,
    path: &Path,
) -> Ticket {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: `remove_on_exit` is an `extern "C" fn()` that never unwinds.
        // If registration fails (the C library's table is full) the
        // `process::exit` path is simply not covered; nothing else changes.
        unsafe { nix::libc::atexit(remove_on_exit) };
    });
    let registration = Box::into_raw(Box::new(Registration {
        dir,
        file,
        name: name.to_owned(),
        identity,
        path: path.to_owned(),
    }));
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
    // system calls and never block, so this wait is short and bounded.
    while READERS.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    if !registration.is_null() {
        // SAFETY: it left the table above and no reader still holds it.
        drop(unsafe { Box::from_raw(registration) });
    }
}

/// Whether a guard in this process holds the file with this identity.
pub(crate) fn is_held(identity: Identity) -> bool {
    with_registrations(|registration| registration.identity == identity)
}

/// The locked descriptors of every registered file (normal context only: it
/// allocates).
pub(crate) fn held_files() -> Vec<(RawFd, Identity)> {
    let mut held = Vec::new();
    with_registrations(|registration| {
        held.push((registration.file, registration.identity));
        false
    });
    held
}

/// The paths of the files this process holds locks on (normal context only).
pub(crate) fn held_paths() -> Vec<PathBuf> {
    let mut held = Vec::new();
    with_registrations(|registration| {
        held.push(registration.path.clone());
        false
    });
    held
}

/// Removes every registered file that its path still names; returns whether
/// any was removed.
///
/// Async-signal-safe: atomics, then `fstatat` and `unlinkat` on a name that is
/// already a C string.
pub(crate) fn remove_held_files() -> bool {
    let mut removed = false;
    with_registrations(|registration| {
        // SAFETY: the guard keeps `dir` open until after it unregisters.
        let dir = unsafe { BorrowedFd::borrow_raw(registration.dir) };
        removed |= unlink_if_ours(dir, &registration.name, registration.identity) == Ok(true);
        false
    });
    removed
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

/// Writes the SPEC §6 release lines without formatting or allocating.
pub(crate) fn announce_release() {
    // SAFETY: fd 2 is only borrowed for one write; if it is closed the write fails harmlessly.
    let stderr = unsafe { BorrowedFd::borrow_raw(2) };
    let _ = nix::unistd::write(stderr, RELEASE_LINES);
}

/// `atexit` handler: `std::process::exit` from any thread skips the guards'
/// destructors, so the files are removed here. After `main` returns normally
/// the guards are already gone and this finds nothing.
extern "C" fn remove_on_exit() {
    if remove_held_files() {
        announce_release();
    }
}
