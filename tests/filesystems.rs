//! The holder is verified on filesystems whose files report a device of
//! their own to `stat` while the kernel lists their locks under the
//! superblock's: a btrfs subvolume (the default layout of Fedora and
//! openSUSE) and overlayfs over two filesystems (containers). Real mounts:
//! a btrfs image on a loop device and an overlay with its lower layer on a
//! tmpfs, made under the test's own directory and unmounted when it ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use pidlock_core::{Holder, Pid, Status, Stop, Stopped};

/// Mounts of the test's own, unmounted (lazily) on drop.
struct Mounts {
    dir: tempfile::TempDir,
    mounted: Vec<PathBuf>,
}

impl Mounts {
    fn new() -> Option<Self> {
        let root = nix::unistd::geteuid().is_root();
        let tools = ["mkfs.btrfs", "btrfs", "mount"].iter().all(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !root || !tools {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root with btrfs-progs installed (root: {root}, tools: {tools})"
            );
            eprintln!("skipped: needs root and btrfs-progs");
            return None;
        }
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            mounted: Vec::new(),
        })
    }

    fn sh(&self, script: &str) {
        let output = Command::new("sh")
            .args(["-c", script])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A directory in a btrfs subvolume.
    fn btrfs_subvolume(&mut self) -> PathBuf {
        self.sh("truncate -s 200M btrfs.img && mkfs.btrfs -q btrfs.img && mkdir btrfs && mount -o loop btrfs.img btrfs");
        self.mounted.push(self.dir.path().join("btrfs"));
        self.sh("btrfs -q subvolume create btrfs/subvolume");
        self.dir.path().join("btrfs/subvolume")
    }

    /// The merged directory of an overlay whose lower layer is a tmpfs and
    /// whose upper layer is on the test directory's filesystem.
    fn overlay(&mut self) -> PathBuf {
        self.sh("mkdir lower upper work merged && mount -t tmpfs pidlock-lower lower && mkdir lower/data");
        self.mounted.push(self.dir.path().join("lower"));
        self.sh(
            "mount -t overlay pidlock-overlay -o lowerdir=lower,upperdir=upper,workdir=work merged",
        );
        self.mounted.push(self.dir.path().join("merged"));
        self.dir.path().join("merged/data")
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for mount in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

/// `stat`'s device is not the one the kernel lists locks under.
fn st_dev_differs_from_the_superblocks(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = dir.join("probe");
    std::fs::write(&probe, "").unwrap();
    let dev = std::fs::metadata(&probe).unwrap().dev();
    std::fs::remove_file(&probe).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    !mountinfo
        .lines()
        .any(|line| line.split(' ').nth(2) == Some(&format!("{major}:{minor}")))
}

/// Everything that needs the verified holder works on `dir`.
fn the_holder_is_verified_in(dir: &Path) {
    assert!(
        st_dev_differs_from_the_superblocks(dir),
        "{}: this filesystem does not show the difference under test",
        dir.display()
    );
    let case = Case::new();
    let pid_file = dir.join("app.pid");
    let mut command = case.holder(&["hold"]);
    command.env("PIDLOCK_TEST_PID_FILE", &pid_file);
    let holder = start(command);
    let holder_pid = Pid::new(holder.pid() as i32).unwrap();

    match pidlock_core::status(&pid_file).unwrap() {
        Status::Running(Holder::Kernel { pid, .. }) => assert_eq!(pid, holder_pid),
        other => panic!("{}: status {other:?}", dir.display()),
    }
    let mut second = case.holder(&["exit"]);
    second.env("PIDLOCK_TEST_PID_FILE", &pid_file);
    let (status, stderr) = run(second);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "To stop the existing instance:\n          kill {holder_pid}"
        )),
        "{}: {stderr}",
        dir.display()
    );
    // Takeover finds the holder to signal.
    let mut takeover = case.command(env!("CARGO_BIN_EXE_fixture-takeover"), &["hold"]);
    takeover.env("PIDLOCK_TEST_PID_FILE", &pid_file);
    let newcomer = start(takeover);
    let (ended, _) = holder.finish();
    assert!(
        killed_by(ended, nix::sys::signal::Signal::SIGTERM),
        "{}: {ended:?}",
        dir.display()
    );
    // And `stop` stops the newcomer.
    let stopped = Stop::new().run(&pid_file).unwrap();
    assert_eq!(
        stopped,
        Stopped::Exited {
            pid: Pid::new(newcomer.pid() as i32).unwrap(),
            now_held_by: None
        },
        "{}",
        dir.display()
    );
    let (ended, _) = newcomer.finish();
    assert!(
        killed_by(ended, nix::sys::signal::Signal::SIGTERM),
        "{ended:?}"
    );
    assert!(!pid_file.exists());
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn the_holder_is_verified_in_a_btrfs_subvolume() {
    let Some(mut mounts) = Mounts::new() else {
        return;
    };
    let dir = mounts.btrfs_subvolume();
    the_holder_is_verified_in(&dir);
}

#[test]
#[cfg_attr(
    pidlock_portable,
    ignore = "Linux only: holders are verified through /proc; elsewhere the PID file names them, unverified"
)]
fn the_holder_is_verified_on_an_overlay_over_two_filesystems() {
    let Some(mut mounts) = Mounts::new() else {
        return;
    };
    let dir = mounts.overlay();
    the_holder_is_verified_in(&dir);
}
