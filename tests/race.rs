//! Many instances at once, and instances killed at any moment of start-up.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const PROCESSES: usize = 12;
const ROUNDS: usize = 25;

fn fixture(dir: &Path, pid_file: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fixture-holder"));
    command
        .current_dir(dir)
        .env("PIDLOCK_TEST_PID_FILE", pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn simultaneous_starts_have_one_winner_per_round_and_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let log = dir.path().join("holders.log");
    for round in 0..ROUNDS {
        // Every child is forked first and waits at the gate before it
        // execs: they start together.
        let gate = StartingGate::new();
        let children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                let mut command = gate.command(
                    Path::new(env!("CARGO_BIN_EXE_fixture-holder")),
                    &["race".as_ref(), log.as_os_str()],
                );
                command
                    .current_dir(dir.path())
                    .env("PIDLOCK_TEST_PID_FILE", &pid_file)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                command.spawn().unwrap()
            })
            .collect();
        gate.open();
        let mut winners = 0;
        for child in children {
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            match output.status.code() {
                Some(0) => winners += 1,
                Some(1) => assert!(
                    stderr.starts_with("ERROR - Another instance is already running (PID: "),
                    "round {round}: lost for another reason:\n{stderr}"
                ),
                _ => panic!("round {round}: {:?}\n{stderr}", output.status),
            }
        }
        assert_eq!(winners, 1, "round {round}");
        assert!(!pid_file.exists(), "round {round} left the file behind");
    }

    assert_held_one_at_a_time(&log, ROUNDS);
}

#[test]
fn sigkill_at_any_moment_of_start_up_never_blocks_the_next_start() {
    const TRIALS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let (mut found_stale, mut found_corrupted) = (0, 0);
    for trial in 0..TRIALS {
        // Kill moments spread over the first 4 ms of the program's life, from
        // before exec to after the PID is written (a debug build of the
        // fixture takes about 1-2 ms to get there).
        let delay = Duration::from_micros(trial * 4000 / TRIALS);
        let mut victim = fixture(dir.path(), &pid_file).arg("hold").spawn().unwrap();
        std::thread::sleep(delay);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim.id() as i32),
            Signal::SIGKILL,
        )
        .unwrap();
        let status = victim.wait().unwrap();
        assert!(
            killed_by(status, Signal::SIGKILL),
            "trial {trial}: {status:?}"
        );

        let mut next = fixture(dir.path(), &pid_file);
        next.arg("exit");
        let (status, stderr) = run(next);
        assert!(
            status.success(),
            "trial {trial} ({delay:?}): next start failed:\n{stderr}"
        );
        assert!(!pid_file.exists(), "trial {trial}");
        found_stale += usize::from(stderr.contains("Found stale PID file"));
        found_corrupted += usize::from(stderr.contains("Found corrupted PID file"));
    }
    eprintln!(
        "{TRIALS} kills: the next start found a stale file {found_stale} times, \
         an empty (killed between create and write) one {found_corrupted} times"
    );
}
