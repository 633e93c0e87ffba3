//! Traces as people read them: one line per step, naming the process, the
//! system call or decision, and what it found.
//!
//! The checker's states are renumbered after every step, so a path is
//! replayed here without renumbering: each file keeps one name (file A,
//! file B, ...) from its creation to the end.

use std::fmt::Write as _;

use stateright::{Expectation, Model, Path};

use super::kernel::Contents;
use super::process::{Pc, Role};
use super::steps::holds;
use super::{Action, OneHost, State, Step};

/// The path as numbered lines, then the property it breaks (or shows) and
/// the last state.
pub fn render(model: &OneHost, path: &Path<State, Action>, property: &str) -> String {
    let replay = model.for_replay();
    let states = path.clone().into_states();
    let actions = path.clone().into_actions();
    let start = model
        .init_states()
        .iter()
        .position(|s| *s == states[0])
        .expect("a path starts at an initial state");
    let mut state = replay.init_states()[start];
    let mut out = String::new();
    let _ = writeln!(out, "property: {property}");
    let _ = writeln!(out, "start: {}", describe_dir(&state));
    let mut broken = false;
    for (n, action) in actions.iter().enumerate() {
        let after = replay
            .next_state(&state, *action)
            .expect("every step of a path applies");
        let mut line = format!(
            "{:>2}. {}",
            n + 1,
            step_line(model, &state, *action, &after)
        );
        if !broken && let Some(name) = first_broken(model, &after) {
            broken = true;
            let _ = write!(line, "\n    ^^ breaks {name}");
        }
        let _ = writeln!(out, "{line}");
        state = after;
    }
    let _ = writeln!(out, "end: {}", describe_dir(&state));
    for (slot, proc) in state.procs.iter().enumerate() {
        if proc.alive() {
            let _ = writeln!(
                out,
                "     {}: {}",
                label(&state, slot),
                describe_proc(&state, slot)
            );
        }
    }
    out
}

fn first_broken(model: &OneHost, state: &State) -> Option<&'static str> {
    model
        .properties()
        .into_iter()
        .filter(|p| p.expectation == Expectation::Always)
        .find(|p| !(p.condition)(model, state))
        .map(|p| p.name)
}

/// "I1 (pid 1)", "child (pid 3)", "stop (pid 4)", "unrelated (pid 1)".
fn label(state: &State, slot: usize) -> String {
    let proc = state.procs[slot];
    let name = match proc.role {
        Role::Instance(_) => format!("I{}", slot + 1),
        Role::Child => "child".to_owned(),
        Role::Stopper => "stop".to_owned(),
        Role::Unrelated => "unrelated".to_owned(),
        Role::Absent => "?".to_owned(),
    };
    format!("{name} (pid {})", proc.pid)
}

fn file(state: &State, inode: u8) -> String {
    let serial = state.kernel.inode(inode).serial;
    format!("file {}", char::from(b'A' + serial))
}

fn contents(contents: Contents) -> String {
    match contents {
        Contents::Empty => "empty".to_owned(),
        Contents::Pid(pid) => format!("\"{pid}\\n\""),
        Contents::Garbage => "garbage".to_owned(),
        Contents::PidThenJunk(pid) => format!("\"{pid}\\n\" + old tail"),
    }
}

fn describe_dir(state: &State) -> String {
    match state.kernel.entry {
        Some(inode) => format!(
            "the path names {} ({})",
            file(state, inode),
            contents(state.kernel.inode(inode).contents)
        ),
        None => "no file at the path".to_owned(),
    }
}

fn describe_proc(state: &State, slot: usize) -> String {
    let proc = state.procs[slot];
    let mut text = format!("{:?}", proc.pc);
    if let Some(fd) = proc.fd {
        let inode = state.kernel.inode_of(fd);
        let _ = write!(text, ", has {}", file(state, inode));
        if holds(state, &proc, inode) {
            text.push_str(" (locked)");
        }
    }
    if proc.is_owner() {
        text.push_str(", owner");
    }
    text
}

