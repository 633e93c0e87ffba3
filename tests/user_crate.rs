//! The attribute in a user's crate: generated code is clean under
//! `clippy -D warnings -W clippy::pedantic`, and `crate = "..."` works when
//! the dependency is renamed (the crate only knows it as `locker`).

use std::path::Path;
use std::process::Command;

/// Cargo on a nested workspace under tests/, building into target/nested.
fn cargo(subcommand: &str, crate_dir: &str) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .arg(subcommand)
        .arg("--quiet")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(root.join(crate_dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/nested"))
        .env_remove("RUSTFLAGS");
    command
}

#[test]
fn generated_code_is_clean_under_clippy_pedantic_with_a_renamed_crate() {
    let output = cargo("clippy", "tests/user-crate")
        .args([
            "--all-targets",
            "--",
            "-D",
            "warnings",
            "-W",
            "clippy::pedantic",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn renamed_crate_runs_in_every_form() {
    for bin in ["fixture-user-crate", "tokio_above", "tokio_below"] {
        let output = cargo("run", "tests/user-crate")
            .args(["--bin", bin])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{bin}: {stderr}");
        assert!(
            String::from_utf8_lossy(&output.stdout).starts_with("user crate ran"),
            "{bin}"
        );
        assert!(
            stderr.contains("INFO - PID file lock released"),
            "{bin}: {stderr}"
        );
    }
}
