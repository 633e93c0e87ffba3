//! DESIGN.md, *Exit paths*, one test per row: however the program ends, the file is gone
//! and the exit status is what it would have been without pidlock.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;

/// Asserts that the program left no PID file behind.
fn assert_file_gone(case: &Case) {
    assert!(
        !case.pid_file.exists(),
        "{} left behind",
        case.pid_file.display()
    );
}

/// Asserts that `pid` is in the PID file and a second instance is refused.
fn assert_held_by(case: &Case, pid: u32) {
    assert_eq!(read(&case.pid_file), format!("{pid}\n"));
    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(
        status.code(),
        Some(1),
        "a second instance was let in:\n{stderr}"
    );
}

#[test]
fn return_from_main_removes_the_file() {
    let case = Case::new();
    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_file_gone(&case);
}

#[test]
fn err_return_removes_the_file_and_exits_1() {
    let case = Case::new();
    let (status, stderr) = run(case.holder(&["err"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Error: \"the program failed\""), "{stderr}");
    assert_file_gone(&case);
}

#[test]
fn exit_code_return_removes_the_file_and_keeps_the_code() {
    let case = Case::new();
    let (status, stderr) = run(case.holder(&["exit-code"]));
    assert_eq!(status.code(), Some(7), "{stderr}");
    assert_file_gone(&case);
}

#[test]
fn panic_unwinding_removes_the_file_and_exits_101() {
    let case = Case::new();
    let (status, stderr) = run(case.holder(&["panic"]));
    assert_eq!(status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("the program panicked"), "{stderr}");
    assert!(stderr.contains("PID file lock released"), "{stderr}");
    assert_file_gone(&case);
}

#[test]
fn abort_removes_the_file_and_dies_by_sigabrt() {
    let case = Case::new();
    let (status, stderr) = run(case.holder(&["abort"]));
    assert!(killed_by(status, Signal::SIGABRT), "{status:?}\n{stderr}");
    assert_file_gone(&case);
}

#[test]
fn panic_in_a_panic_abort_build_removes_the_file_and_dies_by_sigabrt() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/panic-abort/Cargo.toml");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nested");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--quiet", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let case = Case::new();
    let exe = target.join("debug/fixture-panic-abort");
    let (status, stderr) = run(case.command(&exe, &["-"]));
    assert!(killed_by(status, Signal::SIGABRT), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("panicked under panic = \"abort\""),
        "{stderr}"
    );
    assert_file_gone(&case);
}

#[test]
fn process_exit_from_main_removes_the_file_and_keeps_the_code() {
    let case = Case::new();
    let (status, stderr) = run(case.holder(&["process-exit"]));
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.ends_with(&release_lines(&case.pid_file)), "{stderr}");
    assert_file_gone(&case);
}

#[test]
fn process_exit_from_another_thread_removes_the_file_and_keeps_the_code() {
    let case = Case::new();
    let (status, stderr) = run(case.holder(&["process-exit-thread"]));
    assert_eq!(status.code(), Some(6), "{stderr}");
    assert_file_gone(&case);
}

fn dies_by(signal: Signal) {
    let case = Case::new();
    let running = start(case.holder(&["hold"]));
    assert_held_by(&case, running.pid());
    running.signal(signal);
    let (status, stderr) = running.finish();
    assert!(killed_by(status, signal), "{status:?}\n{stderr}");
    assert!(stderr.ends_with(&release_lines(&case.pid_file)), "{stderr}");
    assert_file_gone(&case);
}

#[test]
fn sigterm_without_handler_removes_file_and_dies_by_signal() {
    dies_by(Signal::SIGTERM);
}

#[test]
fn sigint_without_handler_removes_file_and_dies_by_signal() {
    dies_by(Signal::SIGINT);
}

#[test]
fn sighup_without_handler_removes_file_and_dies_by_signal() {
    dies_by(Signal::SIGHUP);
}

#[test]
fn sigquit_without_handler_removes_file_and_dies_by_signal() {
    dies_by(Signal::SIGQUIT);
}

#[test]
fn sigabrt_without_handler_removes_file_and_dies_by_signal() {
    dies_by(Signal::SIGABRT);
}

