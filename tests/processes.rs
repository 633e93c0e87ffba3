//! DESIGN.md, *Processes and places*, with real processes: the lock stays true under
//! `fork`, daemonizing, a PID namespace, and a dead or reused locker PID.
//!
//! Linux only, as root: some tests make a PID namespace (`unshare`) or steer
//! the next PID (`/proc/sys/kernel/ns_last_pid`).

mod common;

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::time::TimeSpec;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::time::{ClockId, ClockNanosleepFlags, clock_gettime, clock_nanosleep};
use pidlock_core::{Error, OnConflict, PidLock, Signals, Status, Stopped};

const RELEASE_LINES: [&str; 2] = ["Releasing PID lock", "PID file lock released"];

impl Case {
    fn assert_refused_naming(&self, pid: impl std::fmt::Display) {
        let (status, stderr) = run(self.holder(&["exit"]));
        assert_eq!(
            status.code(),
            Some(1),
            "a second instance was let in:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("Another instance is already running (PID: {pid})")),
            "the conflict does not name PID {pid}:\n{stderr}"
        );
    }

    /// A new instance starts (and exits, releasing).
    fn assert_new_instance_starts(&self) {
        let (status, stderr) = run(self.holder(&["exit"]));
        assert!(
            status.success(),
            "a new instance could not start:\n{stderr}"
        );
        assert!(!self.pid_file.exists());
    }

    fn contents(&self) -> Option<String> {
        std::fs::read_to_string(&self.pid_file).ok()
    }
}

fn has_release_line(line: &str) -> bool {
    RELEASE_LINES.iter().any(|release| line.contains(release))
}

// ---------------------------------------------------------------------------
// Watching programs: pipes read by threads, exits seen through pidfds.

/// The lines a pipe has carried so far, read as they arrive by a thread.
/// Keeps the first [`KEPT`] lines and counts them all (a program stuck in a
/// loop can print millions).
#[derive(Clone)]
struct Stream(Arc<(Mutex<Lines>, Condvar)>);

#[derive(Default)]
struct Lines {
    kept: Vec<String>,
    total: usize,
    closed: bool,
}

const KEPT: usize = 1000;

