//! Who holds the lock on a file, asked of the kernel (SPEC §10, "Who holds
//! it"): the one function the conflict report, `status`, `stop` and takeover
//! all use.
//!
//! A `flock` belongs to an open file description, and every process with a
//! descriptor for that description holds it: the process that took it may
//! have forked and exited (`daemon(3)`, `flock(1)`, `exec 9>f; flock 9` in a
//! shell), and its PID, which `/proc/locks` still shows, may since belong to
//! an unrelated process. So the holder is found the other way round: Linux
//! lists, in `/proc/<pid>/fdinfo/<fd>`, the locks held through that very
//! descriptor (`lock:` lines). A process is a holder when one of its
//! descriptors names our inode and carries an exclusive `FLOCK` line for it.
//!
//! What cannot be seen is not guessed: another user's descriptors (unless we
//! are root) and processes outside our PID namespace are invisible, and a
//! holder among them leaves the answer "not verified". Elsewhere than Linux
//! nothing can be verified.

use nix::sys::signal::Signal;

use crate::error::Holder;
use crate::lockfile::Identity;
use crate::pid::Pid;
use crate::process::Pinned;

/// The processes that hold the exclusive lock on a file, as this process's
/// PID namespace numbers them. Empty when none could be verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    /// Holders of the exclusive lock, in ascending PID order.
    pub(crate) exclusive: Vec<Pid>,
    /// Whether any visible process holds a *shared* lock on the file: an
    /// observer (`status`, `stop`, `wait`) probing it for an instant.
    pub(crate) shared: bool,
}

impl Holders {
    /// What to report: the verified holders, the one the file names first;
    /// else what the file claims, marked unverified.
    pub(crate) fn describe(&self, file_pid: Option<Pid>) -> Holder {
        let Some(&lowest) = self.exclusive.first() else {
            return file_pid.map_or(Holder::Unknown, Holder::File);
        };
        // The holder the file names: by our number, or by the number it has
        // in its own PID namespace (a container's PID 1).
        let pid = file_pid
            .and_then(|named| {
                self.exclusive
                    .iter()
                    .copied()
                    .find(|&pid| pid == named)
                    .or_else(|| {
                        self.exclusive
                            .iter()
                            .copied()
                            .find(|&pid| own_namespace_pid(pid) == Some(named))
                    })
            })
            .or_else(|| {
                // Not named by the file: the process whose parent is not a
                // holder itself (a daemon, not one of its forked workers,
                // whose PIDs may be lower after the numbers wrapped).
                let roots: Vec<Pid> = self
                    .exclusive
                    .iter()
                    .copied()
                    .filter(|&pid| {
                        parent_of(pid).is_none_or(|parent| !self.exclusive.contains(&parent))
                    })
                    .collect();
                (roots.len() == 1).then(|| roots[0])
            })
            .unwrap_or(lowest);
        let others = self
            .exclusive
            .iter()
            .copied()
            .filter(|&other| other != pid)
            .collect();
        let ns_pid = own_namespace_pid(pid).filter(|&inner| inner != pid);
        Holder::Kernel {
            pid,
            others,
            ns_pid,
        }
    }
}

/// The parent of `pid` (field 4 of `/proc/<pid>/stat`, after the command
/// name, which may contain spaces and parentheses).
#[cfg(target_os = "linux")]
fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .and_then(Pid::new)
}

#[cfg(not(target_os = "linux"))]
fn parent_of(_pid: Pid) -> Option<Pid> {
    None
}

/// The PID `pid` has in its own (innermost) PID namespace: the last number
/// of the `NSpid:` line of `/proc/<pid>/status`.
#[cfg(target_os = "linux")]
fn own_namespace_pid(pid: Pid) -> Option<Pid> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    line.split_whitespace()
        .last()?
        .parse()
        .ok()
        .and_then(Pid::new)
}

#[cfg(not(target_os = "linux"))]
fn own_namespace_pid(_pid: Pid) -> Option<Pid> {
    None
}

/// Sends `signal` to `pid` if, at that moment, it holds the exclusive lock
/// on `identity`; false if it does not (or has exited). The process is
/// pinned before the check and signalled through the pin (see
/// [`crate::process`]), so a reused PID is never hit.
pub(crate) fn signal_verified(pid: Pid, identity: Identity, signal: Signal) -> nix::Result<bool> {
    let Some(pinned) = Pinned::open(pid)? else {
        return Ok(false);
    };
    if !holds(pid, identity) {
        return Ok(false);
    }
    pinned.signal(signal)
}

