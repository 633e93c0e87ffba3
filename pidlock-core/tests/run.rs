//! `pidlock run` with real commands: a Python bot that records its runs and
//! the signals it gets (`tests/fixtures/bot.py`), a shell cron job
//! (`tests/fixtures/job.sh`), a bot that ignores SIGTERM, commands that do
//! not exist or cannot run; in a terminal (a pseudo-terminal the test
//! drives) and as PID 1 of a PID namespace. Every wait is for an event (a
//! line in the bot's log, a line on stderr, the file naming a PID, an exit),
//! bounded by a deadline that only a hung run reaches.
#![cfg(target_os = "linux")]

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{SigHandler, Signal, kill, signal};
use nix::unistd::Pid;

/// Long enough for a loaded machine; only a hung run reaches it.
const DEADLINE: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Waits for `condition`, failing with `what` at the deadline.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The signals the tests send, at their default action whatever the suite
/// was started with (a shell starts background jobs with SIGINT ignored, and
/// `run` rightly passes an ignored signal on to its command as ignored).
fn default_signals(command: &mut Command) {
    // SAFETY: signal(2) is async-signal-safe, as required before exec.
    unsafe {
        command.pre_exec(|| {
            for sig in [
                Signal::SIGHUP,
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGTERM,
                Signal::SIGUSR1,
                Signal::SIGUSR2,
            ] {
                signal(sig, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// A temporary directory with a PID file path and the fixtures' log.
struct Case {
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: PathBuf,
    /// Commands started outside a `Running` (bots whose `run` was killed,
    /// daemons): killed when the test ends, pass or fail.
    strays: Mutex<Vec<Pid>>,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            path: dir.path().join("bot.pid"),
            log: dir.path().join("log"),
            _dir: dir,
            strays: Mutex::new(Vec::new()),
        }
    }

    /// `pidlock run OPTIONS PATH -- COMMAND`.
    fn run(&self, options: &[&str], command: &[&OsStr]) -> Command {
        let mut run = Command::new(env!("CARGO_BIN_EXE_pidlock"));
        run.arg("run")
            .args(options)
            .arg(&self.path)
            .arg("--")
            .args(command);
        default_signals(&mut run);
        run
    }

    /// `pidlock run OPTIONS PATH -- python3 bot.py LOG NAME MODE`.
    fn bot(&self, options: &[&str], name: &str, mode: &str) -> Command {
        let bot = fixture("bot.py");
        self.run(
            options,
            &[
                OsStr::new("python3"),
                bot.as_os_str(),
                self.log.as_os_str(),
                OsStr::new(name),
                OsStr::new(mode),
            ],
        )
    }

    /// `pidlock run OPTIONS PATH -- job.sh LOG HOW`.
    fn job(&self, options: &[&str], how: &str) -> Command {
        let job = fixture("job.sh");
        self.run(
            options,
            &[job.as_os_str(), self.log.as_os_str(), OsStr::new(how)],
        )
    }

    /// `pidlock VERB PATH ARGS`, run to its end.
    fn pidlock(&self, verb: &str, args: &[&str]) -> Finished {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pidlock"));
        command.arg(verb).arg(&self.path).args(args);
        Running::start(command).finish()
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for the log line `line`.
    fn wait_for_line(&self, line: &str) {
        wait_until(&format!("{line:?} in the log"), || {
            self.lines().iter().any(|logged| logged == line)
        });
    }

    /// Waits for the log to have `count` lines.
    fn wait_for_lines(&self, count: usize) {
        wait_until(&format!("{count} lines in the log"), || {
            self.lines().len() >= count
        });
    }

    /// Waits for bot `name` to start; its PID, as it sees it.
    fn started(&self, name: &str) -> i32 {
        let prefix = format!("start {name} ");
        let mut pid = None;
        wait_until(&format!("bot {name} to start"), || {
            pid = self
                .lines()
                .iter()
                .find_map(|line| line.strip_prefix(&prefix)?.parse().ok());
            pid.is_some()
        });
        pid.unwrap()
    }

    /// Waits for bot `name` to start and for the PID file to name it; its
    /// PID, killed when the test ends.
    fn holder(&self, name: &str) -> Pid {
        let pid = Pid::from_raw(self.started(name));
        self.strays.lock().unwrap().push(pid);
        self.wait_until_file_names(pid);
        pid
    }

    fn wait_until_file_names(&self, pid: Pid) {
        wait_until(&format!("the PID file to name {pid}"), || {
            std::fs::read_to_string(&self.path).ok() == Some(format!("{pid}\n"))
        });
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        for &pid in self.strays.lock().unwrap().iter() {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// A process whose stdout and stderr are collected as they come; killed
/// and reaped if dropped before it ended.
struct Running {
    child: Child,
    stdout: Collected,
    stderr: Collected,
}

struct Collected {
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Collected {
    fn from(mut pipe: impl Read + Send + 'static) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            text,
            reader: Some(reader),
        }
    }

    fn now(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// All of it: waits for the end of the pipe (every process holding it
    /// has exited or closed it).
    fn all(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            wait_until("the end of a pipe", || reader.is_finished());
            reader.join().unwrap();
        }
        self.now()
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Running {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Collected::from(child.stdout.take().unwrap());
        let stderr = Collected::from(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// As `start`, with stdin a pipe the test closes to end a `stdin` bot.
    fn start_with_stdin(mut command: Command) -> (Self, std::process::ChildStdin) {
        command.stdin(Stdio::piped());
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = Collected::from(child.stdout.take().unwrap());
        let stderr = Collected::from(child.stderr.take().unwrap());
        (
            Self {
                child,
                stdout,
                stderr,
            },
            stdin,
        )
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    fn wait_for_stderr(&self, text: &str) {
        wait_until(&format!("{text:?} on stderr"), || {
            self.stderr.now().contains(text)
        });
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    fn wait(&mut self) -> ExitStatus {
        let mut status = None;
        wait_until("the process to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// Waits for the exit and for the end of both pipes.
    fn finish(mut self) -> Finished {
        let status = self.wait();
        Finished {
            status,
            stdout: self.stdout.all(),
            stderr: self.stderr.all(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Exactly what `#[single_instance]` prints for a conflict.
fn conflict(path: &Path, holder: Pid, sharing: Option<Pid>) -> String {
    let shared = sharing.map_or_else(String::new, |pid| {
        format!("; its lock is shared with PID {pid}")
    });
    format!(
        "ERROR - Another instance is already running (PID: {holder}{shared}).\n\
         \x20       Only one instance can run at a time.\n\
         \x20       PID file: {}\n\
         \x20       To stop the existing instance:\n\
         \x20         kill {holder}\n",
        path.display()
    )
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_second_run_is_refused_before_its_command_starts_naming_the_command() {
    let case = Case::new();
    let first = Running::start(case.bot(&[], "A", "die"));
    let bot = case.holder("A");

    let refused = Running::start(case.bot(&[], "B", "die")).finish();
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    assert_eq!(refused.stderr, conflict(&case.path, bot, Some(first.pid())));
    let refused = Running::start(case.job(&["--exit-code", "7"], "0")).finish();
    assert_eq!(refused.status.code(), Some(7), "{}", refused.stderr);
    assert_eq!(refused.stderr, conflict(&case.path, bot, Some(first.pid())));
    assert_eq!(
        case.lines(),
        [format!("start A {bot}")],
        "a refused command ran"
    );

    // The first is untouched: its file still names its bot.
    assert_eq!(
        std::fs::read_to_string(&case.path).unwrap(),
        format!("{bot}\n")
    );
    first.signal(Signal::SIGTERM);
    let first = first.finish();
    assert_eq!(
        first.status.signal(),
        Some(libc::SIGTERM),
        "{}",
        first.stderr
    );
    assert!(!case.path.exists());
}

#[test]
fn the_command_s_exit_status_passes_through_and_no_file_is_left() {
    let case = Case::new();
    for (how, code) in [("0", 0), ("3", 3), ("255", 255)] {
        let finished = Running::start(case.job(&[], how)).finish();
        assert_eq!(finished.status.code(), Some(code), "{}", finished.stderr);
        assert!(!case.path.exists(), "exit {how} left the file");
    }
    // A signal death ends `run` by the same signal, as a shell reports it.
    for (how, sig) in [("TERM", libc::SIGTERM), ("KILL", libc::SIGKILL)] {
        let finished = Running::start(case.job(&[], how)).finish();
        assert_eq!(finished.status.signal(), Some(sig), "{}", finished.stderr);
        assert!(
            !finished.status.core_dumped(),
            "run dumped core: {}",
            finished.stderr
        );
        assert!(!case.path.exists(), "SIG{how} left the file");
    }
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(r#""$@"; echo "status $?""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_pidlock"))
        .args(["run", "--log", "warn"])
        .arg(&case.path)
        .arg("--")
        .arg(fixture("job.sh"))
        .arg(&case.log)
        .arg("QUIT");
    // The shell too: a job's `kill -s QUIT $$` does nothing where SIGQUIT
    // was ignored when the suite started (a shell's background job).
    default_signals(&mut shell);
    let finished = Running::start(shell).finish();
    assert_eq!(finished.stdout, "status 131\n", "{}", finished.stderr);
    // The shell's own word for it, and no line of ours.
    assert!(
        !finished.stderr.contains("INFO") && !finished.stderr.contains("core"),
        "{}",
        finished.stderr
    );
    assert_eq!(case.lines().len(), 6, "{:?}", case.lines());
}

#[test]
fn a_command_that_cannot_start_is_127_or_126_and_named() {
    let case = Case::new();
    let dir = case.path.parent().unwrap();
    let not_executable = dir.join("not-executable.sh");
    std::fs::copy(fixture("job.sh"), &not_executable).unwrap();
    std::fs::set_permissions(
        &not_executable,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let bad_interpreter = dir.join("bad-interpreter.sh");
    std::fs::write(&bad_interpreter, "#!/nonexistent/python3\nprint()\n").unwrap();
    std::fs::set_permissions(
        &bad_interpreter,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let missing = dir.join("missing");
    for (command, code, message) in [
        (
            OsString::from("pidlock-test-no-such-command"),
            127,
            "pidlock-test-no-such-command: command not found".to_owned(),
        ),
        (
            missing.clone().into(),
            127,
            format!("{}: No such file or directory", missing.display()),
        ),
        (
            not_executable.clone().into(),
            126,
            format!("{}: Permission denied", not_executable.display()),
        ),
        (
            bad_interpreter.clone().into(),
            126,
            format!(
                "{}: bad interpreter /nonexistent/python3: No such file or directory",
                bad_interpreter.display()
            ),
        ),
        (
            dir.as_os_str().to_owned(),
            126,
            format!("{}: Is a directory", dir.display()),
        ),
    ] {
        let finished = Running::start(case.run(&[], &[&command])).finish();
        assert_eq!(finished.status.code(), Some(code), "{}", finished.stderr);
        assert!(
            finished
                .stderr
                .lines()
                .any(|line| line == format!("pidlock: {message}")),
            "{}",
            finished.stderr
        );
        assert!(!case.path.exists(), "{message}: the file was left");
        assert_eq!(case.pidlock("status", &[]).status.code(), Some(3));
    }
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn status_names_the_command_and_stop_ends_it_and_frees_the_lock() {
    let case = Case::new();
    let run = Running::start(case.bot(&[], "A", "die"));
    let bot = case.holder("A");
    let status = case.pidlock("status", &[]);
    assert_eq!(status.status.code(), Some(0), "{}", status.stdout);
    assert!(
        status.stdout.starts_with(&format!(
            "{}: running (PID {bot}, verified with the kernel; sharing its lock: PID {})\n  PID {bot} holds the lock on {}\n",
            case.path.display(),
            run.pid(),
            case.path.display(),
        )),
        "{}",
        status.stdout
    );
    let command = format!(
        "{} {} A die\n",
        fixture("bot.py").display(),
        case.log.display()
    );
    assert!(
        status
            .stdout
            .lines()
            .any(|line| line.starts_with("  command: ") && line.ends_with(command.trim_end())),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("\n  started: 20"),
        "{}",
        status.stdout
    );

    let stop = case.pidlock("stop", &[]);
    assert_eq!(
        stop.status.code(),
        Some(0),
        "{}{}",
        stop.stdout,
        stop.stderr
    );
    assert_eq!(
        stop.stdout,
        format!("{}: PID {bot} stopped\n", case.path.display())
    );
    let run = run.finish();
    assert_eq!(run.status.signal(), Some(libc::SIGTERM), "{}", run.stderr);
    assert!(!case.path.exists());
    assert_eq!(case.pidlock("status", &[]).status.code(), Some(3));
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_command_that_ignores_sigterm_is_killed_by_stop_kill_and_the_lock_is_free() {
    let case = Case::new();
    let run = Running::start(case.bot(&[], "A", "ignore-term"));
    let bot = case.holder("A");
    let stop = case.pidlock("stop", &["--timeout", "300ms"]);
    assert_eq!(stop.status.code(), Some(1), "{}", stop.stderr);
    assert!(
        stop.stderr.contains(&format!(
            "PID {bot} is still running after 300ms; add --kill"
        )),
        "{}",
        stop.stderr
    );
    let stop = case.pidlock("stop", &["--timeout", "300ms", "--kill"]);
    assert_eq!(stop.status.code(), Some(0), "{}", stop.stderr);
    assert_eq!(
        stop.stdout,
        format!("{}: PID {bot} killed after 300ms\n", case.path.display())
    );
    // SIGKILL went to every process holding the lock, `run` among them.
    let run = run.finish();
    assert_eq!(run.status.signal(), Some(libc::SIGKILL));
    // The lock is free: the next run starts, and replaces the stale file.
    let next = Running::start(case.job(&[], "0")).finish();
    assert_eq!(next.status.code(), Some(0), "{}", next.stderr);
    assert!(
        next.stderr.contains("Found stale PID file"),
        "{}",
        next.stderr
    );
}

/// `pidlock run ... 2>&1 | head -1`: the reader of stderr goes away, and the
/// lines `run` writes when it lets go (before it removes the file) fail.
#[test]
fn a_closed_stderr_does_not_keep_run_from_removing_the_file() {
    let case = Case::new();
    let mut command = case.bot(&[], "A", "stdin");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let stdin = child.stdin.take().unwrap();
    case.holder("A");
    drop(stdin);
    let status = wait_child(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!case.path.exists());
}

/// A mask of `/proc/PID/status` (`SigBlk`, `SigIgn`): bit n - 1 for signal n.
fn signal_mask(pid: Pid, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(":\t"))
        .unwrap();
    u64::from_str_radix(value, 16).unwrap()
}

fn bit(sig: Signal) -> u64 {
    1 << (sig as i32 - 1)
}

/// As `nohup` starts it (SIGHUP ignored), with SIGCHLD ignored and SIGUSR1
/// blocked by whoever started it: the command gets all three as they were,
/// not `run`'s own mask, and `run` still learns how the command ended.
#[test]
fn the_command_starts_with_the_signals_run_was_started_with() {
    let case = Case::new();
    let as_started = |mut command: Command| {
        // SAFETY: signal(2) and pthread_sigmask(3) are async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                signal(Signal::SIGHUP, SigHandler::SigIgn).map_err(std::io::Error::from)?;
                signal(Signal::SIGCHLD, SigHandler::SigIgn).map_err(std::io::Error::from)?;
                let usr1 = nix::sys::signal::SigSet::from(Signal::SIGUSR1);
                nix::sys::signal::pthread_sigmask(
                    nix::sys::signal::SigmaskHow::SIG_BLOCK,
                    Some(&usr1),
                    None,
                )
                .map_err(std::io::Error::from)
            });
        }
        command
    };
    let run = Running::start(as_started(case.bot(&[], "A", "die")));
    let bot = case.holder("A");
    let ignored = signal_mask(bot, "SigIgn");
    assert_ne!(ignored & bit(Signal::SIGHUP), 0, "SIGHUP: {ignored:x}");
    assert_ne!(ignored & bit(Signal::SIGCHLD), 0, "SIGCHLD: {ignored:x}");
    assert_eq!(signal_mask(bot, "SigBlk"), bit(Signal::SIGUSR1));
    run.signal(Signal::SIGTERM);
    assert_eq!(run.finish().status.signal(), Some(libc::SIGTERM));

    let job = Running::start(as_started(case.job(&[], "3"))).finish();
    assert_eq!(job.status.code(), Some(3), "{}", job.stderr);
}

/// What the bot records for a signal: name, `si_code` (0 from a process,
/// 128 from the kernel) and the sender's PID.
fn got(name: &str, sig: Signal, code: i32, sender: Pid) -> String {
    format!("{name} {sig:?} {code} {sender}")
}

#[test]
fn signals_sent_to_run_reach_the_command() {
    let case = Case::new();
    let run = Running::start(case.bot(&[], "A", "record"));
    let bot = case.holder("A");
    let mut expected = vec![format!("start A {bot}")];
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        run.signal(sig);
        expected.push(got("A", sig, 0, run.pid()));
        case.wait_for_line(expected.last().unwrap());
    }
    run.signal(Signal::SIGTERM);
    expected.push(got("A", Signal::SIGTERM, 0, run.pid()));
    let run = run.finish();
    assert_eq!(run.status.code(), Some(42), "{}", run.stderr);
    assert_eq!(case.lines(), expected);
    assert!(!case.path.exists());
}

/// A pseudo-terminal whose slave is the controlling terminal of a command
/// started in a session of its own, as a shell's foreground job has one.
struct Terminal {
    master: nix::pty::PtyMaster,
}

impl Terminal {
    fn start(mut command: Command) -> (Child, Self) {
        // Close-on-exec from the start (openpty(3) cannot): a copy of the
        // master inherited by a process that another test starts meanwhile
        // would keep the terminal from ever hanging up.
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let master = nix::pty::posix_openpt(flags).unwrap();
        nix::pty::grantpt(&master).unwrap();
        nix::pty::unlockpt(&master).unwrap();
        let name = nix::pty::ptsname_r(&master).unwrap();
        let slave = nix::fcntl::open(name.as_str(), flags, nix::sys::stat::Mode::empty()).unwrap();
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid(2) and ioctl(2) are async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // `command` holds the slave's descriptors until it is dropped.
        drop(command);
        (child, Self { master })
    }

    /// Types Ctrl-C: the terminal sends SIGINT to its foreground group.
    fn ctrl_c(&self) {
        assert_eq!(nix::unistd::write(&self.master, b"\x03").unwrap(), 1);
    }
}

fn wait_child(child: &mut Child) -> ExitStatus {
    let mut status = None;
    wait_until("the process to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

#[test]
fn ctrl_c_in_a_terminal_reaches_the_command_once() {
    let case = Case::new();
    let (mut run, terminal) = Terminal::start(case.bot(&[], "A", "record"));
    let bot = case.holder("A");
    let mut expected = vec![format!("start A {bot}")];
    // The terminal sends SIGINT to both; `run` must not send another. (One
    // `run` would send may merge with the terminal's while that is still
    // pending; six rounds leave it no chance to hide.)
    for _ in 0..6 {
        terminal.ctrl_c();
        expected.push(got("A", Signal::SIGINT, 128, Pid::from_raw(0)));
        case.wait_for_lines(expected.len());
    }
    let run_pid = Pid::from_raw(i32::try_from(run.id()).unwrap());
    kill(run_pid, Signal::SIGTERM).unwrap();
    expected.push(got("A", Signal::SIGTERM, 0, run_pid));
    let status = wait_child(&mut run);
    assert_eq!(status.code(), Some(42));
    assert_eq!(case.lines(), expected);
    assert!(!case.path.exists());
}

#[test]
fn ctrl_c_in_a_terminal_stops_the_command_and_run_once() {
    let case = Case::new();
    let (mut run, terminal) = Terminal::start(case.bot(&[], "A", "die"));
    case.holder("A");
    terminal.ctrl_c();
    let status = wait_child(&mut run);
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(!case.path.exists());
    assert_eq!(case.lines().len(), 1);
}

/// A terminal that hangs up sends SIGHUP to the session's leader only: `run`
/// leads the session here, so it passes the signal on.
#[test]
fn a_terminal_hang_up_reaches_the_command_through_run_leading_the_session() {
    let case = Case::new();
    let (mut run, terminal) = Terminal::start(case.bot(&[], "A", "record"));
    let bot = case.holder("A");
    drop(terminal);
    let run_pid = Pid::from_raw(i32::try_from(run.id()).unwrap());
    let hang_up = got("A", Signal::SIGHUP, 0, run_pid);
    case.wait_for_line(&hang_up);
    kill(run_pid, Signal::SIGTERM).unwrap();
    assert_eq!(wait_child(&mut run).code(), Some(42));
    assert_eq!(
        case.lines(),
        [
            format!("start A {bot}"),
            hang_up,
            got("A", Signal::SIGTERM, 0, run_pid)
        ]
    );
    assert!(!case.path.exists());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn wait_hands_over_when_the_running_command_ends() {
    let case = Case::new();
    let (first, first_stdin) = Running::start_with_stdin(case.bot(&[], "A", "stdin"));
    let a = case.holder("A");
    let timed_out = Running::start(case.job(&["--wait", "--timeout", "300ms"], "0")).finish();
    assert_eq!(timed_out.status.code(), Some(1), "{}", timed_out.stderr);
    assert!(
        timed_out.stderr.contains(&format!(
            "ERROR - Another instance is still running (PID: {a}; its lock is shared with PID {}) after waiting 300ms.\n",
            first.pid()
        )),
        "{}",
        timed_out.stderr
    );

    let (second, second_stdin) = Running::start_with_stdin(case.bot(&["--wait"], "B", "stdin"));
    second.wait_for_stderr(&format!(
        "INFO - Another instance is running (PID: {a}; its lock is shared with PID {}); waiting for it to exit...\n",
        first.pid()
    ));
    assert_eq!(
        case.lines(),
        [format!("start A {a}")],
        "B started while A ran"
    );
    drop(first_stdin);
    let b = case.holder("B");
    assert_eq!(
        case.lines(),
        [
            format!("start A {a}"),
            "end A".to_owned(),
            format!("start B {b}")
        ]
    );
    let first = first.finish();
    assert_eq!(first.status.code(), Some(0), "{}", first.stderr);
    drop(second_stdin);
    let second = second.finish();
    assert_eq!(second.status.code(), Some(0), "{}", second.stderr);
    assert!(!case.path.exists());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn takeover_stops_the_running_command_then_runs_its_own() {
    let case = Case::new();
    let first = Running::start(case.bot(&[], "A", "record"));
    let a = case.holder("A");
    let second = Running::start(case.bot(&["--takeover"], "B", "die"));
    let b = case.holder("B");
    let first = first.finish();
    assert_eq!(first.status.code(), Some(42), "{}", first.stderr);
    assert_eq!(
        case.lines(),
        [
            format!("start A {a}"),
            got("A", Signal::SIGTERM, 0, second.pid()),
            format!("start B {b}")
        ]
    );
    assert!(
        second.stderr.now().contains(&format!(
            "WARNING - Another instance is running (PID: {a}); sending it SIGTERM to take over...\n"
        )),
        "{}",
        second.stderr.now()
    );
    second.signal(Signal::SIGTERM);
    assert_eq!(second.finish().status.signal(), Some(libc::SIGTERM));
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn takeover_kills_a_command_that_ignores_sigterm() {
    let case = Case::new();
    let first = Running::start(case.bot(&[], "A", "ignore-term"));
    let a = case.holder("A");
    let second = Running::start(case.job(&["--takeover", "--timeout", "300ms"], "0")).finish();
    assert_eq!(second.status.code(), Some(0), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "WARNING - PID {a} did not exit within 300ms; sending SIGKILL...\n"
        )),
        "{}",
        second.stderr
    );
    assert_eq!(first.finish().status.signal(), Some(libc::SIGKILL));
    assert!(!case.path.exists());
    assert_eq!(case.lines().len(), 2, "{:?}", case.lines());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn sigkill_of_run_leaves_the_lock_with_its_running_command() {
    let case = Case::new();
    let mut run = Running::start(case.bot(&[], "A", "die"));
    let bot = case.holder("A");
    run.signal(Signal::SIGKILL);
    assert_eq!(run.wait().signal(), Some(libc::SIGKILL));

    let status = case.pidlock("status", &[]);
    assert_eq!(status.status.code(), Some(0), "{}", status.stdout);
    assert!(
        status.stdout.starts_with(&format!(
            "{}: running (PID {bot}, verified with the kernel)\n",
            case.path.display()
        )),
        "{}",
        status.stdout
    );
    let refused = Running::start(case.bot(&[], "B", "die")).finish();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(refused.stderr, conflict(&case.path, bot, None));
    assert_eq!(case.lines().len(), 1, "B ran beside A");

    // The bot ends: the lock is free, and the next start takes the file over.
    kill(bot, Signal::SIGTERM).unwrap();
    assert_eq!(
        case.pidlock("wait", &["--timeout", "30s"]).status.code(),
        Some(0)
    );
    let next = Running::start(case.job(&[], "0")).finish();
    assert_eq!(next.status.code(), Some(0), "{}", next.stderr);
    assert!(
        next.stderr.contains(&format!(
            "WARNING - Found stale PID file {} (PID {bot} not running). Removing...\n",
            case.path.display()
        )),
        "{}",
        next.stderr
    );
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_daemon_the_command_leaves_behind_keeps_the_lock_and_the_file() {
    let case = Case::new();
    let finished = Running::start(case.job(&[], "daemon")).finish();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let daemon: i32 = case
        .lines()
        .iter()
        .find_map(|line| line.strip_prefix("daemon ")?.parse().ok())
        .expect("the job names its daemon");
    let daemon = Pid::from_raw(daemon);
    case.strays.lock().unwrap().push(daemon);
    assert!(
        finished.stderr.contains(&format!(
            "INFO - PID file kept: PID {daemon} (forked from this process) still holds the lock on {}\n",
            case.path.display()
        )),
        "{}",
        finished.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&case.path).unwrap(),
        format!("{daemon}\n")
    );
    let refused = Running::start(case.job(&[], "0")).finish();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(refused.stderr, conflict(&case.path, daemon, None));
    kill(daemon, Signal::SIGKILL).unwrap();
    assert_eq!(
        case.pidlock("wait", &["--timeout", "30s"]).status.code(),
        Some(0)
    );
}

/// A service manager's notify socket, bound by the test.
struct Manager {
    socket: std::os::unix::net::UnixDatagram,
    address: PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let address = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&address).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        Self {
            socket,
            address,
            _dir: dir,
        }
    }

    fn next(&self) -> String {
        let mut buf = [0; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn notify_ready_says_ready_once_the_lock_is_held_and_the_command_may_notify_too() {
    let case = Case::new();
    let manager = Manager::new();
    let mut command = case.bot(&["--notify-ready"], "A", "notify");
    command.env("NOTIFY_SOCKET", &manager.address);
    let (run, stdin) = Running::start_with_stdin(command);
    let holds = |pid: Pid| format!("STATUS=PID {pid} holds the lock on {}", case.path.display());
    assert_eq!(manager.next(), format!("{}\nREADY=1", holds(run.pid())));
    let bot = case.holder("A");
    // The file names the bot, and so does the status; the bot's own
    // notification comes from the bot (NotifyAccess=all in a unit).
    let mut rest = [manager.next(), manager.next()];
    rest.sort();
    let mut expected = [holds(bot), "STATUS=Bot A is ready\nREADY=1".to_owned()];
    expected.sort();
    assert_eq!(rest, expected);

    let mut refused = case.job(&[], "0");
    refused.env("NOTIFY_SOCKET", &manager.address);
    assert_eq!(Running::start(refused).finish().status.code(), Some(1));
    assert_eq!(
        manager.next(),
        format!(
            "STATUS=Not started: another instance is already running (PID: {bot}; its lock is shared with PID {}); it holds {}",
            run.pid(),
            case.path.display()
        )
    );
    drop(stdin);
    assert_eq!(run.finish().status.code(), Some(0));
}

#[test]
fn usage_errors_exit_2_and_the_command_keeps_its_own_options() {
    let case = Case::new();
    for (args, message) in [
        (
            &["--wait", "--takeover"][..],
            "--wait and --takeover exclude each other",
        ),
        (
            &["--timeout", "1s"][..],
            "--timeout needs --wait or --takeover",
        ),
        (
            &["--exit-code", "-1"][..],
            "--exit-code takes a number from 0 to 255",
        ),
    ] {
        let finished = Running::start(case.run(args, &[OsStr::new("true")])).finish();
        assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
        assert!(
            finished.stderr.starts_with(&format!("pidlock: {message}")),
            "{}",
            finished.stderr
        );
    }
    let mut no_command = Command::new(env!("CARGO_BIN_EXE_pidlock"));
    no_command.arg("run").arg(&case.path);
    let finished = Running::start(no_command).finish();
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    // After PATH, `--help` and the like are the command's.
    let finished = Running::start(case.run(
        &["--log", "error"],
        &[
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new("echo \"$1\""),
            OsStr::new("sh"),
            OsStr::new("--help"),
        ],
    ))
    .finish();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_eq!(finished.stdout, "--help\n");
    assert!(case.lines().is_empty());
}

/// The children of `pid`, as this PID namespace numbers them.
fn children_of(pid: Pid) -> Vec<Pid> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        children.extend(
            text.split_whitespace()
                .map(|n| Pid::from_raw(n.parse().unwrap())),
        );
    }
    children
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// `run` as PID 1 of a new PID namespace with its own `/proc` (a container
/// without `--init`), as `unshare` starts it; `run`'s PID out here.
fn in_pid_namespace(run: Command) -> (Running, Pid) {
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(run.get_program())
        .args(run.get_args());
    default_signals(&mut unshare);
    let started = Running::start(unshare);
    let mut init = None;
    wait_until("unshare to start run", || {
        init = children_of(started.pid()).first().copied();
        init.is_some()
    });
    (started, init.unwrap())
}

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (unshare)");
            return;
        }
    };
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn run_as_pid_1_of_a_pid_namespace_passes_signals_on_and_reaps_orphans() {
    require_root!();
    let case = Case::new();
    let (unshare, init) = in_pid_namespace(case.bot(&[], "A", "record"));
    // The bot calls itself PID 2; out here it is the child of `run`.
    assert_eq!(case.started("A"), 2);
    let mut bot = None;
    wait_until("the bot's PID out here", || {
        bot = children_of(init).first().copied();
        bot.is_some()
    });
    let bot = bot.unwrap();
    case.strays.lock().unwrap().push(bot);
    case.wait_until_file_names(Pid::from_raw(2));

    // Seen from here, the holder is named as we number it, never as 2.
    let refused = Running::start(case.job(&[], "0")).finish();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.starts_with(&format!(
            "ERROR - Another instance is already running (PID: {bot} here; it calls itself PID 2: another PID namespace, e.g. a container; its lock is shared with PID {init})."
        )),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains(&format!("\n          kill {bot}\n")),
        "{}",
        refused.stderr
    );

    // PID 1 has no default actions, but a blocked signal is still queued:
    // `run` gets it and passes it on (the bot sees PID 1 send it).
    kill(init, Signal::SIGHUP).unwrap();
    case.wait_for_line(&got("A", Signal::SIGHUP, 0, Pid::from_raw(1)));

    // An orphan in the namespace is `run`'s to reap, as init's.
    let orphan_maker = Command::new("nsenter")
        .args(["--target", &init.to_string(), "--pid", "--mount", "--"])
        .args(["sh", "-c", "sh -c 'exit 0' & exit 0"])
        .status();
    if let Ok(status) = orphan_maker {
        assert!(status.success());
        wait_until("run to reap the orphans", || {
            children_of(init).iter().all(|&child| !is_zombie(child))
        });
    }

    // `pidlock stop` from here signals the bot itself: it exits 42, and so
    // does `run`, then `unshare`.
    let stop = case.pidlock("stop", &[]);
    assert_eq!(
        stop.status.code(),
        Some(0),
        "{}{}",
        stop.stdout,
        stop.stderr
    );
    let unshare = unshare.finish();
    assert_eq!(unshare.status.code(), Some(42), "{}", unshare.stderr);
    assert!(!case.path.exists());
}

/// PID 1 cannot die of a signal: when one ends the command, `run` exits
/// with 128 + n, as `docker run --init` would.
#[test]
fn run_as_pid_1_exits_128_plus_n_when_a_signal_ended_the_command() {
    require_root!();
    let case = Case::new();
    let (unshare, init) = in_pid_namespace(case.bot(&[], "A", "die"));
    case.wait_until_file_names(Pid::from_raw(case.started("A")));
    kill(init, Signal::SIGTERM).unwrap();
    let unshare = unshare.finish();
    assert_eq!(unshare.status.code(), Some(143), "{}", unshare.stderr);
    assert!(!case.path.exists());
}

/// The example unit for a Python bot, with `ExecStart=` pointed at the
/// built `pidlock`.
#[test]
fn the_example_unit_passes_systemd_analyze_verify() {
    let Ok(_) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (Debian package systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd/bot-python.service");
    let text = std::fs::read_to_string(unit).unwrap();
    let installed = "ExecStart=/usr/local/bin/pidlock run ";
    assert!(text.contains(installed), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bot-python.service");
    let built = format!("ExecStart={} run ", env!("CARGO_BIN_EXE_pidlock"));
    std::fs::write(&copy, text.replace(installed, &built)).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
