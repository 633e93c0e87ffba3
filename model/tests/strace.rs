//! Ties the model to the code: the system calls the real library makes on
//! the PID file, recorded with strace, come in the order of the model's
//! steps for the same scenario (`one_host::scenarios`).
//!
//! Each scenario runs in its own PID namespace when `unshare` allows it, so
//! that `holders::find` scans only the fixture's processes: on a shared
//! machine another process's descriptor on a hung mount would otherwise
//! stall its `/proc/<pid>/fd` scan (and it would also add nothing to the
//! comparison).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pidlock_model::one_host::scenarios::{self, *};

const TRACED: &str = "openat,flock,?fstatat,newfstatat,?fstat,pwrite64,ftruncate,unlinkat,close";
const NAME: &str = "model.pid";
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn acquire_and_release_makes_the_models_calls() {
    compare("acquire + release", "", scenarios::acquire_and_release());
}

#[test]
fn a_stale_garbage_file_is_handled_as_modelled() {
    let setup = format!("printf 'this is not a pid at all\\n' > {NAME}; chmod 644 {NAME}; ");
    compare("stale garbage", &setup, stale_garbage_then_release());
}

#[test]
fn a_conflict_makes_the_models_calls() {
    // The holder runs untraced and keeps the lock until its stdin (a FIFO)
    // closes; only the second process is traced.
    let setup = format!(
        "mkfifo in; \"$FIXTURE\" {NAME} hold < in > held & exec 3> in; \
         while ! grep -q locked held; do sleep 0.01; done; "
    );
    compare("conflict", &setup, conflict());
}

/// Runs `setup`, then the traced fixture (`once`), in a fresh directory, and
/// compares the calls on the PID file with `expected`.
fn compare(scenario: &str, setup: &str, expected: Vec<&'static str>) {
    if !strace_available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "strace is missing: CI must install the `strace` package"
        );
        eprintln!("SKIPPED {scenario}: strace is not installed (apt-get install strace)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "cd '{}' && {setup}strace -f -qq -o trace -e trace={TRACED} \"$FIXTURE\" {NAME} once; exit 0",
        dir.path().display()
    );
    run_isolated(&script);
    let trace = std::fs::read_to_string(dir.path().join("trace")).unwrap();
    let real = calls_on_the_file(&trace, NAME);
    eprintln!("{scenario}\n  model: {expected:?}\n  real:  {real:?}");
    assert_eq!(
        real, expected,
        "{scenario}: the real calls differ from the model's steps\n{trace}"
    );
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `sh -c script`, in a new PID namespace (with its own /proc) if possible.
fn run_isolated(script: &str) {
    let isolate = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"];
    let isolated = Command::new(isolate[0])
        .args(&isolate[1..])
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut command = if isolated {
        let mut command = Command::new(isolate[0]);
        command.args(&isolate[1..]).arg("sh");
        command
    } else {
        eprintln!("(no PID namespace: holders::find scans every process)");
        Command::new("sh")
    };
    let mut child = command
        .arg("-c")
        .arg(script)
        .env("FIXTURE", env!("CARGO_BIN_EXE_trace_fixture"))
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the scenario hung for {PATIENCE:?}: a `stat` of some /proc/<pid>/fd entry \
                 on a hung mount (holders::find) blocks"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The calls on the PID file, named as the model names them: those naming
/// it through the directory descriptor, and those on a descriptor an
/// `openat` of it returned (until that descriptor is closed).
fn calls_on_the_file(trace: &str, name: &str) -> Vec<&'static str> {
    let quoted = format!("\"{name}\"");
    let mut fds: Vec<i64> = Vec::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        // "<pid>  call(args) = ret"
        let line = line
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        let Some((call, rest)) = line.split_once('(') else {
            continue;
        };
        let first = rest.split([',', ')']).next().unwrap_or("").trim();
        let on_file = first.parse::<i64>().is_ok_and(|fd| fds.contains(&fd));
        let names_file = rest.starts_with(&format!("{first}, {quoted}"));
        let result = rest
            .rsplit_once(" = ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|r| r.parse::<i64>().ok());
        let call = match call {
            "openat" if names_file => {
                if let Some(fd) = result.filter(|&fd| fd >= 0) {
                    fds.push(fd);
                }
                if rest.contains("O_EXCL") {
                    OPENAT_EXCL
                } else {
                    OPENAT
                }
            }
            "newfstatat" | "fstatat" if names_file => FSTATAT,
            "newfstatat" | "fstatat" if on_file && rest.contains("AT_EMPTY_PATH") => FSTAT,
            "fstat" if on_file => FSTAT,
            "flock" if on_file => FLOCK,
            "pwrite64" if on_file => PWRITE,
            "ftruncate" if on_file => FTRUNCATE,
            "unlinkat" if names_file => UNLINKAT,
            "close" if on_file => {
                let fd = first.parse::<i64>().unwrap();
                fds.retain(|&open| open != fd);
                CLOSE
            }
            _ => continue,
        };
        calls.push(call);
    }
    calls
}

#[test]
fn the_trace_reader_follows_the_files_descriptor() {
    let trace = "7  openat(AT_FDCWD, \"/tmp/d\", O_RDONLY|O_PATH|O_DIRECTORY) = 3\n\
                 7  openat(3, \"model.pid\", O_RDWR|O_CREAT|O_EXCL, 0644) = 4\n\
                 7  newfstatat(4, \"\", {st_mode=S_IFREG|0644, ...}, AT_EMPTY_PATH) = 0\n\
                 7  newfstatat(AT_FDCWD, \"/proc/9/fd/4\", {...}, 0) = 0\n\
                 7  flock(4, LOCK_EX|LOCK_NB) = 0\n\
                 7  close(5) = 0\n\
                 7  close(4) = 0\n\
                 7  close(4) = -1 EBADF (Bad file descriptor)\n\
                 7  close(3) = 0\n";
    assert_eq!(
        calls_on_the_file(trace, "model.pid"),
        [OPENAT_EXCL, FSTAT, FLOCK, CLOSE]
    );
}
