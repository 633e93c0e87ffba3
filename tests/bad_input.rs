//! Bad input gets a clear error and loses nothing (DESIGN.md, *Messages*). Each case runs
//! the fixture program with its PID file pointed at the bad input.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;

fn holder_at(dir: &Path, pid_file: &Path) -> std::process::Command {
    let mut command = holder(dir);
    command.env("PIDLOCK_TEST_PID_FILE", pid_file);
    command
}

/// Starts the fixture over `contents`; it must warn, take over and hold.
fn takes_over(contents: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    fs::write(&pid_file, contents).unwrap();
    let running = start(holder_at(dir.path(), &pid_file));
    assert_eq!(
        read(&pid_file),
        format!("{}\n", running.pid()),
        "not overwritten"
    );
    running.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, stderr) = running.finish();
    stderr
}

fn corrupted_warning(stderr: &str) -> &str {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("WARNING - Found corrupted PID file "))
        .unwrap_or_else(|| panic!("no corrupted warning in:\n{stderr}"));
    assert!(line.ends_with(". Overwriting..."), "{line}");
    line
}

#[test]
fn empty_file_is_reported_corrupted_and_overwritten() {
    let stderr = takes_over(b"");
    assert!(
        corrupted_warning(&stderr).contains("(not a PID: \"\")"),
        "{stderr}"
    );
}

#[test]
fn whitespace_is_reported_corrupted_and_overwritten() {
    let stderr = takes_over(b" \n\t\n");
    assert!(
        corrupted_warning(&stderr).contains(r#"(not a PID: " \n\t\n")"#),
        "{stderr}"
    );
}

#[test]
fn letters_are_reported_corrupted_and_overwritten() {
    let stderr = takes_over(b"abc");
    assert!(
        corrupted_warning(&stderr).contains(r#"(not a PID: "abc")"#),
        "{stderr}"
    );
}

#[test]
fn minus_one_is_reported_corrupted_and_overwritten() {
    let stderr = takes_over(b"-1\n");
    assert!(
        corrupted_warning(&stderr).contains(r#"(not a PID: "-1\n")"#),
        "{stderr}"
    );
}

#[test]
fn zero_is_reported_corrupted_and_overwritten() {
    let stderr = takes_over(b"0\n");
    assert!(
        corrupted_warning(&stderr).contains(r#"(not a PID: "0\n")"#),
        "{stderr}"
    );
}

#[test]
fn huge_number_is_reported_corrupted_and_overwritten() {
    let stderr = takes_over(b"99999999999999999999\n");
    assert!(
        corrupted_warning(&stderr).contains("99999999999999999999"),
        "{stderr}"
    );
}

#[test]
fn binary_bytes_are_escaped_in_the_warning() {
    let stderr = takes_over(b"\x00\xff\x1b[31m");
    assert!(
        corrupted_warning(&stderr).contains(r#"(not a PID: "\x00\xff\x1b[31m")"#),
        "{stderr}"
    );
}

#[test]
fn a_mebibyte_of_junk_is_quoted_short_and_truncated_away() {
    let stderr = takes_over(&vec![b'J'; 1 << 20]);
    let line = corrupted_warning(&stderr);
    assert!(line.len() < 200, "warning is {} bytes long", line.len());
    assert!(line.contains("... (1048576 bytes)"), "{line}");
}

#[test]
fn dead_pid_is_reported_stale_and_taken_over() {
    let dead = dead_pid();
    let stderr = takes_over(format!("{dead}\n").as_bytes());
    assert!(
        stderr.contains(&format!("/app.pid (PID {dead} not running). Removing...\n")),
        "{stderr}"
    );
}

#[test]
fn live_pid_that_does_not_hold_the_lock_is_still_stale() {
    // This test process is alive but holds no lock: a reused PID.
    let me = std::process::id();
    let stderr = takes_over(format!("{me}\n").as_bytes());
    assert!(
        stderr.contains(&format!(
            "/app.pid (PID {me} is running but does not hold the lock). Removing...\n"
        )),
        "{stderr}"
    );
}

#[test]
fn a_long_stale_pid_is_replaced_by_a_shorter_one_without_leftovers() {
    // Written at offset 0 then truncated: no digits of the old PID remain.
    let stderr = takes_over(b"2147483647\n");
    assert!(
        stderr.contains("/app.pid (PID 2147483647 not running)"),
        "{stderr}"
    );
}

/// Runs the fixture on `pid_file`: it must refuse with exit 1 and an error
/// naming the path.
fn refuses(dir: &Path, pid_file: &Path) -> String {
    let (status, stderr) = run(holder_at(dir, pid_file));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("ERROR - "), "{stderr}");
    assert!(
        stderr.contains(&pid_file.display().to_string()),
        "path not named:\n{stderr}"
    );
    stderr
}

#[test]
fn symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious.txt");
    fs::write(&target, "do not truncate me").unwrap();
    let link = dir.path().join("app.pid");
    symlink(&target, &link).unwrap();
    let stderr = refuses(dir.path(), &link);
    assert!(stderr.contains("it is a symbolic link"), "{stderr}");
    assert_eq!(read(&target), "do not truncate me");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn dangling_symlink_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("would-be-created");
    let link = dir.path().join("app.pid");
    symlink(&target, &link).unwrap();
    let stderr = refuses(dir.path(), &link);
    assert!(stderr.contains("it is a symbolic link"), "{stderr}");
    assert!(!target.exists());
}

#[test]
fn directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    fs::create_dir(&pid_file).unwrap();
    let stderr = refuses(dir.path(), &pid_file);
    assert!(stderr.contains("it is a directory"), "{stderr}");
}

#[test]
fn fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    nix::unistd::mkfifo(&pid_file, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    // `run` fails the test if the child is still running at the deadline.
    let stderr = refuses(dir.path(), &pid_file);
    assert!(stderr.contains("it is a FIFO"), "{stderr}");
}

#[test]
fn socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let _listener = std::os::unix::net::UnixListener::bind(&pid_file).unwrap();
    let stderr = refuses(dir.path(), &pid_file);
    assert!(stderr.contains("it is a socket"), "{stderr}");
}

#[test]
fn device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refuses(dir.path(), Path::new("/dev/null"));
    assert!(stderr.contains("it is a character device"), "{stderr}");
}

