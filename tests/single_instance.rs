//! The attribute end to end, with real processes: the manual test
//! (start, conflict, Ctrl-C), normal exit, the default path and other keys.

mod common;

use std::process::Command;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn first_instance_writes_its_pid_and_a_newline() {
    let dir = tempfile::tempdir().unwrap();
    let bot = start(example("bot", dir.path()));
    let pid_file = data_file(dir.path(), "bot.pid");
    assert_eq!(read(&pid_file), format!("{}\n", bot.pid()));
    assert!(bot.first_line.contains("polling"), "{}", bot.first_line);
}

#[test]
fn pid_file_is_created_0600_so_no_other_user_can_lock_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _bot = start(example("bot", dir.path()));
    let mode = std::fs::metadata(data_file(dir.path(), "bot.pid"))
        .unwrap()
        .permissions()
        .mode();
    // Anyone who can open a file can flock it, and another user's lock
    // would keep the bot from starting: the owner alone may open it.
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn second_instance_exits_1_naming_the_holder_with_kill_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(example("bot", dir.path()));
    let (status, stderr) = run(example("bot", dir.path()));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let pid = first.pid();
    assert_eq!(
        stderr,
        format!(
            "ERROR - Another instance is already running (PID: {pid}).\n\
             \x20       Only one instance can run at a time.\n\
             \x20       PID file: {}\n\
             \x20       To stop the existing instance:\n\
             \x20         kill {pid}\n\
             \x20       Or stop it with: pidlock stop data/bot.pid\n",
            data_file(dir.path(), "bot.pid").display()
        )
    );
    // The loser touched nothing: same content, first still holds it.
    assert_eq!(read(&data_file(dir.path(), "bot.pid")), format!("{pid}\n"));
}

#[test]
fn sigint_on_the_first_removes_the_file_and_dies_by_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let bot = start(example("bot", dir.path()));
    let pid_file = data_file(dir.path(), "bot.pid");
    assert!(pid_file.exists());
    bot.signal(Signal::SIGINT);
    let (status, stderr) = bot.finish();
    assert!(killed_by(status, Signal::SIGINT), "{status:?}");
    assert!(!pid_file.exists());
    assert!(stderr.ends_with(&release_lines(&pid_file)), "{stderr}");
}

#[test]
fn sigterm_removes_the_file_and_dies_by_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let holder = start(holder(dir.path()));
    holder.signal(Signal::SIGTERM);
    let (status, _) = holder.finish();
    assert!(killed_by(status, Signal::SIGTERM), "{status:?}");
    assert!(!data_file(dir.path(), "holder.pid").exists());
}

#[test]
fn a_new_instance_starts_after_the_first_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(example("bot", dir.path()));
    first.signal(Signal::SIGTERM);
    first.finish();
    let second = start(example("bot", dir.path()));
    assert_eq!(
        read(&data_file(dir.path(), "bot.pid")),
        format!("{}\n", second.pid())
    );
}

#[test]
fn returning_from_main_removes_the_file_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = holder(dir.path());
    command.arg("exit");
    let (status, stderr) = run(command);
    assert!(status.success(), "{stderr}");
    assert!(!data_file(dir.path(), "holder.pid").exists());
    assert!(
        dir.path().join("data").is_dir(),
        "the parent directory is created and kept"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    let pid_file = data_file(dir.path(), "holder.pid");
    assert!(
        lines[0].starts_with("INFO - PID file lock acquired (PID: ")
            && lines[0].ends_with(&format!("): {}", pid_file.display())),
        "{stderr}"
    );
    assert_eq!(lines[1..].join("\n") + "\n", release_lines(&pid_file));
}

#[test]
fn env_override_moves_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("run").join("custom.pid");
    let mut command = holder(dir.path());
    command.env("PIDLOCK_TEST_PID_FILE", &elsewhere);
    let running = start(command);
    assert_eq!(read(&elsewhere), format!("{}\n", running.pid()));
    assert!(!data_file(dir.path(), "holder.pid").exists());
}

fn tokio_fixture(exe: &str, dir: &std::path::Path) -> (std::process::ExitStatus, String) {
    let pid_file = dir.join("tokio.pid");
    let mut command = Command::new(exe);
    command
        .env("PIDLOCK_TEST_PID_FILE", &pid_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let (status, stderr) = run(command);
    assert!(!pid_file.exists(), "file left behind");
    (status, stderr)
}

#[test]
fn tokio_main_below_the_attribute_keeps_the_lock_until_the_runtime_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = tokio_fixture(env!("CARGO_BIN_EXE_fixture-tokio-above"), dir.path());
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("at runtime shutdown the PID file exists: true"),
        "{stderr}"
    );
}

#[test]
fn tokio_main_above_the_attribute_keeps_the_lock_until_the_runtime_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = tokio_fixture(env!("CARGO_BIN_EXE_fixture-tokio-below"), dir.path());
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("at runtime shutdown the PID file exists: true"),
        "{stderr}"
    );
}

#[test]
fn relative_path_is_resolved_once_so_chdir_does_not_leave_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut command = holder(dir.path());
    command.arg("chdir").arg(elsewhere.path());
    let (status, stderr) = run(command);
    assert!(status.success(), "{stderr}");
    assert!(
        !data_file(dir.path(), "holder.pid").exists(),
        "file left in the start directory"
    );
    assert!(!data_file(elsewhere.path(), "holder.pid").exists());
    assert!(stderr.contains("PID file lock released"), "{stderr}");
}
