//! What the kernel keeps for the PID file: the names in its directory, the
//! inodes they may name, and the open file descriptions that carry `flock`s.
//!
//! Only what the protocol can observe is kept. The directory holds the PID
//! file's name, the replacement lock's (`.<name>.replace`, `replace.rs`'s
//! turn) and each process's temporary name (`.<name>.<pid>.0.pidlock`); an
//! inode has one of them at most (the lock refuses hard-linked files, and
//! nobody else makes links in the model), so its link count is
//! whether a name names it. A `flock` belongs to an open file description,
//! not to a process: every process with a descriptor for it holds it, and it
//! goes away when the last descriptor closes.

use super::SLOTS;

/// A PID number. Numbers are what the file, `/proc` and `kill` talk in; the
/// model tells processes apart by slot, so a reused number is visible.
pub type Pid = u8;

/// The PID a process that died before the model starts left in a stale file.
pub const STALE_PID: Pid = 9;

/// Inode and description table sizes: more than any configuration reaches.
pub(super) const INODES: usize = 8;
pub(super) const DESCRIPTIONS: usize = 10;

/// What the file holds, as far as a reader can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Contents {
    /// Just created, nothing written yet.
    Empty,
    /// `"<pid>\n"`.
    Pid(Pid),
    /// Longer than any PID line and not a PID (a corrupted file), though
    /// shorter than `pid::READ_LIMIT`.
    Garbage,
    /// A PID line written padded with spaces over longer contents, not
    /// truncated yet: `pid::Contents::parse` trims the spaces, so a reader
    /// sees the PID.
    Padded(Pid),
}

impl Contents {
    /// `write_pid`'s `pwrite`: the PID line at offset 0, padded to the old
    /// length when that is longer.
    pub fn after_pwrite(self, pid: Pid) -> Self {
        if self.longer_than_a_pid_line() {
            Self::Padded(pid)
        } else {
            Self::Pid(pid)
        }
    }

    /// `ftruncate` to the PID line's length.
    pub fn after_truncate(self) -> Self {
        match self {
            Self::Padded(pid) => Self::Pid(pid),
            other => other,
        }
    }

    /// `write_pid` truncates only when what it wrote (padded to the size it
    /// read under the lock) is longer than the line. PIDs in the model all
    /// have one digit.
    pub fn longer_than_a_pid_line(self) -> bool {
        matches!(self, Self::Garbage | Self::Padded(_))
    }

    /// The PID a reader gets from the file, if it reads as one.
    pub fn pid(self) -> Option<Pid> {
        match self {
            Self::Pid(pid) | Self::Padded(pid) => Some(pid),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Inode {
    pub contents: Contents,
    /// A replacement lock (`.<name>.replace`), not a PID file.
    pub turn: bool,
    /// A name for traces only ("file A", "file B"); zeroed while checking
    /// so that it never tells two states apart.
    pub serial: u8,
}

/// A `flock` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lock {
    /// `LOCK_SH`: any number of descriptions at once.
    Shared,
    /// `LOCK_EX`: one description, and no shared one beside it.
    Exclusive,
}

/// An open file description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Description {
    pub inode: u8,
    pub lock: Option<Lock>,
    /// The PID of the process that took the lock: what `/proc/locks` shows
    /// (`fl_pid`), which a later `flock` on the same description does not
    /// change. 0 while unlocked.
    pub taker: Pid,
    /// Opened read-only by another user (root: nobody else may open a 0600
    /// file): a lock through it is a reader's,
    /// whatever its mode (`Holders::add`).
    pub foreign: bool,
}

/// The kernel's side of one directory: names, inodes and open file
/// descriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// The inode the PID file's path names, if any.
    pub entry: Option<u8>,
    /// The inode the replacement lock's name names, if any.
    pub turn: Option<u8>,
    /// The inode each process's temporary name names, by slot.
    pub temps: [Option<u8>; SLOTS],
    /// The inodes, by number; `None` is a free slot.
    pub inodes: [Option<Inode>; INODES],
    /// The open file descriptions, by number; `None` is a free slot.
    pub descriptions: [Option<Description>; DESCRIPTIONS],
    /// Next serial for traces; zeroed while checking.
    pub next_serial: u8,
}

impl Kernel {
    /// An empty directory, or one holding a PID file with these contents.
    pub fn new(file: Option<Contents>) -> Self {
        let mut kernel = Self {
            entry: None,
            turn: None,
            temps: [None; SLOTS],
            inodes: [None; INODES],
            descriptions: [None; DESCRIPTIONS],
            next_serial: 0,
        };
        if let Some(contents) = file {
            kernel.entry = Some(kernel.make(contents));
        }
        kernel
    }

    /// A new inode, not named yet.
    fn make(&mut self, contents: Contents) -> u8 {
        let index = free_slot(&self.inodes, "inodes");
        self.inodes[index] = Some(Inode {
            contents,
            turn: false,
            serial: self.next_serial,
        });
        self.next_serial += 1;
        index as u8
    }

    /// A new empty inode at the PID file's path (`O_CREAT | O_EXCL`; the
    /// caller checked the name is free).
    pub fn create(&mut self) -> u8 {
        let inode = self.make(Contents::Empty);
        self.entry = Some(inode);
        inode
    }

