//! Lock cost, in one run, as ratios to the raw-syscall floor:
//!
//! 1. acquire + release, uncontended, on the working directory's filesystem
//!    and on tmpfs: pidlock vs the floor vs fd-lock, fs4, single-instance and
//!    the pidlock crate;
//! 2. conflict detection: a second acquirer told "held by PID N";
//! 3. wait-mode hand-over: the holder releases -> the waiter holds (median, p99).
//!
//! Each round runs every variant back to back, ITERS times, and the median
//! over rounds is reported: a load spike on a shared machine then hits all
//! variants alike, and the ratios stay honest.
//!
//! `cargo bench --bench lock`

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pidlock_bench::Floor;
use pidlock_core::{Error, PidLock, Signals};

const ROUNDS: usize = 31;
const ITERS: u32 = 400;

struct Variant<'a> {
    name: &'static str,
    /// One acquire + release.
    op: Box<dyn FnMut() + 'a>,
}

/// The median time of one operation per variant.
fn measure(variants: &mut [Variant<'_>]) -> Vec<Duration> {
    for variant in variants.iter_mut() {
        for _ in 0..ITERS {
            (variant.op)();
        }
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); variants.len()];
    for _ in 0..ROUNDS {
        for (variant, samples) in variants.iter_mut().zip(&mut samples) {
            let started = Instant::now();
            for _ in 0..ITERS {
                (variant.op)();
            }
            samples.push(started.elapsed() / ITERS);
        }
    }
    samples
        .into_iter()
        .map(|mut samples| {
            samples.sort_unstable();
            samples[samples.len() / 2]
        })
        .collect()
}

fn report(title: &str, variants: &[Variant<'_>], medians: &[Duration], baseline: usize) {
    println!("\n{title}");
    println!(
        "| variant | median per op | ratio to {} |",
        variants[baseline].name
    );
    println!("|---|---:|---:|");
    for (variant, median) in variants.iter().zip(medians) {
        let ratio = median.as_secs_f64() / medians[baseline].as_secs_f64();
        println!(
            "| {} | {:.2} µs | {ratio:.2} |",
            variant.name,
            median.as_secs_f64() * 1e6
        );
    }
}

fn acquire_release(dir: &Path, label: &str) {
    let pid = format!("{}\n", std::process::id());
    let file = |name: &str| dir.join(name);
    let (ours, floor, fd_lock_path, fs4_path, pidlock_path) = (
        file("ours.pid"),
        file("floor.pid"),
        file("fd-lock.pid"),
        file("fs4.pid"),
        file("pidlock-crate.pid"),
    );
    let ours_lock = PidLock::new(&ours).log_level(pidlock_core::LogLevel::Error);
    let mut variants = vec![
        Variant {
            name: "raw-syscall floor",
            op: Box::new(|| {
                Floor::acquire(&floor, pid.as_bytes())
                    .unwrap()
                    .release()
                    .unwrap();
            }),
        },
        Variant {
            name: "pidlock-core",
            op: Box::new(|| {
                drop(ours_lock.acquire().unwrap());
            }),
        },
        Variant {
            name: "fd-lock (flock; no PID, no removal)",
            op: Box::new(|| {
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&fd_lock_path)
                    .unwrap();
                let mut lock = fd_lock::RwLock::new(file);
                drop(lock.try_write().unwrap());
            }),
        },
        Variant {
            name: "fs4 (flock; no PID, no removal)",
            op: Box::new(|| {
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&fs4_path)
                    .unwrap();
                // Qualified: std's File now has an inherent try_lock of its own.
                fs4::FileExt::try_lock(&file).unwrap();
                drop(file);
            }),
        },
        Variant {
            name: "pidlock crate 0.2 (O_EXCL file, no kernel lock)",
            op: Box::new(|| {
                let mut lock = pidlock::Pidlock::new_validated(&pidlock_path).unwrap();
                lock.acquire().unwrap();
                lock.release().unwrap();
            }),
        },
        Variant {
            name: "single-instance (abstract socket; no file)",
            op: Box::new(|| {
                let instance = single_instance::SingleInstance::new("pidlock-bench").unwrap();
                assert!(instance.is_single());
            }),
        },
    ];
    let medians = measure(&mut variants);
    report(
        &format!("acquire + release, {label}"),
        &variants,
        &medians,
        0,
    );
}

