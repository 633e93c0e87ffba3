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
/// assert!(!holder.is_verified());
/// assert_eq!(Holder::Unknown.pid(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Verified with the kernel: process `pid` (as this process's PID
    /// namespace numbers it) has the open file description that holds the
    /// lock. Linux only (`/proc/<pid>/fdinfo`).
    Kernel {
        /// The holder: the one the PID file names when it is among the
        /// verified processes, else the lowest PID of them.
        pid: Pid,
        /// Other processes that share the same lock, like a daemon's
        /// forked workers, in ascending order.
        others: Vec<Pid>,
        /// The PID the holder has in its own PID namespace, when that is
        /// not `pid`: it runs in a container (it calls itself, and wrote,
        /// this PID; often 1).
        ns_pid: Option<Pid>,
    },
    /// The lock is held, but no visible process could be verified as its
    /// holder (another user's process, another PID namespace, or a system
    /// without a way to ask); the PID file names this PID. It is not proof,
    /// and never signalled.
    File(Pid),
    /// The lock is held, and the file may not be read from here (another
    /// user's): the kernel's lock list names this process as the one that
    /// took the lock. Not verified: it may have exited since, or forked and
    /// handed the lock on. Never signalled.
    Taker(Pid),
    /// The lock is held, by a process that could not be verified, and the
    /// file does not name a PID (the holder had not written it yet, or wrote
    /// something else).
    Unknown,
}

impl Holder {
    /// The holder's PID, when known (verified or not: see
    /// [`is_verified`](Self::is_verified)).
    #[must_use]
    pub fn pid(&self) -> Option<Pid> {
        match self {
            Self::Kernel { pid, .. } | Self::File(pid) | Self::Taker(pid) => Some(*pid),
            Self::Unknown => None,
        }
    }

    /// Whether the kernel confirmed the holder: only then is its PID ever
    /// signalled or offered to `kill`.
    #[must_use]
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Kernel { .. })
    }

    /// Every verified process holding the lock, the holder first.
    #[must_use]
    pub fn verified_pids(&self) -> Vec<Pid> {
        match self {
            Self::Kernel { pid, others, .. } => std::iter::once(*pid)
                .chain(others.iter().copied())
                .collect(),
            Self::File(_) | Self::Taker(_) | Self::Unknown => Vec::new(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel {
                pid,
                others,
                ns_pid,
            } => {
                write!(f, "PID: {pid}")?;
                if let Some(ns_pid) = ns_pid {
                    write!(
                        f,
                        " here; it calls itself PID {ns_pid}: another PID namespace, e.g. a container"
                    )?;
                }
                for (index, other) in others.iter().enumerate() {
                    let lead = if index == 0 {
                        "; its lock is shared with PID "
                    } else {
                        ", "
                    };
                    write!(f, "{lead}{other}")?;
                }
                Ok(())
            }
            Self::File(pid) => write!(f, "PID: {pid} per its PID file, not verified"),
            Self::Taker(pid) => write!(f, "PID: {pid} per the kernel's lock list, not verified"),
            Self::Unknown => f.write_str("PID unknown"),
        }
    }
}

/// A process that holds the lock on a PID file without being an instance
/// of its program: it *pins* the file. An observer probing it for an
/// instant (`pidlock status`), `flock -s`, or another user's `flock` through
/// a read-only descriptor. Never reported as a running instance, and never
/// a reason for the program not to start: a start replaces a file that
/// only readers hold (on Linux; elsewhere [`Error::Pinned`] names them).
///
/// ```
/// use pidlock_core::{Pid, Reader};
///
/// let reader = Reader::new(Pid::new(4242).unwrap());
/// assert_eq!(reader.to_string(), "PID 4242");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reader {
    /// The reader, as this process's PID namespace numbers it.
    pub pid: Pid,
    /// The user it runs as, when it can be seen.
    pub uid: Option<u32>,
    /// Its command line, when it can be seen.
    pub command: Option<String>,
    /// Whether its lock is shared; if not, it is an exclusive lock taken
    /// through a read-only descriptor by a user who does not own the file.
    pub shared: bool,
}

