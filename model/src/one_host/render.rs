//! Traces as people read them: one line per step, naming the process, the
//! system call or decision, and what it found.
//!
//! The checker's states are renumbered after every step, so a path is
//! replayed here without renumbering: each file keeps one name (file A,
//! file B, ...) from its creation to the end.

use std::fmt::Write as _;

use stateright::{Expectation, Model, Path};

use super::kernel::{Contents, Lock};
use super::process::{Pc, Pipe, Role, Then};
use super::steps::{Sharing, holds, slots};
use super::{Action, OneHost, State, Step, names, solo};

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
    let solo = [
        (names::SOLO_ACQUIRE, false),
        (names::READERS_NEVER_BLOCK, true),
    ];
    if let Some(&(_, readers)) = solo.iter().find(|(name, _)| *name == property)
        && let Some(slot) = solo::fails_alone(&replay, &state, readers)
    {
        alone(&replay, &mut out, state, slot);
    }
    out
}

/// The run of `slot` alone from `state` that breaks (e) or (f): the steps
/// its program counter names, nobody else moving, up to the bound and a
/// few more.
fn alone(model: &OneHost, out: &mut String, mut state: State, slot: usize) {
    let _ = writeln!(out, "alone from here, {}:", label(&state, slot));
    for n in 1..=model.config.solo_bound + 4 {
        let proc = state.procs[slot];
        if proc.is_owner() && proc.pc == Pc::Run {
            let _ = writeln!(out, "     runs main after {} steps", n - 1);
            return;
        }
        if !proc.alive() {
            let _ = writeln!(out, "     has exited without running main");
            return;
        }
        if !model.enabled(&state, slot).contains(&Step::Next) {
            let _ = writeln!(out, "     is stuck at {:?}", proc.pc);
            return;
        }
        let after = model
            .next_state(&state, Action::Proc(slot as u8, Step::Next))
            .expect("a step applies");
        let _ = writeln!(
            out,
            "  {n:>2}. {}",
            proc_line(model, &state, slot, Step::Next, &after)
        );
        state = after;
    }
    let _ = writeln!(out, "     has not run main within the bound");
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
        Role::Reader => "reader".to_owned(),
        Role::Absent => "?".to_owned(),
    };
    format!("{name} (pid {})", proc.pid)
}

fn file(state: &State, inode: u8) -> String {
    let node = state.kernel.inode(inode);
    let kind = if node.turn { "turn file" } else { "file" };
    format!("{kind} {}", char::from(b'A' + node.serial))
}

