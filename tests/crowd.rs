//! A refused start beside a crowd of processes costs about what it costs on
//! an idle host: the likely holders (the PID in the file, the processes
//! `/proc/locks` names, their children) are examined first, and the whole
//! host is scanned only when they are not the instance. Counted, not timed:
//! the `/proc/<pid>/fdinfo` listings a refused start opens, under strace.
//! (BENCHMARKS.md has the times.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

/// Processes in the crowd, each with this many descriptors open.
const CROWD: usize = 300;
const DESCRIPTORS: usize = 40;

/// Idle processes with many descriptors, like a busy server's.
struct Crowd(Vec<Child>);

impl Crowd {
    fn gather() -> Self {
        let script = format!(
            "i=3; while [ $i -lt {} ]; do eval \"exec $i</dev/null\"; i=$((i+1)); done; echo up; exec cat",
            DESCRIPTORS + 3
        );
        let mut crowd = Vec::with_capacity(CROWD);
        for _ in 0..CROWD {
            crowd.push(
                // bash: dash redirects single-digit descriptors only.
                Command::new("bash")
                    .args(["-c", &script])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("start a crowd process"),
            );
        }
        for member in &mut crowd {
            let mut line = String::new();
            BufReader::new(member.stdout.as_mut().expect("stdout piped"))
                .read_line(&mut line)
                .expect("read a crowd process's line");
            assert_eq!(line, "up\n");
        }
        Self(crowd)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for member in &mut self.0 {
            drop(member.stdin.take());
            let _ = member.kill();
        }
        for member in &mut self.0 {
            let _ = member.wait();
        }
    }
}

/// The `/proc/<pid>/fdinfo` directories a traced command opened, by PID.
fn fdinfo_listings(trace: &str) -> Vec<String> {
    let mut pids: Vec<String> = trace
        .lines()
        .filter(|line| line.contains("openat(") && line.contains("/fdinfo\""))
        .filter_map(|line| {
            let path = line.split('"').nth(1)?;
            let pid = path.strip_prefix("/proc/")?.strip_suffix("/fdinfo")?;
            (pid != "self").then(|| pid.to_owned())
        })
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn a_refused_start_beside_a_crowd_examines_only_the_likely_holders() {
    if !strace_available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "strace is missing: CI must install the `strace` package"
        );
        eprintln!("skipped: strace is not installed");
        return;
    }
    let case = Case::new();
    let holder = start(case.holder(&["hold"]));
    let _crowd = Crowd::gather();
    let trace = case.dir.path().join("trace");
    let mut refused = case.command("strace", &["-f", "-qq", "-e", "trace=openat", "-o"]);
    refused
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_fixture-holder"))
        .arg("exit");
    let (status, stderr) = run(refused);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "ERROR - Another instance is already running (PID: {}).",
            holder.pid()
        )),
        "{stderr}"
    );
    let listed = fdinfo_listings(&read(&trace));
    assert!(
        listed.len() <= 3,
        "a refused start listed the descriptors of {} processes beside a crowd of {CROWD}: {listed:?}",
        listed.len()
    );
    assert!(listed.contains(&holder.pid().to_string()), "{listed:?}");
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
