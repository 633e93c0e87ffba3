#![deny(warnings)]
#![warn(clippy::pedantic)]

//! A sync `main` returning `Result`, with every key.

use std::error::Error;

/// Where the lock lives when `USER_CRATE_PID_FILE` is not set.
fn pid_file() -> std::path::PathBuf {
    std::env::temp_dir().join("pidlock-user-crate.pid")
}

#[locker::single_instance(
    crate = "locker",
    path = pid_file(),
    env = "USER_CRATE_PID_FILE",
    on_conflict = "exit",
    exit_code = 2,
    signals = "auto",
    hint = "Stop the other one first."
)]
fn main() -> Result<(), Box<dyn Error>> {
    let answer: u8 = "42".parse()?;
    println!("user crate ran: {answer}");
    Ok(())
}
