//! Waiting for a lock, woken by the kernel when the holder lets go.
//!
//! A wait without a deadline is a blocking `flock(LOCK_EX)`: it sleeps in the
//! kernel until the lock is free, no polling, and the hand-over happens as
//! soon as the holder's descriptor closes — unless the caller also wants to
//! know when the file loses its name (see below).
//!
//! A starting instance that waits must notice when the file it waits on is
//! no longer the one its path names: the holder removed it on its way out,
//! and a reader that took a shared lock on that unlinked inode could then
//! keep a blocking `flock` waiting forever, while the path is free. Such a
//! wait (`lock_exclusive` with a check of the name) therefore always takes
//! the watched path below on Linux, deadline or not: the watch also reports
//! the file losing a name (`IN_ATTRIB`, `IN_DELETE_SELF`), and the wait then
//! ends with [`Waited::Unnamed`], for the caller to open the path again.
//! For the same reason such a wait also ends, with [`Waited::OnlyShared`],
//! when its holder is gone but readers keep shared locks on the file (a
//! crashed instance's file keeps its name): the exclusive lock would wait
//! for them, while the caller may replace a file only readers hold.
//!
//! A blocking `flock` cannot be given a deadline. On Linux a wait with one
//! therefore never blocks in `flock`: it watches the file with inotify and
//! retries `flock(LOCK_NB)` each time the file reports a close, sleeping in
//! `poll` on the inotify descriptor in between, so that nothing outlives the
//! call. The watch is placed through `/proc/self/fd/N`, because all we have
//! is the descriptor (the path may since have been unlinked or replaced);
//! `inotify_add_watch` follows that link to the open file's inode, deleted or
//! not.
//!
//! The order matters. The watch is set before the first `LOCK_NB` attempt, so
//! a holder that closes between a failed attempt and the `poll` has already
//! queued its event and the `poll` returns at once; watching only after a
//! failed attempt would miss that close and sleep on a free lock.
//!
//! The kernel reports a close just before it drops that description's locks
//! (`__fput` calls `fsnotify_close` before `locks_remove_file`), so a retry
//! right after the event can still find the lock taken. After each event the
//! wait therefore retries a few times at short, growing intervals before it
//! goes back to sleeping until the next event.
//!
//! Each sleep is also capped at one second, because some releases produce no
//! event at all: a holder that gives the lock up with `flock(LOCK_UN)` while
//! keeping the file open, and the same close/unlock ordering when the close
//! was reported before our watch existed but the unlock came after our
//! attempt. The cap bounds how late such a release is noticed without turning
//! the wait into a busy poll.
//!
//! Where inotify is not available (elsewhere than Linux; on Linux when the
//! per-user instance or watch limit is reached, `/proc` is not mounted, or a
//! sandbox forbids the calls), a start's wait (one given a check of the
//! name) tries again at growing intervals, up to a second apart, looking
//! around after each attempt as the watched wait does: a blocking `flock`
//! would wake sooner but could wait behind readers forever. An observer's
//! wait blocks in `flock`, or with a deadline runs the blocking `flock` on a
//! helper thread and waits for that thread's answer with a deadline. If the
//! deadline passes first, the helper is left blocked until the lock is free;
//! when it then obtains the lock, it finds the wait abandoned and drops its
//! answer, which closes the descriptor and releases the lock at once.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::sys::{flock, retry_eintr};

/// How a wait ended.
pub(crate) enum Waited {
    /// We hold the lock on this descriptor (which may since have been
    /// unlinked: the caller re-checks the path).
    Acquired(OwnedFd),
    /// The deadline passed first.
    TimedOut,
    /// The file no longer is the one its path names (the check the caller
    /// gave said so after a wake-up): nothing was locked.
    Unnamed,
    /// Nobody holds the file exclusively any more, but readers hold shared
    /// locks on it (a wait given a check of the name only): nothing was
    /// locked, and the caller may replace the file.
    OnlyShared,
}

/// Whether the waited-on file is still the one its path names.
pub(crate) type StillNamed<'a> = &'a dyn Fn() -> bool;