impl Reader {
    /// A reader known only by its PID.
    #[must_use]
    pub fn new(pid: Pid) -> Self {
        Self {
            pid,
            uid: None,
            command: None,
            shared: true,
        }
    }
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID {}", self.pid)?;
        match (&self.uid, &self.command) {
            (Some(uid), Some(command)) => {
                write!(f, " (user {}: {command})", user_name(*uid))
            }
            (Some(uid), None) => write!(f, " (user {})", user_name(*uid)),
            (None, Some(command)) => write!(f, " ({command})"),
            (None, None) => Ok(()),
        }
    }
}

/// `name (uid N)`, or `uid N` when the user database does not know it.
pub(crate) fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
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

/// Where a lock across hosts is held: the engine behind the attribute's
/// `url`, chosen by its scheme.
///
/// ```
/// assert_eq!(pidlock_core::Service::Redis.to_string(), "Redis");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Service {
    /// A PostgreSQL session advisory lock (`postgres://`, the `postgres`
    /// feature).
    Postgres,
    /// A Redis key with a token and a TTL (`redis://`, `rediss://`, the
    /// `redis` feature).
    Redis,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres => "PostgreSQL",
            Self::Redis => "Redis",
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
    /// [`OnConflict::Takeover`](crate::OnConflict::Takeover) or
    /// [`Stop`](crate::Stop) refused to signal anyone: no process could be
    /// verified as the holder (not Linux, another user's process, or one in
    /// another PID namespace), and a PID read from the file alone is never
    /// signalled.
    HolderUnverified {
        /// The PID file.
        path: PathBuf,
        /// What is known: what the file claims, if anything.
        holder: Holder,
    },
    /// Another process holds the lock across hosts (the `postgres` or
    /// `redis` feature).
    RemoteHeld {
        /// Where the lock is held.
        service: Service,
        /// The lock's key.
        key: String,
        /// The holder's host, as it recorded it.
        host: Option<String>,
        /// The holder's PID on that host.
        pid: Option<Pid>,
    },
    /// [`OnConflict::Wait`](crate::OnConflict::Wait) with a timeout waited
    /// this long for a lock across hosts, and another process still holds
    /// it.
    RemoteTimedOut {
        /// Where the lock is held.
        service: Service,
        /// The lock's key.
        key: String,
        /// The holder's host, as it recorded it, when known.
        host: Option<String>,
        /// The holder's PID on that host, when known.
        pid: Option<Pid>,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The lock across hosts could not be taken or trusted: connection, TLS,
    /// authentication, a server reply, a pooler, or settings that break the
    /// lease's promise; `reason` says which.
    Remote {
        /// Where the lock is held.
        service: Service,
        /// The lock's key.
        key: String,
        /// What went wrong, in words (quoting the cause's own text, so the
        /// one-line message is complete).
        reason: String,
        /// The client library's error, when one caused this.
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// Nobody runs an instance, but readers hold the lock on the PID file
    /// (see [`Reader`]) and it could not be replaced: the platform or the
    /// filesystem cannot swap two names atomically (only Linux can, with
    /// `renameat2(RENAME_EXCHANGE)`), or the file is not ours to replace.
    Pinned {
        /// The PID file.
        path: PathBuf,
        /// Who holds it, as far as can be seen.
        readers: Vec<Reader>,
    },
    /// The attribute's `url` cannot be used as asked, before anything was
    /// locked: a scheme no engine handles, an engine this program was built
    /// without, or a policy a lock across hosts cannot follow.
    RemoteConfig {
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// The PID file exists and belongs to another user: it is not ours to
    /// write (and nobody holds its lock).
    ForeignOwner {
        /// The PID file.
        path: PathBuf,
        /// Its owner, as `name (uid N)`.
        owner: String,
    },
    /// The PID file has more than one name (a hard link): writing it would
    /// write a file elsewhere too.
    HardLinked {
        /// The PID file.
        path: PathBuf,
        /// How many names it has.
        links: u64,
    },
    /// This very process already holds a lock on this file (acquired twice).
    HeldByThisProcess {
        /// The PID file.
        path: PathBuf,
    },
    /// [`daemonized`](crate::daemonized): the process that owned the lock is
    /// still running, so this one cannot take it over.
    PreviousOwnerRunning {
        /// The PID file.
        path: PathBuf,
        /// The owner that did not exit.
        pid: Pid,
    },
    /// [`daemonized`](crate::daemonized): the lock was released (and its
    /// file removed) before this process could take it over.
    LockLost {
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
    /// No path was given, and the user this program runs as has no place
    /// for the default one (see [`default_path`](crate::default_path)).
    NoDefaultPath {
        /// The user, as `name (uid N)`.
        user: String,
        /// Why, in words.
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

/// " on host web-2 (PID: 4242)", as much of it as is known.
fn holder_on_host(f: &mut fmt::Formatter<'_>, host: Option<&str>, pid: Option<Pid>) -> fmt::Result {
    if let Some(host) = host {
        write!(f, " on host {host}")?;
    }
    match pid {
        Some(pid) => write!(f, " (PID: {pid})"),
        None => write!(f, " (PID unknown)"),
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
                crate::human::duration(*waited),
                path.display()
            ),
            Self::HolderUnverified { path, holder } => write!(
                f,
                "not signalling the holder of {}: no process could be verified as holding its lock ({holder}); a PID from the file alone is never signalled",
                path.display()
            ),
            Self::RemoteHeld {
                service,
                key,
                host,
                pid,
            } => {
                write!(f, "another instance is already running")?;
                holder_on_host(f, host.as_deref(), *pid)?;
                write!(f, ", holding the {service} lock \"{key}\"")
            }
            Self::RemoteTimedOut {
                service,
                key,
                host,
                pid,
                waited,
            } => {
                write!(f, "another instance is still running")?;
                holder_on_host(f, host.as_deref(), *pid)?;
                write!(
                    f,
                    " after waiting {}, holding the {service} lock \"{key}\"",
                    crate::human::duration(*waited)
                )
            }
            Self::Remote {
                service,
                key,
                reason,
                ..
            } => {
                write!(f, "cannot use the {service} lock \"{key}\": {reason}")
            }
            Self::RemoteConfig { reason } => {
                write!(f, "cannot take the lock across hosts: {reason}")
            }
            Self::Pinned { path, readers } => {
                write!(
                    f,
                    "no instance is running, but {} is held by processes that only read it",
                    path.display()
                )?;
                for (index, reader) in readers.iter().enumerate() {
                    write!(f, "{}{reader}", if index == 0 { ": " } else { ", " })?;
                }
                write!(
                    f,
                    ", and it cannot be replaced here; stop them, or remove the file"
                )
            }
            Self::HeldByThisProcess { path } => write!(
                f,
                "{} is already held by this process (acquired twice)",
                path.display()
            ),
            Self::ForeignOwner { path, owner } => write!(
                f,
                "refusing to use {}: it belongs to user {owner}, not to the user this program runs as; remove it or run the program as that user",
                path.display()
            ),
            Self::HardLinked { path, links } => write!(
                f,
                "refusing to use {}: it has {links} names (hard links), so writing it would change another file too; remove it",
                path.display()
            ),
            Self::PreviousOwnerRunning { path, pid } => write!(
                f,
                "cannot take over {}: PID {pid}, which owns it, is still running; call daemonized() in the child that carries on after its parent has exited",
                path.display()
            ),
            Self::LockLost { path } => write!(
                f,
                "cannot take over {}: the lock was released before this process took it over (a parent that returns from main or calls exit removes its file; leave the parent with _exit, as daemon(3) does)",
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
            Self::NoDefaultPath { user, reason } => write!(
                f,
                "no default PID file for user {user}, whose home directory holds it: {reason}; give the program a path (the attribute's `path` or `env`)"
            ),
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
            Self::Remote {
                source: Some(source),
                ..
            } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
