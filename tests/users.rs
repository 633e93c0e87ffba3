//! DESIGN.md, *Processes and places*, with real processes: another user's
//! instance.
//!
//! The tests that need root (`setpriv`) say so and are skipped, with a note
//! on stderr, when not run as root.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

// --- Another user's instance ---------------------------------------------

/// A copy of the fixture that `nobody` may run (the target directory may not
/// be searchable for it), in a directory of its own.
fn fixture_for_nobody(exe: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join(Path::new(exe).file_name().unwrap());
    // Copied by `cp`, not in this process: while this process had the copy
    // open for writing, a child another test forks meanwhile would inherit
    // that descriptor until it execs, and executing the copy would fail with
    // "Text file busy" (ETXTBSY).
    let copied = Command::new("cp").arg(exe).arg(&copy).status().unwrap();
    assert!(copied.success(), "cp {exe} {}: {copied}", copy.display());
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

fn as_nobody(case: &Case, exe: &Path, args: &[&str]) -> Command {
    let mut command = case.command("setpriv", &[]);
    command
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(exe)
        .args(args);
    command
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn another_users_instance_is_a_conflict_naming_the_owner_not_permission_denied() {
    require_root!();
    let case = Case::new();
    fs::set_permissions(case.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (_bin, exe) = fixture_for_nobody(HOLDER);
    let root_instance = start(case.holder(&["hold"]));
    let pid = root_instance.pid();

    let (status, stderr) = run(as_nobody(&case, &exe, &["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("Permission denied"), "{stderr}");
    // nobody may not even open root's file (0600), nor look into root's
    // /proc/<pid>/fd: the holder is the process the kernel's lock list says
    // took the lock, unverified, and no kill is offered.
    assert_eq!(
        headline(&stderr),
        format!(
            "ERROR - Another instance is already running (PID: {pid} per the kernel's lock list, not verified)."
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "PID file: {} (owned by user root (uid 0))\n",
            case.pid_file.display()
        )),
        "{stderr}"
    );
    assert!(!offers_kill(&stderr), "{stderr}");
    eprintln!(
        "after: {}",
        stderr.lines().take(3).collect::<Vec<_>>().join(" / ")
    );
    assert_eq!(read(&case.pid_file), format!("{pid}\n"));
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn root_sees_nobodys_instance_verified_and_names_its_owner() {
    require_root!();
    let case = Case::new();
    nix::unistd::chown(
        case.dir.path(),
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    let (_bin, exe) = fixture_for_nobody(HOLDER);
    let nobodys = start(as_nobody(&case, &exe, &["hold"]));
    // setpriv execs the fixture: same PID.
    let pid = nobodys.pid();
    assert_eq!(read(&case.pid_file), format!("{pid}\n"));
    assert_eq!(fs::metadata(&case.pid_file).unwrap().uid(), NOBODY);

    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        headline(&stderr),
        format!("ERROR - Another instance is already running (PID: {pid})."),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "PID file: {} (owned by user nobody (uid {NOBODY}))\n",
            case.pid_file.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("\n          kill {pid}\n")),
        "{stderr}"
    );
    assert_eq!(read(&case.pid_file), format!("{pid}\n"));
}

/// Another user who may not even search the directory cannot tell whether
/// an instance runs: `status` says why it cannot look, never "not running".
#[test]
fn status_from_a_user_who_may_not_search_the_directory_is_an_error_not_not_running() {
    require_root!();
    let case = Case::new();
    fs::set_permissions(case.dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let (_bin, exe) = fixture_for_nobody(env!("CARGO_BIN_EXE_fixture-library"));
    let _instance = start(case.holder(&["hold"]));
    let path = case.pid_file.display().to_string();
    let output = as_nobody(&case, &exe, &["status", &path]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.starts_with("Err(Io {") && stdout.contains("Permission denied"),
        "{stdout}"
    );
}

/// Seen from inside a PID namespace of its own, the kernel's lock list
/// leaves out a lock whose taker that namespace cannot number: another
/// user's running instance is then an unknown holder — never a stale file
/// to remove (a second instance would follow), for `status` and for a start.
#[test]
fn from_a_pid_namespace_another_users_instance_is_unknown_never_stale() {
    require_root!();
    let case = Case::new();
    fs::set_permissions(case.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (_library, library) = fixture_for_nobody(env!("CARGO_BIN_EXE_fixture-library"));
    let (_holder, holder) = fixture_for_nobody(HOLDER);
    let _instance = start(case.holder(&["hold"]));
    let in_a_pid_namespace = |exe: &Path, args: &[&str]| {
        let mut command = case.command("unshare", &["--pid", "--fork", "--mount-proc", "--"]);
        command
            .arg("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .args(["--clear-groups", "--"])
            .arg(exe)
            .args(args);
        command.output().unwrap()
    };
    let path = case.pid_file.display().to_string();
    let status = in_a_pid_namespace(&library, &["status", &path]);
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "Ok(Running(Unknown))\n",
        "{status:?}"
    );
    let start = in_a_pid_namespace(&holder, &["exit"]);
    let stderr = String::from_utf8_lossy(&start.stderr);
    assert_eq!(start.status.code(), Some(1), "{stderr}");
    assert_eq!(
        headline(&stderr),
        "ERROR - Another instance is already running (PID unknown).",
        "{stderr}"
    );
    assert!(!stderr.contains("remove it"), "{stderr}");
}

/// A takeover against another user's instance: nothing of it can be
/// verified from here (this user may not even open the file), so it is
/// never signalled, and the start says why.
#[test]
fn a_takeover_of_another_users_instance_refuses_and_signals_nothing() {
    require_root!();
    let case = Case::new();
    fs::set_permissions(case.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (_bin, exe) = fixture_for_nobody(env!("CARGO_BIN_EXE_fixture-takeover"));
    let mut root_instance = start(case.holder(&["hold"]));
    let (status, stderr) = run(as_nobody(&case, &exe, &[]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "ERROR - Not signalling the holder of {}: ",
            case.pid_file.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        read(&case.pid_file),
        format!("{}\n", root_instance.pid()),
        "the root instance was disturbed"
    );
    assert!(
        root_instance.child.try_wait().unwrap().is_none(),
        "the root instance was signalled"
    );
}