/// Blocks until `file` is locked exclusively, or until `deadline`, or (with
/// `named`, where the kernel can report it) until `named` says the file lost
/// its name.
pub(crate) fn lock_exclusive(
    file: OwnedFd,
    deadline: Option<Instant>,
    named: Option<StillNamed<'_>>,
) -> nix::Result<Waited> {
    let look = named.map(|named| Look {
        named,
        for_readers: true,
    });
    lock(file, nix::libc::LOCK_EX, deadline, look)
}

/// As [`lock_exclusive`] with a check of the name, for a file that only
/// readers hold and that cannot be replaced: waits for them to let go
/// (never ends with [`Waited::OnlyShared`]).
pub(crate) fn lock_exclusive_after_readers(
    file: OwnedFd,
    deadline: Option<Instant>,
    named: StillNamed<'_>,
) -> nix::Result<Waited> {
    let look = Look {
        named,
        for_readers: false,
    };
    lock(file, nix::libc::LOCK_EX, deadline, Some(look))
}

/// What a start's wait looks at after each failed attempt.
#[derive(Clone, Copy)]
struct Look<'a> {
    /// Whether the file still has its name.
    named: StillNamed<'a>,
    /// Whether to end the wait when only readers hold the file.
    for_readers: bool,
}

/// Blocks until `file` can be locked shared (nobody holds it exclusively),
/// or until `deadline`: how an observer waits for a holder to let go.
pub(crate) fn lock_shared(file: OwnedFd, deadline: Option<Instant>) -> nix::Result<Waited> {
    lock(file, nix::libc::LOCK_SH, deadline, None)
}

fn lock(
    file: OwnedFd,
    operation: i32,
    deadline: Option<Instant>,
    look: Option<Look<'_>>,
) -> nix::Result<Waited> {
    let Some(look) = look else {
        let Some(deadline) = deadline else {
            retry_eintr(|| flock(file.as_fd(), operation))?;
            return Ok(Waited::Acquired(file));
        };
        if let Some(outcome) = at_once(&file, operation, deadline)? {
            return Ok(outcome.with(file));
        }
        let watched = notified::lock_until(
            file.as_fd(),
            operation,
            Some(deadline),
            notified::MAX_SLEEP,
            None,
        )?;
        return match watched {
            Some(outcome) => Ok(outcome.with(file)),
            None => helper::lock_until(file, operation, deadline),
        };
    };
    if let Some(deadline) = deadline
        && let Some(outcome) = at_once(&file, operation, deadline)?
    {
        return Ok(outcome.with(file));
    }
    let watched = notified::lock_until(
        file.as_fd(),
        operation,
        deadline,
        notified::MAX_SLEEP,
        Some(look),
    )?;
    let outcome = match watched {
        Some(outcome) => outcome,
        None => polled::lock_until(file.as_fd(), operation, deadline, look)?,
    };
    Ok(outcome.with(file))
}

/// Free already, or no time to wait: answers at once, with no watch and no
/// thread (observers asking "is it free?" with a zero timeout); `None` if
/// the wait goes on.
fn at_once(file: &OwnedFd, operation: i32, deadline: Instant) -> nix::Result<Option<Outcome>> {
    match retry_eintr(|| flock(file.as_fd(), operation | nix::libc::LOCK_NB)) {
        Ok(()) => Ok(Some(Outcome::Acquired)),
        Err(nix::errno::Errno::EWOULDBLOCK) if Instant::now() >= deadline => {
            Ok(Some(Outcome::TimedOut))
        }
        Err(nix::errno::Errno::EWOULDBLOCK) => Ok(None),
        Err(errno) => Err(errno),
    }
}

/// How a wait ended, before the descriptor is handed back with it.
enum Outcome {
    Acquired,
    TimedOut,
    /// The caller's check says the file lost its name.
    Unnamed,
    /// Only shared locks are left on the file (asked with a check of the
    /// name only); nothing is locked.
    OnlyShared,
}

impl Outcome {
    fn with(self, file: OwnedFd) -> Waited {
        match self {
            Self::Acquired => Waited::Acquired(file),
            Self::TimedOut => Waited::TimedOut,
            Self::Unnamed => Waited::Unnamed,
            Self::OnlyShared => Waited::OnlyShared,
        }
    }
}

