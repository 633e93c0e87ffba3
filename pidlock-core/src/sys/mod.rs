//! The system layer: every system call the lock makes on the PID file and
//! its directory, and (in the per-platform files) what only some kernels
//! offer. Everything above calls down into this module; it calls nothing
//! above it but the error and PID types it returns.
//!
//! The file protocol follows FreeBSD's `flopen(3)`: open (creating if
//! needed) without following links or blocking on FIFOs, refuse anything but
//! a regular file, lock, then check that the path still names what was
//! locked (see [`crate::lockfile`] for the loop that retries).
//!
//! One `cfg` switch picks the platform file, as fd-lock's `sys/` does:
//! `linux.rs` (pidfds, `/proc`, inotify, `O_PATH`, abstract sockets) and
//! `other.rs` (the same names, answering "not available" on the BSDs and
//! macOS), so no module above has a `cfg(target_os)` in its code (a few
//! tests of the Linux-only paths aside).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::ftruncate;

use crate::error::{Error, FileKind, Result};
use crate::pid::{self, Contents, Pid};

// `--cfg pidlock_portable` builds the portable file on Linux too, so CI
// compiles it and runs the suite against it (README, *Tests*).
#[cfg(all(target_os = "linux", not(pidlock_portable)))]
mod linux;
#[cfg(all(target_os = "linux", not(pidlock_portable)))]
use linux as platform;
#[cfg(any(not(target_os = "linux"), pidlock_portable))]
mod other;
#[cfg(any(not(target_os = "linux"), pidlock_portable))]
use other as platform;

pub(crate) use platform::{
    CloseWatch, DIRECTORY_FLAGS, LockKey, MSG_NOSIGNAL, RUN_DIR, VERIFIES_HOLDERS, children_of,
    command_line, connect_abstract, exchange, is_zombie, lock_held_by, lock_key, lock_takers,
    own_namespace_pid, parent_of, pidfd_open, pidfd_send_signal, runs_this_executable, scan_locks,
    sees_every_lock, sharers_pipe, user_of,
};

/// The kind of `flock` a process holds on a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// `LOCK_EX`: an instance.
    Exclusive,
    /// `LOCK_SH`: an observer probing for an instant.
    Shared,
}

/// A lock some process holds on a file, as the kernel lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeldLock {
    pub(crate) kind: LockKind,
    /// Whether the descriptor that holds it was opened for writing: an
    /// instance always opens its PID file so; `flock(1)` and readers open it
    /// read-only.
    pub(crate) writable: bool,
}

/// Which inode a path named when we locked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    // The casts widen `dev_t`/`ino_t`, whose width differs between platforms.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub(crate) fn of(stat: &FileStat) -> Self {
        Self::from_raw(stat.st_dev as u64, stat.st_ino as u64)
    }

    pub(crate) fn from_raw(dev: u64, ino: u64) -> Self {
        Self { dev, ino }
    }

    /// `dev` and `ino`, as written into the restart hand-over.
    pub(crate) fn raw(self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    pub(crate) fn same_file(self, other: &FileStat) -> bool {
        self == Self::of(other)
    }
}

/// The inode a raw descriptor number refers to, if it is open. The raw
/// `fstat` takes a number, not a borrowed descriptor: on one that is not
/// open it fails with `EBADF`, which is all the callers need to know.
pub(crate) fn identity_of_raw(fd: RawFd) -> Option<(Identity, FileStat)> {
    let mut stat = std::mem::MaybeUninit::<nix::libc::stat>::uninit();
    // SAFETY: fstat on any number is defined (EBADF if closed) and fills
    // `stat` on success.
    let status = unsafe { nix::libc::fstat(fd, stat.as_mut_ptr()) };
    (status == 0).then(|| {
        // SAFETY: initialised by the successful call.
        let stat = unsafe { stat.assume_init() };
        (Identity::of(&stat), stat)
    })
}