impl Stream {
    fn watch(pipe: impl Read + Send + 'static) -> Self {
        let stream = Self(Arc::default());
        let shared = stream.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text =
                            String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
                        let mut lines = shared.lock();
                        lines.total += 1;
                        if lines.kept.len() < KEPT {
                            lines.kept.push(text.into_owned());
                        }
                        drop(lines);
                        shared.0.1.notify_all();
                    }
                }
            }
            shared.lock().closed = true;
            shared.0.1.notify_all();
        });
        stream
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a line at index `from` or later that satisfies `wanted`:
    /// its index and text; `None` if the pipe closed or `deadline` passed
    /// first.
    fn wait_line(
        &self,
        from: usize,
        deadline: Instant,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let mut lines = self.lock();
        let mut next = from;
        loop {
            while next < lines.kept.len() {
                if wanted(&lines.kept[next]) {
                    return Some((next, lines.kept[next].clone()));
                }
                next += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if lines.closed || left.is_zero() {
                return None;
            }
            lines = self
                .0
                .1
                .wait_timeout(lines, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until every writer has closed the pipe; false at `deadline`.
    fn wait_closed(&self, deadline: Instant) -> bool {
        let mut lines = self.lock();
        while !lines.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = self
                .0
                .1
                .wait_timeout(lines, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn lines(&self) -> Vec<String> {
        self.lock().kept.clone()
    }

    fn total(&self) -> usize {
        self.lock().total
    }

    /// For failure messages: how many lines, and the first few.
    fn summary(&self) -> String {
        let lines = self.lock();
        let shown = lines.kept.len().min(12);
        format!(
            "{} lines{}:\n{}",
            lines.total,
            if lines.total > shown {
                format!(", the first {shown}")
            } else {
                String::new()
            },
            lines.kept[..shown].join("\n")
        )
    }
}

/// A process pinned by a pidfd: it can be signalled and awaited even when it
/// is not our child, and never stands for another process that reuses its
/// PID.
struct Pinned {
    pid: i32,
    fd: OwnedFd,
}

impl Pinned {
    /// `None` if there is no such process.
    fn new(pid: i32) -> Option<Self> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            // ENOENT: a process that is exiting (seen on Linux 6.18).
            let errno = Errno::last();
            assert!(
                matches!(errno, Errno::ESRCH | Errno::ENOENT),
                "pidfd_open({pid}): {errno}"
            );
            return None;
        }
        // SAFETY: a successful pidfd_open returned a descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        Some(Self { pid, fd })
    }

    /// Sends `signal`; false if the process has already exited.
    fn signal(&self, signal: Signal) -> bool {
        // SAFETY: a valid pidfd, a valid signal number, no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match Errno::result(sent) {
            Ok(_) => true,
            Err(Errno::ESRCH) => false,
            Err(errno) => panic!("signal {} with {signal}: {errno}", self.pid),
        }
    }

    /// Waits (woken by the kernel) until the process has exited; false at
    /// `deadline`.
    fn wait_exit(&self, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms =
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            match Errno::result(unsafe { libc::poll(&mut poll, 1, ms) }) {
                Ok(0) if left.is_zero() => return false,
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => return true,
                Err(errno) => panic!("poll the pidfd of {}: {errno}", self.pid),
            }
        }
    }

    fn alive(&self) -> bool {
        !self.wait_exit(Instant::now())
    }
}

/// A process we did not start directly (a daemon, PID 1 of a namespace),
/// killed on drop. `reap`: it is our child (we are its subreaper).
struct Stray {
    pinned: Pinned,
    reap: bool,
    reaped: bool,
}

impl Stray {
    fn new(pid: i32, reap: bool) -> Self {
        Self {
            pinned: Pinned::new(pid).unwrap_or_else(|| panic!("process {pid} is gone")),
            reap,
            reaped: false,
        }
    }

    /// Waits for its exit and reaps it.
    fn wait_status(&mut self, deadline: Instant) -> Option<WaitStatus> {
        assert!(self.reap);
        if !self.pinned.wait_exit(deadline) {
            return None;
        }
        self.reaped = true;
        Some(waitpid(nix::unistd::Pid::from_raw(self.pinned.pid), None).expect("waitpid"))
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        self.pinned.signal(Signal::SIGKILL);
        if self.pinned.wait_exit(Instant::now() + DEADLINE) && self.reap && !self.reaped {
            let _ = waitpid(
                nix::unistd::Pid::from_raw(self.pinned.pid),
                Some(WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// A child with its stdout and stderr watched, killed on drop.
struct Program {
    child: Child,
    stdout: Stream,
    stderr: Stream,
}

impl Program {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("spawn");
        Self {
            stdout: Stream::watch(child.stdout.take().expect("stdout piped")),
            stderr: Stream::watch(child.stderr.take().expect("stderr piped")),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn pinned(&self) -> Pinned {
        Pinned::new(self.child.id() as i32).expect("our unreaped child")
    }

    /// Waits (woken by the kernel) for the exit, up to `deadline`.
    fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if !self.pinned().wait_exit(deadline) {
            return None;
        }
        Some(self.child.wait().expect("wait"))
    }

    /// Waits for a stdout line; panics with what the program said if it
    /// does not come.
    fn expect_stdout(
        &self,
        deadline: Instant,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        match self.stdout.wait_line(0, deadline, wanted) {
            Some((_, line)) => line,
            None => panic!(
                "no {what} on stdout within {DEADLINE:?}; stdout {}\nstderr {}",
                self.stdout.summary(),
                self.stderr.summary()
            ),
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // A failed assertion must not leave a child holding a lock.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child that is killed and reaped on drop.
struct Kid(Child);

impl Kid {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }

    /// Waits for its exit, up to `deadline`.
    fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        if let Some(status) = self.0.try_wait().expect("try_wait") {
            return Some(status);
        }
        if !Pinned::new(self.pid())
            .expect("our unreaped child")
            .wait_exit(deadline)
        {
            return None;
        }
        Some(self.0.wait().expect("wait"))
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleeper() -> Command {
    let mut command = Command::new("sleep");
    command
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

// ---------------------------------------------------------------------------
// 1. A forked child is not the owner.

/// `mode` forks a worker that ends as `worker_end` says while the parent
/// holds the lock; nothing of the lock may change.
fn forked_worker_leaves_the_lock_alone(mode: &str, worker_end: &str) {
    let case = Case::new();
    let mut parent = Program::spawn(case.holder(&[mode]));
    let deadline = Instant::now() + DEADLINE;
    let worker = parent.expect_stdout(deadline, "worker line", |line| {
        line.starts_with("worker ") && !line.starts_with("worker ended")
    });
    if mode == "fork-sigterm" {
        let pid: i32 = worker["worker ".len()..].parse().expect("worker PID");
        // The worker blocks until this signal, so its PID is still its own.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    }
    // The parent writes this to stderr after the worker has ended: whatever
    // the worker wrote to the shared stderr comes before it.
    let Some((marker, _)) = parent.stderr.wait_line(0, deadline, |line| {
        line.starts_with("fixture: worker ended")
    }) else {
        panic!(
            "the parent never saw its worker end; stdout {}\nstderr {}",
            parent.stdout.summary(),
            parent.stderr.summary()
        );
    };
    let before = parent.stderr.lines()[..marker].to_vec();
    assert!(
        !before.iter().any(|line| has_release_line(line)),
        "the forked worker ({worker_end}) released the parent's lock; stderr up to its end:\n{}\n\
         file now: {:?}",
        before.join("\n"),
        case.contents()
    );
    let ended = parent.expect_stdout(deadline, "worker status", |line| {
        line.starts_with("worker ended: ")
    });
    assert_eq!(ended, format!("worker ended: {worker_end}"));
    parent.expect_stdout(deadline, "ready", |line| line == "ready");
    assert_eq!(
        case.contents().as_deref(),
        Some(format!("{}\n", parent.pid()).as_str()),
        "the file must still name the parent"
    );
    case.assert_refused_naming(parent.pid());

    parent.pinned().signal(Signal::SIGTERM);
    let status = parent
        .wait_exit(Instant::now() + DEADLINE)
        .expect("the parent survived SIGTERM");
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    assert!(!case.pid_file.exists(), "SIGTERM left the file behind");
    assert!(parent.stderr.wait_closed(Instant::now() + DEADLINE));
    let released = parent
        .stderr
        .lines()
        .iter()
        .filter(|line| line.contains("PID file lock released"))
        .count();
    assert_eq!(released, 1, "stderr {}", parent.stderr.summary());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_forked_worker_calling_process_exit_does_not_release_the_parents_lock() {
    forked_worker_leaves_the_lock_alone("fork-exit", "exited 0");
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_forked_worker_returning_from_main_does_not_release_the_parents_lock() {
    forked_worker_leaves_the_lock_alone("fork-return", "exited 0");
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_forked_worker_killed_by_sigterm_does_not_release_the_parents_lock() {
    forked_worker_leaves_the_lock_alone("fork-sigterm", "killed by SIGTERM");
}

// ---------------------------------------------------------------------------
// 2. The daemon pattern.

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_daemonized_child_becomes_the_owner_names_itself_and_releases_on_sigterm() {
    // The daemon is orphaned when the original process exits: become its
    // parent, so that it is reaped and its end can be checked.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let case = Case::new();
    let mut original = Program::spawn(case.holder(&["daemon"]));
    let deadline = Instant::now() + DEADLINE;
    let status = original
        .wait_exit(deadline)
        .unwrap_or_else(|| panic!("the original process did not exit in daemon()"));
    assert_eq!(status.code(), Some(0), "{}", original.stderr.summary());
    let ready = original.expect_stdout(deadline, "`ready <pid>` from the daemon", |line| {
        line.starts_with("ready ")
    });
    let daemon_pid: i32 = ready["ready ".len()..].parse().expect("daemon PID");
    let mut daemon = Stray::new(daemon_pid, true);
    assert_ne!(daemon_pid, original.pid() as i32);

    assert_eq!(
        case.contents().as_deref(),
        Some(format!("{daemon_pid}\n").as_str()),
        "the file must name the daemon (PID {daemon_pid}), not the original process (PID {}), \
         which has exited",
        original.pid()
    );
    case.assert_refused_naming(daemon_pid);

    assert!(daemon.pinned.signal(Signal::SIGTERM));
    let end = daemon
        .wait_status(Instant::now() + DEADLINE)
        .unwrap_or_else(|| panic!("the daemon survived SIGTERM"));
    assert!(
        matches!(end, WaitStatus::Signaled(_, Signal::SIGTERM, _)),
        "{end:?}"
    );
    assert!(
        !case.pid_file.exists(),
        "the daemon's SIGTERM left the file behind: {:?}",
        case.contents()
    );
    assert!(original.stderr.wait_closed(Instant::now() + DEADLINE));
    let stderr = original.stderr.lines().join("\n");
    assert!(
        RELEASE_LINES.iter().all(|line| stderr.contains(line)),
        "{stderr}"
    );
    case.assert_new_instance_starts();
}

// ---------------------------------------------------------------------------
// 3. PID 1 in a container.

#[test]
fn pid_1_of_a_pid_namespace_releases_and_exits_143_on_sigterm() {
    let case = Case::new();
    let command = case.command(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            env!("CARGO_BIN_EXE_fixture-holder"),
            "hold",
        ],
    );
    let mut unshare = Program::spawn(command);
    let deadline = Instant::now() + DEADLINE;
    unshare.expect_stdout(deadline, "ready", |line| line == "ready");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.pid())).unwrap();
    let host_pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("unshare has no child: {children:?}"));
    let fixture = Stray::new(host_pid, false);
    assert_eq!(case.contents().as_deref(), Some("1\n"), "not PID 1?");

    assert!(fixture.pinned.signal(Signal::SIGTERM));
    let Some(status) = unshare.wait_exit(Instant::now() + DEADLINE) else {
        panic!(
            "PID 1 of the namespace still runs {DEADLINE:?} after SIGTERM (its PID file {}); \
             stderr {}",
            match case.contents() {
                Some(_) => "is still there",
                None => "was removed: file gone, process still running",
            },
            unshare.stderr.summary()
        );
    };
    assert_eq!(
        status.code(),
        Some(143),
        "expected exit status 128+SIGTERM; {status:?} (signal {:?}), stderr {}",
        status.signal(),
        unshare.stderr.summary()
    );
    assert!(!fixture.pinned.alive());
    assert!(!case.pid_file.exists(), "SIGTERM left the file behind");
    assert!(unshare.stderr.wait_closed(Instant::now() + DEADLINE));
    let stderr = unshare.stderr.lines().join("\n");
    assert!(
        RELEASE_LINES.iter().all(|line| stderr.contains(line)),
        "{stderr}"
    );
    case.assert_new_instance_starts();
}

// ---------------------------------------------------------------------------
// 4. The PID in /proc/locks is whoever took the lock: it may have exited
// while the open file description it locked lives on in another process,
// and its PID may then be reused.

/// `sleep 1000` holding an exclusive `flock` on `path` (created if missing).
/// With `dead_locker`, the lock was taken on the shared open file
/// description by a process it forked, which then exited: `/proc/locks`
/// names that dead process, the sleep is the true holder.
struct LockHolder {
    sleep: Kid,
    /// The PID `/proc/locks` shows.
    locker: i32,
}

impl LockHolder {
    fn start(path: &Path, dead_locker: bool) -> Self {
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut command = sleeper();
        // SAFETY: between fork and exec only async-signal-safe calls (open,
        // flock, fork, _exit, waitpid) and no allocation.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if !dead_locker {
                    if libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    return Ok(());
                }
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    0 => libc::_exit(i32::from(
                        libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) != 0,
                    )),
                    locker => {
                        let mut status = 0;
                        while libc::waitpid(locker, &mut status, 0) < 0 {
                            if Errno::last() != Errno::EINTR {
                                return Err(std::io::Error::last_os_error());
                            }
                        }
                        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::ErrorKind::Other.into())
                        }
                    }
                }
            });
        }
        // spawn returns once the exec succeeded: the lock is held by then.
        let sleep = Kid(command.spawn().expect("spawn the lock holder"));
        let locker = proc_locks_pid(path).expect("the holder's lock is not in /proc/locks");
        if dead_locker {
            // The sleep reaped it before its exec.
            assert_ne!(locker, sleep.pid());
        } else {
            assert_eq!(locker, sleep.pid());
        }
        Self { sleep, locker }
    }

    fn pid(&self) -> i32 {
        self.sleep.pid()
    }
}

/// The PID `/proc/locks` shows for the FLOCK held on `path`'s inode (device
/// as hex `major:minor`, then the inode).
fn proc_locks_pid(path: &Path) -> Option<i32> {
    let meta = std::fs::metadata(path).unwrap();
    let wanted = (
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
        meta.ino(),
    );
    let table = std::fs::read_to_string("/proc/locks").unwrap();
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, _, pid, file, ..] = fields.as_slice() else {
            return None;
        };
        let mut parts = file.split(':');
        let file = (
            u64::from_str_radix(parts.next()?, 16).ok()?,
            u64::from_str_radix(parts.next()?, 16).ok()?,
            parts.next()?.parse().ok()?,
        );
        (file == wanted).then(|| pid.parse().ok()).flatten()
    })
}

