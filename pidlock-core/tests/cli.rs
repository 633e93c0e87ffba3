//! The `pidlock` command against real lock holders: forked children that
//! hold a `flock` on the file, as another program would.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Holder, HolderOptions};
use nix::sys::signal::Signal;

fn pidlock(args: &[&str], path: &Path) -> (Output, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_pidlock"))
        .arg(args[0])
        .arg(path)
        .args(&args[1..])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn status_of_a_running_holder_exits_0_with_pid_command_and_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let holder = Holder::start(&path, HolderOptions::default());
    let (output, stdout, _) = pidlock(&["status"], &path);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let pid = holder.pid;
    assert!(
        stdout.contains(&format!("running (PID {pid}, verified with the kernel)")),
        "{stdout}"
    );
    // The line `systemctl status` shows as STATUS= for the same holder.
    assert!(
        stdout.contains(&format!(
            "\n  PID {pid} holds the lock on {}\n",
            path.display()
        )),
        "{stdout}"
    );
    // The forked holder is a copy of this test binary.
    let me = std::env::current_exe().unwrap();
    assert!(
        stdout.contains(&format!("  command: {}", me.display())),
        "{stdout}"
    );
    assert!(stdout.contains("  started: 20"), "{stdout}");
}

#[test]
fn status_of_a_stale_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    std::fs::write(&path, "2147483646\n").unwrap();
    let (output, stdout, _) = pidlock(&["status"], &path);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("not running, but the PID file remains (PID 2147483646)"),
        "{stdout}"
    );
}

#[test]
fn status_without_a_file_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let (output, stdout, _) = pidlock(&["status"], &dir.path().join("app.pid"));
    assert_eq!(output.status.code(), Some(3), "{stdout}");
    assert!(stdout.ends_with(": not running\n"), "{stdout}");
}

#[test]
fn status_of_a_symlink_is_an_error_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
    let (output, _, stderr) = pidlock(&["status"], &path);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("it is a symbolic link"), "{stderr}");
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_sends_sigterm_to_the_holder_and_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut holder = Holder::start(&path, HolderOptions::default());
    let (output, stdout, stderr) = pidlock(&["stop"], &path);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("PID {} stopped", holder.pid)),
        "{stdout}"
    );
    assert_eq!(holder.death(), Some(Signal::SIGTERM));
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_with_signal_int_sends_sigint_for_ctrl_c_only_programs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut holder = Holder::start(&path, HolderOptions::default());
    let (output, stdout, stderr) = pidlock(&["stop", "--signal", "INT"], &path);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(holder.death(), Some(Signal::SIGINT));
    let (output, _, stderr) = pidlock(&["stop", "--signal", "USR1"], &path);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown signal \"USR1\""), "{stderr}");
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_of_a_holder_ignoring_sigterm_fails_without_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let holder = Holder::start(
        &path,
        HolderOptions {
            ignore_sigterm: true,
            ..HolderOptions::default()
        },
    );
    let (output, _, stderr) = pidlock(&["stop", "--timeout", "300ms"], &path);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "PID {} is still running after 300ms; add --kill to send SIGKILL",
            holder.pid
        )),
        "{stderr}"
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_with_kill_kills_a_holder_ignoring_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut holder = Holder::start(
        &path,
        HolderOptions {
            ignore_sigterm: true,
            ..HolderOptions::default()
        },
    );
    let (output, stdout, stderr) = pidlock(&["stop", "--timeout", "300ms", "--kill"], &path);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("PID {} killed after 300ms", holder.pid)),
        "{stdout}"
    );
    assert_eq!(holder.death(), Some(Signal::SIGKILL));
}

#[test]
fn stop_when_not_running_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (output, stdout, _) = pidlock(&["stop"], &dir.path().join("app.pid"));
    assert_eq!(output.status.code(), Some(0), "{stdout}");
}

#[test]
fn wait_blocks_until_the_holder_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut holder = Holder::start(&path, HolderOptions::default());
    let mut waiter = Command::new(env!("CARGO_BIN_EXE_pidlock"))
        .arg("wait")
        .arg(&path)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait returned while the lock was held"
    );
    nix::sys::signal::kill(holder.pid, Signal::SIGTERM).unwrap();
    holder.death();
    let status = waiter.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(status.signal(), None);
}

#[test]
fn wait_with_a_timeout_exits_1_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let _holder = Holder::start(&path, HolderOptions::default());
    let (output, _, stderr) = pidlock(&["wait", "--timeout", "300ms"], &path);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("still held after 300ms"), "{stderr}");
}

#[test]
fn bad_usage_exits_2_with_the_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _, stderr) = pidlock(&["restart"], &dir.path().join("app.pid"));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("usage: pidlock status PATH"), "{stderr}");
}

/// Whether `/proc/locks` shows a process waiting for a `flock` on `path`.
fn someone_waits_for(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let inode = format!(":{} ", meta.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|line| line.contains("-> FLOCK") && line.contains(&inode))
}

/// The holder dies of SIGTERM without removing its file, a standby waiting
/// for the lock takes it on the same inode, and `stop --kill` reports the
/// holder stopped and the standby as the holder now, never signalling it.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn stop_reports_the_standby_that_took_over_and_never_signals_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let mut holder = Holder::start(&path, HolderOptions::default());
    let standby_path = path.clone();
    let standby =
        std::thread::spawn(move || Holder::start(&standby_path, HolderOptions::default()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !someone_waits_for(&path) {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never waited"
        );
        std::thread::yield_now();
    }
    let (output, stdout, stderr) = pidlock(&["stop", "--timeout", "2s", "--kill"], &path);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let standby = standby.join().unwrap();
    let stopped = format!("{}: PID {} stopped", path.display(), holder.pid);
    let took_over = format!("{stopped}; the lock is now held by PID {}\n", standby.pid);
    assert!(
        stdout == format!("{stopped}\n") || stdout == took_over,
        "{stdout}"
    );
    assert_eq!(holder.death(), Some(Signal::SIGTERM));
    assert!(standby.running(), "the standby was signalled");
}

/// A file nobody runs under, held open with a shared lock by a reader: not
/// running (LSB 1), and the reader is named as what it is.
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn status_names_a_reader_as_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    std::fs::write(&path, "2147483646\n").unwrap();
    let mut reader = Command::new("flock")
        .arg("-s")
        .arg(&path)
        .args(["sh", "-c", "echo locked; exec cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(reader.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    let (output, stdout, _) = pidlock(&["status"], &path);
    drop(reader.stdin.take());
    let _ = reader.wait();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("not running, but the PID file remains (PID 2147483646)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  held open by a reader, not an instance: PID {} (user root (uid 0): flock -s ",
            reader.id()
        )) || !nix::unistd::geteuid().is_root(),
        "{stdout}"
    );
}
