//! The registry of held locks: which files this process holds, read by the
//! exit paths (a signal handler, `atexit`) and changed by guards.
//!
//! Readers may run in a signal handler, so a read takes no lock and never
//! allocates or frees: it counts itself in, loads the current list, and
//! counts itself out when its [`ReadGuard`] drops. A writer (a guard being
//! made or dropped, in normal context) copies the list, changes the copy,
//! publishes it with one atomic swap, and frees the old list only once no
//! reader can still be looking at it. This is signal-hook-registry's
//! "half lock": two reader counters, one per generation; a writer flips the
//! generation, so new readers count in the other slot, and waits for the old
//! slot to drain.
//!
//! There is no fixed number of slots: a process may hold as many locks as it
//! likes, and every one of them is on the exit paths.
//!
//! `fork()` copies the registry into the child in whatever state the other
//! threads left it. The child's only thread is the one that forked, which is
//! inside neither a read nor a write, so the child handler
//! ([`Registry::after_fork_in_child`]) clears the counts and the writer's
//! flag that threads which do not exist in the child may have left set.
//! Should a count still never drain (a read interrupted by a handler that
//! forked), a writer gives up waiting after [`READERS_PATIENCE`] and leaks
//! the old list rather than free it under a reader.

use std::ops::Deref;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use super::Registration;
use crate::sys::Stopwatch;

/// How long a writer waits for readers of the list it replaced before it
/// leaks that list instead of freeing it. Readers run a handful of system
/// calls; a count that stays up was left by a thread that no longer exists.
const READERS_PATIENCE: Duration = Duration::from_millis(100);

type List = Vec<Arc<Registration>>;

/// The held locks of this process; see the module docs.
pub(crate) struct Registry {
    /// The current list; null while empty (so that the static needs no
    /// allocation to exist).
    list: AtomicPtr<List>,
    /// Which of `readers` new readers count themselves in.
    generation: AtomicUsize,
    readers: [AtomicUsize; 2],
    /// Held by the one writer at a time (normal context only).
    writing: AtomicBool,
}

/// A reader's view of the list: valid until it drops.
pub(crate) struct ReadGuard<'a> {
    list: &'a [Arc<Registration>],
    count: &'a AtomicUsize,
}

impl Deref for ReadGuard<'_> {
    type Target = [Arc<Registration>];

    fn deref(&self) -> &Self::Target {
        self.list
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
    }
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Self {
            list: AtomicPtr::new(ptr::null_mut()),
            generation: AtomicUsize::new(0),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
            writing: AtomicBool::new(false),
        }
    }

    /// The current list. Async-signal-safe: two atomic operations now and
    /// one when the guard drops.
    pub(crate) fn read(&self) -> ReadGuard<'_> {
        let count = &self.readers[self.generation.load(SeqCst) % 2];
        count.fetch_add(1, SeqCst);
        // SAFETY: a non-null list stays allocated while a count it may have
        // been read under is above zero (see `publish`).
        let list = unsafe { self.list.load(SeqCst).as_ref() }.map_or(&[][..], Vec::as_slice);
        ReadGuard { list, count }
    }

    /// Adds a held lock. Normal context only.
    pub(crate) fn add(&self, registration: Arc<Registration>) {
        self.change(|list| list.push(registration));
    }

    /// Takes a held lock out (the very registration `add` was given).
    /// Normal context only; idempotent.
    pub(crate) fn remove(&self, registration: &Arc<Registration>) {
        self.change(|list| list.retain(|held| !Arc::ptr_eq(held, registration)));
    }

    /// Copies the list, changes the copy and publishes it.
    fn change(&self, edit: impl FnOnce(&mut List)) {
        while self
            .writing
            .compare_exchange_weak(false, true, SeqCst, SeqCst)
            .is_err()
        {
            std::thread::yield_now();
        }
        let mut list = self.read().to_vec();
        edit(&mut list);
        let new = if list.is_empty() {
            ptr::null_mut()
        } else {
            Box::into_raw(Box::new(list))
        };
        self.publish(new);
        self.writing.store(false, SeqCst);
    }

    /// Swaps `new` in and frees the old list once no reader can hold it.
    fn publish(&self, new: *mut List) {
        let old = self.list.swap(new, SeqCst);
        // A reader that loaded `old` counted itself in before it did, in
        // the slot of the generation it saw. Flip the generation so that
        // readers from now on count in the other slot (and can only load
        // `new`), then wait until each slot has been seen at zero once:
        // every reader that could have loaded `old` is gone by then.
        let mut seen_zero = [false; 2];
        let look = |seen: &mut [bool; 2]| {
            for (seen, count) in seen.iter_mut().zip(&self.readers) {
                *seen |= count.load(SeqCst) == 0;
            }
        };
        look(&mut seen_zero);
        self.generation.fetch_add(1, SeqCst);
        let waiting = Stopwatch::start();
        while !seen_zero.iter().all(|&seen| seen) {
            if waiting.exceeded(READERS_PATIENCE) {
                // A count left by a thread that is gone: leaking the old
                // list is the safe answer.
                return;
            }
            std::thread::yield_now();
            look(&mut seen_zero);
        }
        if !old.is_null() {
            // SAFETY: unpublished above, and no reader holds it any more.
            drop(unsafe { Box::from_raw(old) });
        }
    }

    /// In a `fork()` child: no other thread exists, so no reader or writer
    /// is in progress whatever the counts say. Async-signal-safe.
    pub(crate) fn after_fork_in_child(&self) {
        for count in &self.readers {
            count.store(0, SeqCst);
        }
        self.writing.store(false, SeqCst);
    }
}
