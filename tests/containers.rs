//! DESIGN.md, *Processes and places*, with real processes: a holder in a
//! container seen from the host and the other way round.
//!
//! The tests that need root (`unshare`) say so and are skipped, with a note
//! on stderr, when not run as root.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::process::Command;

use common::*;
use pidlock_core::{Holder, Status, Stopped};

/// A scratch directory with a PID file path in it.
impl Case {
    /// `exe args` as PID 1 of a new PID namespace with its own `/proc`, as
    /// in a container without `--init`. `--kill-child`: if `unshare` dies
    /// (a failed test kills it), so does everything in the namespace.
    fn in_container(&self, exe: &str, args: &[&str]) -> Command {
        let mut command = self.command("unshare", &[]);
        command
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .arg(exe)
            .args(args);
        command
    }
}

/// The child that `unshare --fork` started (PID 1 of its namespace), as the
/// host numbers it.
fn container_init(unshare: u32) -> i32 {
    let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("children of unshare");
    let pids: Vec<i32> = children
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "unshare's children: {children:?}");
    pids[0]
}

// --- A holder in a container, seen from the host -------------------------

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_container_holder_is_named_by_its_host_pid_and_stopped_by_it() {
    require_root!();
    let case = Case::new();
    let container = start(case.in_container(HOLDER, &["hold"]));
    let host_pid = container_init(container.pid());
    // It wrote the PID it has in its own namespace.
    assert_eq!(read(&case.pid_file), "1\n");

    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        headline(&stderr),
        format!(
            "ERROR - Another instance is already running (PID: {host_pid} here; \
             it calls itself PID 1: another PID namespace, e.g. a container)."
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("\n          kill {host_pid}\n")),
        "{stderr}"
    );
    assert!(
        !stderr.lines().any(|line| line.trim() == "kill 1"),
        "offers to kill PID 1 of the host:\n{stderr}"
    );
    eprintln!("after: {}", headline(&stderr));

    let host = pidlock_core::Pid::new(host_pid).unwrap();
    assert_eq!(
        pidlock_core::status(&case.pid_file).unwrap(),
        Status::Running(Holder::Kernel {
            pid: host,
            others: Vec::new(),
            ns_pid: pidlock_core::Pid::new(1),
        })
    );

    assert_eq!(
        pidlock_core::Stop::new()
            .timeout(DEADLINE)
            .run(&case.pid_file)
            .unwrap(),
        Stopped::Exited {
            pid: host,
            now_held_by: None
        }
    );
    let (status, stderr) = container.finish();
    // PID 1 has no default action for SIGTERM: the handler ends it with
    // 128 + 15 after cleanup (DESIGN.md, *Exit paths*); unshare passes that on.
    assert_eq!(status.code(), Some(143), "{status:?}\n{stderr}");
    assert!(!case.pid_file.exists(), "file left behind:\n{stderr}");
    assert!(stderr.ends_with(&release_lines(&case.pid_file)), "{stderr}");
}

// --- A holder on the host, seen from a container -------------------------

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn from_a_container_a_host_holder_is_a_conflict_without_a_pid_to_kill() {
    require_root!();
    let case = Case::new();
    let host = start(case.holder(&["hold"]));
    let (status, stderr) = run(case.in_container(HOLDER, &["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let pid = host.pid();
    assert_eq!(
        headline(&stderr),
        format!(
            "ERROR - Another instance is already running (PID: {pid} per its PID file, not verified)."
        ),
        "{stderr}"
    );
    assert!(stderr.contains("cannot be verified from here"), "{stderr}");
    assert!(
        stderr.contains(&format!("fuser -v {}", case.pid_file.display())),
        "{stderr}"
    );
    assert!(!offers_kill(&stderr), "{stderr}");
    eprintln!("after: {}", headline(&stderr));
    // The host's instance is untouched and still holds it.
    assert_eq!(read(&case.pid_file), format!("{pid}\n"));
    assert!(matches!(
        pidlock_core::status(&case.pid_file).unwrap(),
        Status::Running(Holder::Kernel { pid: p, .. }) if p.get() as u32 == pid
    ));
}
