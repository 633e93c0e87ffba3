//! What Linux offers beyond POSIX: `O_PATH` directories, pidfds, the lock
//! lines of `/proc/<pid>/fdinfo`, inotify, abstract socket names.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

use super::{Identity, LockKind, decimal};
use crate::pid::Pid;

/// The directory is only ever used as the base of `openat`, `fstatat` and
/// `unlinkat`: `O_PATH` opens it without the permission check and file setup
/// a readable descriptor needs (measured: 2 µs less per acquisition, see
/// BENCHMARKS.md).
pub(crate) const DIRECTORY_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Where root's PID files go.
pub(crate) const RUN_DIR: &str = "/run";

/// Whether [`lock_held_by`] and [`scan_locks`] can see holders.
pub(crate) const VERIFIES_HOLDERS: bool = true;

/// `send(2)` flags: a closed peer must not raise SIGPIPE.
pub(crate) const MSG_NOSIGNAL: nix::libc::c_int = nix::libc::MSG_NOSIGNAL;

/// A pidfd for `pid` (Linux 5.3+): `ESRCH` if there is no such process
/// (`ENOENT` on recent kernels for one that is exiting),
/// `ENOSYS` on older kernels.
pub(crate) fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor
    // or -1; nothing is borrowed.
    let raw =
        Errno::result(unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.get(), 0) })?;
    let raw = i32::try_from(raw).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: a successful pidfd_open returned a descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends `signal` to the process `pidfd` refers to; `ESRCH` once it exited.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> nix::Result<()> {
    // SAFETY: a valid pidfd, a valid signal number, no siginfo, no flags.
    let sent = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as nix::libc::c_int,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(sent).map(drop)
}

/// Every visible process holding a `flock` on `identity`, through which
/// kind of lock. Empty when nothing can be verified.
///
/// `/proc/locks` lists every flock the processes of our PID namespace can
/// see, under the PID that *took* it. No entry for our file: nobody we could
/// verify holds it, and the scan (a read per descriptor on the machine) is
/// skipped. An entry says nothing about who holds it *now*; the fdinfo lines
/// of each process's descriptors do.
pub(crate) fn scan_locks(identity: Identity) -> Vec<(Pid, LockKind)> {
    let mut found = Vec::new();
    if !proc_is_ours() {
        return found;
    }
    let key = proc_locks_key(identity);
    let mut text = Vec::new();
    if !listed_in_proc_locks(&key, &mut text) {
        return found;
    }
    let Ok(mut processes) = Dir::open("/proc", LIST_FLAGS, Mode::empty()) else {
        return found;
    };
    // `map_while`: nix's `readdir` repeats an error for as long as the
    // kernel does, so skipping errors could loop forever.
    for entry in processes.iter().map_while(Result::ok) {
        let Some(pid) = decimal(entry.file_name().to_bytes()).and_then(Pid::new) else {
            continue;
        };
        if let Some(kind) = strongest_lock(pid, &key, &mut text) {
            found.push((pid, kind));
        }
    }
    found
}

/// The strongest lock `pid` holds on `identity` right now, if it can be seen.
pub(crate) fn lock_held_by(pid: Pid, identity: Identity) -> Option<LockKind> {
    if !proc_is_ours() {
        return None;
    }
    strongest_lock(pid, &proc_locks_key(identity), &mut Vec::new())
}

/// The parent of `pid` (field 4 of `/proc/<pid>/stat`, after the command
/// name, which may contain spaces and parentheses).
pub(crate) fn parent_of(pid: Pid) -> Option<Pid> {
    let mut stat = Vec::new();
    read_proc(&format!("/proc/{pid}/stat"), &mut stat)?;
    parent_in_stat(&stat)
}

fn parent_in_stat(stat: &[u8]) -> Option<Pid> {
    let after_name = &stat[stat.iter().rposition(|&byte| byte == b')')? + 1..];
    let mut fields = after_name
        .split(u8::is_ascii_whitespace)
        .filter(|field| !field.is_empty());
    decimal(fields.nth(1)?).and_then(Pid::new)
}

/// The PID `pid` has in its own (innermost) PID namespace: the last number
/// of the `NSpid:` line of `/proc/<pid>/status`.
pub(crate) fn own_namespace_pid(pid: Pid) -> Option<Pid> {
    let mut status = Vec::new();
    read_proc(&format!("/proc/{pid}/status"), &mut status)?;
    innermost_pid_in_status(&status)
}

fn innermost_pid_in_status(status: &[u8]) -> Option<Pid> {
    let line = lines(status).find_map(|line| line.strip_prefix(b"NSpid:"))?;
    let last = line
        .split(u8::is_ascii_whitespace)
        .rfind(|field| !field.is_empty())?;
    decimal(last).and_then(Pid::new)
}

/// How `/proc` directories are opened for listing.
const LIST_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Reads a `/proc` file whole into `into` (emptied first). A plain
/// `read(2)` loop: `/proc` files report no size, and `std::fs`'s reading
/// machinery would be linked into every program for these few files.
fn read_proc(path: &str, into: &mut Vec<u8>) -> Option<()> {
    let file = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    read_whole(file.as_fd(), into)
}

