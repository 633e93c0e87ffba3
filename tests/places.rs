//! DESIGN.md, *Processes and places*, with real processes: a holder in a
//! container seen from the host and the other way round, another user's
//! instance, hostile files at the PID path, messages through a logger or
//! quieted, and observers running flat out while instances come and go.
//!
//! The tests that need root (`unshare`, `setpriv`, `chown`, `mknod`) say so
//! and are skipped, with a note on stderr, when not run as root.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use nix::sys::signal::Signal;
use pidlock_core::{Holder, Status, Stopped};

const HOLDER: &str = env!("CARGO_BIN_EXE_fixture-holder");
const QUIET: &str = env!("CARGO_BIN_EXE_fixture-quiet");

/// The uid and gid of `nobody`, the other user of these tests.
const NOBODY: u32 = 65534;

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

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips a test that needs root, with a note on why.
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (unshare, setpriv, chown or mknod)");
            return;
        }
    };
}

/// The first line of `stderr`, for the record of what a case printed.
fn headline(stderr: &str) -> &str {
    stderr.lines().next().unwrap_or("")
}

/// Whether `stderr` offers `kill` for any PID: a line `  kill N`.
fn offers_kill(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|line| line.trim_start().starts_with("kill "))
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

// --- Hostile files ---------------------------------------------------------

#[test]
fn a_stale_file_of_another_user_is_refused_naming_the_owner_and_left_as_is() {
    require_root!();
    let case = Case::new();
    let contents = format!("{}\n", dead_pid());
    fs::write(&case.pid_file, &contents).unwrap();
    nix::unistd::chown(
        &case.pid_file,
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        None,
    )
    .unwrap();
    let before = fs::metadata(&case.pid_file).unwrap();

    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ERROR - Refusing to use {}: it belongs to user nobody (uid {NOBODY}), not to the \
             user this program runs as; remove it or run the program as that user.\n",
            case.pid_file.display()
        )
    );
    eprintln!("after: {}", headline(&stderr));
    let after = fs::metadata(&case.pid_file).unwrap();
    assert_eq!(read(&case.pid_file), contents);
    assert_eq!(
        (
            before.ino(),
            before.uid(),
            before.mode(),
            before.mtime_nsec()
        ),
        (after.ino(), after.uid(), after.mode(), after.mtime_nsec())
    );
}

#[test]
fn a_hard_link_at_the_path_is_refused_naming_the_link_count() {
    let case = Case::new();
    // A file elsewhere that must not be overwritten; it even looks stale.
    let other = case.dir.path().join("precious.txt");
    let contents = format!("{}\n", dead_pid());
    fs::write(&other, &contents).unwrap();
    fs::hard_link(&other, &case.pid_file).unwrap();

    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ERROR - Refusing to use {}: it has 2 names (hard links), so writing it would \
             change another file too; remove it.\n",
            case.pid_file.display()
        )
    );
    eprintln!("after: {}", headline(&stderr));
    assert_eq!(read(&other), contents);
    assert_eq!(
        fs::metadata(&other).unwrap().nlink(),
        2,
        "a name was removed"
    );
}

/// Runs the fixture under `strace` on a PID path that is not a regular file:
/// it must be refused naming `kind`, and the path never opened (the one
/// `O_CREAT | O_EXCL` attempt fails with `EEXIST` before anything is opened).
fn never_opened(case: &Case, kind: &str) {
    let trace = case.dir.path().join("strace.log");
    let mut command = case.command("strace", &["-f", "-qq", "-o"]);
    command
        .arg(&trace)
        .args(["-e", "trace=open,openat,openat2,creat", "--"])
        .arg(HOLDER)
        .arg("exit");
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ERROR - Refusing to use {} as a PID file: it is {kind}; remove it or choose \
             another path.\n",
            case.pid_file.display()
        )
    );
    eprintln!("after: {}", headline(&stderr));
    let trace = read(&trace);
    let opens: Vec<&str> = trace
        .lines()
        .filter(|line| line.contains("\"app.pid\"") || line.contains("/app.pid\""))
        .collect();
    assert!(!opens.is_empty(), "strace saw no attempt at all:\n{trace}");
    for open in &opens {
        assert!(
            open.contains("O_EXCL") && open.ends_with("= -1 EEXIST (File exists)"),
            "the PID path was opened:\n{}",
            opens.join("\n")
        );
    }
}

#[test]
fn a_character_device_at_the_path_is_refused_and_never_opened() {
    require_root!();
    let case = Case::new();
    // The device numbers of /dev/null.
    nix::sys::stat::mknod(
        &case.pid_file,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    never_opened(&case, "a character device");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &fs::symlink_metadata(&case.pid_file).unwrap().file_type()
    ));
}

#[test]
fn a_block_device_at_the_path_is_refused_and_never_opened() {
    require_root!();
    let case = Case::new();
    // loop7: opening a block device can have effects; it is never opened.
    nix::sys::stat::mknod(
        &case.pid_file,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(7, 7),
    )
    .unwrap();
    never_opened(&case, "a block device");
}

#[test]
fn a_fifo_at_the_path_is_refused_and_never_opened() {
    let case = Case::new();
    nix::unistd::mkfifo(
        &case.pid_file,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    never_opened(&case, "a FIFO (named pipe)");
}

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
