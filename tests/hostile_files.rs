//! DESIGN.md, *Processes and places*, with real processes: hostile files at
//! the PID path.
//!
//! The tests that need root (`chown`, `mknod`) say so and are skipped, with a note
//! on stderr, when not run as root.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

// --- Hostile files ---------------------------------------------------------

#[test]
fn a_stale_file_of_another_user_is_refused_naming_the_owner_and_left_as_is() {
    require_root!();
    let case = Case::new();
    let contents = format!("{}\n", dead_pid());
    fs::write(&case.pid_file, &contents).unwrap();
    nix::unistd::chown(
        &case.pid_file,
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        None,
    )
    .unwrap();
    let before = fs::metadata(&case.pid_file).unwrap();

    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ERROR - Refusing to use {}: it belongs to user nobody (uid {NOBODY}), not to the \
             user this program runs as; remove it or run the program as that user.\n",
            case.pid_file.display()
        )
    );
    eprintln!("after: {}", headline(&stderr));
    let after = fs::metadata(&case.pid_file).unwrap();
    assert_eq!(read(&case.pid_file), contents);
    assert_eq!(
        (
            before.ino(),
            before.uid(),
            before.mode(),
            before.mtime_nsec()
        ),
        (after.ino(), after.uid(), after.mode(), after.mtime_nsec())
    );
}

#[test]
fn a_hard_link_at_the_path_is_refused_naming_the_link_count() {
    let case = Case::new();
    // A file elsewhere that must not be overwritten; it even looks stale.
    let other = case.dir.path().join("precious.txt");
    let contents = format!("{}\n", dead_pid());
    fs::write(&other, &contents).unwrap();
    fs::hard_link(&other, &case.pid_file).unwrap();

    let (status, stderr) = run(case.holder(&["exit"]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ERROR - Refusing to use {}: it has 2 names (hard links), so writing it would \
             change another file too; remove it.\n",
            case.pid_file.display()
        )
    );
    eprintln!("after: {}", headline(&stderr));
    assert_eq!(read(&other), contents);
    assert_eq!(
        fs::metadata(&other).unwrap().nlink(),
        2,
        "a name was removed"
    );
}

/// Runs the fixture under `strace` on a PID path that is not a regular file:
/// it must be refused naming `kind`, and the path never opened (the one
/// `O_CREAT | O_EXCL` attempt fails with `EEXIST` before anything is opened).
fn never_opened(case: &Case, kind: &str) {
    let trace = case.dir.path().join("strace.log");
    let mut command = case.command("strace", &["-f", "-qq", "-o"]);
    command
        .arg(&trace)
        .args(["-e", "trace=open,openat,openat2,creat", "--"])
        .arg(HOLDER)
        .arg("exit");
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ERROR - Refusing to use {} as a PID file: it is {kind}; remove it or choose \
             another path.\n",
            case.pid_file.display()
        )
    );
    eprintln!("after: {}", headline(&stderr));
    let trace = read(&trace);
    let opens: Vec<&str> = trace
        .lines()
        .filter(|line| line.contains("\"app.pid\"") || line.contains("/app.pid\""))
        .collect();
    assert!(!opens.is_empty(), "strace saw no attempt at all:\n{trace}");
    for open in &opens {
        assert!(
            open.contains("O_EXCL") && open.ends_with("= -1 EEXIST (File exists)"),
            "the PID path was opened:\n{}",
            opens.join("\n")
        );
    }
}

#[test]
fn a_character_device_at_the_path_is_refused_and_never_opened() {
    require_root!();
    let case = Case::new();
    // The device numbers of /dev/null.
    nix::sys::stat::mknod(
        &case.pid_file,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    never_opened(&case, "a character device");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &fs::symlink_metadata(&case.pid_file).unwrap().file_type()
    ));
}

#[test]
fn a_block_device_at_the_path_is_refused_and_never_opened() {
    require_root!();
    let case = Case::new();
    // loop7: opening a block device can have effects; it is never opened.
    nix::sys::stat::mknod(
        &case.pid_file,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(7, 7),
    )
    .unwrap();
    never_opened(&case, "a block device");
}

#[test]
fn a_fifo_at_the_path_is_refused_and_never_opened() {
    let case = Case::new();
    nix::unistd::mkfifo(
        &case.pid_file,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    never_opened(&case, "a FIFO (named pipe)");
}
