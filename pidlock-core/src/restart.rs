//! Re-executing the program without ever letting go of its locks, for a
//! bot's `/restart` command (SPEC §4).
//!
//! Exiting and starting again leaves a window in which another instance can
//! take the lock. Instead, [`restart`] clears close-on-exec on each locked
//! descriptor and `exec`s the same executable with the same arguments and
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

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::stat::{fstat, fstatat};

use crate::exit_cleanup;
use crate::lockfile::{Identity, Locked, flock, unsafe_kind};
use crate::messages;
use crate::pid::Pid;

/// The environment variable that carries the hand-over.
const HANDOVER: &str = "PIDLOCK_RESTART";

/// Re-executes the running program (same executable, arguments and
/// environment) while keeping every lock this process holds: no other
/// instance can start in between. Returns only if the `exec` failed, with
/// the reason; the locks are then still held, as before the call.
///
/// After a deploy replaced the executable, the new file at the same path is
/// what runs.
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
    let held = exit_cleanup::held_files();
    let mut handover = format!("{};", Pid::current());
    for (index, (fd, identity)) in held.iter().enumerate() {
        if let Err(errno) = set_close_on_exec(*fd, false) {
            restore(&held);
            return io::Error::from(errno);
        }
        let (dev, ino) = identity.raw();
        let separator = if index == 0 { "" } else { "," };
        handover.push_str(&format!("{separator}{fd}:{dev}:{ino}"));
    }
    let executable = match current_executable() {
        Ok(executable) => executable,
        Err(error) => {
            restore(&held);
            return error;
        }
    };
    messages::restarting(Pid::current(), &executable);
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&executable);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command.args(args).env(HANDOVER, handover).exec();
    restore(&held);
    error
}

fn restore(held: &[(RawFd, Identity)]) {
    for (fd, _) in held {
        let _ = set_close_on_exec(*fd, true);
    }
}

fn set_close_on_exec(fd: RawFd, on: bool) -> nix::Result<()> {
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    // SAFETY: borrowed for one fcntl on a descriptor a guard keeps open.
    fcntl(
        unsafe { BorrowedFd::borrow_raw(fd) },
        FcntlArg::F_SETFD(flags),
    )
    .map(drop)
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

/// The lock on `name` in `dir` handed over by [`restart`], if there is one
/// for this process and it checks out; else `None`, and the caller acquires
/// normally.
pub(crate) fn adopt(dir: BorrowedFd<'_>, name: &CStr) -> Option<Locked> {
    let handover = std::env::var(HANDOVER).ok()?;
    let (pid, entries) = handover.split_once(';')?;
    if pid.parse::<i32>().ok()? != Pid::current().get() {
        return None;
    }
    let on_path = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    let identity = Identity::of(&on_path);
    // Adopted already (by an earlier acquisition in this image).
    if exit_cleanup::is_held(identity) {
        return None;
    }
    let fd = entries.split(',').find_map(|entry| {
        let mut fields = entry.split(':').map(str::parse::<u64>);
        let (Some(Ok(fd)), Some(Ok(dev)), Some(Ok(ino))) =
            (fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        (Identity::from_raw(dev, ino) == identity)
            .then(|| RawFd::try_from(fd).ok())
            .flatten()
    })?;
    // SAFETY: only borrowed for `fstat`; EBADF if nothing is open there.
    let stat = fstat(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
    if Identity::of(&stat) != identity || unsafe_kind(&stat).is_some() {
        return None;
    }
    // SAFETY: the descriptor is open and is the very file the hand-over
    // names, inherited across our own exec: nothing else in this image owns
    // it. From here it is ours to keep or to close.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    set_close_on_exec(fd, true).ok()?;
    // Succeeds at once if this open file description still holds the lock;
    // fails if someone else took it, and then closing it is all we can do.
    flock(file.as_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB).ok()?;
    Some(Locked {
        file,
        stat,
        created: false,
    })
}
