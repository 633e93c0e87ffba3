//! A forked child that holds an exclusive `flock` on a file, as another
//! program would: what the `pidlock` command is tested against.
#![allow(dead_code)] // each test file uses a different subset

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe, read};

/// How the holder behaves besides holding the lock.
#[derive(Clone, Copy, Default)]
pub(crate) struct HolderOptions {
    /// Write its PID into the file, as a pidlock holder would.
    pub write_pid: bool,
    /// Ignore SIGTERM, as a hung program would.
    pub ignore_sigterm: bool,
}

/// A child process holding an exclusive lock on a file; killed on drop
/// unless it was reaped.
pub(crate) struct Holder {
    pub pid: Pid,
    reaped: bool,
}

impl Holder {
    /// Forks the holder and returns once it holds the lock.
    pub(crate) fn start(path: &Path, options: HolderOptions) -> Self {
        let path = CString::new(path.as_os_str().as_bytes()).unwrap();
        let (ready_read, ready_write) = pipe().unwrap();
        // SAFETY: the child makes only async-signal-safe calls (signal,
        // open, flock, getpid, write, pause), formats on the stack and never
        // returns.
        match unsafe { fork() }.unwrap() {
            // SAFETY: as above: raw async-signal-safe calls on a path
            // prepared before the fork and on stack buffers.
            ForkResult::Child => unsafe {
                // A shell without job control starts background commands
                // with SIGINT ignored, and dispositions are inherited: the
                // holder must die of SIGINT whoever started the tests.
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                if options.ignore_sigterm {
                    libc::signal(libc::SIGTERM, libc::SIG_IGN);
                }
                let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644);
                libc::flock(fd, libc::LOCK_EX);
                if options.write_pid {
                    let mut digits = [0u8; 12];
                    let mut at = digits.len() - 1;
                    digits[at] = b'\n';
                    let mut pid = libc::getpid();
                    loop {
                        at -= 1;
                        digits[at] = b'0' + (pid % 10) as u8;
                        pid /= 10;
                        if pid == 0 {
                            break;
                        }
                    }
                    let text = &digits[at..];
                    libc::write(fd, text.as_ptr().cast(), text.len());
                }
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&ready_write),
                    b"!".as_ptr().cast(),
                    1,
                );
                loop {
                    libc::pause();
                }
            },
            ForkResult::Parent { child } => {
                drop(ready_write);
                let mut byte = [0];
                assert_eq!(read(&ready_read, &mut byte).unwrap(), 1);
                Self {
                    pid: child,
                    reaped: false,
                }
            }
        }
    }

    /// Whether it is still running (not exited, not a zombie to reap).
    pub(crate) fn running(&self) -> bool {
        matches!(
            waitpid(self.pid, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// Reaps the child: the signal it died of.
    pub(crate) fn death(&mut self) -> Option<Signal> {
        self.reaped = true;
        match waitpid(self.pid, None).unwrap() {
            WaitStatus::Signaled(_, signal, _) => Some(signal),
            _ => None,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}