/// A decimal number written by the kernel (`/proc`) or by us (the restart
/// hand-over), read from raw bytes.
pub(crate) fn decimal<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Measures time on `CLOCK_MONOTONIC` for the short bounded loops of every
/// acquisition. `std::time::Instant` would do (on Linux it reads the same
/// clock), but it panics if the clock cannot be read, and that panic alone
/// links the `Debug` formatting of `io::Error` into every program (4.3 KiB,
/// BENCHMARKS.md §5). Here a clock that cannot be read counts as time up,
/// so no loop can spin forever on it.
pub(crate) struct Stopwatch(Option<Duration>);

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Self(monotonic())
    }

    /// Time since [`Stopwatch::start`], if the clock could be read.
    pub(crate) fn elapsed(&self) -> Option<Duration> {
        Some(monotonic()?.saturating_sub(self.0?))
    }

    /// Whether more than `limit` has passed since [`Stopwatch::start`].
    pub(crate) fn exceeded(&self, limit: Duration) -> bool {
        self.elapsed().is_none_or(|elapsed| elapsed > limit)
    }

    /// The [`Instant`](std::time::Instant) it started at (now, if the clock
    /// could not be read), for deadlines in `Instant`s. Only code that waits
    /// calls it, so only programs that wait link `Instant::now`.
    pub(crate) fn started_at(&self) -> std::time::Instant {
        let now = std::time::Instant::now();
        self.elapsed()
            .and_then(|elapsed| now.checked_sub(elapsed))
            .unwrap_or(now)
    }
}

/// Time on `CLOCK_MONOTONIC` (the clock `MONOTONIC_USEC=` is read from).
pub(crate) fn monotonic() -> Option<Duration> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(Duration::from(now))
}

/// A file we hold the lock on, verified to be the one the path names.
pub(crate) struct HeldFile {
    pub(crate) file: OwnedFd,
    pub(crate) stat: FileStat,
    /// We created it just now, so it holds nothing to report on.
    pub(crate) created: bool,
}

pub(crate) fn split(path: &Path) -> Result<(&Path, CString)> {
    let invalid = |reason| Error::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid("it has no file name"));
    };
    let name = CString::new(name.as_bytes()).map_err(|_| invalid("it contains a NUL byte"))?;
    Ok((parent, name))
}

/// Opens the directory the PID file lives in, creating it (0755) if missing.
pub(crate) fn open_dir(parent: &Path, path: &Path) -> Result<OwnedFd> {
    let open = || retry_eintr(|| nix::fcntl::open(parent, DIRECTORY_FLAGS, Mode::empty()));
    match open() {
        Ok(dir) => Ok(dir),
        Err(Errno::ENOENT) => {
            create_directories(parent)
                .map_err(|errno| Error::io(path, "create the directory of", errno))?;
            open().map_err(|errno| Error::io(path, "open the directory of", errno))
        }
        Err(errno) => Err(Error::io(path, "open the directory of", errno)),
    }
}

/// Creates `directory` and its missing ancestors (0755, less the umask).
/// As with `std::fs::create_dir_all`, a failure is success if the path is
/// a directory by then (it was already, or another process made it
/// meanwhile); else its error stands (`EEXIST` for a file or a dangling
/// symlink in the way).
fn create_directories(directory: &Path) -> nix::Result<()> {
    let mode = Mode::from_bits_truncate(0o755);
    let made = match retry_eintr(|| nix::unistd::mkdir(directory, mode)) {
        Err(Errno::ENOENT) => match directory.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => {
                create_directories(parent)?;
                retry_eintr(|| nix::unistd::mkdir(directory, mode))
            }
            _ => Err(Errno::ENOENT),
        },
        made => made,
    };
    match made {
        Err(_) if is_directory(directory) => Ok(()),
        made => made,
    }
}