/// After a failed exclusive attempt in a wait given a check of the name:
/// whether the file is still the one the path names, and whether a holder
/// is left at all, or only readers (whose shared locks would keep an
/// exclusive wait waiting for as long as they like). `None`: wait on.
fn look_around(
    file: BorrowedFd<'_>,
    operation: i32,
    look: Option<Look<'_>>,
) -> nix::Result<Option<Outcome>> {
    let Some(look) = look else {
        return Ok(None);
    };
    if !(look.named)() {
        return Ok(Some(Outcome::Unnamed));
    }
    if operation != nix::libc::LOCK_EX || !look.for_readers {
        return Ok(None);
    }
    // The shared lock is given back at once: it only tells readers from a
    // holder.
    match flock(file, nix::libc::LOCK_SH | nix::libc::LOCK_NB) {
        Ok(()) => flock(file, nix::libc::LOCK_UN).map(|()| Some(Outcome::OnlyShared)),
        Err(nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR) => Ok(None),
        Err(errno) => Err(errno),
    }
}

/// The wait woken by close events (inotify on Linux; see [`CloseWatch`]).
mod notified {
    use std::os::fd::BorrowedFd;
    use std::time::{Duration, Instant};

    use nix::errno::Errno;
    use nix::libc::LOCK_NB;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use super::{Look, Outcome, look_around};
    use crate::sys::{CloseWatch, flock};

    /// The longest sleep between two attempts; see the module docs for the
    /// releases that produce no event.
    pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);

    /// The first retry interval after an event, covering the moment between
    /// the kernel reporting a close and dropping that description's locks
    /// (microseconds); it doubles while the lock stays taken.
    const AFTER_EVENT: Duration = Duration::from_micros(200);

    /// Tries to lock `file` until `deadline` (or for as long as it takes),
    /// sleeping between attempts until the file reports a close, or for
    /// `max_sleep` at most; after each failed attempt, with `look`, looks
    /// around ([`look_around`]). `None`: no close watch could be had (then
    /// nothing was locked, and the caller waits another way).
    pub(super) fn lock_until(
        file: BorrowedFd<'_>,
        operation: i32,
        deadline: Option<Instant>,
        max_sleep: Duration,
        look: Option<Look<'_>>,
    ) -> nix::Result<Option<Outcome>> {
        let Some(watch) = CloseWatch::new(file) else {
            return Ok(None);
        };
        let mut sleep = max_sleep;
        loop {
            match flock(file, operation | LOCK_NB) {
                Ok(()) => return Ok(Some(Outcome::Acquired)),
                Err(Errno::EWOULDBLOCK | Errno::EINTR) => {}
                Err(errno) => return Err(errno),
            }
            if let Some(outcome) = look_around(file, operation, look)? {
                return Ok(Some(outcome));
            }
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => return Ok(Some(Outcome::TimedOut)),
                Some(deadline) => deadline - now,
                None => sleep,
            };
            let mut fds = [PollFd::new(watch.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(left.min(sleep))) {
                Ok(0) => sleep = sleep.saturating_mul(2).min(max_sleep),
                Ok(_) => {
                    if watch.drain().is_err() {
                        return Ok(None);
                    }
                    sleep = AFTER_EVENT.min(max_sleep);
                }
                // The loop recomputes the time left.
                Err(Errno::EINTR) => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Rounds up: a timeout rounded down to 0 ms would spin until the
    /// deadline.
    fn poll_timeout(wait: Duration) -> PollTimeout {
        PollTimeout::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
    }
}

/// The wait of a start given a check of the name where no close watch can
/// be had: attempts at growing intervals, up to [`notified::MAX_SLEEP`]. A
/// blocking `flock` would be woken sooner, but could not notice the file
/// losing its name or being left to readers, and would wait behind them
/// for as long as they like.
mod polled {
    use std::os::fd::BorrowedFd;
    use std::time::{Duration, Instant};

    use nix::errno::Errno;
    use nix::libc::LOCK_NB;

    use super::{Look, Outcome, look_around, notified::MAX_SLEEP};
    use crate::sys::flock;

    /// The first interval; it doubles up to [`MAX_SLEEP`].
    const FIRST_SLEEP: Duration = Duration::from_millis(1);

    pub(super) fn lock_until(
        file: BorrowedFd<'_>,
        operation: i32,
        deadline: Option<Instant>,
        look: Look<'_>,
    ) -> nix::Result<Outcome> {
        let mut sleep = FIRST_SLEEP;
        loop {
            match flock(file, operation | LOCK_NB) {
                Ok(()) => return Ok(Outcome::Acquired),
                Err(Errno::EWOULDBLOCK | Errno::EINTR) => {}
                Err(errno) => return Err(errno),
            }
            if let Some(outcome) = look_around(file, operation, Some(look))? {
                return Ok(outcome);
            }
            let mut nap = sleep;
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Outcome::TimedOut);
                }
                nap = nap.min(deadline - now);
            }
            std::thread::sleep(nap);
            sleep = sleep.saturating_mul(2).min(MAX_SLEEP);
        }
    }
}

