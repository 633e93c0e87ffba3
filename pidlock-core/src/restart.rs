//! Re-executing the program without ever letting go of its locks, for a
//! bot's `/restart` command (DESIGN.md, *The lock protocol*).
//!
//! Exiting and starting again leaves a window in which another instance can
//! take the lock. Instead, [`restart`] clears close-on-exec on each locked
//! descriptor just before it `exec`s the same executable with the same arguments and
//! environment, plus `PIDLOCK_RESTART` naming the descriptors. A `flock`
//! belongs to the open file description, which survives `exec`, so the lock
//! is held throughout. The new image, on acquiring the same path, adopts the
//! descriptor instead of opening a new one, after checking that it is the
//! file the path names and that it holds the lock on it.
//!
//! The hand-over names the PID that wrote it: `exec` keeps the PID, so only
//! the re-executed image matches, never a child it spawns later (which
//! inherits the environment but not the descriptors).

use std::ffi::{CStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use nix::errno::Errno;
use nix::sys::stat::fstatat;

use crate::messages;
use crate::pid::Pid;
use crate::signal_context::{self, Sharers};
use crate::sys::{HeldFile, Identity, decimal, flock, identity_of_raw, unsafe_kind};
use crate::systemd;

/// The environment variable that carries the hand-over.
const HANDOVER: &str = "PIDLOCK_RESTART";

/// Re-executes the running program (same executable, arguments and
/// environment) while keeping every PID-file lock this process owns: no
/// other instance can start in between. Returns only if it could not, with
/// the reason; the locks are then still held, as before the call.
///
/// After a deploy replaced the executable, the new file at the same path is
/// what runs.
///
/// A lock across hosts (the `postgres` or `redis` feature) cannot be kept:
/// its connection and its keeper thread end with the process image. While
/// one is held, `restart()` refuses
/// before `exec` with an [`io::ErrorKind::Unsupported`] error that says so;
/// restart through the supervisor instead, or release that lock first.
///
/// ```no_run
/// #[pidlock_core::single_instance(path = "data/bot.pid")]
/// fn main() {
///     // ... on the bot's /restart command:
///     let error = pidlock_core::restart();
///     eprintln!("restart failed: {error}");
/// }
/// ```
#[must_use = "restart() returns only when it failed"]
pub fn restart() -> io::Error {
    if remote_lock_held() {
        return io::Error::new(
            io::ErrorKind::Unsupported,
            "restart() cannot keep a lock across hosts (PostgreSQL, Redis) across exec: its connection and keeper end with the process image; restart through your supervisor instead",
        );
    }
    // Only what this process owns: a fork child's inherited locks are its
    // parent's, and they close at exec like any close-on-exec descriptor.
    let held = signal_context::owned();
    let mut handover = format!("{};", Pid::current());
    let mut inherited: Vec<RawFd> = Vec::new();
    for (index, held) in held.iter().enumerate() {
        let (dev, ino) = held.identity.raw();
        let separator = if index == 0 { "" } else { "," };
        handover.push_str(&format!("{separator}{}:{dev}:{ino}", held.file));
        inherited.push(held.file);
        // The sharers pipe goes along: a child forked before the restart
        // still shares the lock, and the new image must know it does.
        if let Some((read, write)) = held.sharers.descriptors() {
            handover.push_str(&format!(":{read}:{write}"));
            inherited.extend([read, write]);
        }
    }
    let executable = match current_executable() {
        Ok(executable) => executable,
        Err(error) => return error,
    };
    if held.iter().any(|held| held.announce) {
        messages::restarting(Pid::current(), &executable);
    }
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&executable);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // A path given relative was resolved against the working directory the
    // program started in; the new image resolves it again, so it must start
    // there too, wherever the program has moved since.
    if let Some(directory) = held.iter().find_map(|held| held.resolved_in.as_ref()) {
        command.current_dir(directory);
    }
    // The PID stays the same across `exec`: to systemd this is a reload of
    // the main process. The new image reports the lock again (and READY=1
    // when it opted in).
    if systemd::is_supervised() {
        systemd::notify(&format!(
            "RELOADING=1\n{}\nSTATUS=Restarting with the lock held (PID {})",
            systemd::monotonic_usec(),
            Pid::current()
        ));
    }
    // Close-on-exec is cleared at the last moment, right before `execve`:
    // while it is clear, a child that another thread spawns would inherit
    // the lock. The window is two system calls wide instead of the whole of
    // this function.
    let fds = inherited.clone();
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe,
    // on descriptors the guards keep open.
    let command = unsafe {
        command
            .args(args)
            .env(HANDOVER, handover)
            .pre_exec(move || {
                for &fd in &fds {
                    set_close_on_exec(fd, false)?;
                }
                Ok(())
            })
    };
    let error = command.exec();
    for fd in inherited {
        let _ = set_close_on_exec(fd, true);
    }
    // This image carries on, as ready as it was: end the reload.
    systemd::notify(&format!("READY=1\nSTATUS=Restart failed: {error}"));
    error
}

