//! Waiting for a lock, woken by the kernel when the holder lets go.
//!
//! A blocking `flock(LOCK_EX)` sleeps in the kernel until the lock is free:
//! no polling, and the hand-over happens as soon as the holder's descriptor
//! closes. A blocking `flock` cannot be given a deadline, so a wait with a
//! timeout runs it on a helper thread and waits for that thread's answer with
//! one. If the deadline passes first, the helper is left blocked; when it
//! later obtains the lock, nobody is listening any more, and dropping the
//! unsent answer closes the descriptor, which releases the lock at once.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
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
    let (answer, answered) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("pidlock-wait".to_owned())
        .spawn(move || {
            let locked = retry_eintr(|| flock(file.as_fd(), operation)).map(|()| file);
            // Fails only if the waiter gave up; the descriptor is then dropped
            // here, releasing the lock we were too late to want.
            let _ = answer.send(locked);
        })
        .map_err(|_| nix::errno::Errno::EAGAIN)?;
    match answered.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(locked) => locked.map(Waited::Locked),
        Err(_) => Ok(Waited::TimedOut),
    }
}
