//! The raw-syscall floor the lock benches compare against: the minimal
//! sequence a PID-file lock needs, written directly with nix and with no
//! checks at all (no symlink or file-type check, no inode re-check, no stale
//! detection, no signal or exit-path cleanup).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

/// A PID file held the floor's way.
pub struct Floor<'a> {
    path: &'a Path,
    file: OwnedFd,
}

impl<'a> Floor<'a> {
    /// open(O_CREAT) + flock(LOCK_EX|LOCK_NB) + write(pid).
    pub fn acquire(path: &'a Path, pid: &[u8]) -> nix::Result<Self> {
        let file = open(
            path,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        // SAFETY: a valid descriptor for the duration of the call.
        Errno::result(unsafe {
            nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)
        })?;
        nix::unistd::write(file.as_fd(), pid)?;
        Ok(Self { path, file })
    }

    /// unlink + close.
    pub fn release(self) -> nix::Result<()> {
        nix::unistd::unlink(self.path)?;
        drop(self.file);
        Ok(())
    }
}

/// The monotonic clock every process of the machine shares, in nanoseconds.
#[must_use]
pub fn monotonic_ns() -> i128 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec())
}