fn read_whole(file: BorrowedFd<'_>, into: &mut Vec<u8>) -> Option<()> {
    into.clear();
    let mut chunk = [0; 4096];
    loop {
        match super::retry_eintr(|| nix::unistd::read(file, &mut chunk)).ok()? {
            0 => return Some(()),
            read => into.extend_from_slice(&chunk[..read]),
        }
    }
}

fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&byte| byte == b'\n')
}

/// How `/proc/locks` and fdinfo name a file: hex `major:minor`, then the inode.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn proc_locks_key(identity: Identity) -> String {
    let (dev, ino) = identity.raw();
    let dev = dev as nix::libc::dev_t;
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    format!("{major:02x}:{minor:02x}:{ino}")
}

/// Whether `/proc/locks` has a granted FLOCK entry (not a waiter, `->`) for
/// the file `key` names. If `/proc/locks` cannot be read, assume it may.
/// `buffer` is scratch space, lent to save an allocation.
fn listed_in_proc_locks(key: &str, buffer: &mut Vec<u8>) -> bool {
    if read_proc("/proc/locks", buffer).is_none() {
        return true;
    }
    lines(buffer).any(|line| flock_line(line).is_some_and(|(_, file)| file == key.as_bytes()))
}

/// `/proc` numbers processes as the namespace it was mounted for. If that is
/// not ours (a container that bind-mounted the host's `/proc`), its numbers
/// would name other processes than ours do: trust none of them.
fn proc_is_ours() -> bool {
    // The first field of `/proc/self/stat` is our PID as `/proc` numbers it.
    let mut stat = Vec::new();
    read_proc("/proc/self/stat", &mut stat).is_some()
        && stat.split(|&byte| byte == b' ').next().and_then(decimal) == Some(Pid::current().get())
}