mod helper {
    use super::*;

    /// Runs a blocking `flock` on a thread and waits for its answer until
    /// `deadline`; if the deadline wins, the thread stays blocked until the
    /// lock is free.
    pub(super) fn lock_until(
        file: OwnedFd,
        operation: i32,
        deadline: Instant,
    ) -> nix::Result<Waited> {
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
        /// The waiter gave up: a late answer is dropped on arrival, which
        /// closes the descriptor and releases the lock we were too late to
        /// want.
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
                Some(locked) => locked.map(Waited::Acquired),
                None => {
                    state.abandoned = true;
                    Ok(Waited::TimedOut)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{File, OpenOptions};
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::Path;
    use std::process::Command;
    use std::thread;
    use std::time::{Duration, Instant};

    use nix::libc::{LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN};

    use super::*;
    use crate::sys::flock;

    /// Set in the child process that runs the thread-count probe alone.
    const PROBE: &str = "PIDLOCK_WAITING_THREAD_PROBE";

    /// Far beyond any wake-up we expect, so that only a wait that is never
    /// woken reaches it: the assertions are about being woken, not about
    /// timing, on a machine that may be busy.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn open(path: &Path) -> OwnedFd {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .expect("open the test file");
        file.into()
    }

    /// Opened the way `flock(1)` opens a file it locks.
    fn open_read_only(path: &Path) -> OwnedFd {
        File::open(path)
            .expect("open the test file read-only")
            .into()
    }

    /// Locks `file` for a test's holder. A test that spawns a process (the
    /// thread probe does) copies every descriptor of this process into the
    /// child until it execs, so a lock another check of the same test has
    /// just let go of can outlive its close for a moment.
    fn hold(file: OwnedFd, operation: i32) -> OwnedFd {
        let deadline = Instant::now() + PATIENCE;
        while let Err(errno) = flock(file.as_fd(), operation | LOCK_NB) {
            assert!(
                errno == nix::errno::Errno::EWOULDBLOCK && Instant::now() < deadline,
                "take the lock for the holder: {errno}"
            );
            thread::sleep(Duration::from_millis(10));
        }
        file
    }

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("list /proc/self/task")
            .count()
    }

    fn timed_out(waited: nix::Result<Waited>) -> bool {
        matches!(waited, Ok(Waited::TimedOut))
    }

    fn locked(waited: nix::Result<Waited>) -> bool {
        matches!(waited, Ok(Waited::Acquired(_)))
    }