fn contents(contents: Contents) -> String {
    match contents {
        Contents::Empty => "empty".to_owned(),
        Contents::Pid(pid) => format!("\"{pid}\\n\""),
        Contents::Garbage => "garbage".to_owned(),
        Contents::Padded(pid) => format!("\"{pid}\\n\" padded"),
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
    for fd in [proc.fd, proc.spare].into_iter().flatten() {
        let description = state.kernel.description(fd);
        let _ = write!(text, ", has {}", file(state, description.inode));
        match description.lock {
            Some(Lock::Exclusive) => text.push_str(" (locked)"),
            Some(Lock::Shared) => text.push_str(" (shared lock)"),
            None => {}
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

/// What the path and the temporary name of `slot` name, for swaps.
fn names(state: &State, slot: usize) -> String {
    let temp = state.kernel.temps[slot]
        .map(|i| file(state, i))
        .unwrap_or_else(|| "nothing".to_owned());
    format!("the path names {}, the temporary name {temp}", named(state))
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
        Step::GiveUp => match was.pc {
            Pc::Open => {
                format!("the grace period runs out: closes {f} to look again")
            }
            Pc::StopKill => "stop's timeout runs out".to_owned(),
            Pc::Refuse if proc.pc == Pc::TurnLock => {
                "gives up waiting for the turn: reports the readers".to_owned()
            }
            _ => "gives up waiting (timeout)".to_owned(),
        },
        Step::Fork { pipe } => {
            let child = after
                .procs
                .iter()
                .position(|p| p.role == Role::Child)
                .expect("fork made a child");
            let pipe = if pipe {
                "with the lock's sharers pipe"
            } else {
                "but the fork hook's pipe2 failed: no sharers pipe"
            };
            format!(
                "fork(): {} shares the open description of {f} (so the lock), {pipe}, and a copy of the guard whose owner cell says pid {}",
                label(after, child),
                proc.owner.map_or(0, |o| o.pid)
            )
        }
        Step::Take(lock) => {
            let mode = match lock {
                Lock::Shared => "LOCK_SH",
                Lock::Exclusive => "LOCK_EX",
            };
            match was.pc {
                Pc::ReaderHold => format!("flock({mode}|LOCK_NB) on {f}: held"),
                _ => format!("flock({mode}|LOCK_NB) on {f} -> EWOULDBLOCK: gives up"),
            }
        }
        Step::LetGo => format!("closes {f}{}", lock_fate(before, slot, after)),
        Step::Exec => format!(
            "restart(): execve keeps pid {} and the descriptor of {f}",
            proc.pid
        ),
        Step::Daemonize => match was.target.and_then(|t| slots(t.pinned).next()) {
            Some(p) => format!(
                "daemonized(): pins the previous owner, pid {}, and waits for it to exit",
                before.procs[p].pid
            ),
            None => format!(
                "daemonized(): the previous owner (pid {}) is gone",
                proc.owner.map_or(0, |o| o.pid)
            ),
        },
        Step::ReturnFromMain => {
            let check = owner_check_line(model, &proc);
            let passes = model.owner_check(&proc) || mutated.no_owner_check;
            let sharers = sharers_line(model, before, slot);
            match was.pc {
                Pc::Unlink => format!(
                    "returns from main, drops its guard: {check}, {sharers}, fstatat(path) names {f}, ours"
                ),
                Pc::Rewrite => {
                    format!("returns from main, drops its guard: {check}, {sharers}")
                }
                _ if !passes => format!("returns from main, drops its guard: {check}"),
                _ => format!(
                    "returns from main, drops its guard: {check}, {sharers}, but the path names {} (not ours)",
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

/// How the owner check went, as the trace says it.
fn owner_check_line(model: &OneHost, proc: &super::Proc) -> &'static str {
    let mutated = model.config.mutations;
    if proc.owner.is_none() {
        "nothing registered"
    } else if proc.is_owner() {
        "owner check passes"
    } else if model.owner_check(proc) {
        "owner check by PID number only passes (MUTATION)"
    } else if mutated.no_owner_check {
        "NO owner check (mutation)"
    } else if proc.owner.is_some_and(|o| o.pid == proc.pid) {
        "same PID number as the owner, another fork generation: not the owner, leaves the file"
    } else {
        "not the owner: leaves the file"
    }
}

/// What the sharers pipe answers `slot` in `before`, as the trace says it.
fn sharers_line(model: &OneHost, before: &State, slot: usize) -> &'static str {
    let proc = before.procs[slot];
    let mut probe = *before;
    let shared = model.leave(&mut probe, slot) == Sharing::Shared;
    if model.config.mutations.unlink_regardless {
        return "does NOT ask the sharers pipe (mutation)";
    }
    match (proc.pipe, shared) {
        (Pipe::None, _) => "no sharers pipe: alone",
        (Pipe::Failed, false) => "no sharers pipe (pipe2 failed): alone (MUTATION)",
        (Pipe::Failed, true) => "no sharers pipe (pipe2 failed): counted as shared",
        (Pipe::Left, false) if model.config.mutations.leave_forgets => {
            "the sharers pipe was read before, its ends are -1: alone (MUTATION: forgets)"
        }
        (Pipe::Left, false) => "the sharers pipe was read before: alone, as then",
        (Pipe::Left, true) => "the sharers pipe was read before: shared, as then",
        (Pipe::Open, false) => "reads the sharers pipe: end of file, alone",
        (Pipe::Open, true) => "reads the sharers pipe: another process has it, shared",
    }
}

fn leaving_line(model: &OneHost, before: &State, slot: usize, after: &State, how: &str) -> String {
    let proc = before.procs[slot];
    let check = owner_check_line(model, &proc);
    let sharers = sharers_line(model, before, slot);
    match after.procs[slot].pc {
        Pc::ExitUnlink(_) => format!(
            "{how}: {check}, {sharers}, fstatat(path) names {}, ours",
            named(before)
        ),
        _ if (model.owner_check(&proc) || model.config.mutations.no_owner_check)
            && proc.owner.is_some() =>
        {
            format!(
                "{how}: {check}, {sharers}; the process dies{}",
                lock_fate(before, slot, after)
            )
        }
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
            Pc::BusyShared { .. } => format!("flock(LOCK_EX|LOCK_NB) on {f} -> EWOULDBLOCK"),
            _ => format!(
                "flock(LOCK_EX|LOCK_NB) on {f} -> EWOULDBLOCK: nobody verified, {}",
                verdict(&now)
            ),
        },
        Pc::BusyShared { .. } => match now.pc {
            Pc::Busy { .. } if mutated.no_replacement => {
                "NO shared-lock probe (mutation)".to_owned()
            }
            Pc::Busy { .. } => format!("flock(LOCK_SH|LOCK_NB) on {f} -> EWOULDBLOCK"),
            _ => format!(
                "flock(LOCK_SH|LOCK_NB) on {f}: taken, so nobody holds it exclusively: frozen, replace it"
            ),
        },
        Pc::Busy { .. } => {
            let inode = before.kernel.inode_of(proc.fd.expect("busy on a file"));
            let found = model.holders(before, inode);
            let source = if mutated.holders_from_proc_locks {
                "/proc/locks (MUTATION)"
            } else {
                "fdinfo"
            };
            let readers = if found.exclusive_readers > 0 {
                ", a reader holds it exclusively"
            } else {
                ""
            };
            let verdict = match now.pc {
                Pc::BusyFlock { .. } => "no instance: flock again".to_owned(),
                Pc::TurnOpen | Pc::CreateTemp => {
                    "pinned, not frozen: replace it all the same (MUTATION)".to_owned()
                }
                Pc::Refuse if found.exclusive.is_empty() => {
                    "reports the reader (Pinned)".to_owned()
                }
                _ => verdict(&now),
            };
            format!(
                "holders of {f} via {source} -> instance {:?}{readers}: {verdict}",
                found.exclusive
            )
        }
        Pc::WaitLock if now.pc == Pc::Verify => format!("the wait on {f} ends: locked"),
        Pc::WaitLock if now.pc == Pc::WaitUnlock => format!(
            "the wait on {f}: flock(LOCK_EX|LOCK_NB) -> EWOULDBLOCK, the path still names it, flock(LOCK_SH|LOCK_NB): granted, only readers left"
        ),
        Pc::WaitLock => format!(
            "the wait on {f}: flock -> EWOULDBLOCK, and the path names {}: closes it, start again",
            named(before)
        ),
        Pc::WaitUnlock => format!("flock(LOCK_UN) on {f}, closes it: start again"),
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
        Pc::TurnOpen
        | Pc::TurnLock
        | Pc::CreateTemp
        | Pc::Exchange
        | Pc::Recheck
        | Pc::SwapBack
        | Pc::TurnOver(_) => replace_line(model, before, slot, after, f),
        Pc::Kill => kill_line(model, before, after, "takeover"),
        Pc::StopWait => "the pinned processes let go".to_owned(),
        Pc::StopKill => kill_line(model, before, after, "stop"),
        Pc::Rewrite => match after.kernel.entry.map(|i| after.kernel.inode(i).contents) {
            Some(Contents::Pid(pid)) if pid != proc.pid => {
                format!("leaves {f} to its sharers: pwrite(\"{pid}\\n\") names the child")
            }
            _ => format!("leaves {f} to its sharers (no sharer found to name)"),
        },
        Pc::ReaderOpen => match now.fd {
            Some(_) => format!("open(O_RDONLY) as a reader: {now_file}"),
            None => "finds no file".to_owned(),
        },
        Pc::Refuse => format!(
            "close({f}): exits with the conflict{}",
            lock_fate(before, slot, after)
        ),
        Pc::StopClose => "closes the file and exits".to_owned(),
        Pc::Pin => {
            let pid = proc.target.map_or(0, |t| t.pid);
            match now.target {
                Some(t) => format!(
                    "pidfd_open pins {} (holder pid {pid} and the processes sharing its lock)",
                    slots(t.pinned)
                        .map(|p| label(before, p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!("pidfd_open(pid {pid}) -> ESRCH"),
            }
        }
        Pc::Check => {
            let source = if mutated.holders_from_proc_locks {
                "/proc/locks names it as the taker (MUTATION)"
            } else {
                "its fdinfo shows the lock"
            };
            let target = now.target.or(proc.target).expect("a round has a target");
            let verified: Vec<String> = slots(target.verified).map(|p| label(before, p)).collect();
            match now.pc {
                Pc::Signal => format!("holds() verifies {} ({source})", verified.join(", ")),
                _ => format!("holds(pid {}, {f}): no", target.pid),
            }
        }
        Pc::Signal => {
            let target = proc.target.expect("a round has a target");
            match slots(target.verified).find(|&p| before.procs[p].pid == target.pid) {
                Some(p) if before.procs[p].alive() => {
                    let victim = label(before, p);
                    if target.held & 1 << p != 0 {
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
            Pc::Run => {
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
                "holders of {f} -> {:?}: will SIGTERM pid {}",
                model
                    .holders(
                        before,
                        before.kernel.inode_of(proc.fd.expect("stop's file"))
                    )
                    .exclusive,
                t.pid
            ),
            None => format!("holders of {f} -> none: nothing to stop"),
        },
        Pc::Alive => "exits".to_owned(),
        Pc::Run | Pc::Dead | Pc::ReaderLock | Pc::ReaderHold => {
            unreachable!("no Next step at {:?}", proc.pc)
        }
    }
}

/// The resolver's decision, as the trace says it.
fn verdict(now: &super::Proc) -> String {
    match now.pc {
        Pc::Refuse => "reports AlreadyRunning".to_owned(),
        Pc::WaitLock => "waits for the lock".to_owned(),
        Pc::Pin => format!(
            "takeover: will SIGTERM pid {}",
            now.target.map_or(0, |t| t.pid)
        ),
        Pc::Kill => "takeover: the grace is over, its pins still hold it".to_owned(),
        other => format!("{other:?}"),
    }
}

/// A step of `replace::replace`.
fn replace_line(model: &OneHost, before: &State, slot: usize, after: &State, f: &str) -> String {
    let proc = before.procs[slot];
    let now = after.procs[slot];
    let new_file = || {
        now.spare
            .map(|d| file(after, after.kernel.inode_of(d)))
            .unwrap_or_default()
    };
    let removed = |inode: u8| {
        let mut line = file(before, inode);
        let holders: Vec<String> = (0..before.procs.len())
            .filter(|&p| p != slot && before.procs[p].alive())
            .filter(|&p| before.procs[p].owner.is_some())
            .filter(|&p| holds(before, &before.procs[p], inode))
            .map(|p| label(before, p))
            .collect();
        if !holders.is_empty() {
            let _ = write!(line, ", which {} holds and runs on", holders.join(", "));
        }
        line
    };
    match proc.pc {
        Pc::TurnOpen => format!(
            "its turn: openat(.replace, O_CREAT) opens {}",
            now.turn
                .map(|t| file(after, after.kernel.inode_of(t)))
                .unwrap_or_default()
        ),
        Pc::TurnLock => match now.pc {
            Pc::TurnOpen => "flock on the turn file; fstatat(.replace) names another file: the turn was just over, open again".to_owned(),
            Pc::Exchange => format!(
                "flock on the turn file: its turn; fstatat(path) still names {f}; openat(temporary, O_CREAT|O_EXCL) creates {} and locks it",
                new_file()
            ),
            _ => format!(
                "flock on the turn file: its turn; fstatat(path) names {}, not {f}: another start replaced it",
                named(before)
            ),
        },
        Pc::CreateTemp => format!(
            "NO turn (mutation): openat(temporary, O_CREAT|O_EXCL) creates {} and locks it",
            new_file()
        ),
        Pc::Exchange if before.kernel.entry.is_none() => match now.pc {
            Pc::TurnOver(Then::Fail) => "renameat2(RENAME_EXCHANGE) -> ENOENT: the path names nothing; removes its new file, will return the error (MUTATION)".to_owned(),
            _ => "renameat2(RENAME_EXCHANGE) -> ENOENT: the path names nothing; removes its new file and looks again".to_owned(),
        },
        Pc::Exchange => match now.pc {
            Pc::SwapBack => format!(
                "renameat2(RENAME_EXCHANGE): {}; fstatat(temporary): not {f}, it swapped out another file",
                names(after, slot)
            ),
            _ => format!("renameat2(RENAME_EXCHANGE): {}", names(after, slot)),
        },
        Pc::Recheck => match now.pc {
            Pc::TurnOver(_) if now.frozen => {
                format!("second look: flock(LOCK_SH|LOCK_NB) on {f} taken: only readers")
            }
            Pc::TurnOver(_) => format!("second look: only a reader holds {f} exclusively"),
            _ => format!("second look: an instance holds {f}: put it back"),
        },
        Pc::SwapBack => {
            let swap = if before.kernel.entry.is_some() {
                format!("renameat2(RENAME_EXCHANGE): {}", names(&swapped(before, slot), slot))
            } else {
                "renameat2(RENAME_EXCHANGE) -> ENOENT: the path names nothing".to_owned()
            };
            let temp = if before.kernel.entry.is_some() {
                before.kernel.entry
            } else {
                before.kernel.temps[slot]
            };
            let discarded = temp.map(removed).unwrap_or_else(|| "nothing".to_owned());
            format!("swaps back: {swap}; unlinkat(temporary) removes {discarded}; closes its new file")
        }
        Pc::TurnOver(then) => {
            let mut line = String::new();
            if then == Then::Locked
                && let Some(inode) = before.kernel.temps[slot]
            {
                let _ = write!(line, "unlinkat(temporary) removes {}; ", removed(inode));
            }
            if !model.config.mutations.no_turns {
                line.push_str("its turn is over (fstatat, unlinkat, close of the turn file); ");
            }
            let outcome = match then {
                Then::Locked => format!("closes {f}; its new file is at the path"),
                Then::Retry => format!("closes {f}: start again"),
                Then::Fail => format!("closes {f}: the error is returned"),
            };
            line.push_str(&outcome);
            line
        }
        _ => unreachable!("not a replacement step"),
    }
}

/// `state` with `slot`'s temporary name and the path swapped, for a line
/// that says what a swap did.
fn swapped(state: &State, slot: usize) -> State {
    let mut after = *state;
    after.kernel.exchange(slot);
    after
}

/// A SIGKILL round.
fn kill_line(model: &OneHost, before: &State, after: &State, who: &str) -> String {
    let killed: Vec<String> = (0..before.procs.len())
        .filter(|&p| before.procs[p].alive() && !after.procs[p].alive())
        .map(|p| label(before, p))
        .collect();
    let how = if model.config.mutations.kill_current_holders {
        "whoever holds the inode now (MUTATION)"
    } else {
        "the pins that still hold the lock"
    };
    if killed.is_empty() {
        format!("{who}: SIGKILL to {how}: none")
    } else {
        format!("{who}: SIGKILL to {how}: {}", killed.join(", "))
    }
}

/// What happened to the lock when a process closed its descriptor or died.
fn lock_fate(before: &State, slot: usize, after: &State) -> String {
    let proc = before.procs[slot];
    let Some(fd) = proc.fd else {
        return String::new();
    };
    let description = before.kernel.description(fd);
    if description.lock.is_none() {
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
