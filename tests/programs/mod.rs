//! Watching programs: pipes read by threads, exits seen through pidfds
//! (for the tests of forks and of the lock's true holder).
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::common::DEADLINE;
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal;

/// The lines a pipe has carried so far, read as they arrive by a thread.
/// Keeps the first [`KEPT`] lines and counts them all (a program stuck in a
/// loop can print millions).
#[derive(Clone)]
pub(crate) struct Stream(Arc<(Mutex<Lines>, Condvar)>);

#[derive(Default)]
pub(crate) struct Lines {
    kept: Vec<String>,
    total: usize,
    closed: bool,
}

pub(crate) const KEPT: usize = 1000;

impl Stream {
    pub(crate) fn watch(pipe: impl Read + Send + 'static) -> Self {
        let stream = Self(Arc::default());
        let shared = stream.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text =
                            String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
                        let mut lines = shared.lock();
                        lines.total += 1;
                        if lines.kept.len() < KEPT {
                            lines.kept.push(text.into_owned());
                        }
                        drop(lines);
                        shared.0.1.notify_all();
                    }
                }
            }
            shared.lock().closed = true;
            shared.0.1.notify_all();
        });
        stream
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a line at index `from` or later that satisfies `wanted`:
    /// its index and text; `None` if the pipe closed or `deadline` passed
    /// first.
    pub(crate) fn wait_line(
        &self,
        from: usize,
        deadline: Instant,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let mut lines = self.lock();
        let mut next = from;
        loop {
            while next < lines.kept.len() {
                if wanted(&lines.kept[next]) {
                    return Some((next, lines.kept[next].clone()));
                }
                next += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if lines.closed || left.is_zero() {
                return None;
            }
            lines = self
                .0
                .1
                .wait_timeout(lines, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until every writer has closed the pipe; false at `deadline`.
    pub(crate) fn wait_closed(&self, deadline: Instant) -> bool {
        let mut lines = self.lock();
        while !lines.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = self
                .0
                .1
                .wait_timeout(lines, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lock().kept.clone()
    }

    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// For failure messages: how many lines, and the first few.
    pub(crate) fn summary(&self) -> String {
        let lines = self.lock();
        let shown = lines.kept.len().min(12);
        format!(
            "{} lines{}:\n{}",
            lines.total,
            if lines.total > shown {
                format!(", the first {shown}")
            } else {
                String::new()
            },
            lines.kept[..shown].join("\n")
        )
    }
}

/// A process pinned by a pidfd: it can be signalled and awaited even when it
/// is not our child, and never stands for another process that reuses its
/// PID.
pub(crate) struct Pinned {
    pub(crate) pid: i32,
    fd: OwnedFd,
}

impl Pinned {
    /// `None` if there is no such process.
    pub(crate) fn new(pid: i32) -> Option<Self> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            // ENOENT: a process that is exiting (seen on Linux 6.18).
            let errno = Errno::last();
            assert!(
                matches!(errno, Errno::ESRCH | Errno::ENOENT),
                "pidfd_open({pid}): {errno}"
            );
            return None;
        }
        // SAFETY: a successful pidfd_open returned a descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        Some(Self { pid, fd })
    }

    /// Sends `signal`; false if the process has already exited.
    pub(crate) fn signal(&self, signal: Signal) -> bool {
        // SAFETY: a valid pidfd, a valid signal number, no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match Errno::result(sent) {
            Ok(_) => true,
            Err(Errno::ESRCH) => false,
            Err(errno) => panic!("signal {} with {signal}: {errno}", self.pid),
        }
    }

    /// Waits (woken by the kernel) until the process has exited; false at
    /// `deadline`.
    pub(crate) fn wait_exit(&self, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms =
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            match Errno::result(unsafe { libc::poll(&mut poll, 1, ms) }) {
                Ok(0) if left.is_zero() => return false,
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => return true,
                Err(errno) => panic!("poll the pidfd of {}: {errno}", self.pid),
            }
        }
    }

    pub(crate) fn alive(&self) -> bool {
        !self.wait_exit(Instant::now())
    }
}

/// A child with its stdout and stderr watched, killed on drop.
pub(crate) struct Program {
    pub(crate) child: Child,
    pub(crate) stdout: Stream,
    pub(crate) stderr: Stream,
}

impl Program {
    pub(crate) fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("spawn");
        Self {
            stdout: Stream::watch(child.stdout.take().expect("stdout piped")),
            stderr: Stream::watch(child.stderr.take().expect("stderr piped")),
            child,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn pinned(&self) -> Pinned {
        Pinned::new(self.child.id() as i32).expect("our unreaped child")
    }

    /// Waits (woken by the kernel) for the exit, up to `deadline`.
    pub(crate) fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if !self.pinned().wait_exit(deadline) {
            return None;
        }
        Some(self.child.wait().expect("wait"))
    }

    /// Waits for a stdout line; panics with what the program said if it
    /// does not come.
    pub(crate) fn expect_stdout(
        &self,
        deadline: Instant,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        match self.stdout.wait_line(0, deadline, wanted) {
            Some((_, line)) => line,
            None => panic!(
                "no {what} on stdout within {DEADLINE:?}; stdout {}\nstderr {}",
                self.stdout.summary(),
                self.stderr.summary()
            ),
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // A failed assertion must not leave a child holding a lock.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
