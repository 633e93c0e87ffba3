//! Where the PID file is when the attribute names no `path`: from the user
//! and the binary's name only, never from the launching environment, and
//! in a place no other user can create it first. Each test runs its
//! programs in a mount namespace of its own (an empty `/run`, a private
//! `/etc/passwd` with a test user), so the machine's files are never used.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nix::sys::signal::Signal;

const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture-configured");

/// Root's default file for the fixture, as the programs see it: in the
/// empty `/run` of the test's own mount namespace (read through
/// `PrivateMounts`), never the machine's.
fn roots_file() -> PathBuf {
    Path::new("/run/fixture-configured.pid").to_owned()
}

#[test]
fn roots_default_path_is_in_run_and_named_after_the_binary() {
    let Some(mounts) = PrivateMounts::new() else {
        return;
    };
    let running = start(mounts.command(None, FIXTURE, &["hold"]));
    assert_eq!(
        mounts.read(&roots_file()),
        format!("{}\n", pid_inside(&running))
    );
}

/// A login shell, cron, `sudo -u` and a service start the same program with
/// different environments and working directories: they must find the same
/// file, or two instances run.
#[test]
fn the_default_path_does_not_depend_on_the_launching_environment() {
    let Some(mounts) = PrivateMounts::new() else {
        return;
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let mut first = mounts.command(Some(TEST_USER), FIXTURE, &["hold"]);
    first
        .env("HOME", elsewhere.path())
        .env("XDG_RUNTIME_DIR", elsewhere.path())
        .env("XDG_STATE_HOME", elsewhere.path())
        .env("TMPDIR", elsewhere.path())
        .env("RUNTIME_DIRECTORY", elsewhere.path());
    let _first = start(first);
    let mut second = mounts.command(Some(TEST_USER), FIXTURE, &[]);
    second
        .current_dir(elsewhere.path())
        .env_remove("HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", "/var/tmp");
    let (status, stderr) = run(second);
    assert_eq!(status.code(), Some(75), "a second instance ran:\n{stderr}");
    let expected = users_file(&mounts);
    assert!(
        stderr.contains(&format!("PID file: {}", expected.display())),
        "{stderr}"
    );
}

/// A user's default file is in its home, where no other user can create a
/// file first (the old `/tmp/<bin>-<uid>.pid` could be planted by anyone,
/// and a planted file is refused for good). Root's is another file.
#[test]
fn a_users_default_path_is_in_its_home_where_nobody_else_can_plant_it() {
    let Some(mounts) = PrivateMounts::new() else {
        return;
    };
    let theirs = users_file(&mounts);
    let planted = mounts
        .command(
            Some(65534),
            "sh",
            &[
                "-c",
                &format!(
                    "mkdir -p '{0}' && touch '{0}/fixture-configured.pid'",
                    theirs.parent().unwrap().display()
                ),
            ],
        )
        .output()
        .unwrap();
    assert!(
        !planted.status.success(),
        "another user planted {}",
        theirs.display()
    );
    // The old shared location, planted, changes nothing.
    let old = format!("/tmp/fixture-configured-{TEST_USER}.pid");
    let _ = mounts.command(Some(65534), "touch", &[&old]).status();
    let running = start(mounts.command(Some(TEST_USER), FIXTURE, &["hold"]));
    assert_eq!(mounts.read(&theirs), format!("{}\n", pid_inside(&running)));
    let (status, stderr) = run(mounts.command(None, FIXTURE, &[]));
    assert_eq!(
        status.code(),
        Some(3),
        "root's own default file is free:\n{stderr}"
    );
    let _ = std::fs::remove_file(old);
}

/// `nobody` has no home (`/nonexistent`): the program says where the file
/// would be and what to do instead of failing on a directory it cannot
/// make.
#[test]
fn a_user_without_a_home_is_told_to_give_a_path() {
    let Some(mounts) = PrivateMounts::new() else {
        return;
    };
    let (status, stderr) = run(mounts.command(Some(65534), FIXTURE, &[]));
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(
        stderr.starts_with("ERROR - No default PID file for user nobody (uid 65534), whose home directory holds it: its home directory does not exist; give the program a path"),
        "{stderr}"
    );
}

#[test]
fn exit_code_key_sets_the_status_of_the_refused_instance() {
    let Some(mounts) = PrivateMounts::new() else {
        return;
    };
    let _first = start(mounts.command(None, FIXTURE, &["hold"]));
    let (status, stderr) = run(mounts.command(None, FIXTURE, &[]));
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(
        stderr.starts_with("ERROR - Another instance is already running"),
        "{stderr}"
    );
}

#[test]
fn exit_code_return_value_passes_through() {
    let Some(mounts) = PrivateMounts::new() else {
        return;
    };
    let (status, stderr) = run(mounts.command(None, FIXTURE, &[]));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(!mounts.exists(&roots_file()));
}

#[test]
fn signals_none_installs_no_handler_so_sigterm_leaves_the_file() {
    let Some(mounts) = PrivateMounts::new() else {
        return;
    };
    let running = start(mounts.command(None, FIXTURE, &["hold"]));
    let pid = pid_inside(&running);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let (status, _) = running.finish();
    // nsenter passes the signal death on as 128 + n.
    assert!(
        killed_by(status, Signal::SIGTERM) || status.code() == Some(128 + Signal::SIGTERM as i32),
        "{status:?}"
    );
    // No handler ran: the file stays, for the next start to take over as stale.
    assert!(mounts.exists(&roots_file()));
}

/// [`TEST_USER`]'s default file.
fn users_file(mounts: &PrivateMounts) -> PathBuf {
    mounts
        .home()
        .join(".local/state/pidlock/fixture-configured.pid")
}

/// The fixture's PID: `nsenter` and `setpriv` exec it, so it is the PID of
/// the command we started.
fn pid_inside(running: &Running) -> u32 {
    running.pid()
}
