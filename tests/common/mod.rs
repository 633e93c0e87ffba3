//! Helpers for tests that run real programs: a scratch directory, children
//! started and awaited with deadlines, signals.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Long enough for a loaded CI machine, short enough to fail a hung test.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// The fixture binary with the attribute (tests/fixtures/holder.rs).
pub(crate) fn holder(dir: &Path) -> Command {
    program(Path::new(env!("CARGO_BIN_EXE_fixture-holder")), dir)
}

/// A program built from examples/ (Cargo builds examples for `cargo test`).
pub(crate) fn example(name: &str, dir: &Path) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir layout");
    program(&profile_dir.join("examples").join(name), dir)
}

fn program(exe: &Path, dir: &Path) -> Command {
    let mut command = Command::new(exe);
    command
        .current_dir(dir)
        .env_remove("PIDLOCK_TEST_PID_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Every environment variable pidlock itself reads: how much it prints
/// (`PIDLOCK_LOG`, `RUST_LOG`), a restart's handover (`PIDLOCK_RESTART`),
/// systemd's notification socket and journal (`NOTIFY_SOCKET`,
/// `JOURNAL_STREAM`) and the PostgreSQL backend's TLS defaults
/// (`PGSSLMODE`, `PGSSLROOTCERT`).
pub(crate) const LIBRARY_VARIABLES: [&str; 7] = [
    "PIDLOCK_LOG",
    "PIDLOCK_RESTART",
    "RUST_LOG",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "PGSSLMODE",
    "PGSSLROOTCERT",
];

/// The attribute fixture (tests/fixtures/holder.rs), to run by path.
pub(crate) const HOLDER: &str = env!("CARGO_BIN_EXE_fixture-holder");

/// How a refusal names the holder whose PID the file holds: verified on
/// Linux; on the portable layer by the file's claim (it cannot verify).
pub(crate) fn named_holder(pid: impl std::fmt::Display) -> String {
    if cfg!(pidlock_portable) {
        format!("(PID: {pid} per its PID file, not verified)")
    } else {
        format!("(PID: {pid})")
    }
}

/// The uid and gid of `nobody`, the other user of these tests.
pub(crate) const NOBODY: u32 = 65534;

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips a test that needs root, with a note on why.
#[allow(unused_macros)] // each test file uses a different subset
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (unshare, setpriv, chown or mknod)");
            return;
        }
    };
}

/// The first line of `stderr`, for the record of what a case printed.
pub(crate) fn headline(stderr: &str) -> &str {
    stderr.lines().next().unwrap_or("")
}

/// Whether `stderr` offers `kill` for any PID: a line `  kill N`.
pub(crate) fn offers_kill(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|line| line.trim_start().starts_with("kill "))
}
#[allow(unused_imports)] // each test file uses a different subset
pub(crate) use require_root;

/// A PID file in a fresh scratch directory, and programs pointed at it
/// (through `PIDLOCK_TEST_PID_FILE`, which the fixtures read).
pub(crate) struct Case {
    pub dir: tempfile::TempDir,
    pub pid_file: PathBuf,
}

