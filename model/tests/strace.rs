//! Ties the model to the code: the system calls the real library makes on
//! the PID file (and, when it replaces a file readers hold, on its temporary
//! file and the replacement lock), recorded with strace, come in the order
//! of the model's steps for the same scenario (`one_host::scenarios`).
//!
//! Each scenario runs in its own PID namespace when `unshare` allows it, so
//! that `holders::find` scans only the fixture's processes: on a shared
//! machine another process's descriptor on a hung mount would otherwise
//! stall its `/proc/<pid>/fd` scan (and it would also add nothing to the
//! comparison).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pidlock_model::one_host::scenarios::{self, *};

const TRACED: &str =
    "openat,flock,?fstatat,newfstatat,?fstat,pwrite64,ftruncate,unlinkat,renameat2,close";
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

#[test]
fn replacing_a_file_a_reader_holds_makes_the_models_calls() {
    // A reader holds a shared lock on a stale file (flock(1), which opens
    // it read-only) until its stdin, a FIFO, closes.
    let setup = format!(
        "printf '999999\\n' > {NAME}; mkfifo in; \
         flock -s {NAME} sh -c 'echo held > held; exec cat > /dev/null' < in & exec 3> in; \
         while ! grep -q held held 2>/dev/null; do sleep 0.01; done; "
    );
    compare("pinned by a reader", &setup, pinned_by_a_reader());
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

/// Which of the files a name or a descriptor is.
#[derive(Clone, Copy, PartialEq)]
enum File {
    /// The PID file, or a temporary file that becomes it.
    Pid,
    Temporary,
    /// The replacement lock.
    Turn,
}

/// The calls on the PID file, a temporary file and the replacement lock,
/// named as the model names them: those naming one of them through the
/// directory descriptor, and those on a descriptor an `openat` of one
/// returned (until that descriptor is closed).
fn calls_on_the_file(trace: &str, name: &str) -> Vec<&'static str> {
    let which = |quoted: &str| {
        let file = quoted.strip_prefix('"')?.strip_suffix('"')?;
        if file == name {
            Some(File::Pid)
        } else if file == format!(".{name}.replace") {
            Some(File::Turn)
        } else if file.starts_with(&format!(".{name}.")) && file.ends_with(".pidlock") {
            Some(File::Temporary)
        } else {
            None
        }
    };
    let mut fds: Vec<(i64, File)> = Vec::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        // "<pid>  call(args) = ret"
        let line = line
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        let Some((call, rest)) = line.split_once('(') else {
            continue;
        };
        let mut args = rest.split([',', ')']).map(str::trim);
        let first = args.next().unwrap_or("");
        // The name after the directory descriptor, if it is one of ours.
        let named = args.next().and_then(which);
        let on = first
            .parse::<i64>()
            .ok()
            .and_then(|fd| fds.iter().find(|(open, _)| *open == fd).map(|&(_, f)| f));
        let result = rest
            .rsplit_once(" = ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|r| r.parse::<i64>().ok());
        let call = match (call, named, on) {
            ("openat", Some(file), _) => {
                if let Some(fd) = result.filter(|&fd| fd >= 0) {
                    let kind = if file == File::Turn {
                        File::Turn
                    } else {
                        File::Pid
                    };
                    fds.push((fd, kind));
                }
                match file {
                    File::Pid if rest.contains("O_EXCL") => OPENAT_EXCL,
                    File::Pid => OPENAT,
                    File::Temporary => OPENAT_TEMP,
                    File::Turn => OPENAT_TURN,
                }
            }
            ("newfstatat" | "fstatat", Some(File::Pid), _) => FSTATAT,
            ("newfstatat" | "fstatat", Some(File::Temporary), _) => FSTATAT_TEMP,
            ("newfstatat" | "fstatat", Some(File::Turn), _) => FSTATAT_TURN,
            ("newfstatat", _, Some(file)) if rest.contains("AT_EMPTY_PATH") => {
                if file == File::Turn {
                    FSTAT_TURN
                } else {
                    FSTAT
                }
            }
            ("fstat", _, Some(File::Turn)) => FSTAT_TURN,
            ("fstat", _, Some(_)) => FSTAT,
            ("flock", _, Some(File::Turn)) => FLOCK_TURN,
            ("flock", _, Some(_)) => FLOCK,
            ("pwrite64", _, Some(_)) => PWRITE,
            ("ftruncate", _, Some(_)) => FTRUNCATE,
            ("unlinkat", Some(File::Pid), _) => UNLINKAT,
            ("unlinkat", Some(File::Temporary), _) => UNLINKAT_TEMP,
            ("unlinkat", Some(File::Turn), _) => UNLINKAT_TURN,
            ("renameat2", Some(_), _) if rest.contains("RENAME_EXCHANGE") => EXCHANGE,
            ("close", _, Some(file)) => {
                let fd = first.parse::<i64>().unwrap();
                fds.retain(|&(open, _)| open != fd);
                if file == File::Turn {
                    CLOSE_TURN
                } else {
                    CLOSE
                }
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

#[test]
fn the_trace_reader_follows_the_temporary_file_and_the_turn() {
    let trace = "7  openat(3, \".model.pid.replace\", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0600) = 5\n\
                 7  flock(5, LOCK_EX|LOCK_NB) = 0\n\
                 7  newfstatat(3, \".model.pid.replace\", {st_mode=S_IFREG|0600, ...}, AT_SYMLINK_NOFOLLOW) = 0\n\
                 7  openat(3, \".model.pid.7.0.pidlock\", O_RDWR|O_CREAT|O_EXCL, 0644) = 6\n\
                 7  flock(6, LOCK_EX|LOCK_NB) = 0\n\
                 7  renameat2(3, \".model.pid.7.0.pidlock\", 3, \"model.pid\", RENAME_EXCHANGE) = 0\n\
                 7  unlinkat(3, \".model.pid.7.0.pidlock\", 0) = 0\n\
                 7  unlinkat(3, \".model.pid.replace\", 0) = 0\n\
                 7  close(5) = 0\n\
                 7  pwrite64(6, \"7\\n\", 2, 0) = 2\n\
                 7  close(6) = 0\n";
    assert_eq!(
        calls_on_the_file(trace, "model.pid"),
        [
            OPENAT_TURN,
            FLOCK_TURN,
            FSTATAT_TURN,
            OPENAT_TEMP,
            FLOCK,
            EXCHANGE,
            UNLINKAT_TEMP,
            UNLINKAT_TURN,
            CLOSE_TURN,
            PWRITE,
            CLOSE
        ]
    );
}