fn graceful_on_sigint(command: Command, pid_file: &Path) {
    let running = start(command);
    running.signal(Signal::SIGINT);
    let (status, stderr) = running.finish();
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("graceful shutdown ran"),
        "the program's own shutdown did not run:\n{stderr}"
    );
    assert!(
        stderr.ends_with(&format!(
            "INFO - PID file lock released: {}\n",
            pid_file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn sigint_with_tokio_ctrl_c_below_the_attribute_runs_the_programs_shutdown() {
    let case = Case::new();
    graceful_on_sigint(
        case.command(env!("CARGO_BIN_EXE_fixture-tokio-above"), &["ctrl-c"]),
        &case.pid_file,
    );
    assert_file_gone(&case);
}

#[test]
fn sigint_with_tokio_ctrl_c_above_the_attribute_runs_the_programs_shutdown() {
    let case = Case::new();
    graceful_on_sigint(
        case.command(env!("CARGO_BIN_EXE_fixture-tokio-below"), &["ctrl-c"]),
        &case.pid_file,
    );
    assert_file_gone(&case);
}

#[test]
fn sigint_with_the_ctrlc_crate_runs_the_programs_shutdown() {
    let case = Case::new();
    graceful_on_sigint(case.holder(&["ctrlc"]), &case.pid_file);
    assert_file_gone(&case);
}

#[test]
fn sighup_ignored_at_start_stays_ignored() {
    let case = Case::new();
    // Through `nohup` itself, which ignores SIGHUP and execs the program
    // (after the harness has put the signals it inherits back to default).
    let command = case.command("nohup", &[env!("CARGO_BIN_EXE_fixture-holder"), "hold"]);
    let mut running = start(command);
    running.signal(Signal::SIGHUP);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "SIGHUP was not ignored"
    );
    assert_held_by(&case, running.pid());
    running.signal(Signal::SIGTERM);
    let (status, _) = running.finish();
    assert!(killed_by(status, Signal::SIGTERM));
    assert_file_gone(&case);
}

#[test]
fn worker_thread_panic_does_not_release_the_lock() {
    let case = Case::new();
    let running = start(case.holder(&["worker-panic"]));
    assert_held_by(&case, running.pid());
    running.signal(Signal::SIGTERM);
    let (_, stderr) = running.finish();
    assert!(stderr.contains("a worker panicked"), "{stderr}");
    assert_file_gone(&case);
}

#[test]
fn spawned_child_outlives_the_parent_without_holding_the_lock() {
    let case = Case::new();
    let parent = start(case.holder(&["spawn-child"]));
    let child_pid: i32 = parent.first_line.trim().parse().unwrap();
    let (status, stderr) = parent.finish();
    assert!(status.success(), "{stderr}");
    let child = nix::unistd::Pid::from_raw(child_pid);
    assert!(
        nix::sys::signal::kill(child, None).is_ok(),
        "the child should still run"
    );
    // The parent's file is gone and a new instance gets the lock although
    // the child that inherited everything else is alive.
    assert_file_gone(&case);
    let next = start(case.holder(&["hold"]));
    assert_held_by(&case, next.pid());
    nix::sys::signal::kill(child, Signal::SIGKILL).unwrap();
}

#[test]
fn sigkill_leaves_a_stale_file_that_the_next_start_takes_over_with_a_warning() {
    let case = Case::new();
    let running = start(case.holder(&["hold"]));
    let dead = running.pid();
    running.signal(Signal::SIGKILL);
    let (status, _) = running.finish();
    assert!(killed_by(status, Signal::SIGKILL));
    assert_eq!(
        read(&case.pid_file),
        format!("{dead}\n"),
        "SIGKILL cannot clean up"
    );
    let (status, stderr) = run(case.holder(&["exit"]));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "WARNING - Found stale PID file {} (PID {dead} not running). Removing...\n",
            case.pid_file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn file_replaced_under_a_holder_survives_the_holders_exit() {
    for ends_by_signal in [false, true] {
        let case = Case::new();
        let mut command = case.holder(&["until-stdin-closes"]);
        command.stdin(Stdio::piped());
        let mut a = start(command);
        // A's file deleted by hand; B starts and writes its own.
        std::fs::remove_file(&case.pid_file).unwrap();
        let b = start(case.holder(&["hold"]));
        assert_eq!(read(&case.pid_file), format!("{}\n", b.pid()));
        if ends_by_signal {
            a.signal(Signal::SIGTERM);
        } else {
            a.child.stdin.take().unwrap().write_all(b"\n").unwrap();
        }
        a.finish();
        assert_eq!(
            read(&case.pid_file),
            format!("{}\n", b.pid()),
            "A removed B's file"
        );
        assert_held_by(&case, b.pid());
    }
}