/// Serializes the tests with a dead locker: one steers the next PID while
/// no other has a dead locker's PID free for the taking.
static STEERING: Mutex<()> = Mutex::new(());

fn steering() -> std::sync::MutexGuard<'static, ()> {
    STEERING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Steering attempts before giving up (other processes may take PIDs).
const STEER_ATTEMPTS: usize = 100;

/// A lock held by a sleep whose locker is dead, and a `victim` sleep that
/// has been given the dead locker's PID: `/proc/locks` now names the victim.
/// Call with [`steering`] held.
fn dead_locker_with_reused_pid(path: &Path) -> (LockHolder, Kid) {
    let deadline = Instant::now() + DEADLINE;
    let mut attempts = 0;
    loop {
        let holder = LockHolder::start(path, true);
        let locker = holder.locker;
        // Until another process takes the locker's PID, steer the next one.
        while Pinned::new(locker).is_none() {
            attempts += 1;
            std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", locker - 1))
                .expect("write /proc/sys/kernel/ns_last_pid (needs root)");
            let victim = Kid(sleeper().spawn().unwrap());
            if victim.pid() == locker {
                assert_eq!(proc_locks_pid(path), Some(locker));
                return (holder, victim);
            }
            drop(victim);
            if attempts >= STEER_ATTEMPTS || Instant::now() > deadline {
                panic!(
                    "gave up: could not give a new process the dead locker's PID {locker} in \
                     {attempts} attempts (other processes kept taking PIDs; CI={:?})",
                    std::env::var("CI").ok()
                );
            }
        }
        drop(holder);
        let _ = std::fs::remove_file(path);
    }
}