#[test]
fn parent_that_is_a_file_is_an_error_with_the_os_reason() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    fs::write(&not_a_dir, "x").unwrap();
    let stderr = refuses(dir.path(), &not_a_dir.join("app.pid"));
    assert!(stderr.contains("Not a directory"), "{stderr}");
    assert_eq!(read(&not_a_dir), "x");
}

#[test]
fn empty_env_override_is_an_error_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = holder(dir.path());
    command.env("PIDLOCK_TEST_PID_FILE", "");
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("ERROR - Environment variable PIDLOCK_TEST_PID_FILE is set but empty"),
        "{stderr}"
    );
    assert!(
        !data_file(dir.path(), "holder.pid").exists(),
        "fell back to the default path"
    );
}

#[test]
fn a_running_instances_file_is_not_touched_by_the_refused_one() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let first = start(holder_at(dir.path(), &pid_file));
    let before = fs::metadata(&pid_file).unwrap();
    for _ in 0..3 {
        let (status, _) = run(holder_at(dir.path(), &pid_file));
        assert_eq!(status.code(), Some(1));
    }
    let after = fs::metadata(&pid_file).unwrap();
    assert_eq!(
        (before.ino(), before.len(), before.mtime_nsec()),
        (after.ino(), after.len(), after.mtime_nsec())
    );
    assert_eq!(read(&pid_file), format!("{}\n", first.pid()));
}

#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_holder_that_has_not_written_its_pid_is_named_by_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    // This test process holds the lock on an empty file, as a holder would
    // between its lock and its write.
    let file = fs::File::create(&pid_file).unwrap();
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| errno)
        .unwrap();
    let (status, stderr) = run(holder_at(dir.path(), &pid_file));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let me = std::process::id();
    // Named by the kernel: this process. A child that another test of this
    // binary forks at that moment shares the descriptor until it execs, and
    // the report then rightly adds "; its lock is shared with PID N".
    let headline = stderr.lines().next().unwrap_or_default();
    let named = format!("ERROR - Another instance is already running (PID: {me}");
    assert!(
        headline == format!("{named}).")
            || headline.starts_with(&format!("{named}; its lock is shared with PID ")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("kill {me}")), "{stderr}");
}

/// A restrictive umask (0277) must not leave the owner a PID file it cannot
/// write: the file is always 0600.
#[test]
fn a_restrictive_umask_still_gives_a_0600_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let mut command = holder_at(dir.path(), &pid_file);
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o277));
            Ok(())
        });
    }
    let _running = start(command);
    let mode = fs::metadata(&pid_file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
}