/// The file a process's descriptor is on, for the line.
fn its_file(state: &State, slot: usize) -> String {
    state.procs[slot]
        .fd
        .map(|fd| file(state, state.kernel.inode_of(fd)))
        .unwrap_or_else(|| "its file".to_owned())
}

fn named(state: &State) -> String {
    state
        .kernel
        .entry
        .map(|i| file(state, i))
        .unwrap_or_else(|| "nothing".to_owned())
}

fn step_line(model: &OneHost, before: &State, action: Action, after: &State) -> String {
    match action {
        Action::OutsideRm => format!("outside: rm <path> removes {}", named(before)),
        Action::ReusePid(pid) => {
            let previous = before
                .procs
                .iter()
                .enumerate()
                .find(|(_, p)| p.pid == pid && p.role != Role::Absent)
                .map(|(slot, _)| label(before, slot))
                .unwrap_or_else(|| "a process that died before the start".to_owned());
            format!("an unrelated process starts and is given pid {pid} (it was {previous}'s)")
        }
        Action::Proc(slot, step) => {
            let slot = usize::from(slot);
            let who = label(before, slot);
            format!("{who} {}", proc_line(model, before, slot, step, after))
        }
    }
}

fn proc_line(model: &OneHost, before: &State, slot: usize, step: Step, after: &State) -> String {
    let proc = before.procs[slot];
    let was = after.procs[slot];
    let mutated = model.config.mutations;
    let f = its_file(before, slot);
    match step {
        Step::Crash => format!(
            "is killed (SIGKILL): the kernel closes its descriptors{}",
            lock_fate(before, slot, after)
        ),
        Step::GiveUp => "gives up waiting (timeout)".to_owned(),
        Step::Fork => {
            let child = after
                .procs
                .iter()
                .position(|p| p.role == Role::Child)
                .expect("fork made a child");
            format!(
                "fork(): {} shares the open description of {f} (so the lock) and a copy of the guard whose owner cell says pid {}",
                label(after, child),
                proc.owner.unwrap_or(0)
            )
        }
        Step::Exec => format!(
            "restart(): execve keeps pid {} and the descriptor of {f}",
            proc.pid
        ),
        Step::Daemonize => match was.target.and_then(|t| t.pinned) {
            Some(p) => format!(
                "daemonized(): pins the previous owner, pid {}, and waits for it to exit",
                before.procs[usize::from(p)].pid
            ),
            None => format!(
                "daemonized(): the previous owner (pid {}) is gone",
                proc.owner.unwrap_or(0)
            ),
        },
        Step::ReturnFromMain => {
            let check = if proc.is_owner() {
                "owner check passes"
            } else if mutated.no_owner_check {
                "NO owner check (mutation)"
            } else {
                "not the owner: only closes its copy"
            };
            match was.pc {
                Pc::Unlink => format!(
                    "returns from main, drops its guard: {check}, fstatat(path) names {f}, ours"
                ),
                _ if !proc.is_owner() && !mutated.no_owner_check => {
                    format!("returns from main, drops its guard: {check}")
                }
                _ => format!(
                    "returns from main, drops its guard: {check}, but the path names {} (not ours)",
                    named(before)
                ),
            }
        }
        Step::Exit => leaving_line(
            model,
            before,
            slot,
            after,
            "calls exit(): atexit runs remove_held_files",
        ),
        Step::Next => next_line(model, before, slot, after, &f),
    }
}

fn leaving_line(model: &OneHost, before: &State, slot: usize, after: &State, how: &str) -> String {
    let proc = before.procs[slot];
    let check = if proc.is_owner() {
        "owner check passes"
    } else if model.config.mutations.no_owner_check && proc.owner.is_some() {
        "NO owner check (mutation)"
    } else if proc.owner.is_some() {
        "not the owner: leaves the file"
    } else {
        "nothing registered"
    };
    match after.procs[slot].pc {
        Pc::ExitUnlink(_) => format!(
            "{how}: {check}, fstatat(path) names {}, ours",
            named(before)
        ),
        _ => format!(
            "{how}: {check}; the process dies{}",
            lock_fate(before, slot, after)
        ),
    }
}