    /// Runs `wait` while another thread lets go of `holder` after ~100 ms
    /// with `release`, and returns how the wait ended and how long it took.
    fn wait_while_released<T>(
        holder: OwnedFd,
        release: impl FnOnce(OwnedFd) + Send + 'static,
        wait: impl FnOnce(Instant) -> T,
    ) -> (T, Duration) {
        let releaser = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            release(holder);
        });
        let started = Instant::now();
        let waited = wait(started + PATIENCE);
        let elapsed = started.elapsed();
        releaser.join().expect("release the holder");
        (waited, elapsed)
    }

    /// Which flavour of wait a check exercises: the public entry points, and
    /// on Linux the inotify loop with no sleep cap, which can only finish
    /// before the deadline if an inotify event wakes it.
    #[derive(Clone, Copy, Debug)]
    enum Via {
        Public,
        #[cfg(all(target_os = "linux", not(pidlock_portable)))]
        EventsOnly,
    }

    const VIAS: &[Via] = &[
        Via::Public,
        #[cfg(all(target_os = "linux", not(pidlock_portable)))]
        Via::EventsOnly,
    ];

    fn wait_via(via: Via, file: OwnedFd, operation: i32, deadline: Instant) -> bool {
        match via {
            Via::Public if operation == LOCK_EX => {
                locked(lock_exclusive(file, Some(deadline), None))
            }
            Via::Public => locked(lock_shared(file, Some(deadline))),
            #[cfg(all(target_os = "linux", not(pidlock_portable)))]
            Via::EventsOnly => matches!(
                notified::lock_until(
                    file.as_fd(),
                    operation,
                    Some(deadline),
                    Duration::from_secs(3600),
                    None
                ),
                Ok(Some(Outcome::Acquired))
            ),
        }
    }

    /// Checks that a wait for `operation` on `path` is woken when the holder
    /// opened by `open_holder` closes its descriptor.
    fn check_woken_by_close(path: &Path, open_holder: fn(&Path) -> OwnedFd, operation: i32) {
        for &via in VIAS {
            let holder = hold(open_holder(path), LOCK_EX);
            let (locked, elapsed) = wait_while_released(holder, drop, |deadline| {
                wait_via(via, open(path), operation, deadline)
            });
            assert!(locked, "{via:?}: not woken by the holder's close");
            assert!(
                elapsed < PATIENCE / 2,
                "{via:?}: woken late, after {elapsed:?}"
            );
        }
    }

    /// (1) The defect this module once had: each timed-out wait left a thread
    /// blocked in `flock` for as long as the holder held on. Threads are
    /// counted in a child process that runs this test alone, since the test
    /// harness runs other tests on threads of its own meanwhile.
    #[test]
    #[cfg_attr(
        any(not(target_os = "linux"), pidlock_portable),
        ignore = "Linux only: the portable layer's timed wait leaves its helper thread blocked until the holder lets go"
    )]
    fn timed_out_wait_leaves_no_thread_behind() {
        if std::env::var_os(PROBE).is_none() {
            let module = module_path!()
                .split_once("::")
                .map_or(module_path!(), |(_, rest)| rest);
            let name = format!("{module}::timed_out_wait_leaves_no_thread_behind");
            let exe = std::env::current_exe().expect("find the test binary");
            let output = Command::new(exe)
                .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
                .env(PROBE, "1")
                .output()
                .expect("run the probe");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success() && stdout.contains("1 passed"),
                "probe failed:\n{stdout}\n{stderr}"
            );
            return;
        }
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        let _holder = hold(open(&path), LOCK_EX);
        let before = threads();
        let timeout = Duration::from_millis(200);
        let exclusive = |file, deadline| lock_exclusive(file, deadline, None);
        let waits: [&dyn Fn(OwnedFd, Option<Instant>) -> nix::Result<Waited>; 3] =
            [&exclusive, &lock_shared, &exclusive];
        for wait in waits {
            let started = Instant::now();
            let waited = wait(open(&path), Some(started + timeout));
            let elapsed = started.elapsed();
            assert!(timed_out(waited), "the lock is held");
            assert!(elapsed >= timeout, "gave up early, after {elapsed:?}");
            assert!(elapsed < timeout + PATIENCE, "overslept: {elapsed:?}");
        }
        assert_eq!(threads(), before, "a timed-out wait left threads behind");
    }

    /// (2)
    #[test]
    fn timed_wait_is_woken_when_the_holder_closes() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        check_woken_by_close(&dir.path().join("held.pid"), open, LOCK_EX);
    }

    /// (3) `flock(1)` opens read-only: its close is IN_CLOSE_NOWRITE.
    #[test]
    fn timed_wait_is_woken_when_a_read_only_holder_closes() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        drop(open(&path));
        check_woken_by_close(&path, open_read_only, LOCK_EX);
    }

    /// (4)
    #[test]
    fn shared_wait_times_out_and_is_woken_like_an_exclusive_one() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        let holder = hold(open(&path), LOCK_EX);
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        assert!(timed_out(lock_shared(open(&path), Some(started + timeout))));
        assert!(started.elapsed() >= timeout);
        drop(holder);

        check_woken_by_close(&path, open, LOCK_SH);
        check_woken_by_close(&path, open_read_only, LOCK_SH);
    }

    #[test]
    fn shared_wait_gets_in_beside_a_shared_holder() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        let _holder = hold(open(&path), LOCK_SH);
        assert!(locked(lock_shared(
            open(&path),
            Some(Instant::now() + PATIENCE)
        )));
    }

    /// How pidlock's own holder lets go: it unlinks the file, then closes.
    #[test]
    fn timed_wait_is_woken_when_the_holder_unlinks_then_closes() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        for &via in VIAS {
            let holder = hold(open(&path), LOCK_EX);
            let waiter = open(&path);
            let unlink = path.clone();
            let release = move |holder| {
                std::fs::remove_file(unlink).expect("unlink the test file");
                drop(holder);
            };
            let (locked, elapsed) = wait_while_released(holder, release, |deadline| {
                wait_via(via, waiter, LOCK_EX, deadline)
            });
            assert!(locked, "{via:?}: not woken");
            assert!(
                elapsed < PATIENCE / 2,
                "{via:?}: woken late, after {elapsed:?}"
            );
        }
    }

    /// A waiting start notices that the holder removed the file on its way
    /// out, while the lock is still held: a reader that takes a shared lock
    /// on the removed inode then cannot keep it waiting (a blocking `flock`
    /// could wait behind that reader forever). With a deadline or without.
    #[test]
    fn a_wait_that_checks_the_name_ends_when_the_file_is_removed() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        for deadline in [None, Some(Instant::now() + PATIENCE)] {
            let holder = hold(open(&path), LOCK_EX);
            let waiter = open(&path);
            let (named_path, unlinked) = (path.clone(), path.clone());
            // The holder removes the file and keeps the lock past the point
            // the wait must have ended.
            let release = move |holder: OwnedFd| {
                std::fs::remove_file(&unlinked).expect("unlink the test file");
                thread::sleep(PATIENCE / 2);
                drop(holder);
            };
            let named = move || named_path.exists();
            let (waited, elapsed) = wait_while_released(holder, release, |_| {
                lock_exclusive(waiter, deadline, Some(&named))
            });
            assert!(
                matches!(waited, Ok(Waited::Unnamed)),
                "{deadline:?}: the wait did not notice the file was removed"
            );
            assert!(
                elapsed < PATIENCE / 2,
                "{deadline:?}: noticed late, after {elapsed:?}"
            );
        }
    }

    /// `LOCK_UN` without a close makes no inotify event: the capped sleep is
    /// what notices it.
    #[test]
    fn timed_wait_notices_an_unlock_without_a_close() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        let holder = hold(open(&path), LOCK_EX);
        let unlock = |holder: OwnedFd| {
            flock(holder.as_fd(), LOCK_UN).expect("unlock");
            // Kept open past the wait's end, so that no close wakes it.
            thread::sleep(Duration::from_secs(3));
        };
        let (waited, elapsed) = wait_while_released(holder, unlock, |deadline| {
            lock_exclusive(open(&path), Some(deadline), None)
        });
        assert!(locked(waited), "the unlock was never noticed");
        assert!(elapsed < PATIENCE / 2, "noticed late, after {elapsed:?}");
    }

    #[test]
    fn timed_wait_on_a_free_lock_takes_it_even_past_the_deadline() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("free.pid");
        assert!(locked(lock_exclusive(
            open(&path),
            Some(Instant::now()),
            None
        )));
    }

    #[test]
    fn untimed_wait_blocks_until_the_holder_closes() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        let holder = hold(open(&path), LOCK_EX);
        let (waited, _) =
            wait_while_released(holder, drop, |_| lock_exclusive(open(&path), None, None));
        assert!(locked(waited));
    }

    /// The fallback where inotify is unavailable, and the only path elsewhere.
    #[test]
    fn helper_thread_wait_times_out_and_is_woken() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("held.pid");
        let holder = hold(open(&path), LOCK_EX);
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        assert!(timed_out(helper::lock_until(
            open(&path),
            LOCK_EX,
            started + timeout
        )));
        assert!(started.elapsed() >= timeout);
        let (waited, elapsed) = wait_while_released(holder, drop, |deadline| {
            helper::lock_until(open(&path), LOCK_EX, deadline)
        });
        assert!(locked(waited));
        assert!(elapsed < PATIENCE / 2, "woken late, after {elapsed:?}");
    }
}
