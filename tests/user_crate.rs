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

/// `url` without pidlock-core's `postgres` and `redis` features: one compile
/// error, on the `url` value, that says which feature to turn on (not a
/// failure when the program starts).
#[test]
fn url_without_an_engine_feature_is_a_compile_error_on_the_url() {
    let output = cargo("check", "tests/no-postgres-crate")
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it compiled:\n{stderr}");
    assert_eq!(stderr.matches("error[").count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "error[E0277]: `url` takes the lock in PostgreSQL or Redis, which needs pidlock-core's `postgres` or `redis` feature\n"
        ) && stderr.contains("--> src/main.rs:1:39\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("features = [\"redis\"] } (or \"postgres\")"),
        "{stderr}"
    );
}