fn is_directory(path: &Path) -> bool {
    nix::sys::stat::stat(path)
        .is_ok_and(|stat| SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Opens the PID file, creating it if absent.
///
/// `O_CREAT | O_EXCL` first tells us, without another system call, whether the
/// file is new (nothing to read) or was left behind (stale or corrupted). An
/// existing path is looked at before it is opened: a device is never opened
/// (opening one can have effects), and `O_NOCTTY` keeps a terminal swapped in
/// at the last moment from becoming ours. `O_NOFOLLOW` refuses a symlink;
/// `O_NONBLOCK` keeps a FIFO from blocking the open; `O_CLOEXEC` keeps
/// children from inheriting the lock. The file is created 0600: anyone who
/// can open a file can `flock` it, and another user's lock on it would keep
/// the program from starting (see [`crate::replace`]). A file we may not
/// write (our own, made read-only) is opened read-only: enough to lock it and
/// learn whether its instance runs.
pub(crate) fn open_file(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
) -> std::result::Result<Opened, OpenFailure> {
    let flags =
        OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let create = flags | OFlag::O_CREAT | OFlag::O_EXCL;
    let mode = Mode::from_bits_truncate(FILE_MODE);
    match retry_eintr(|| openat(dir, name, create, mode)) {
        Ok(file) => {
            return Ok(Opened {
                file,
                created: true,
                read_only: false,
            });
        }
        Err(Errno::EEXIST) => {}
        Err(errno) => {
            return Err(OpenFailure::Failed(open_error(
                dir, name, path, "create", errno,
            )));
        }
    }
    let existing = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(existing) => existing,
        Err(Errno::ENOENT) => return Err(OpenFailure::Vanished),
        Err(errno) => return Err(OpenFailure::Failed(Error::io(path, "inspect", errno))),
    };
    if let Some(kind) = unsafe_kind(&existing) {
        return Err(OpenFailure::Failed(Error::UnsafePath {
            path: path.to_owned(),
            kind,
        }));
    }
    let (file, read_only) = match retry_eintr(|| openat(dir, name, flags, Mode::empty())) {
        Ok(file) => (file, false),
        Err(Errno::EACCES) => {
            let read_only = (flags - OFlag::O_RDWR) | OFlag::O_RDONLY;
            match retry_eintr(|| openat(dir, name, read_only, Mode::empty())) {
                Ok(file) => (file, true),
                Err(Errno::ENOENT) => return Err(OpenFailure::Vanished),
                // Another user's file (0600): it may not even be read.
                Err(Errno::EACCES) => return Err(OpenFailure::Denied(Box::new(existing))),
                Err(errno) => {
                    return Err(OpenFailure::Failed(open_error(
                        dir, name, path, "open", errno,
                    )));
                }
            }
        }
        Err(Errno::ENOENT) => return Err(OpenFailure::Vanished),
        Err(errno) => {
            return Err(OpenFailure::Failed(open_error(
                dir, name, path, "open", errno,
            )));
        }
    };
    Ok(Opened {
        file,
        created: false,
        read_only,
    })
}

/// The mode PID files are created with, and set back to: the owner alone may
/// open them (see [`open_file`]).
pub(crate) const FILE_MODE: u32 = 0o600;

/// Why [`open_file`] did not open the file.
pub(crate) enum OpenFailure {
    /// It vanished between two calls: try again.
    Vanished,
    /// It exists and may not be opened at all (another user's): its `stat`
    /// (boxed: it is large, and this is the rare case).
    Denied(Box<FileStat>),
    /// Anything else.
    Failed(Error),
}

/// A PID file just opened.
pub(crate) struct Opened {
    pub(crate) file: OwnedFd,
    /// We created it, so it holds nothing to report on and is ours.
    pub(crate) created: bool,
    /// We may not write it: it is not ours, or not writable.
    pub(crate) read_only: bool,
}

/// A descriptor that names a file without opening it for reading or
/// writing (`O_PATH`, Linux): enough to ask the kernel about its locks when
/// the file itself may not be opened (another user's). `None` elsewhere.
pub(crate) fn path_descriptor(dir: BorrowedFd<'_>, name: &CStr) -> Option<OwnedFd> {
    platform::path_descriptor(dir, name)
}

/// Explains a failed open: a symlink (`ELOOP`, `EMLINK` on FreeBSD), a
/// directory (`EISDIR`) or a socket (`ENXIO`) is named as such.
fn open_error(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
    action: &'static str,
    errno: Errno,
) -> Error {
    let kind = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .and_then(|stat| unsafe_kind(&stat));
    match kind {
        Some(kind) => Error::UnsafePath {
            path: path.to_owned(),
            kind,
        },
        None => Error::io(path, action, errno),
    }
}

pub(crate) fn unsafe_kind(stat: &FileStat) -> Option<FileKind> {
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    Some(match kind {
        SFlag::S_IFREG => return None,
        SFlag::S_IFLNK => FileKind::Symlink,
        SFlag::S_IFDIR => FileKind::Directory,
        SFlag::S_IFIFO => FileKind::Fifo,
        SFlag::S_IFSOCK => FileKind::Socket,
        SFlag::S_IFCHR => FileKind::CharDevice,
        _ => FileKind::BlockDevice,
    })
}

/// Reads what the file says, at most [`pid::READ_LIMIT`] bytes of it.
pub(crate) fn read_contents(
    file: BorrowedFd<'_>,
    stat: &FileStat,
    path: &Path,
) -> Result<Contents> {
    let mut head = [0; pid::READ_LIMIT];
    let n = retry_eintr(|| nix::sys::uio::pread(file, &mut head, 0))
        .map_err(|errno| Error::io(path, "read", errno))?;
    let len = u64::try_from(stat.st_size).unwrap_or(0).max(n as u64);
    Ok(Contents::parse(&head[..n], len))
}

/// Writes `"<pid>\n"` at offset 0, then truncates to that length if the file
/// was longer, never to zero first: truncating to zero and rewriting makes
/// ext4 flush the file on close (its `auto_da_alloc` heuristic), a disk write
/// per start, and a reader never sees an empty file.
///
/// Over a longer old PID the new one is written padded with spaces to the
/// old length, in the same `pwrite`: written bare, `789\n` over `123456\n`
/// would read `789\n56\n` until the truncation, and `kill $(cat file)`
/// would signal 56 too. Padded, every reader sees one PID, old or new. Old
/// contents longer than [`pid::READ_LIMIT`] are junk (never a PID): they are
/// truncated to nothing first, since no padding would be worth writing.
pub(crate) fn write_pid(file: BorrowedFd<'_>, pid: Pid, size: i64, path: &Path) -> Result<()> {
    let mut buf = [b' '; pid::READ_LIMIT];
    let old = usize::try_from(size).unwrap_or(usize::MAX);
    let (written, len) = padded(pid, old, &mut buf);
    let truncate = |to: i64| {
        retry_eintr(|| ftruncate(file, to)).map_err(|errno| Error::io(path, "truncate", errno))
    };
    if old > pid::READ_LIMIT {
        truncate(0)?;
    }
    match retry_eintr(|| nix::sys::uio::pwrite(file, written, 0)) {
        Ok(n) if n == written.len() => {}
        Ok(_) => {
            return Err(Error::Io {
                path: path.to_owned(),
                action: "write the PID into",
                source: io::Error::new(io::ErrorKind::WriteZero, "short write"),
            });
        }
        Err(errno) => return Err(Error::io(path, "write the PID into", errno)),
    }
    if written.len() > len {
        truncate(len as i64)?;
    }
    Ok(())
}

/// What [`write_pid`] writes over `old` bytes, and the length it keeps.
fn padded(pid: Pid, old: usize, buf: &mut [u8; pid::READ_LIMIT]) -> (&[u8], usize) {
    let len = pid::render(pid, buf).len();
    let written = if old > buf.len() { len } else { len.max(old) };
    (&buf[..written], len)
}

/// [`write_pid`] over whatever the file holds now.
pub(crate) fn rewrite_pid(file: BorrowedFd<'_>, pid: Pid, path: &Path) -> Result<()> {
    let stat = nix::sys::stat::fstat(file).map_err(|errno| Error::io(path, "inspect", errno))?;
    write_pid(file, pid, stat.st_size, path)
}

/// `flock(2)`. nix's `Flock` wrapper unlocks on drop, which would add a system
/// call to every release and briefly free the lock before the unlink; the
/// lock must instead die with the descriptor, after the unlink.
pub(crate) fn flock(file: BorrowedFd<'_>, operation: i32) -> nix::Result<()> {
    // SAFETY: `file` is a valid open descriptor for the duration of the call.
    Errno::result(unsafe { nix::libc::flock(file.as_raw_fd(), operation) }).map(drop)
}

/// Repeats a system call interrupted by a signal.
pub(crate) fn retry_eintr<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// A descriptor of our own for the open file a raw number refers to, if it
/// is open: `fcntl(F_DUPFD_CLOEXEC)` on a number fails with `EBADF` when it
/// is not, so no borrowed descriptor is ever made of one that may be closed.
pub(crate) fn dup_raw(fd: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on any number is defined (EBADF if closed) and
    // returns a new descriptor that nothing else owns.
    let new = Errno::result(unsafe { nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` was just returned to us by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state a reader can see during a rewrite holds one PID only.
    #[test]
    fn a_shorter_pid_is_written_padded_over_a_longer_one() {
        let new = Pid::new(789).expect("a PID");
        let mut buf = [b' '; pid::READ_LIMIT];
        let (written, kept) = padded(new, "123456\n".len(), &mut buf);
        assert_eq!(written, b"789\n   ");
        assert_eq!(kept, 4);
        let words: Vec<&[u8]> = written
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .collect();
        assert_eq!(words, [&b"789"[..]]);
        assert_eq!(padded(new, 2, &mut buf).0, b"789\n");
        assert_eq!(padded(new, 1 << 20, &mut buf).0, b"789\n");

        let dir = tempfile::tempdir().expect("make a temporary directory");
        let path = dir.path().join("pad.pid");
        for old in ["123456\n", "", "12\n", &"x".repeat(4096)] {
            std::fs::write(&path, old).expect("write the old contents");
            let file: OwnedFd = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open")
                .into();
            rewrite_pid(std::os::fd::AsFd::as_fd(&file), new, &path).expect("rewrite");
            assert_eq!(
                std::fs::read(&path).expect("read"),
                b"789\n",
                "over {old:?}"
            );
        }
    }

    #[test]
    fn decimals_are_whole_fields() {
        assert_eq!(decimal::<i32>(b"4242"), Some(4242));
        assert_eq!(decimal::<i32>(b""), None);
        assert_eq!(decimal::<i32>(b"42 "), None);
        assert_eq!(decimal::<i32>(b"\xff"), None);
        assert_eq!(decimal::<u32>(b"-1"), None);
    }

    #[test]
    fn missing_directories_are_made_and_a_file_in_the_way_is_refused() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let nested = root.path().join("a/b/c");
        assert_eq!(create_directories(&nested), Ok(()));
        assert!(nested.is_dir());
        assert_eq!(create_directories(&nested), Ok(()), "already there");
        let file = root.path().join("file");
        std::fs::write(&file, b"").expect("a file");
        assert_eq!(create_directories(&file), Err(Errno::EEXIST));
        assert_eq!(create_directories(&file.join("below")), Err(Errno::ENOTDIR));
        let dangling = root.path().join("dangling");
        std::os::unix::fs::symlink(root.path().join("nowhere"), &dangling).expect("a symlink");
        assert_eq!(create_directories(&dangling), Err(Errno::EEXIST));
    }

    #[test]
    fn a_stopwatch_counts_up() {
        let stopwatch = Stopwatch::start();
        assert!(!stopwatch.exceeded(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(stopwatch.exceeded(Duration::from_millis(10)));
        assert!(stopwatch.started_at() <= std::time::Instant::now());
    }
}
