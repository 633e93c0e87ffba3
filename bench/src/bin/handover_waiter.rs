//! The waiting side of the hand-over bench: waits for the lock at PATH,
//! prints the monotonic clock (ns) at the moment it holds it, and exits.

use pidlock_core::{OnConflict, PidLock};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: handover-waiter PATH");
    let guard = PidLock::new(path)
        .log_level(pidlock_core::LogLevel::Error)
        .on_conflict(OnConflict::Wait { timeout: None })
        .acquire()
        .expect("acquire");
    println!("{}", pidlock_bench::monotonic_ns());
    drop(guard);
}
