//! The real lock, for the strace tie-test (model/tests/strace.rs).
//!
//! `trace_fixture <path> once`: acquire, release, exit 0 (exit 1 with the
//! error on a conflict).
//! `trace_fixture <path> hold`: acquire, print `locked`, hold the lock until
//! standard input closes, release.
//!
//! `Signals::None` and quiet: no signal set-up and no messages, so the
//! traced calls are the protocol's alone.

use std::io::{Read, Write};
use std::process::ExitCode;

use pidlock_core::{PidLock, Signals};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), Some(mode)) = (args.next(), args.next()) else {
        eprintln!("usage: trace_fixture <path> once|hold");
        return ExitCode::from(2);
    };
    let lock = PidLock::new(path)
        .signals(Signals::None)
        .log_level(pidlock_core::LogLevel::Error);
    let mut guard = match lock.acquire() {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    if mode == "hold" {
        println!("locked");
        let _ = std::io::stdout().flush();
        // Held until the test closes our standard input.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    match guard.release() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
