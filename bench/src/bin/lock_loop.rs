//! Acquires and releases a PID file N times the floor's way or pidlock's, to
//! look at under `strace -c` (see BENCHMARKS.md):
//! `lock-loop floor|pidlock PATH N`.

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(which), Some(path), Some(times)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: lock-loop floor|pidlock PATH N");
        std::process::exit(2);
    };
    let path = PathBuf::from(path);
    let times: u32 = times.parse().expect("N");
    let pid = format!("{}\n", std::process::id());
    let lock = pidlock_core::PidLock::new(&path).log_level(pidlock_core::LogLevel::Error);
    for _ in 0..times {
        if which == "floor" {
            pidlock_bench::Floor::acquire(&path, pid.as_bytes())
                .unwrap()
                .release()
                .unwrap();
        } else {
            drop(lock.acquire().unwrap());
        }
    }
}