fn conflict(dir: &Path) {
    let path = dir.join("held.pid");
    // Held by another open file description of this process; the file names
    // PID 1, and pidlock reports the holder the kernel shows (this process,
    // found through /proc/<pid>/fdinfo), as it does for a real conflict.
    std::fs::write(&path, "1\n").unwrap();
    let holder = File::options().read(true).write(true).open(&path).unwrap();
    let _held =
        nix::fcntl::Flock::lock(holder, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let ours = PidLock::new(&path).log_level(pidlock_core::LogLevel::Error);
    let mut variants = vec![
        Variant {
            name: "raw-syscall floor (open, flock fails, read, close)",
            op: Box::new(|| {
                use std::io::Read;
                let mut file = File::options().read(true).write(true).open(&path).unwrap();
                let failed = nix::fcntl::Flock::lock(
                    file.try_clone().unwrap(),
                    nix::fcntl::FlockArg::LockExclusiveNonblock,
                );
                assert!(failed.is_err());
                let mut text = String::new();
                file.read_to_string(&mut text).unwrap();
                assert_eq!(text, "1\n");
            }),
        },
        Variant {
            name: "pidlock-core (AlreadyRunning with the verified holder's PID)",
            op: Box::new(|| {
                let Err(Error::AlreadyRunning { holder, .. }) = ours.acquire() else {
                    panic!("not refused");
                };
                let me = i32::try_from(std::process::id()).unwrap();
                assert_eq!(holder.pid().map(pidlock_core::Pid::get), Some(me));
            }),
        },
    ];
    let medians = measure(&mut variants);
    report("conflict detection", &variants, &medians, 0);
}

/// Hand-over between processes (within one process a second acquisition is
/// refused as `HeldByThisProcess`, as it should be): this process holds the
/// lock, a waiter process blocks in `acquire`; the latency runs from just
/// before the holder drops its guard to the waiter holding the lock, on the
/// monotonic clock both share.
fn handover(dir: &Path) {
    const HANDOVERS: usize = 300;
    let path = dir.join("handover.pid");
    let holder = PidLock::new(&path)
        .log_level(pidlock_core::LogLevel::Error)
        .signals(Signals::None);
    let mut latencies = Vec::with_capacity(HANDOVERS);
    for _ in 0..HANDOVERS {
        let guard = holder.acquire().unwrap();
        let waiter = Command::new(env!("CARGO_BIN_EXE_handover-waiter"))
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Let the waiter start and block in the kernel before letting go.
        std::thread::sleep(Duration::from_millis(5));
        let released = pidlock_bench::monotonic_ns();
        drop(guard);
        let output = waiter.wait_with_output().unwrap();
        let held: i128 = String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        latencies.push(Duration::from_nanos(
            u64::try_from(held - released).unwrap(),
        ));
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "\nwait-mode hand-over ({HANDOVERS} hand-overs between processes: holder drops its guard -> waiter holds the lock)"
    );
    println!("| median | p99 | max |");
    println!("|---:|---:|---:|");
    println!(
        "| {:.1} µs | {:.1} µs | {:.1} µs |",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    // `cargo bench` passes --bench; any other argument is a filter we ignore.
    let work_dir: PathBuf = std::env::current_dir().unwrap();
    let on_disk = tempfile::tempdir_in(&work_dir).unwrap();
    let fs_type = |path: &Path| {
        nix::sys::statfs::statfs(path)
            .map(|s| format!("{:?}", s.filesystem_type()))
            .unwrap_or_default()
    };
    acquire_release(
        on_disk.path(),
        &format!(
            "working directory's filesystem ({})",
            fs_type(on_disk.path())
        ),
    );
    if Path::new("/dev/shm").is_dir() {
        let tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
        acquire_release(tmpfs.path(), "tmpfs (/dev/shm)");
    }
    conflict(on_disk.path());
    handover(on_disk.path());
    std::io::stdout().flush().unwrap();
}