fn next_line(model: &OneHost, before: &State, slot: usize, after: &State, f: &str) -> String {
    let proc = before.procs[slot];
    let now = after.procs[slot];
    let now_file = its_file(after, slot);
    let mutated = model.config.mutations;
    match proc.pc {
        Pc::Open => match now.pc {
            Pc::Flock => format!("openat(O_CREAT|O_EXCL) creates {now_file}"),
            _ => "openat(O_CREAT|O_EXCL) -> EEXIST".to_owned(),
        },
        Pc::Lstat => match now.pc {
            Pc::OpenPlain => format!("fstatat(path): {}, a regular file", named(before)),
            _ => "fstatat(path) -> ENOENT: start again".to_owned(),
        },
        Pc::OpenPlain => match now.pc {
            Pc::Flock => format!("openat(path) opens {now_file}"),
            _ => "openat(path) -> ENOENT: start again".to_owned(),
        },
        Pc::Flock | Pc::BusyFlock { .. } => match now.pc {
            Pc::Verify => format!("flock(LOCK_EX|LOCK_NB) on {f}: locked"),
            _ => format!("flock(LOCK_EX|LOCK_NB) on {f} -> EWOULDBLOCK"),
        },
        Pc::Busy { .. } => {
            let inode = before.kernel.inode_of(proc.fd.expect("busy on a file"));
            let found = model.find(before, inode);
            let source = if mutated.holders_from_proc_locks {
                "/proc/locks (MUTATION)"
            } else {
                "fdinfo"
            };
            let verdict = match now.pc {
                Pc::Refuse => "reports AlreadyRunning".to_owned(),
                Pc::WaitLock => "waits for the lock".to_owned(),
                Pc::Pin => format!(
                    "takeover: will SIGTERM pid {}",
                    now.target.map_or(0, |t| t.pid)
                ),
                _ => "none verified: flock again".to_owned(),
            };
            format!("holders::find({f}) via {source} -> {found:?}: {verdict}")
        }
        Pc::WaitLock => format!("blocking flock on {f} returns: locked"),
        Pc::Verify => match now.pc {
            Pc::Write if before.kernel.entry == proc.fd.map(|d| before.kernel.inode_of(d)) => {
                format!(
                    "fstatat(path) names {f}, the locked file: guard registered, owner = pid {}",
                    proc.pid
                )
            }
            Pc::Write => format!(
                "NO post-lock identity check (mutation): trusts its lock on {f}, though the path names {}; guard registered, owner = pid {}",
                named(before),
                proc.pid
            ),
            _ => format!(
                "fstatat(path) names {}, not {f}: the lock is stale",
                named(before)
            ),
        },
        Pc::CloseRetry => format!("close({f}): start again"),
        Pc::Refuse => format!(
            "close({f}): exits with the conflict{}",
            lock_fate(before, slot, after)
        ),
        Pc::StopClose => "closes the file and exits".to_owned(),
        Pc::Pin => match now.target.and_then(|t| t.pinned) {
            Some(p) => format!(
                "pidfd_open(pid {}) pins {}",
                proc.target.map_or(0, |t| t.pid),
                label(before, usize::from(p))
            ),
            None => format!(
                "pidfd_open(pid {}) -> ESRCH",
                proc.target.map_or(0, |t| t.pid)
            ),
        },
        Pc::Check => {
            let pid = proc.target.map_or(0, |t| t.pid);
            let source = if mutated.holders_from_proc_locks {
                "/proc/locks names it as the taker (MUTATION)"
            } else {
                "its fdinfo shows the lock"
            };
            match now.pc {
                Pc::Signal => format!("holds(pid {pid}, {f}): yes, {source}"),
                _ => format!("holds(pid {pid}, {f}): no"),
            }
        }
        Pc::Signal => {
            let target = proc.target.expect("a round has a target");
            match target.pinned.map(usize::from) {
                Some(p) if before.procs[p].alive() => {
                    let victim = label(before, p);
                    if target.held_when_checked {
                        format!("pidfd_send_signal(SIGTERM) reaches {victim}, the holder")
                    } else {
                        format!(
                            "pidfd_send_signal(SIGTERM) reaches {victim}, which does NOT hold the lock"
                        )
                    }
                }
                _ => "pidfd_send_signal -> ESRCH (the pinned process is gone)".to_owned(),
            }
        }
        Pc::Write | Pc::DaemonWrite => {
            let mut line = format!("pwrite(\"{}\\n\") into {f}", proc.pid);
            if now.is_owner() && !proc.is_owner() {
                line.push_str(", now the owner");
            }
            line
        }
        Pc::Truncate | Pc::DaemonTruncate => format!("ftruncate({f}) to the PID line"),
        Pc::Unlink | Pc::ExitUnlink(_) => match before.kernel.entry {
            Some(inode) if Some(inode) == proc.fd.map(|d| before.kernel.inode_of(d)) => {
                format!("unlinkat(path) removes {f}")
            }
            Some(inode) => format!(
                "unlinkat(path) removes {}, which is NOT {f}",
                file(before, inode)
            ),
            None => "unlinkat(path) -> ENOENT".to_owned(),
        },
        Pc::Close => format!(
            "close({f}); main returns, the process exits{}",
            lock_fate(before, slot, after)
        ),
        Pc::Handler => leaving_line(
            model,
            before,
            slot,
            after,
            "SIGTERM: on_signal runs remove_held_files",
        ),
        Pc::Adopt => match now.pc {
            Pc::Write => {
                format!("new image: adopt() finds the path still names {f}: lock kept across exec")
            }
            _ => format!(
                "new image: adopt() finds the path names {}: acquires afresh, {f} stays open",
                named(before)
            ),
        },
        Pc::DaemonWait => "the previous owner has exited".to_owned(),
        Pc::DaemonFlock => match now.pc {
            Pc::DaemonCheck => format!("flock(LOCK_EX|LOCK_NB) on the inherited {f}: held"),
            _ => format!("flock(LOCK_EX|LOCK_NB) on the inherited {f} -> EWOULDBLOCK: LockLost"),
        },
        Pc::DaemonCheck => match now.pc {
            Pc::DaemonWrite => format!("fstat + fstatat: the path still names {f}"),
            _ => format!(
                "fstat + fstatat: the path names {}, not {f}: LockLost",
                named(before)
            ),
        },
        Pc::StopOpen => match now.fd {
            Some(_) => format!("pidlock stop: opens {now_file}"),
            None => "pidlock stop: no file, not running".to_owned(),
        },
        Pc::StopFind => match now.target {
            Some(t) => format!(
                "holders::find({f}) -> {:?}: will SIGTERM pid {}",
                model.find(
                    before,
                    before.kernel.inode_of(proc.fd.expect("stop's file"))
                ),
                t.pid
            ),
            None => format!("holders::find({f}) -> none: nothing to stop"),
        },
        Pc::Alive => "exits".to_owned(),
        Pc::Run | Pc::Dead => unreachable!("no Next step at {:?}", proc.pc),
    }
}

/// What happened to the lock when a process closed its descriptor or died.
fn lock_fate(before: &State, slot: usize, after: &State) -> String {
    let proc = before.procs[slot];
    let Some(fd) = proc.fd else {
        return String::new();
    };
    let description = before.kernel.description(fd);
    if !description.locked {
        return String::new();
    }
    let inode = description.inode;
    let still = after
        .procs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.alive() && holds(after, p, inode))
        .map(|(other, _)| label(after, other))
        .collect::<Vec<_>>();
    let name = file(before, inode);
    if still.is_empty() {
        format!("; the lock on {name} is released")
    } else {
        format!("; {} still holds the lock on {name}", still.join(", "))
    }
}