/// The strongest lock `pid` holds on the file `key` names, through any
/// descriptor. `buffer` is scratch space.
fn strongest_lock(pid: Pid, key: &str, buffer: &mut Vec<u8>) -> Option<LockKind> {
    let path = format!("/proc/{pid}/fdinfo");
    let directory = nix::fcntl::open(path.as_str(), LIST_FLAGS, Mode::empty()).ok()?;
    // The listing gets its own descriptor, so that `directory` stays free to
    // open the entries while it runs.
    let mut fdinfo = Dir::from_fd(directory.try_clone().ok()?).ok()?;
    let mut found = None;
    for fd in fdinfo.iter().map_while(Result::ok) {
        // Only the fdinfo text, never a `stat` through `/proc/<pid>/fd/N`:
        // that follows the link into the file's own filesystem, and one
        // descriptor on a hung mount (a dead FUSE or NFS server) anywhere on
        // the machine would block every conflict report. The `lock:` lines
        // name the file by device and inode, which is all we compare.
        let name = fd.file_name();
        if name.to_bytes().first() == Some(&b'.') {
            continue;
        }
        let Ok(info) = openat(
            &directory,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        if read_whole(info.as_fd(), buffer).is_none() {
            continue;
        }
        match lock_in_fdinfo(buffer, key.as_bytes()) {
            Some(LockKind::Exclusive) => return Some(LockKind::Exclusive),
            Some(LockKind::Shared) => found = Some(LockKind::Shared),
            None => {}
        }
    }
    found
}

/// Reads the `lock:` lines of an fdinfo file, which look like
/// `lock:\t1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF`. The PID in
/// them is whoever took the lock (possibly gone); only the kind and the file
/// matter here.
fn lock_in_fdinfo(info: &[u8], key: &[u8]) -> Option<LockKind> {
    lines(info)
        .filter_map(|line| line.strip_prefix(b"lock:"))
        .find_map(|line| flock_line(line).filter(|&(_, file)| file == key))
        .map(|(kind, _)| kind)
}

/// A granted `flock` in the format `/proc/locks` and fdinfo share:
/// `1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF`, read as its kind
/// and its file (`major:minor:inode`). A waiter (`1: -> FLOCK ...`), a POSIX
/// lock or an OFD lock is `None`.
fn flock_line(line: &[u8]) -> Option<(LockKind, &[u8])> {
    let mut fields = line
        .split(u8::is_ascii_whitespace)
        .filter(|field| !field.is_empty());
    let _ordinal = fields.next()?;
    if fields.next()? != b"FLOCK" {
        return None;
    }
    let _advisory = fields.next()?;
    let kind = match fields.next()? {
        b"WRITE" => LockKind::Exclusive,
        b"READ" => LockKind::Shared,
        _ => return None,
    };
    let _taken_by = fields.next()?;
    Some((kind, fields.next()?))
}

/// An inotify instance that reports when the file open on a descriptor is
/// closed by anyone: what a timed wait sleeps on (see [`crate::waiting`]).
pub(crate) struct CloseWatch(Inotify);

impl CloseWatch {
    /// A non-blocking watch on the file open on `file`, or `None` if one
    /// cannot be had (the per-user instance or watch limit, no `/proc`, a
    /// sandbox that forbids the calls).
    ///
    /// The watch is placed through `/proc/self/fd/N`, because all we have is
    /// the descriptor (the path may since have been unlinked or replaced);
    /// `inotify_add_watch` follows that link to the open file's inode,
    /// deleted or not. It is added once: while we keep the descriptor open
    /// the inode can neither be freed nor its filesystem unmounted, the two
    /// things that would remove the watch.
    pub(crate) fn new(file: BorrowedFd<'_>) -> Option<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        // Closes are how a holder normally lets go, dying included. The file
        // losing its name (IN_ATTRIB) or its inode going away usually comes
        // with a release too, and a spurious wake-up costs one retry.
        let events = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CLOSE_NOWRITE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_ATTRIB;
        inotify.add_watch(link.as_str(), events).ok()?;
        Some(Self(inotify))
    }

    /// What to `poll` for `POLLIN`.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Empties the queue, so that the next `poll` sleeps: only the fact of
    /// an event matters, not which one.
    pub(crate) fn drain(&self) -> nix::Result<()> {
        match self.0.read_events() {
            Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => Ok(()),
            Err(errno) => Err(errno),
        }
    }
}

/// A datagram socket connected to the abstract-namespace name `name` (the
/// `@name` form of `NOTIFY_SOCKET`).
pub(crate) fn connect_abstract(name: &[u8]) -> std::io::Result<UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    let socket = UnixDatagram::unbound()?;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.connect_addr(&address)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lock_lines_are_matched_by_kind_and_file() {
        let key = b"fe:00:10010769";
        let info = b"pos:\t0\nflags:\t02100002\nmnt_id:\t29\nino:\t10010769\n\
                    lock:\t1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(info, key), Some(LockKind::Exclusive));
        let shared = b"pos:\t0\nlock:\t1: FLOCK  ADVISORY  READ 77 fe:00:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(shared, key), Some(LockKind::Shared));
        let posix = b"lock:\t1: POSIX  ADVISORY  WRITE 77 fe:00:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(posix, key), None);
        let other = b"lock:\t1: FLOCK  ADVISORY  WRITE 77 fe:01:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(other, key), None);
        let waiter = b"1: -> FLOCK  ADVISORY  WRITE 78 fe:00:10010769 0 EOF";
        assert_eq!(flock_line(waiter), None);
    }

    /// The command name (field 2) may hold spaces, parentheses and bytes
    /// that are not UTF-8; the parent is the second field after its last `)`.
    #[test]
    fn the_parent_is_read_after_the_command_name() {
        let stat = b"4242 (a) b (\xff) c) S 17 4242 4242 0 -1 4194560 99\n";
        assert_eq!(parent_in_stat(stat), Pid::new(17));
        assert_eq!(parent_in_stat(b"4242 (bot) S"), None);
        assert_eq!(parent_in_stat(b"4242 bot S 17"), None);
        let ours = std::fs::read(format!("/proc/{}/stat", Pid::current())).expect("our stat");
        let parent = i32::try_from(std::os::unix::process::parent_id()).ok();
        assert_eq!(parent_in_stat(&ours).map(Pid::get), parent);
    }

    #[test]
    fn the_innermost_pid_is_the_last_of_nspid() {
        let status = b"Name:\t\xffbot\nPid:\t900\nNSpid:\t900\t12\t1\nPPid:\t1\n";
        assert_eq!(innermost_pid_in_status(status), Pid::new(1));
        assert_eq!(
            innermost_pid_in_status(b"Name:\tbot\nNSpid:\t77 \n"),
            Pid::new(77)
        );
        assert_eq!(innermost_pid_in_status(b"Name:\tbot\nPid:\t77\n"), None);
    }

    /// The premise of the Linux timed wait: a watch on `/proc/self/fd/N` is
    /// a watch on the open file itself, named or unlinked, and sees other
    /// descriptions close.
    #[test]
    fn watch_through_proc_self_fd_sees_the_file_close() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::fs::{File, OpenOptions};

        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("watched.pid");
        for unlinked in [false, true] {
            let ours: OwnedFd = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .expect("open the test file")
                .into();
            let theirs: OwnedFd = File::open(&path).expect("open it again").into();
            if unlinked {
                std::fs::remove_file(&path).expect("unlink the test file");
            }
            let watch = CloseWatch::new(ours.as_fd()).expect("watch through /proc/self/fd");
            drop(theirs);
            // Not read at once: a process spawned meanwhile by another test
            // holds a copy of `theirs` until it execs, and the close is
            // reported when that last copy goes.
            let mut fds = [PollFd::new(watch.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(std::time::Duration::from_secs(10))
                .expect("a valid poll timeout");
            assert_eq!(
                poll(&mut fds, timeout),
                Ok(1),
                "unlinked: {unlinked}: no event"
            );
            let events = watch.0.read_events().expect("a queued event");
            assert!(
                events
                    .iter()
                    .any(|event| event.mask.contains(AddWatchFlags::IN_CLOSE_NOWRITE)),
                "unlinked: {unlinked}: {events:?}"
            );
        }
    }
}