    /// A new empty inode under `slot`'s temporary name.
    pub fn create_temp(&mut self, slot: usize) -> u8 {
        let inode = self.make(Contents::Empty);
        self.temps[slot] = Some(inode);
        inode
    }

    /// A new empty inode under the replacement lock's name.
    pub fn create_turn(&mut self) -> u8 {
        let inode = self.make(Contents::Empty);
        if let Some(node) = &mut self.inodes[usize::from(inode)] {
            node.turn = true;
        }
        self.turn = Some(inode);
        inode
    }

    /// A new open file description of `inode` (`open`); `foreign` for a
    /// read-only one of another user.
    pub fn open(&mut self, inode: u8, foreign: bool) -> u8 {
        let index = free_slot(&self.descriptions, "descriptions");
        self.descriptions[index] = Some(Description {
            inode,
            lock: None,
            taker: 0,
            foreign,
        });
        index as u8
    }

    /// `unlinkat(dir, name)` of the PID file: removes whatever the name
    /// names *now*.
    pub fn unlink(&mut self) -> Option<u8> {
        self.entry.take()
    }

    /// `unlinkat` of `slot`'s temporary name.
    pub fn unlink_temp(&mut self, slot: usize) -> Option<u8> {
        self.temps[slot].take()
    }

    /// `unlinkat` of the replacement lock's name.
    pub fn unlink_turn(&mut self) -> Option<u8> {
        self.turn.take()
    }

    /// `renameat2(temporary, path, RENAME_EXCHANGE)`: swaps what the two
    /// names name, in one step; `ENOENT` (false, nothing changes) if either
    /// names nothing.
    pub fn exchange(&mut self, slot: usize) -> bool {
        match (self.temps[slot], self.entry) {
            (Some(temp), Some(path)) => {
                self.temps[slot] = Some(path);
                self.entry = Some(temp);
                true
            }
            _ => false,
        }
    }

    /// Whether some name names `inode` (its link count is not 0).
    pub fn linked(&self, inode: u8) -> bool {
        self.entry == Some(inode) || self.turn == Some(inode) || self.temps.contains(&Some(inode))
    }

    /// The open file description `index`, which must be live.
    pub fn description(&self, index: u8) -> Description {
        self.descriptions[usize::from(index)].expect("a descriptor names a live description")
    }

    /// The inode `index`, which must be live.
    pub fn inode(&self, index: u8) -> Inode {
        self.inodes[usize::from(index)].expect("a description names a live inode")
    }

    /// The inode an open file description is of.
    pub fn inode_of(&self, description: u8) -> u8 {
        self.description(description).inode
    }

    /// What `inode` holds, to write it.
    pub fn contents_mut(&mut self, inode: u8) -> &mut Contents {
        &mut self.inodes[usize::from(inode)]
            .as_mut()
            .expect("a description names a live inode")
            .contents
    }

    /// `flock(lock | LOCK_NB)` on `description` would succeed: no other
    /// description of the same inode holds a lock that conflicts (any lock,
    /// for an exclusive one; an exclusive one, for a shared one).
    pub fn can_lock(&self, description: u8, lock: Lock) -> bool {
        let inode = self.inode_of(description);
        self.descriptions
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != usize::from(description))
            .filter_map(|(_, other)| *other)
            .filter(|other| other.inode == inode)
            .all(|other| match (lock, other.lock) {
                (_, None) | (Lock::Shared, Some(Lock::Shared)) => true,
                (_, Some(_)) => false,
            })
    }

    /// Takes (or converts to) `lock` (the caller checked [`Self::can_lock`]).
    /// The taker is recorded only by the call that takes it on an unlocked
    /// description, as Linux does.
    pub fn lock(&mut self, description: u8, lock: Lock, taker: Pid) {
        let held = self.descriptions[usize::from(description)]
            .as_mut()
            .expect("a descriptor names a live description");
        if held.lock.is_none() {
            held.taker = taker;
        }
        held.lock = Some(lock);
    }

    /// The descriptions holding the exclusive lock on `inode` (at most one).
    pub fn lockers(&self, inode: u8) -> impl Iterator<Item = u8> + '_ {
        self.descriptions
            .iter()
            .enumerate()
            .filter_map(move |(index, description)| {
                description
                    .filter(|d| d.inode == inode && d.lock == Some(Lock::Exclusive))
                    .map(|_| index as u8)
            })
    }

    /// Drops descriptions no descriptor refers to (the kernel releases their
    /// locks) and inodes with no name and no description (freed).
    pub fn collect(&mut self, referenced: impl Fn(u8) -> bool) {
        for (index, slot) in self.descriptions.iter_mut().enumerate() {
            if !referenced(index as u8) {
                *slot = None;
            }
        }
        for index in 0..INODES {
            if self.inodes[index].is_none() || self.linked(index as u8) {
                continue;
            }
            let open = self
                .descriptions
                .iter()
                .flatten()
                .any(|d| usize::from(d.inode) == index);
            if !open {
                self.inodes[index] = None;
            }
        }
    }
}

fn free_slot<T>(slots: &[Option<T>], what: &str) -> usize {
    slots
        .iter()
        .position(Option::is_none)
        .unwrap_or_else(|| panic!("the model ran out of {what}: raise the table size"))
}