#[cfg(any(feature = "postgres", feature = "redis"))]
fn remote_lock_held() -> bool {
    crate::remote::fencing_term().is_some()
}

#[cfg(not(any(feature = "postgres", feature = "redis")))]
fn remote_lock_held() -> bool {
    false
}

/// Sets or clears `FD_CLOEXEC` on a raw descriptor. The raw `fcntl` takes a
/// number, not a borrowed descriptor: it fails with `EBADF` on one that is
/// not open, which is all the hand-over code (and a command given the
/// lock, [`crate::PidFileGuard::share_with`]) needs to know.
/// Async-signal-safe.
pub(crate) fn set_close_on_exec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { nix::libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a number is defined for any value: EBADF if closed.
    Errno::result(unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, flags) })
        .map(drop)
        .map_err(io::Error::from)
}

/// The running executable. On Linux, once a deploy replaced the file,
/// `/proc/self/exe` names it with " (deleted)" appended; the new file at the
/// original path is the one to run.
fn current_executable() -> io::Result<PathBuf> {
    let executable = std::env::current_exe()?;
    let bytes = executable.into_os_string().into_vec();
    let bytes = match bytes.strip_suffix(b" (deleted)") {
        Some(original) => original.to_vec(),
        None => bytes,
    };
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

/// The entries of this process's hand-over (`fd:dev:ino[:read:write],...`
/// after the PID that wrote it), if there is one for this process.
///
/// Read from the raw bytes, field by field: this runs in every program on
/// every acquisition (almost always to find no variable), so it is kept to
/// the code it needs.
fn handed_over(handover: &[u8]) -> Option<&[u8]> {
    let separator = handover.iter().position(|&byte| byte == b';')?;
    let (pid, entries) = (&handover[..separator], &handover[separator + 1..]);
    (decimal(pid) == Some(Pid::current().get())).then_some(entries)
}

/// One entry of the hand-over: the locked descriptor and its file, and the
/// lock's sharers pipe when it had one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    fd: RawFd,
    identity: Identity,
    sharers: Option<(RawFd, RawFd)>,
}

impl Entry {
    fn parse(entry: &[u8]) -> Option<Self> {
        let mut fields = entry.split(|&byte| byte == b':');
        let fd = descriptor(fields.next()?)?;
        let (dev, ino) = (decimal(fields.next()?)?, decimal(fields.next()?)?);
        let sharers = match (fields.next(), fields.next()) {
            (None, _) => None,
            (Some(read), Some(write)) => Some((descriptor(read)?, descriptor(write)?)),
            (Some(_), None) => return None,
        };
        fields.next().is_none().then_some(Self {
            fd,
            identity: Identity::from_raw(dev, ino),
            sharers,
        })
    }

    /// Every descriptor the entry names.
    fn descriptors(self) -> impl Iterator<Item = RawFd> {
        std::iter::once(self.fd).chain(
            self.sharers
                .into_iter()
                .flat_map(|(read, write)| [read, write]),
        )
    }
}

/// A descriptor number: decimal, unsigned.
fn descriptor(digits: &[u8]) -> Option<RawFd> {
    RawFd::try_from(decimal::<u32>(digits)?).ok()
}

/// The hand-over this image was started with, taken out of the environment
/// before `main` (see [`take_handover_at_start`]); read from the
/// environment where that did not run.
fn handover() -> Option<Vec<u8>> {
    if TAKEN_AT_START.load(SeqCst) {
        return TAKEN.get().cloned().flatten();
    }
    std::env::var_os(HANDOVER).map(OsString::into_vec)
}

static TAKEN_AT_START: AtomicBool = AtomicBool::new(false);
static TAKEN: OnceLock<Option<Vec<u8>>> = OnceLock::new();