/// Waits until `program` prints `ready` or exits, up to `deadline`: whether
/// it got ready.
fn ready_or_exit(program: &mut Program, deadline: Instant) -> bool {
    let ready = program
        .stdout
        .wait_line(0, deadline, |line| line == "ready")
        .is_some();
    if !ready {
        program.wait_exit(Instant::now());
    }
    ready
}

/// Runs a takeover (1 s grace) against a holder: it must signal the true
/// holder only, then run.
fn takeover_signals_only_the_true_holder(
    case: &Case,
    holder: &mut LockHolder,
    victim: Option<&mut Kid>,
) {
    let started = Instant::now();
    let mut newcomer = Program::spawn(case.command(env!("CARGO_BIN_EXE_fixture-takeover"), &[]));
    let ready = ready_or_exit(&mut newcomer, started + DEADLINE);
    let took = started.elapsed();
    if let Some(victim) = victim {
        assert!(
            victim.alive(),
            "the takeover signalled PID {}: a process that reused the dead locker's PID and \
             never held the lock (true holder: {}); takeover {} after {took:?}; stderr {}",
            victim.pid(),
            holder.pid(),
            if ready { "ran" } else { "did not run" },
            newcomer.stderr.summary()
        );
    }
    assert!(
        ready,
        "the takeover did not run within {DEADLINE:?} (status {:?}); stderr {}",
        newcomer.child.try_wait(),
        newcomer.stderr.summary()
    );
    let end = holder
        .sleep
        .wait_exit(Instant::now() + DEADLINE)
        .expect("the true holder still runs");
    assert!(killed_by(end, Signal::SIGTERM), "true holder: {end:?}");
    assert_eq!(
        case.contents().as_deref(),
        Some(format!("{}\n", newcomer.pid()).as_str())
    );
    eprintln!("takeover ran after {took:?}");
    assert!(
        newcomer.stderr.total() <= 10,
        "the takeover printed too much: stderr {}",
        newcomer.stderr.summary()
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn takeover_never_signals_a_process_that_reused_a_dead_lockers_pid() {
    let _steering = steering();
    let case = Case::new();
    let (mut holder, mut victim) = dead_locker_with_reused_pid(&case.pid_file);
    takeover_signals_only_the_true_holder(&case, &mut holder, Some(&mut victim));
    assert!(victim.alive());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn takeover_signals_the_true_holder_and_returns_promptly_when_the_locker_is_dead() {
    let _steering = steering();
    let case = Case::new();
    let mut holder = LockHolder::start(&case.pid_file, true);
    takeover_signals_only_the_true_holder(&case, &mut holder, None);
}

/// `stop` in-process: must stop the true holder only.
fn stop_stops_only_the_true_holder(case: &Case, holder: &mut LockHolder, victim: Option<&mut Kid>) {
    let started = Instant::now();
    let stopped = pidlock_core::Stop::new()
        .timeout(Duration::from_secs(2))
        .escalation(pidlock_core::Escalation::Kill)
        .run(&case.pid_file);
    let took = started.elapsed();
    if let Some(victim) = victim {
        assert!(
            victim.alive(),
            "stop signalled PID {}: a process that reused the dead locker's PID and never held \
             the lock (true holder: {}); stop returned {stopped:?} after {took:?}",
            victim.pid(),
            holder.pid()
        );
    }
    let true_holder = pidlock_core::Pid::new(holder.pid()).unwrap();
    assert!(
        matches!(
            stopped,
            Ok(Stopped::Exited { pid, .. } | Stopped::Killed { pid, .. }) if pid == true_holder
        ),
        "stop returned {stopped:?} after {took:?}; the true holder is {true_holder}"
    );
    let end = holder
        .sleep
        .wait_exit(Instant::now() + DEADLINE)
        .expect("the true holder still runs");
    assert!(killed_by(end, Signal::SIGTERM), "true holder: {end:?}");
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_never_signals_a_process_that_reused_a_dead_lockers_pid() {
    let _steering = steering();
    let case = Case::new();
    let (mut holder, mut victim) = dead_locker_with_reused_pid(&case.pid_file);
    stop_stops_only_the_true_holder(&case, &mut holder, Some(&mut victim));
    assert!(victim.alive());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_stops_the_true_holder_when_the_locker_is_dead() {
    let _steering = steering();
    let case = Case::new();
    let mut holder = LockHolder::start(&case.pid_file, true);
    stop_stops_only_the_true_holder(&case, &mut holder, None);
}

fn status_names(case: &Case, holder: &LockHolder) {
    let status = pidlock_core::status(&case.pid_file);
    let true_holder = pidlock_core::Pid::new(holder.pid()).unwrap();
    assert!(
        matches!(&status, Ok(Status::Running(who)) if who.pid() == Some(true_holder)),
        "status says {status:?}; the true holder is {true_holder} (/proc/locks says {})",
        holder.locker
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn status_names_the_true_holder_not_a_process_that_reused_a_dead_lockers_pid() {
    let _steering = steering();
    let case = Case::new();
    let (holder, mut victim) = dead_locker_with_reused_pid(&case.pid_file);
    status_names(&case, &holder);
    assert!(victim.alive());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn status_names_the_true_holder_when_the_locker_is_dead() {
    let _steering = steering();
    let case = Case::new();
    let holder = LockHolder::start(&case.pid_file, true);
    status_names(&case, &holder);
}

// ---------------------------------------------------------------------------
// 5. "Held by this process" comes from our own records, not from a number.

fn a_file_naming_us_is_not_held_by_us(case: &Case) {
    std::fs::write(&case.pid_file, format!("{}\n", std::process::id())).unwrap();
    let lock = PidLock::new(&case.pid_file)
        .signals(Signals::None)
        .log_level(pidlock_core::LogLevel::Error);
    let waited = lock
        .clone()
        .on_conflict(OnConflict::Wait {
            timeout: Some(Duration::from_millis(300)),
        })
        .acquire();
    assert!(
        matches!(waited, Err(Error::TimedOut { .. })),
        "wait 300ms: {waited:?}"
    );
    let refused = lock.on_conflict(OnConflict::Exit).acquire();
    assert!(
        matches!(refused, Err(Error::AlreadyRunning { .. })),
        "exit: {refused:?}"
    );
}

#[test]
fn a_pidlock_holder_whose_file_shows_our_pid_is_another_instance() {
    let case = Case::new();
    let mut holder = start(case.holder(&["hold"]));
    a_file_naming_us_is_not_held_by_us(&case);
    assert!(
        holder.child.try_wait().unwrap().is_none(),
        "the holder died"
    );
}

#[test]
fn a_flock_holder_whose_file_shows_our_pid_is_another_instance() {
    let case = Case::new();
    let mut holder = LockHolder::start(&case.pid_file, false);
    a_file_naming_us_is_not_held_by_us(&case);
    assert!(holder.sleep.alive());
}

// ---------------------------------------------------------------------------
// 6. Fork churn.

#[test]
fn fork_churn_200_rounds_never_has_two_holders() {
    const ROUNDS: usize = 200;
    /// When each of a round's three instances starts, after the round's
    /// go: the later ones arrive while the first holds and its workers have
    /// (likely) ended already.
    const OFFSETS_MS: [u64; 3] = [0, 3, 6];
    let case = Case::new();
    let log = case.pid_file.with_file_name("holders.log");
    let started = Instant::now();
    for round in 0..ROUNDS {
        let go = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap()
            + TimeSpec::from(Duration::from_millis(15));
        let mut instances: Vec<Program> = OFFSETS_MS
            .iter()
            .map(|offset| {
                let at = go + TimeSpec::from(Duration::from_millis(*offset));
                let mut command =
                    case.holder(&["fork-churn", log.to_str().unwrap(), &round.to_string()]);
                command.stdin(Stdio::piped());
                // SAFETY: clock_nanosleep is async-signal-safe, as required
                // between fork and exec.
                unsafe {
                    command.pre_exec(move || {
                        while clock_nanosleep(
                            ClockId::CLOCK_MONOTONIC,
                            ClockNanosleepFlags::TIMER_ABSTIME,
                            &at,
                        )
                        .is_err()
                        {}
                        Ok(())
                    });
                }
                Program::spawn(command)
            })
            .collect();
        // A holder holds until its stdin closes, which happens only once
        // every instance of the round has either lost or said `holding`:
        // all of them tried while one held.
        let deadline = Instant::now() + DEADLINE;
        let mut winners = Vec::new();
        for (index, instance) in instances.iter_mut().enumerate() {
            if instance
                .stdout
                .wait_line(0, deadline, |line| line == "holding")
                .is_some()
            {
                winners.push(index);
            } else {
                let status = instance
                    .wait_exit(deadline)
                    .unwrap_or_else(|| panic!("round {round}: an instance hangs"));
                assert!(instance.stderr.wait_closed(deadline));
                let stderr = instance.stderr.lines().join("\n");
                assert!(
                    status.code() == Some(1)
                        && stderr.starts_with("ERROR - Another instance is already running ("),
                    "round {round}: lost for another reason ({status:?}):\n{stderr}"
                );
            }
        }
        for instance in &mut instances {
            drop(instance.child.stdin.take());
        }
        for index in &winners {
            let instance = &mut instances[*index];
            let status = instance
                .wait_exit(deadline)
                .unwrap_or_else(|| panic!("round {round}: a holder hangs"));
            assert!(
                status.success(),
                "round {round}: {status:?}\n{}",
                instance.stderr.summary()
            );
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} instances held the lock at once (file: {:?})",
            winners.len(),
            case.contents()
        );
        assert!(
            !case.pid_file.exists(),
            "round {round} left the file behind"
        );
    }
    let elapsed = started.elapsed();

    assert_held_one_at_a_time(&log, ROUNDS);
    eprintln!("{ROUNDS} rounds of 3 starts with forking holders in {elapsed:?}");
}
