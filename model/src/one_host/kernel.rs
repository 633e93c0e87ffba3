//! What the kernel keeps for the PID file: the directory entry, the inodes
//! it may name, and the open file descriptions that carry `flock`s.
//!
//! Only what the protocol can observe is kept. An inode has one name at most
//! (the lock refuses hard-linked files, SPEC §10, and nobody else makes
//! links in the model), so "link count" is a flag. A `flock` belongs to an
//! open file description, not to a process: every process with a descriptor
//! for it holds it, and it goes away when the last descriptor closes.

/// A PID number. Numbers are what the file, `/proc` and `kill` talk in; the
/// model tells processes apart by slot, so a reused number is visible.
pub type Pid = u8;

/// The PID a process that died before the model starts left in a stale file.
pub const STALE_PID: Pid = 9;

/// Inode and description table sizes: more than any configuration reaches.
pub const INODES: usize = 4;
pub const DESCRIPTIONS: usize = 6;

/// What the file holds, as far as a reader can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Contents {
    /// Just created, nothing written yet.
    Empty,
    /// `"<pid>\n"`.
    Pid(Pid),
    /// Longer than any PID line and not a PID (a corrupted file).
    Garbage,
    /// A PID line written over longer contents, not truncated yet: a reader
    /// sees it as corrupted (`pid::Contents::parse` wants the whole file).
    PidThenJunk(Pid),
}

impl Contents {
    /// `pwrite("<pid>\n", 0)`: overwrites the start, keeps any longer tail.
    pub fn after_pwrite(self, pid: Pid) -> Self {
        if self.longer_than_a_pid_line() {
            Self::PidThenJunk(pid)
        } else {
            Self::Pid(pid)
        }
    }

    /// `ftruncate` to the PID line's length.
    pub fn after_truncate(self) -> Self {
        match self {
            Self::PidThenJunk(pid) => Self::Pid(pid),
            other => other,
        }
    }

    /// `write_pid` truncates only when the size it read under the lock is
    /// larger than the line it writes. PIDs in the model all have one digit.
    pub fn longer_than_a_pid_line(self) -> bool {
        matches!(self, Self::Garbage | Self::PidThenJunk(_))
    }

    /// The PID a reader gets from the file, if it reads as one.
    pub fn pid(self) -> Option<Pid> {
        match self {
            Self::Pid(pid) => Some(pid),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Inode {
    /// Whether the directory entry names it (its link count is 1, else 0).
    pub linked: bool,
    pub contents: Contents,
    /// A name for traces only ("file A", "file B"); zeroed while checking
    /// so that it never tells two states apart.
    pub serial: u8,
}

/// An open file description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Description {
    pub inode: u8,
    /// Whether it holds the exclusive `flock`.
    pub locked: bool,
    /// The PID of the process that took the lock: what `/proc/locks` shows
    /// (`fl_pid`), which a later `flock` on the same description does not
    /// change. 0 while unlocked.
    pub taker: Pid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// The inode the path names, if any.
    pub entry: Option<u8>,
    pub inodes: [Option<Inode>; INODES],
    pub descriptions: [Option<Description>; DESCRIPTIONS],
    /// Next serial for traces; zeroed while checking.
    pub next_serial: u8,
}

impl Kernel {
    /// An empty directory, or one holding a file with these contents.
    pub fn new(file: Option<Contents>) -> Self {
        let mut kernel = Self {
            entry: None,
            inodes: [None; INODES],
            descriptions: [None; DESCRIPTIONS],
            next_serial: 0,
        };
        if let Some(contents) = file {
            kernel.create(contents);
        }
        kernel
    }

    /// A new inode linked at the path (`O_CREAT`).
    pub fn create(&mut self, contents: Contents) -> u8 {
        let index = free_slot(&self.inodes, "inodes");
        self.inodes[index] = Some(Inode {
            linked: true,
            contents,
            serial: self.next_serial,
        });
        self.next_serial += 1;
        let index = index as u8;
        self.entry = Some(index);
        index
    }

    /// A new open file description of `inode` (`open`).
    pub fn open(&mut self, inode: u8) -> u8 {
        let index = free_slot(&self.descriptions, "descriptions");
        self.descriptions[index] = Some(Description {
            inode,
            locked: false,
            taker: 0,
        });
        index as u8
    }

    /// `unlinkat(dir, name)`: removes whatever the name names now.
    pub fn unlink(&mut self) -> Option<u8> {
        let inode = self.entry.take()?;
        if let Some(node) = &mut self.inodes[usize::from(inode)] {
            node.linked = false;
        }
        Some(inode)
    }

    pub fn description(&self, index: u8) -> Description {
        self.descriptions[usize::from(index)].expect("a descriptor names a live description")
    }

    pub fn inode(&self, index: u8) -> Inode {
        self.inodes[usize::from(index)].expect("a description names a live inode")
    }

    pub fn inode_of(&self, description: u8) -> u8 {
        self.description(description).inode
    }

    pub fn contents_mut(&mut self, inode: u8) -> &mut Contents {
        &mut self.inodes[usize::from(inode)]
            .as_mut()
            .expect("a description names a live inode")
            .contents
    }

    /// `flock(LOCK_EX | LOCK_NB)` on `description` would succeed: no other
    /// description holds a lock on the same inode. Its own lock counts as
    /// success (taking it again is a no-op).
    pub fn can_lock(&self, description: u8) -> bool {
        let inode = self.inode_of(description);
        self.descriptions
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != usize::from(description))
            .filter_map(|(_, other)| *other)
            .all(|other| other.inode != inode || !other.locked)
    }

    /// Takes the lock (the caller checked [`Self::can_lock`]). The taker is
    /// recorded only by the call that takes it, as Linux does.
    pub fn lock(&mut self, description: u8, taker: Pid) {
        let held = self.descriptions[usize::from(description)]
            .as_mut()
            .expect("a descriptor names a live description");
        if !held.locked {
            held.locked = true;
            held.taker = taker;
        }
    }

    /// The descriptions holding the lock on `inode` (at most one: `flock` is
    /// exclusive).
    pub fn lockers(&self, inode: u8) -> impl Iterator<Item = u8> + '_ {
        self.descriptions
            .iter()
            .enumerate()
            .filter_map(move |(index, description)| {
                description
                    .filter(|d| d.inode == inode && d.locked)
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
            let Some(inode) = self.inodes[index] else {
                continue;
            };
            let open = self
                .descriptions
                .iter()
                .flatten()
                .any(|d| usize::from(d.inode) == index);
            if !inode.linked && !open {
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
