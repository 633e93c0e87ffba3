//! DESIGN.md, *Processes and places*, with real processes: pidlock acts on
//! the lock's true holder, not on a dead locker's PID that another process
//! reused, nor on a PID in the file that happens to be ours.
//!
//! Linux only, as root: some tests steer the next PID
//! (`/proc/sys/kernel/ns_last_pid`).

mod common;
mod programs;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal;
use pidlock_core::{Error, OnConflict, PidLock, Signals, Status, Stopped};
use programs::*;

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
// 1. The PID in /proc/locks is whoever took the lock: it may have exited
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
// 2. "Held by this process" comes from our own records, not from a number.

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
