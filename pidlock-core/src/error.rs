//! Why a lock was not obtained, in variants a caller can match.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::pid::Pid;

/// Who holds a lock, and how we know.
///
/// ```
/// use pidlock_core::{Holder, Pid};
///
/// let holder = Holder::File(Pid::new(4242).unwrap());
/// assert_eq!(holder.pid().map(Pid::get), Some(4242));
/// assert_eq!(Holder::Unknown.pid(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The kernel's lock table names this process as the lock owner.
    Kernel(Pid),
    /// The lock is held, and the PID file says this process holds it. The file
    /// is written by the holder right after it locks, so this is reliable for a
    /// well-behaved holder, but it is not proof: only [`Holder::Kernel`] is.
    File(Pid),
    /// The lock is held but the file did not name a PID (the holder had not
    /// written it yet, or wrote something else).
    Unknown,
}

impl Holder {
    /// The holder's PID, when known.
    #[must_use]
    pub fn pid(self) -> Option<Pid> {
        match self {
            Self::Kernel(pid) | Self::File(pid) => Some(pid),
            Self::Unknown => None,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid() {
            Some(pid) => write!(f, "PID: {pid}"),
            None => f.write_str("PID unknown"),
        }
    }
}

/// What kind of filesystem object a path named, when it was not a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A symbolic link (never followed).
    Symlink,
    /// A directory.
    Directory,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Symlink => "a symbolic link",
            Self::Directory => "a directory",
            Self::Fifo => "a FIFO (named pipe)",
            Self::Socket => "a socket",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
        })
    }
}

/// Why a lock was not obtained or not released.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Another process holds the lock.
    AlreadyRunning {
        /// The PID file.
        path: PathBuf,
        /// Who holds it.
        holder: Holder,
    },
    /// [`OnConflict::Wait`](crate::OnConflict::Wait) or
    /// [`OnConflict::Takeover`](crate::OnConflict::Takeover) waited this long
    /// and the holder still has the lock.
    TimedOut {
        /// The PID file.
        path: PathBuf,
        /// Who holds it.
        holder: Holder,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// [`OnConflict::Takeover`](crate::OnConflict::Takeover) refused to
    /// signal anyone: the kernel cannot confirm which process holds the lock
    /// (not Linux, no `/proc`, or the holder is in another PID namespace), and
    /// a PID read from the file alone is never signalled.
    HolderUnverified {
        /// The PID file.
        path: PathBuf,
        /// What the file claims.
        holder: Holder,
    },
    /// Another process holds the PostgreSQL lock (the `postgres` feature).
    RemoteHeld {
        /// The lock's key.
        key: String,
        /// The holder's host, as it recorded it with its fencing term.
        host: Option<String>,
        /// The holder's PID on that host.
        pid: Option<Pid>,
    },
    /// The PostgreSQL lock could not be taken or trusted (the `postgres`
    /// feature): connection, query, pooler or settings; `reason` says which.
    Remote {
        /// The lock's key.
        key: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// This very process already holds a lock on this file (acquired twice).
    HeldByThisProcess {
        /// The PID file.
        path: PathBuf,
    },
    /// The path names something other than a regular file; nothing was
    /// followed, written or truncated.
    UnsafePath {
        /// The PID file.
        path: PathBuf,
        /// What it is instead.
        kind: FileKind,
    },
    /// The path cannot name a PID file at all (no file name, or a NUL byte).
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The environment variable meant to override the path is set but empty.
    EmptyEnvVar {
        /// The variable's name.
        var: String,
    },
    /// The path kept naming a different file each time we locked one: some
    /// other process keeps removing or replacing it.
    Unstable {
        /// The PID file.
        path: PathBuf,
    },
    /// A system call failed.
    Io {
        /// The PID file (or its directory, for `action`s on the directory).
        path: PathBuf,
        /// What we were doing, in words: "open", "create the directory of", ...
        action: &'static str,
        /// The operating system's reason.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, action: &'static str, errno: nix::errno::Errno) -> Self {
        Self::Io {
            path: path.to_owned(),
            action,
            source: io::Error::from(errno),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyRunning { path, holder } => write!(
                f,
                "another instance is already running ({holder}); it holds {}",
                path.display()
            ),
            Self::TimedOut {
                path,
                holder,
                waited,
            } => write!(
                f,
                "another instance is still running ({holder}) after waiting {}; it holds {}",
                crate::messages::duration(*waited),
                path.display()
            ),
            Self::HolderUnverified { path, holder } => write!(
                f,
                "not taking over {}: the kernel cannot confirm which process holds it (the file says {holder}), and a PID from the file alone is never signalled",
                path.display()
            ),
            Self::RemoteHeld { key, host, pid } => {
                write!(f, "another instance is already running")?;
                if let Some(host) = host {
                    write!(f, " on host {host}")?;
                }
                match pid {
                    Some(pid) => write!(f, " (PID: {pid})")?,
                    None => write!(f, " (PID unknown)")?,
                }
                write!(f, ", holding the PostgreSQL lock \"{key}\"")
            }
            Self::Remote { key, reason } => {
                write!(f, "cannot use the PostgreSQL lock \"{key}\": {reason}")
            }
            Self::HeldByThisProcess { path } => write!(
                f,
                "{} is already held by this process (acquired twice)",
                path.display()
            ),
            Self::UnsafePath { path, kind } => write!(
                f,
                "refusing to use {} as a PID file: it is {kind}; remove it or choose another path",
                path.display()
            ),
            Self::InvalidPath { path, reason } => {
                write!(
                    f,
                    "cannot use {:?} as a PID file: {reason}",
                    path.as_os_str()
                )
            }
            Self::EmptyEnvVar { var } => write!(
                f,
                "environment variable {var} is set but empty; unset it or set it to a PID file path"
            ),
            Self::Unstable { path } => write!(
                f,
                "{} was removed or replaced each time it was locked; is another program deleting it?",
                path.display()
            ),
            Self::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