/// Runs before `main` in every program that links pidlock (the C runtime's
/// constructor list, as std itself uses for the command line on Linux).
///
/// A hand-over is only for the image [`restart`] started; left as it is, an
/// image that never takes a lock would pass the variable to every child it
/// spawns, and its descriptors (close-on-exec cleared for the `exec`) with
/// it. So, before any thread exists, this takes the variable out of the
/// environment (keeping its value for [`adopt`]) and marks every descriptor
/// it names close-on-exec again. Descriptors are only touched when the
/// hand-over is this process's own.
extern "C" fn take_handover_at_start() {
    let value = std::env::var_os(HANDOVER).map(OsString::into_vec);
    if let Some(value) = &value {
        // SAFETY: constructors run before `main`, on the only thread.
        unsafe { std::env::remove_var(HANDOVER) };
        if let Some(entries) = handed_over(value) {
            for entry in entries.split(|&byte| byte == b',').filter_map(Entry::parse) {
                for fd in entry.descriptors() {
                    let _ = set_close_on_exec(fd, true);
                }
            }
        }
    }
    let _ = TAKEN.set(value);
    TAKEN_AT_START.store(true, SeqCst);
}

#[used]
#[cfg_attr(
    any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ),
    unsafe(link_section = ".init_array")
)]
#[cfg_attr(
    target_vendor = "apple",
    unsafe(link_section = "__DATA,__mod_init_func")
)]
static TAKE_HANDOVER_AT_START: extern "C" fn() = take_handover_at_start;

/// The lock on `name` in `dir` handed over by [`restart`], if there is one
/// for this process and it checks out, with its sharers pipe; else `None`,
/// and the caller acquires normally.
pub(crate) fn adopt(dir: BorrowedFd<'_>, name: &CStr) -> Option<(HeldFile, Sharers)> {
    // Keeps the constructor in every program that can adopt: the linker
    // keeps what is referenced.
    let _ = std::hint::black_box(&TAKE_HANDOVER_AT_START);
    let handover = handover()?;
    let entries = handed_over(&handover)?;
    let entries = || entries.split(|&byte| byte == b',').filter_map(Entry::parse);
    let on_path = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    let identity = Identity::of(&on_path);
    // Adopted already (by an earlier acquisition in this image).
    if signal_context::is_held(identity) {
        return None;
    }
    let entry = entries().find(|entry| entry.identity == identity)?;
    let (open, stat) = identity_of_raw(entry.fd)?;
    if open != identity || unsafe_kind(&stat).is_some() {
        return None;
    }
    // Marked close-on-exec before `main` already; set here too, for a
    // program where the constructor did not run.
    for fd in entry.descriptors() {
        let _ = set_close_on_exec(fd, true);
    }
    // SAFETY: the descriptor is open and is the very file the hand-over
    // names, inherited across our own exec: nothing else in this image owns
    // it. From here it is ours to keep or to close.
    let file = unsafe { OwnedFd::from_raw_fd(entry.fd) };
    // Succeeds at once if this open file description still holds the lock;
    // fails if someone else took it, and then closing it is all we can do.
    flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB).ok()?;
    let sharers = entry
        .sharers
        .map_or_else(Sharers::none, |(read, write)| Sharers::adopted(read, write));
    Some((
        HeldFile {
            file,
            stat,
            created: false,
        },
        sharers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_over_is_read_for_this_process_only() {
        let ours = format!("{};5:64769:1234,7:1:2", Pid::current());
        assert_eq!(
            handed_over(ours.as_bytes()),
            Some(&b"5:64769:1234,7:1:2"[..])
        );
        let other = format!("{};5:64769:1234", Pid::current().get() + 1);
        assert_eq!(handed_over(other.as_bytes()), None);
        assert_eq!(handed_over(b"5:64769:1234"), None);
    }

    #[test]
    fn entries_are_descriptor_device_inode_and_maybe_the_sharers_pipe() {
        assert_eq!(
            Entry::parse(b"5:64769:1234"),
            Some(Entry {
                fd: 5,
                identity: Identity::from_raw(64769, 1234),
                sharers: None
            })
        );
        assert_eq!(
            Entry::parse(b"5:1:2:8:9").map(|entry| entry.sharers),
            Some(Some((8, 9)))
        );
        assert_eq!(Entry::parse(b"-3:1:2"), None);
        assert_eq!(Entry::parse(b"5:1"), None);
        assert_eq!(Entry::parse(b"5:1:x"), None);
        assert_eq!(Entry::parse(b"5:1:2:8"), None);
        assert_eq!(Entry::parse(b"5:1:2:8:9:10"), None);
        assert_eq!(Entry::parse(b"4294967295:1:2"), None);
    }
}