impl Case {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("scratch directory");
        let pid_file = dir.path().join("app.pid");
        Self { dir, pid_file }
    }

    /// `exe` with `args`, in the scratch directory, locking `pid_file`, with
    /// none of the variables pidlock reads ([`LIBRARY_VARIABLES`]): whatever
    /// the suite was started with, it prints, tells a supervisor and
    /// connects the same. A test that wants one sets it on what this returns.
    pub(crate) fn command(&self, exe: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut command = Command::new(exe);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("PIDLOCK_TEST_PID_FILE", &self.pid_file);
        for name in LIBRARY_VARIABLES {
            command.env_remove(name);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// The PID file's contents, `None` without one.
    pub(crate) fn contents(&self) -> Option<String> {
        std::fs::read_to_string(&self.pid_file).ok()
    }

    /// The attribute fixture (tests/fixtures/holder.rs) in mode `args[0]`.
    pub(crate) fn holder(&self, args: &[&str]) -> Command {
        self.command(env!("CARGO_BIN_EXE_fixture-holder"), args)
    }
}

/// A started child whose first stdout line has arrived (it holds the lock).
pub(crate) struct Running {
    pub child: Child,
    pub first_line: String,
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }

    /// Waits for the exit; returns the status and everything on stderr.
    pub(crate) fn finish(mut self) -> (ExitStatus, String) {
        let status = wait(&mut self.child);
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).expect("read stderr");
        }
        (status, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed assertion must not leave a child holding a lock.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A started child whose stdout and stderr lines arrive on channels as they
/// are written, so that a test can wait for what it prints while it runs.
/// Killed on drop: a failed assertion must not leave a child holding a lock.
pub(crate) struct Watched {
    pub child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Watched {
    /// Starts `command`; a stream that is not piped never delivers a line.
    pub(crate) fn spawn(mut command: Command) -> Self {
        default_signals(&mut command);
        let mut child = command.spawn().expect("spawn");
        let stdout = watch_lines(child.stdout.take());
        let stderr = watch_lines(child.stderr.take());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }

    /// The next line on stdout, within [`DEADLINE`].
    pub(crate) fn next_stdout(&self) -> String {
        self.stdout
            .recv_timeout(DEADLINE)
            .expect("no line from the child")
    }

    /// The next line on stdout if one has arrived, without waiting.
    pub(crate) fn try_stdout(&self) -> Option<String> {
        self.stdout.try_recv().ok()
    }

    /// The first stdout line from now on that contains `text`, within
    /// [`DEADLINE`].
    pub(crate) fn wait_for_stdout(&self, text: &str) -> String {
        wait_for_line(&self.stdout, text).unwrap_or_else(|| self.missing("stdout", text))
    }

    /// The first stderr line from now on that contains `text`, within
    /// [`DEADLINE`].
    pub(crate) fn wait_for_stderr(&self, text: &str) -> String {
        wait_for_line(&self.stderr, text).unwrap_or_else(|| self.missing("stderr", text))
    }

    /// Panics for a line that did not come, with what the child printed
    /// and not yet been waited for.
    fn missing(&self, stream: &str, text: &str) -> ! {
        let stdout: Vec<String> = self.stdout.try_iter().collect();
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        panic!(
            "no {stream} line containing {text:?} within {DEADLINE:?}; \
             then on stdout {stdout:?}, on stderr {stderr:?}"
        )
    }

    /// Waits for the exit, within [`DEADLINE`].
    pub(crate) fn finish(mut self) -> ExitStatus {
        wait(&mut self.child)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines read from `pipe`, delivered as they come (none without one).
fn watch_lines(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    if let Some(pipe) = pipe {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
    }
    receive
}

/// The first line containing `text`, unless the stream ends or
/// [`DEADLINE`] passes first.
fn wait_for_line(lines: &mpsc::Receiver<String>, text: &str) -> Option<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()?;
        if line.contains(text) {
            return Some(line);
        }
    }
}

/// A shell without job control starts background jobs with SIGINT and
/// SIGQUIT ignored, `nohup` ignores SIGHUP, and a child inherits that across
/// exec (pidlock then rightly leaves them ignored). Put every signal the
/// tests send back to its default, as a terminal or CI gives them, so that
/// every test means the same however the suite was started.
fn default_signals(command: &mut Command) {
    // SAFETY: `signal` is async-signal-safe, as required between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for signal in [
                Signal::SIGHUP,
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGTERM,
            ] {
                nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Starts `command` and waits for its first line on stdout.
pub(crate) fn start(mut command: Command) -> Running {
    default_signals(&mut command);
    let mut child = command.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout piped");
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = send.send(lines.next());
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    match receive.recv_timeout(DEADLINE) {
        Ok(Some(Ok(first_line))) => Running { child, first_line },
        other => {
            let _ = child.kill();
            let output = child.wait_with_output().expect("wait");
            panic!(
                "child did not start ({other:?}); status {:?}, stderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Runs `command` to completion with a deadline: status and stderr.
pub(crate) fn run(mut command: Command) -> (ExitStatus, String) {
    default_signals(&mut command);
    let mut child = command.stdout(Stdio::null()).spawn().expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let status = wait(&mut child);
    (
        status,
        reader.join().expect("reader thread").expect("read stderr"),
    )
}

/// Waits for `child` with a deadline, killing it if the deadline passes.
pub(crate) fn wait(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("child {} still running after {DEADLINE:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn killed_by(status: ExitStatus, signal: Signal) -> bool {
    status.signal() == Some(signal as i32)
}

/// A PID that is certainly not running: a child that has been reaped.
pub(crate) fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    pid
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub(crate) fn data_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("data").join(name)
}

/// The monotonic clock every process of the machine shares, in nanoseconds.
pub(crate) fn monotonic_ns() -> i128 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec())
}

/// The two lines a release prints for `pid_file` (an absolute path).
pub(crate) fn release_lines(pid_file: &Path) -> String {
    format!(
        "INFO - Releasing PID lock...\nINFO - PID file lock released: {}\n",
        pid_file.display()
    )
}

/// Reads the holding intervals the fixtures log (`<pid> <start> <end>` on
/// the shared monotonic clock, modes "race" and "span"), and asserts there
/// are `expected` of them and that no two overlap.
pub(crate) fn assert_held_one_at_a_time(log: &Path, expected: usize) {
    let mut held: Vec<(i128, i128, u32)> = read(log)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| fields[i].parse::<i128>().expect("a logged number");
            (number(1), number(2), number(0) as u32)
        })
        .collect();
    assert_eq!(held.len(), expected, "holding intervals logged");
    held.sort_unstable();
    for pair in held.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "PIDs {} and {} held the lock at the same time: {pair:?}",
            pair[0].2,
            pair[1].2
        );
    }
}

/// A user that only exists inside a [`PrivateMounts`] namespace.
pub(crate) const TEST_USER: u32 = 4242;

/// A mount namespace of the test's own (`unshare --mount`), with an empty
/// `/run` and an `/etc/passwd` that adds [`TEST_USER`] with a home directory
/// of its own: the default PID file paths (root's `/run/<bin>.pid`, a
/// user's home) without touching the machine's, so two runs of the suite
/// never meet. Needs root; `None` (the test then skips, except under
/// `CI=true`) without it.
pub(crate) struct PrivateMounts {
    holder: Child,
    dir: tempfile::TempDir,
}

impl PrivateMounts {
    pub(crate) fn new() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root, which private mounts need"
            );
            eprintln!("skipped: needs root for a mount namespace of its own");
            return None;
        }
        let dir = tempfile::tempdir().expect("scratch directory");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("make the home directory");
        std::os::unix::fs::chown(&home, Some(TEST_USER), Some(TEST_USER)).expect("chown the home");
        // Other users must be able to reach the home, as on a real system.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the scratch directory");
        let mut passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        passwd.push_str(&format!(
            "pidlocktest:x:{TEST_USER}:{TEST_USER}::{}:/bin/sh\n",
            home.display()
        ));
        std::fs::write(dir.path().join("passwd"), passwd).expect("write the private passwd");
        let script = format!(
            "mount -t tmpfs -o mode=755 pidlock-test /run && \
             mount --bind '{}/passwd' /etc/passwd && echo ready && exec cat",
            dir.path().display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare --mount");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("stdout piped"))
            .read_line(&mut line)
            .expect("read the namespace's first line");
        assert_eq!(line, "ready\n", "the private mounts were not made");
        Some(Self { holder, dir })
    }

    /// `exe args`, in the namespace, as `uid` (root when `None`).
    pub(crate) fn command(&self, uid: Option<u32>, exe: &str, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()));
        if let Some(uid) = uid {
            command.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        command
            .arg("--")
            .arg(exe)
            .args(args)
            .current_dir(self.dir.path());
        for name in LIBRARY_VARIABLES {
            command.env_remove(name);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// [`TEST_USER`]'s home directory.
    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Whether `path` exists, seen from inside the namespace.
    pub(crate) fn exists(&self, path: &Path) -> bool {
        self.command(None, "test", &["-e", &path.display().to_string()])
            .status()
            .expect("run test -e")
            .success()
    }

    /// `path`'s contents, seen from inside the namespace.
    pub(crate) fn read(&self, path: &Path) -> String {
        let output = self
            .command(None, "cat", &[&path.display().to_string()])
            .output()
            .expect("run cat");
        assert!(output.status.success(), "cat {}", path.display());
        String::from_utf8(output.stdout).expect("UTF-8")
    }
}

impl Drop for PrivateMounts {
    fn drop(&mut self) {
        // Closing its stdin ends `cat`, and with the last process the
        // namespace and its mounts go.
        drop(self.holder.stdin.take());
        let _ = self.holder.wait();
    }
}

/// Starts processes at one instant: each is started through a shell that
/// waits until the test opens the gate (closes the write end of a pipe the
/// shells read from), then execs the program. Unlike a start time picked in
/// advance, a loaded machine that is slow to start them all cannot make one
/// start late. (The wait cannot sit between fork and exec: `spawn` returns
/// only once the child has exec'd.)
pub(crate) struct StartingGate {
    read: std::os::fd::OwnedFd,
    write: Option<std::os::fd::OwnedFd>,
}

impl StartingGate {
    pub(crate) fn new() -> Self {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
        Self {
            read,
            write: Some(write),
        }
    }

    /// `program args`, started when the gate opens; the rest of the
    /// command (directory, environment, stdio) is set on what this returns.
    pub(crate) fn command(&self, program: &Path, args: &[&std::ffi::OsStr]) -> Command {
        use std::os::fd::AsRawFd;
        let mut command = Command::new("sh");
        command
            .args(["-c", "read -r gate <&3; exec \"$0\" \"$@\""])
            .arg(program)
            .args(args);
        let read = self.read.as_raw_fd();
        // SAFETY: dup2 and fcntl are async-signal-safe, as required between
        // fork and exec. The shell gets the read end as fd 3, without
        // close-on-exec (dup2 onto itself would keep the flag: clear it).
        unsafe {
            command.pre_exec(move || {
                let done = if read == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(read, 3)
                };
                if done < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Lets every waiting command go.
    pub(crate) fn open(mut self) {
        drop(self.write.take());
    }
}
