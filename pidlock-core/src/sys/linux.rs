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

use super::{HeldLock, Identity, LockKind, decimal};
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

/// A pipe for a lock's sharers (see [`crate::signal_context`]): both ends
/// close-on-exec, the read end non-blocking. One system call, so no fork on
/// another thread can catch the descriptors without close-on-exec.
pub(crate) fn sharers_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
}

/// An `O_PATH` descriptor of `name` in `dir` (no permission on the file
/// itself is needed), not following a symlink.
pub(super) fn path_descriptor(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Option<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir, name, flags, Mode::empty()).ok()
}

/// Swaps the names `a` and `b` in `dir` atomically
/// (`renameat2(RENAME_EXCHANGE)`, Linux 3.15+; `EINVAL` on filesystems that
/// cannot).
pub(crate) fn exchange(
    dir: BorrowedFd<'_>,
    a: &std::ffi::CStr,
    b: &std::ffi::CStr,
) -> nix::Result<()> {
    nix::fcntl::renameat2(dir, a, dir, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
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

/// How the kernel names a file in its lock listings (`/proc/locks` and the
/// `lock:` lines of fdinfo): `major:minor:inode` in hex and decimal, where
/// `major:minor` is the device of the file's *superblock*. That is not
/// always the `st_dev` that `stat` reports: a btrfs subvolume and an
/// overlayfs file report devices of their own, while their locks are listed
/// under the filesystem's. So the key is learned from the kernel itself:
/// the mount the descriptor is on (`mnt_id:` of its fdinfo) and that mount's
/// device in `/proc/self/mountinfo`, which is the superblock's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LockKey(String);

impl LockKey {
    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The key of the file open on `file`, whose `stat` gave `identity`; from
/// `stat` alone when `/proc` cannot say (which is right on most
/// filesystems). `None` when `/proc` is not ours to read (see
/// [`proc_is_ours`]): nothing about other processes can be trusted then.
pub(crate) fn lock_key(file: BorrowedFd<'_>, identity: Identity) -> Option<LockKey> {
    if !proc_is_ours() {
        return None;
    }
    let (dev, mut ino) = identity.raw();
    let mut dev = split_dev(dev);
    let mut text = Vec::new();
    if read_proc(
        &format!("/proc/self/fdinfo/{}", file.as_raw_fd()),
        &mut text,
    )
    .is_some()
    {
        let field = |name: &[u8]| {
            lines(&text).find_map(|line| {
                let value = line.strip_prefix(name)?;
                decimal::<u64>(value.trim_ascii())
            })
        };
        if let Some(inode) = field(b"ino:") {
            ino = inode;
        }
        if let Some(mount) = field(b"mnt_id:")
            && let Some(mounted) = mount_device(mount)
        {
            dev = mounted;
        }
    }
    Some(LockKey(format!("{:02x}:{:02x}:{ino}", dev.0, dev.1)))
}

fn split_once(text: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = text.iter().position(|&byte| byte == separator)?;
    Some((&text[..at], &text[at + 1..]))
}

// `dev_t` and the major/minor types differ in width between libcs.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn split_dev(dev: u64) -> (u64, u64) {
    let dev = dev as nix::libc::dev_t;
    (
        u64::from(nix::sys::stat::major(dev)),
        u64::from(nix::sys::stat::minor(dev)),
    )
}

/// `major:minor` of the mount with this ID: the third field of its
/// `/proc/self/mountinfo` line.
fn mount_device(mount: u64) -> Option<(u64, u64)> {
    let mut text = Vec::new();
    read_proc("/proc/self/mountinfo", &mut text)?;
    lines(&text).find_map(|line| {
        let mut fields = line.split(|&byte| byte == b' ');
        if decimal::<u64>(fields.next()?)? != mount {
            return None;
        }
        let (major, minor) = split_once(fields.nth(1)?, b':')?;
        Some((decimal(major)?, decimal(minor)?))
    })
}

/// The processes `/proc/locks` names for granted `flock`s on `key`, with
/// the lock's kind: whoever *took* each lock, who may have exited (and whose
/// PID may since be someone else's) or may share it with others. Where to
/// look first, never an answer by itself. `None` for a taker this PID
/// namespace has no number for (the list shows 0). `None` if the list
/// cannot be read. The kernel leaves out of this process's list the locks
/// of takers its PID namespace cannot number at all (see
/// [`sees_every_lock`]).
pub(crate) fn lock_takers(key: &LockKey) -> Option<Vec<(LockKind, Option<Pid>)>> {
    let mut text = Vec::new();
    read_proc("/proc/locks", &mut text)?;
    let takers = lines(&text)
        .filter_map(|line| {
            // Each line starts with its ordinal: "1: FLOCK ...".
            let (_, rest) = split_once(line, b':')?;
            flock_line(rest)
        })
        .filter(|lock| lock.file == key.as_bytes())
        .map(|lock| (lock.kind, Pid::new(lock.taker)))
        .collect();
    Some(takers)
}

/// Whether `/proc/locks` shows this process every lock: only in the
/// initial PID namespace. Elsewhere the kernel skips the locks whose takers
/// this namespace cannot number. The initial namespace's inode number is
/// fixed (`PROC_PID_INIT_INO`), whichever `/proc` is mounted.
pub(crate) fn sees_every_lock() -> bool {
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    nix::sys::stat::stat("/proc/self/ns/pid")
        .is_ok_and(|namespace| namespace.st_ino == PROC_PID_INIT_INO)
}

/// Every visible process holding a `flock` on `key`, with what it holds.
/// Empty when nothing can be verified. Reads the lock lines of every
/// descriptor of every process: for when all holders must be known, after
/// the likely ones (the file's PID, [`lock_takers`], their children) did
/// not answer.
pub(crate) fn scan_locks(key: &LockKey) -> Vec<(Pid, HeldLock)> {
    let mut found = Vec::new();
    // No entry for our file in `/proc/locks`: nobody we could verify holds
    // it, and the scan is skipped.
    if lock_takers(key).is_none_or(|takers| takers.is_empty()) {
        return found;
    }
    let Ok(mut processes) = Dir::open("/proc", LIST_FLAGS, Mode::empty()) else {
        return found;
    };
    let mut text = Vec::new();
    // `map_while`: nix's `readdir` repeats an error for as long as the
    // kernel does, so skipping errors could loop forever.
    for entry in processes.iter().map_while(Result::ok) {
        let Some(pid) = decimal(entry.file_name().to_bytes()).and_then(Pid::new) else {
            continue;
        };
        if let Some(held) = strongest_lock(pid, key, &mut text) {
            found.push((pid, held));
        }
    }
    found
}

/// The strongest lock `pid` holds on `key` right now, if it can be seen.
pub(crate) fn lock_held_by(pid: Pid, key: &LockKey) -> Option<HeldLock> {
    strongest_lock(pid, key, &mut Vec::new())
}

/// The children of `pid` (every thread's), from
/// `/proc/<pid>/task/<tid>/children`; empty where the kernel does not offer
/// the file.
pub(crate) fn children_of(pid: Pid) -> Vec<Pid> {
    let mut children = Vec::new();
    let Ok(mut tasks) = Dir::open(
        format!("/proc/{pid}/task").as_str(),
        LIST_FLAGS,
        Mode::empty(),
    ) else {
        return children;
    };
    let mut text = Vec::new();
    for task in tasks.iter().map_while(Result::ok) {
        let tid = task.file_name().to_bytes();
        if tid.first() == Some(&b'.') {
            continue;
        }
        let tid = String::from_utf8_lossy(tid);
        if read_proc(&format!("/proc/{pid}/task/{tid}/children"), &mut text).is_none() {
            continue;
        }
        children.extend(
            text.split(u8::is_ascii_whitespace)
                .filter_map(decimal)
                .filter_map(Pid::new),
        );
    }
    children
}

/// The effective user of `pid` (the second number of the `Uid:` line of
/// `/proc/<pid>/status`).
pub(crate) fn user_of(pid: Pid) -> Option<u32> {
    let mut status = Vec::new();
    read_proc(&format!("/proc/{pid}/status"), &mut status)?;
    let line = lines(&status).find_map(|line| line.strip_prefix(b"Uid:"))?;
    let mut fields = line
        .split(u8::is_ascii_whitespace)
        .filter(|field| !field.is_empty());
    decimal(fields.nth(1)?)
}

/// Whether `pid` has exited and not been reaped yet (state `Z` in
/// `/proc/<pid>/stat`): it answers `kill(pid, 0)` but runs no more.
pub(crate) fn is_zombie(pid: Pid) -> bool {
    let mut stat = Vec::new();
    read_proc(&format!("/proc/{pid}/stat"), &mut stat).is_some()
        && state_in_stat(&stat) == Some(b'Z')
}

fn state_in_stat(stat: &[u8]) -> Option<u8> {
    let after_name = &stat[stat.iter().rposition(|&byte| byte == b')')? + 1..];
    after_name
        .split(u8::is_ascii_whitespace)
        .find(|field| !field.is_empty())
        .and_then(|field| field.first().copied())
}

/// Whether `pid` runs the same executable as this process (`/proc/<pid>/exe`
/// names the same file as `/proc/self/exe`).
pub(crate) fn runs_this_executable(pid: Pid) -> bool {
    let theirs = nix::sys::stat::stat(format!("/proc/{pid}/exe").as_str());
    let ours = nix::sys::stat::stat("/proc/self/exe");
    matches!((theirs, ours), (Ok(theirs), Ok(ours)) if Identity::of(&theirs) == Identity::of(&ours))
}

/// The command line of `pid`, its arguments joined by spaces, for messages.
pub(crate) fn command_line(pid: Pid) -> Option<String> {
    let mut cmdline = Vec::new();
    read_proc(&format!("/proc/{pid}/cmdline"), &mut cmdline)?;
    let words: Vec<String> = cmdline
        .split(|&byte| byte == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
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
/// descriptor, with whether that descriptor was opened for writing.
/// `buffer` is scratch space.
fn strongest_lock(pid: Pid, key: &LockKey, buffer: &mut Vec<u8>) -> Option<HeldLock> {
    let path = format!("/proc/{pid}/fdinfo");
    let directory = nix::fcntl::open(path.as_str(), LIST_FLAGS, Mode::empty()).ok()?;
    // The listing gets its own descriptor, so that `directory` stays free to
    // open the entries while it runs.
    let mut fdinfo = Dir::from_fd(directory.try_clone().ok()?).ok()?;
    let mut found: Option<HeldLock> = None;
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
        let Some(kind) = lock_in_fdinfo(buffer, key.as_bytes()) else {
            continue;
        };
        let held = HeldLock {
            kind,
            writable: opened_for_writing(buffer),
        };
        if found.is_none_or(|known| outranks(held, known)) {
            found = Some(held);
        }
    }
    found
}

/// Whether `held` says more about the process than `other`: exclusive over
/// shared, then a writable descriptor over a read-only one.
fn outranks(held: HeldLock, other: HeldLock) -> bool {
    let rank = |lock: HeldLock| (lock.kind == LockKind::Exclusive, lock.writable);
    rank(held) > rank(other)
}

/// Whether the `flags:` line of an fdinfo text (octal open flags) says the
/// descriptor was opened for writing (`O_WRONLY` or `O_RDWR`).
fn opened_for_writing(info: &[u8]) -> bool {
    lines(info)
        .find_map(|line| line.strip_prefix(b"flags:"))
        .and_then(|flags| std::str::from_utf8(flags.trim_ascii()).ok())
        .and_then(|flags| u32::from_str_radix(flags, 8).ok())
        .is_some_and(|flags| flags & 0o3 != 0)
}

/// Reads the `lock:` lines of an fdinfo file, which look like
/// `lock:\t1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF`. The PID in
/// them is whoever took the lock (possibly gone); only the kind and the file
/// matter here.
fn lock_in_fdinfo(info: &[u8], key: &[u8]) -> Option<LockKind> {
    lines(info)
        .filter_map(|line| line.strip_prefix(b"lock:"))
        .filter_map(flock_line)
        .find(|lock| lock.file == key)
        .map(|lock| lock.kind)
}

/// A granted `flock` as `/proc/locks` and fdinfo print it, after the
/// ordinal's colon.
#[derive(Debug, PartialEq, Eq)]
struct FlockLine<'a> {
    kind: LockKind,
    /// Whoever took it (possibly gone since).
    taker: i32,
    /// `major:minor:inode`.
    file: &'a [u8],
}

/// `1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF` (the part after
/// `lock:` in fdinfo, or a `/proc/locks` line), read as its kind, taker and
/// file. A waiter (`1: -> FLOCK ...`), a POSIX lock or an OFD lock is `None`.
fn flock_line(line: &[u8]) -> Option<FlockLine<'_>> {
    let mut fields = line
        .split(u8::is_ascii_whitespace)
        .filter(|field| !field.is_empty());
    let first = fields.next()?;
    // fdinfo's `lock:` value starts with the ordinal ("1:"), a
    // `/proc/locks` line has had it cut off already.
    let class = if first.ends_with(b":") {
        fields.next()?
    } else {
        first
    };
    if class != b"FLOCK" {
        return None;
    }
    let _advisory = fields.next()?;
    let kind = match fields.next()? {
        b"WRITE" => LockKind::Exclusive,
        b"READ" => LockKind::Shared,
        _ => return None,
    };
    let taker = decimal(fields.next()?)?;
    Some(FlockLine {
        kind,
        taker,
        file: fields.next()?,
    })
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

    /// `/proc/locks` lines have their ordinal cut off before parsing; the
    /// taker is kept, a waiter is not.
    #[test]
    fn proc_locks_lines_give_kind_taker_and_file() {
        let line = b" FLOCK  ADVISORY  READ 28269 00:28:257 0 EOF";
        assert_eq!(
            flock_line(line),
            Some(FlockLine {
                kind: LockKind::Shared,
                taker: 28269,
                file: b"00:28:257",
            })
        );
        assert_eq!(
            flock_line(b" -> FLOCK  ADVISORY  WRITE 1 00:28:257 0 EOF"),
            None
        );
        assert_eq!(
            flock_line(b" POSIX  ADVISORY  WRITE 1 00:28:257 0 EOF"),
            None
        );
    }

    #[test]
    fn the_access_mode_is_read_from_the_octal_flags() {
        assert!(opened_for_writing(
            b"pos:\t0\nflags:\t02100002\nmnt_id:\t29\n"
        ));
        assert!(opened_for_writing(b"flags:\t0100001\n"));
        assert!(!opened_for_writing(b"flags:\t02100000\n"));
        assert!(!opened_for_writing(b"pos:\t0\n"));
    }

    #[test]
    fn a_zombie_is_told_by_its_state() {
        assert_eq!(state_in_stat(b"4242 (a) Z) Z 1 4242"), Some(b'Z'));
        assert_eq!(state_in_stat(b"4242 (bot) S 1"), Some(b'S'));
        assert_eq!(state_in_stat(b"4242 bot"), None);
        assert!(!is_zombie(Pid::current()));
    }

    /// On the file systems that matter most (ext4, tmpfs), the key the
    /// kernel prints is `stat`'s device: both ways of learning it agree.
    #[test]
    fn the_lock_key_of_an_ordinary_file_matches_its_stat() {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("key.pid");
        let file: OwnedFd = std::fs::File::create(&path).expect("create").into();
        let stat = nix::sys::stat::fstat(&file).expect("fstat");
        let identity = Identity::of(&stat);
        let key = lock_key(file.as_fd(), identity).expect("a key");
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let (major, minor) = split_dev(stat.st_dev as u64);
        assert_eq!(key.0, format!("{major:02x}:{minor:02x}:{}", stat.st_ino));
        super::super::flock(file.as_fd(), nix::libc::LOCK_EX).expect("lock");
        let listed = lock_takers(&key).expect("/proc/locks");
        assert!(
            listed.contains(&(LockKind::Exclusive, Some(Pid::current()))),
            "{key:?} not in /proc/locks: {listed:?}"
        );
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
