//! Waiting for a lock, woken by the kernel when the holder lets go.
//!
//! A blocking `flock(LOCK_EX)` sleeps in the kernel until the lock is free:
//! no polling, and the hand-over happens as soon as the holder's descriptor
//! closes. A blocking `flock` cannot be given a deadline, so a wait with a
//! timeout runs it on a helper thread and waits for that thread's answer with
//! one. If the deadline passes first, the helper is left blocked; when it
//! later obtains the lock, it finds the wait abandoned and drops its answer,
//! which closes the descriptor and releases the lock at once.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::lockfile::{flock, retry_eintr};

/// How a wait ended.
pub(crate) enum Waited {
    /// We hold the lock on this descriptor (which may since have been
    /// unlinked: the caller re-checks the path).
    Locked(OwnedFd),
    /// The deadline passed first.
    TimedOut,
}

/// Blocks until `file` is locked exclusively, or until `deadline`.
pub(crate) fn lock_exclusive(file: OwnedFd, deadline: Option<Instant>) -> nix::Result<Waited> {
    lock(file, nix::libc::LOCK_EX, deadline)
}

/// Blocks until `file` can be locked shared (nobody holds it exclusively),
/// or until `deadline`: how an observer waits for a holder to let go.
pub(crate) fn lock_shared(file: OwnedFd, deadline: Option<Instant>) -> nix::Result<Waited> {
    lock(file, nix::libc::LOCK_SH, deadline)
}

fn lock(file: OwnedFd, operation: i32, deadline: Option<Instant>) -> nix::Result<Waited> {
    let Some(deadline) = deadline else {
        retry_eintr(|| flock(file.as_fd(), operation))?;
        return Ok(Waited::Locked(file));
    };
    let meeting = Arc::new(Meeting::default());
    let helper = Arc::clone(&meeting);
    std::thread::Builder::new()
        .name("pidlock-wait".to_owned())
        .spawn(move || {
            let locked = retry_eintr(|| flock(file.as_fd(), operation)).map(|()| file);
            helper.answer(locked);
        })
        .map_err(|_| nix::errno::Errno::EAGAIN)?;
    meeting.await_answer(deadline)
}

/// Where the helper thread leaves its answer. A mutex and a condition
/// variable rather than a channel: the same behaviour, and a few kilobytes
/// less in every binary that links pidlock.
#[derive(Default)]
struct Meeting {
    state: Mutex<State>,
    answered: Condvar,
}

#[derive(Default)]
struct State {
    answer: Option<nix::Result<OwnedFd>>,
    /// The waiter gave up: a late answer is dropped on arrival, which closes
    /// the descriptor and releases the lock we were too late to want.
    abandoned: bool,
}

impl Meeting {
    fn answer(&self, locked: nix::Result<OwnedFd>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.abandoned {
            state.answer = Some(locked);
            self.answered.notify_one();
        }
    }

    fn await_answer(&self, deadline: Instant) -> nix::Result<Waited> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (mut state, _) = self
            .answered
            .wait_timeout_while(state, timeout, |state| state.answer.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        match state.answer.take() {
            Some(locked) => locked.map(Waited::Locked),
            None => {
                state.abandoned = true;
                Ok(Waited::TimedOut)
            }
        }
    }
}
