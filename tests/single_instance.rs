//! The attribute end to end, with real processes: the seed's manual test
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
fn pid_file_is_created_0644_so_everyone_can_read_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _bot = start(example("bot", dir.path()));
    let mode = std::fs::metadata(data_file(dir.path(), "bot.pid"))
        .unwrap()
        .permissions()
        .mode();
    // Created 0644; only the umask the child inherited can take bits away.
    assert_eq!(mode & 0o777, 0o644 & !current_umask());
}

fn current_umask() -> u32 {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(old);
    old.bits() as u32
}

#[test]
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

/// The fixture with no `path`: its PID file is the default one, the same
/// for every test of this file, so those tests take turns.
static DEFAULT_PATH_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn configured(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fixture-configured"));
    command
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// What SPEC §3 promises for the user running the tests.
fn default_pid_file() -> std::path::PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        "/run/fixture-configured.pid".into()
    } else {
        format!("/tmp/fixture-configured-{uid}.pid").into()
    }
}

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    let turn = DEFAULT_PATH_USERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A run killed half-way may have left it; a stale file would only add
    // a warning, but the tests below read stderr exactly.
    let _ = std::fs::remove_file(default_pid_file());
    turn
}

#[test]
fn default_path_comes_from_the_uid_and_the_binary_name() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let mut command = configured(dir.path());
    command.arg("hold");
    let running = start(command);
    assert_eq!(read(&default_pid_file()), format!("{}\n", running.pid()));
}

/// A login shell, cron, `sudo -u` and a service start the same program with
/// different environments and working directories: they must find the same
/// file, or two instances run.
#[test]
fn default_path_does_not_depend_on_the_launching_environment() {
    let _turn = take_turn();
    let first_dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let mut first = configured(first_dir.path());
    first
        .env("XDG_RUNTIME_DIR", first_dir.path())
        .env("TMPDIR", first_dir.path())
        .env("RUNTIME_DIRECTORY", first_dir.path())
        .arg("hold");
    let _first = start(first);
    let mut second = configured(other_dir.path());
    second
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env("TMPDIR", other_dir.path());
    let (status, stderr) = run(second);
    assert_eq!(status.code(), Some(75), "a second instance ran:\n{stderr}");
    assert!(
        stderr.contains(&format!("PID file: {}", default_pid_file().display())),
        "{stderr}"
    );
}

/// Two users of one machine never share the default file.
#[test]
fn default_path_of_another_user_carries_its_uid() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root, which this test needs to switch users"
        );
        eprintln!("skipped: needs root to run the fixture as another user");
        return;
    }
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_fixture-configured"))
        .arg("hold")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let running = start(command);
    let theirs = std::path::Path::new("/tmp/fixture-configured-65534.pid");
    assert_eq!(read(theirs), format!("{}\n", running.pid()));
    // Root's own default file is another one, and free.
    let (status, stderr) = run(configured(dir.path()));
    assert_eq!(status.code(), Some(3), "{stderr}");
    drop(running);
    let _ = std::fs::remove_file(theirs);
}

#[test]
fn exit_code_key_sets_the_status_of_the_refused_instance() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let mut command = configured(dir.path());
    command.arg("hold");
    let _first = start(command);
    let (status, stderr) = run(configured(dir.path()));
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(
        stderr.starts_with("ERROR - Another instance is already running"),
        "{stderr}"
    );
}

#[test]
fn exit_code_return_value_passes_through() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = run(configured(dir.path()));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(!default_pid_file().exists());
}

#[test]
fn signals_none_installs_no_handler_so_sigterm_leaves_the_file() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let mut command = configured(dir.path());
    command.arg("hold");
    let running = start(command);
    running.signal(Signal::SIGTERM);
    let (status, _) = running.finish();
    assert!(killed_by(status, Signal::SIGTERM));
    // No handler ran: the file stays, for the next start to take over as stale.
    assert!(default_pid_file().exists());
    let _ = std::fs::remove_file(default_pid_file());
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
