//! The `pidlock` command run inside a container (a new PID namespace with
//! its own `/proc`) on a lock held on the host (DESIGN.md, *PID
//! namespaces*): the holder is invisible from there, so it is reported as
//! running with its PID unverified, never as dead, and never signalled.
//!
//! Needs root for `unshare`; skipped, with a note, otherwise.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Holder, HolderOptions};

/// Long enough for a loaded machine, short enough to fail a hung test.
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `pidlock ARGS` as PID 1 of a new PID namespace with its own
/// `/proc`, with a deadline; `--kill-child` takes the namespace down with
/// `unshare` if the deadline passes.
fn pidlock_in_container(args: &[&str], path: &Path) -> (Output, String, String) {
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(env!("CARGO_BIN_EXE_pidlock"))
        .arg(args[0])
        .arg(path)
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pidlock {args:?} still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (unshare)");
            return;
        }
    };
}

#[test]
fn status_in_a_container_reports_a_host_holder_running_not_dead() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let holder = Holder::start(
        &path,
        HolderOptions {
            write_pid: true,
            ..HolderOptions::default()
        },
    );
    let (output, stdout, stderr) = pidlock_in_container(&["status"], &path);
    // LSB 0 "running", not 1 "dead but the PID file exists".
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}: running (PID unknown: no process here can be verified as the holder; \
             the PID file says {})\n",
            path.display(),
            holder.pid
        )
    );
    eprintln!("after: {}", stdout.trim_end());
    assert!(holder.running());
}

#[test]
fn stop_in_a_container_refuses_to_signal_an_unverified_host_holder() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let holder = Holder::start(
        &path,
        HolderOptions {
            write_pid: true,
            ..HolderOptions::default()
        },
    );
    let (output, stdout, stderr) = pidlock_in_container(&["stop", "--kill"], &path);
    assert_eq!(output.status.code(), Some(4), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "pidlock: not signalling the holder of {}: no process could be verified as \
             holding its lock (PID: {} per its PID file, not verified); a PID from the file \
             alone is never signalled\n",
            path.display(),
            holder.pid
        )
    );
    eprintln!("after: {}", stderr.trim_end());
    assert!(holder.running(), "the host's holder was signalled");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", holder.pid)
    );
}

#[test]
fn wait_in_a_container_sees_a_host_holder_as_holding() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let holder = Holder::start(
        &path,
        HolderOptions {
            write_pid: true,
            ..HolderOptions::default()
        },
    );
    let (output, stdout, stderr) = pidlock_in_container(&["wait", "--timeout", "200ms"], &path);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("still held after 200ms"), "{stderr}");
    assert!(holder.running());
}