/// Looks through every visible process for descriptors holding a lock on
/// `identity`. Allocates; normal context only.
#[cfg(target_os = "linux")]
pub(crate) fn find(identity: Identity) -> Holders {
    let mut holders = Holders::default();
    if !proc_is_ours() {
        return holders;
    }
    let key = identity.proc_locks_key();
    // `/proc/locks` lists every flock the processes of our PID namespace can
    // see, under the PID that took it. No entry for our file: nobody we could
    // verify holds it, and the scan below (a read per descriptor on the
    // machine) is skipped. An entry says nothing about who holds it *now*.
    if !listed_in_proc_locks(&key) {
        return holders;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return holders;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
            .and_then(Pid::new)
        else {
            continue;
        };
        match lock_held_by(pid, &key) {
            Some(Kind::Exclusive) => holders.exclusive.push(pid),
            Some(Kind::Shared) => holders.shared = true,
            None => {}
        }
    }
    holders.exclusive.sort_unstable();
    holders
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn find(_identity: Identity) -> Holders {
    Holders::default()
}

/// Whether `/proc/locks` has a granted FLOCK entry (not a waiter, `->`) for
/// the file `key` names. If `/proc/locks` cannot be read, assume it may.
#[cfg(target_os = "linux")]
fn listed_in_proc_locks(key: &str) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/locks") else {
        return true;
    };
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, "FLOCK", _, _, _, file, ..] if *file == key)
    })
}

/// Whether `pid` holds the exclusive lock on `identity` right now.
#[cfg(target_os = "linux")]
pub(crate) fn holds(pid: Pid, identity: Identity) -> bool {
    proc_is_ours() && lock_held_by(pid, &identity.proc_locks_key()) == Some(Kind::Exclusive)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn holds(_pid: Pid, _identity: Identity) -> bool {
    false
}

#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exclusive,
    Shared,
}

/// `/proc` numbers processes as the namespace it was mounted for. If that is
/// not ours (a container that bind-mounted the host's `/proc`), its numbers
/// would name other processes than ours do: trust none of them.
#[cfg(target_os = "linux")]
fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|link| link.to_str()?.parse::<i32>().ok())
        == Some(Pid::current().get())
}

/// The strongest lock `pid` holds on `identity` through any descriptor.
#[cfg(target_os = "linux")]
fn lock_held_by(pid: Pid, key: &str) -> Option<Kind> {
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut found = None;
    for fd in fdinfo.flatten() {
        // Only the fdinfo text, never a `stat` through `/proc/<pid>/fd/N`:
        // that follows the link into the file's own filesystem, and one
        // descriptor on a hung mount (a dead FUSE or NFS server) anywhere on
        // the machine would block every conflict report. The `lock:` lines
        // name the file by device and inode, which is all we compare.
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        match lock_in_fdinfo(&info, key) {
            Some(Kind::Exclusive) => return Some(Kind::Exclusive),
            Some(Kind::Shared) => found = Some(Kind::Shared),
            None => {}
        }
    }
    found
}

/// Reads the `lock:` lines of an fdinfo file, which look like
/// `lock:\t1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF`. The PID in
/// them is whoever took the lock (possibly gone); only the kind and the file
/// matter here.
#[cfg(target_os = "linux")]
fn lock_in_fdinfo(info: &str, key: &str) -> Option<Kind> {
    info.lines()
        .filter_map(|line| line.strip_prefix("lock:"))
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "FLOCK", _, "WRITE", _, file, ..] if file == &key => Some(Kind::Exclusive),
                [_, "FLOCK", _, "READ", _, file, ..] if file == &key => Some(Kind::Shared),
                _ => None,
            }
        })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lock_lines_are_matched_by_kind_and_file() {
        let key = "fe:00:10010769";
        let info = "pos:\t0\nflags:\t02100002\nmnt_id:\t29\nino:\t10010769\n\
                    lock:\t1: FLOCK  ADVISORY  WRITE 5152 fe:00:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(info, key), Some(Kind::Exclusive));
        let shared = "pos:\t0\nlock:\t1: FLOCK  ADVISORY  READ 77 fe:00:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(shared, key), Some(Kind::Shared));
        let posix = "lock:\t1: POSIX  ADVISORY  WRITE 77 fe:00:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(posix, key), None);
        let other = "lock:\t1: FLOCK  ADVISORY  WRITE 77 fe:01:10010769 0 EOF\n";
        assert_eq!(lock_in_fdinfo(other, key), None);
    }
}
