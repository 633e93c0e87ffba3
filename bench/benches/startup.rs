//! Whole-process cost of the attribute: a release hello-world with and
//! without it, and the same for a tokio hello-world, started interleaved;
//! median wall time from spawn to exit, ratio and absolute delta; and the
//! binaries' sizes. The attributed programs run twice over: with the PID
//! file on tmpfs (where the default path, `$XDG_RUNTIME_DIR`, lives on a
//! systemd machine) and on the working directory's filesystem, where creating
//! and removing a file costs what that filesystem's journal makes it cost.
//!
//! `cargo bench --bench startup`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 40;
const RUNS_PER_ROUND: usize = 25;

fn main() {
    let on_disk = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let tmpfs = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let plain = env!("CARGO_BIN_EXE_hello-plain");
    let attributed = env!("CARGO_BIN_EXE_hello-pidlock");
    let tokio_plain = env!("CARGO_BIN_EXE_hello-tokio-plain");
    let tokio_attributed = env!("CARGO_BIN_EXE_hello-tokio-pidlock");
    let programs: [(&str, &str, &Path); 6] = [
        ("hello", plain, tmpfs.path()),
        (
            "hello + #[single_instance], PID file on tmpfs",
            attributed,
            tmpfs.path(),
        ),
        (
            "hello + #[single_instance], PID file on disk",
            attributed,
            on_disk.path(),
        ),
        ("tokio hello", tokio_plain, tmpfs.path()),
        (
            "tokio hello + #[single_instance], PID file on tmpfs",
            tokio_attributed,
            tmpfs.path(),
        ),
        (
            "tokio hello + #[single_instance], PID file on disk",
            tokio_attributed,
            on_disk.path(),
        ),
    ];
    let run = |exe: &str, dir: &Path| {
        let status = Command::new(exe)
            .env("HELLO_PID_FILE", dir.join("hello.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    for (_, exe, dir) in &programs {
        for _ in 0..RUNS_PER_ROUND {
            run(exe, dir);
        }
    }
    let mut samples = vec![Vec::new(); programs.len()];
    for _ in 0..ROUNDS {
        for ((_, exe, dir), samples) in programs.iter().zip(&mut samples) {
            for _ in 0..RUNS_PER_ROUND {
                let started = Instant::now();
                run(exe, dir);
                samples.push(started.elapsed());
            }
        }
    }
    let medians: Vec<Duration> = samples
        .into_iter()
        .map(|mut samples| {
            samples.sort_unstable();
            samples[samples.len() / 2]
        })
        .collect();
    let runs = ROUNDS * RUNS_PER_ROUND;
    println!("\nwhole-process start-up ({runs} runs each, interleaved; median spawn-to-exit)");
    println!("| program | median | ratio | delta |");
    println!("|---|---:|---:|---:|");
    for base in [0, 3] {
        println!(
            "| {} | {:.0} µs | 1.00 | |",
            programs[base].0,
            medians[base].as_secs_f64() * 1e6
        );
        for with in [base + 1, base + 2] {
            println!(
                "| {} | {:.0} µs | {:.3} | {:+.0} µs |",
                programs[with].0,
                medians[with].as_secs_f64() * 1e6,
                medians[with].as_secs_f64() / medians[base].as_secs_f64(),
                (medians[with].as_secs_f64() - medians[base].as_secs_f64()) * 1e6
            );
        }
    }
    println!("\nbinary size (release, as built; `strip` takes symbols off both alike)");
    println!("| program | bytes | delta |");
    println!("|---|---:|---:|");
    let size = |exe: &str| std::fs::metadata(Path::new(exe)).unwrap().len();
    for (base, with) in [(plain, attributed), (tokio_plain, tokio_attributed)] {
        let name = |exe: &str| {
            Path::new(exe)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        println!("| {} | {} | |", name(base), size(base));
        println!(
            "| {} | {} | {:+.1} KiB |",
            name(with),
            size(with),
            (size(with) as f64 - size(base) as f64) / 1024.0
        );
    }
}
