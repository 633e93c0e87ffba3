//! DESIGN.md, *Processes and places*, with real processes: messages
//! through a logger or quieted.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use nix::sys::signal::Signal;

const QUIET: &str = env!("CARGO_BIN_EXE_fixture-quiet");

// --- One place per message: env_logger -----------------------------------

#[cfg(feature = "log")]
mod env_logger {
    use super::*;

    const LOGGED: &str = env!("CARGO_BIN_EXE_fixture-env-logger");

    /// Each of pidlock's messages appears exactly once in `stderr`,
    /// whichever place (stderr or the logger) it went to.
    fn each_once(stderr: &str, pid: u32, pid_file: &Path) {
        for text in [
            format!(
                "PID file lock acquired (PID: {pid}): {}",
                pid_file.display()
            ),
            "Releasing PID lock...".to_owned(),
            format!("PID file lock released: {}", pid_file.display()),
        ] {
            let count = stderr.lines().filter(|line| line.contains(&text)).count();
            assert_eq!(count, 1, "{text:?} printed {count} times:\n{stderr}");
        }
        assert_eq!(stderr.lines().count(), 3, "{stderr}");
    }

    #[test]
    fn with_env_logger_each_line_is_printed_once_when_main_returns() {
        let case = Case::new();
        let running = start(case.command(LOGGED, &[]));
        let pid = running.pid();
        let (status, stderr) = running.finish();
        assert!(status.success(), "{stderr}");
        each_once(&stderr, pid, &case.pid_file);
        // Before the logger: stderr; after it: the logger's own format.
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines[0].starts_with("INFO - PID file lock acquired"),
            "{stderr}"
        );
        assert!(
            lines[1..]
                .iter()
                .all(|line| !line.starts_with("INFO - ") && line.contains("pidlock")),
            "release lines did not go to env_logger:\n{stderr}"
        );
        eprintln!("after:\n{stderr}");
    }

    #[test]
    fn with_env_logger_each_line_is_printed_once_on_sigterm() {
        let case = Case::new();
        let running = start(case.command(LOGGED, &["hold"]));
        let pid = running.pid();
        running.signal(Signal::SIGTERM);
        let (status, stderr) = running.finish();
        assert!(killed_by(status, Signal::SIGTERM), "{status:?}\n{stderr}");
        each_once(&stderr, pid, &case.pid_file);
        assert!(!case.pid_file.exists());
        eprintln!("after (SIGTERM):\n{stderr}");
    }

    #[test]
    #[cfg_attr(
        pidlock_portable,
        ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
    )]
    fn with_env_logger_a_conflict_is_reported_once() {
        let case = Case::new();
        let first = start(case.command(LOGGED, &["hold"]));
        let (status, stderr) = run(case.command(LOGGED, &[]));
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr
                .matches("Another instance is already running")
                .count(),
            1,
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("kill {}", first.pid())),
            "{stderr}"
        );
    }
}

// --- Quieting ----------------------------------------------------------------

#[test]
fn pidlock_log_warn_makes_a_normal_start_and_stop_silent() {
    let case = Case::new();
    let mut command = case.holder(&["exit"]);
    command.env("PIDLOCK_LOG", "warn");
    let (status, stderr) = run(command);
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr, "");
    assert!(!case.pid_file.exists());
}

#[test]
fn pidlock_log_warn_makes_a_stop_by_sigterm_silent() {
    let case = Case::new();
    let mut command = case.holder(&["hold"]);
    command.env("PIDLOCK_LOG", "warn");
    let running = start(command);
    running.signal(Signal::SIGTERM);
    let (status, stderr) = running.finish();
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    assert_eq!(stderr, "");
    assert!(!case.pid_file.exists());
}

#[test]
fn pidlock_log_warn_still_shows_the_stale_warning() {
    let case = Case::new();
    let dead = dead_pid();
    fs::write(&case.pid_file, format!("{dead}\n")).unwrap();
    let mut command = case.holder(&["exit"]);
    command.env("PIDLOCK_LOG", "warn");
    let (status, stderr) = run(command);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "WARNING - Found stale PID file {} (PID {dead} not running). Removing...\n",
            case.pid_file.display()
        )
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn pidlock_log_error_still_reports_a_conflict() {
    let case = Case::new();
    let first = start(case.holder(&["hold"]));
    let mut command = case.holder(&["exit"]);
    command.env("PIDLOCK_LOG", "error");
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        headline(&stderr),
        format!(
            "ERROR - Another instance is already running (PID: {}).",
            first.pid()
        )
    );
    assert!(
        stderr.contains(&format!("kill {}", first.pid())),
        "{stderr}"
    );
    eprintln!("after: {}", headline(&stderr));
}

#[test]
fn log_warn_in_the_attribute_makes_a_normal_start_and_stop_silent() {
    let case = Case::new();
    let (status, stderr) = run(case.command(QUIET, &[]));
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr, "");
    assert!(!case.pid_file.exists());

    let running = start(case.command(QUIET, &["hold"]));
    running.signal(Signal::SIGTERM);
    let (status, stderr) = running.finish();
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    assert_eq!(stderr, "");
    assert!(!case.pid_file.exists());
}

#[test]
fn pidlock_log_info_wins_over_log_warn_in_the_attribute() {
    let case = Case::new();
    let mut command = case.command(QUIET, &[]);
    command.env("PIDLOCK_LOG", "info");
    let (status, stderr) = run(command);
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with("INFO - PID file lock acquired (PID: "),
        "{stderr}"
    );
    assert_eq!(lines[1..].join("\n") + "\n", release_lines(&case.pid_file));
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn log_warn_in_the_attribute_still_reports_a_conflict() {
    let case = Case::new();
    let first = start(case.command(QUIET, &["hold"]));
    let (status, stderr) = run(case.command(QUIET, &[]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "ERROR - Another instance is already running (PID: {}).\n",
            first.pid()
        )),
        "{stderr}"
    );
}
