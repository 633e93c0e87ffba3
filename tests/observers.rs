//! DESIGN.md, *Processes and places*, with real processes: observers
//! running flat out while instances come and go.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use pidlock_core::Status;

// --- Observers never make a start fail -------------------------------------

const CHURN_STARTS: usize = 500;

#[test]
fn status_and_wait_in_tight_loops_never_make_a_start_fail() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let case = Case::new();
    let log = case.dir.path().join("spans.log");
    let done = AtomicBool::new(false);
    // How often each observer found the lock held (or the file there), to
    // show that they did meet the instances.
    let running = AtomicUsize::new(0);
    let stale_empty = AtomicUsize::new(0);
    let stale_pid = AtomicUsize::new(0);
    let statuses = AtomicUsize::new(0);
    let held = AtomicUsize::new(0);
    let waits = AtomicUsize::new(0);
    let peak_threads = AtomicUsize::new(0);
    let started = Instant::now();
    let (failure, mut observer_errors) = std::thread::scope(|scope| {
        let status_loop = scope.spawn(|| {
            let mut errors = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match pidlock_core::status(&case.pid_file) {
                    Ok(Status::Running(_)) => _ = running.fetch_add(1, Ordering::Relaxed),
                    Ok(Status::Stale { pid: None, .. }) => {
                        _ = stale_empty.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(Status::Stale { pid: Some(_), .. }) => {
                        _ = stale_pid.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(Status::NotRunning) => {}
                    Err(error) => errors.push(format!("status: {error}")),
                }
                statuses.fetch_add(1, Ordering::Relaxed);
            }
            errors
        });
        let wait_loop = scope.spawn(|| {
            let mut errors = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match pidlock_core::wait_until_free(&case.pid_file, Some(std::time::Duration::ZERO))
                {
                    Ok(true) => {}
                    Ok(false) => {
                        held.fetch_add(1, Ordering::Relaxed);
                        peak_threads.fetch_max(threads(), Ordering::Relaxed);
                    }
                    Err(error) => errors.push(format!("wait_until_free: {error}")),
                }
                waits.fetch_add(1, Ordering::Relaxed);
            }
            errors
        });
        let mut failure = None;
        for start in 0..CHURN_STARTS {
            let mut command = case.holder(&["span"]);
            command.arg(&log);
            let (status, stderr) = run(command);
            if !status.success() {
                failure = Some(format!("start {start}: {status:?}\n{stderr}"));
                break;
            }
        }
        // Stop the observers whatever happened, then report.
        done.store(true, Ordering::Relaxed);
        let mut errors = status_loop.join().expect("status loop");
        errors.extend(wait_loop.join().expect("wait loop"));
        (failure, errors)
    });
    let elapsed = started.elapsed();
    eprintln!(
        "{CHURN_STARTS} starts in {elapsed:?}; status(): {} calls, {} running, {} stale empty, {} stale with a PID; \
         wait_until_free(0): {} calls, {} held; peak threads {}",
        statuses.load(Ordering::Relaxed),
        running.load(Ordering::Relaxed),
        stale_empty.load(Ordering::Relaxed),
        stale_pid.load(Ordering::Relaxed),
        waits.load(Ordering::Relaxed),
        held.load(Ordering::Relaxed),
        peak_threads.load(Ordering::Relaxed),
    );
    assert_eq!(failure, None, "a start failed while observers ran");
    observer_errors.truncate(5);
    assert!(observer_errors.is_empty(), "{observer_errors:#?}");

    assert_held_one_at_a_time(&log, CHURN_STARTS);
    assert!(!case.pid_file.exists());
}

/// How many threads this process has now.
/// pidlock's wait helper threads (named `pidlock-wait`) in this process.
fn wait_helpers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|comm| comm.trim() == "pidlock-wait")
                })
                .count()
        })
        .unwrap_or(0)
}

fn threads() -> usize {
    read(Path::new("/proc/self/status"))
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

// --- Races found while writing these tests, fixed -----------------------------

/// A holder removes its file before it lets go of the lock, so a file with a
/// PID in it whose lock can be taken is one that has just been removed by a
/// clean release: `status` must say "not running", not "dead but the PID
/// file exists" (LSB 1) about a file that no longer exists.
#[test]
fn status_never_calls_a_cleanly_released_file_stale() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let case = Case::new();
    let done = AtomicBool::new(false);
    let false_stale = AtomicUsize::new(0);
    let failure = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(Status::Stale { pid: Some(_), .. }) = pidlock_core::status(&case.pid_file)
                {
                    false_stale.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let mut failure = None;
        for start in 0..200 {
            let (status, stderr) = run(case.holder(&["exit"]));
            if !status.success() {
                failure = Some(format!("start {start}: {status:?}\n{stderr}"));
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
        failure
    });
    assert_eq!(failure, None);
    assert_eq!(
        false_stale.load(Ordering::Relaxed),
        0,
        "status() said Stale with a PID while every instance exited cleanly"
    );
}

/// `wait_until_free` with a timeout that passes must not leave anything
/// behind: a poller calling it every few seconds next to a long-running
/// holder would otherwise gather a blocked thread and a descriptor per call.
#[test]
fn a_timed_out_wait_until_free_leaves_no_thread_behind() {
    let case = Case::new();
    let _holder = start(case.holder(&["hold"]));
    for _ in 0..100 {
        assert!(
            !pidlock_core::wait_until_free(&case.pid_file, Some(std::time::Duration::ZERO))
                .unwrap()
        );
    }
    // Counted by name: the other tests of this binary start threads of
    // their own at the same time.
    assert_eq!(wait_helpers(), 0, "threads left blocked in flock");
}
