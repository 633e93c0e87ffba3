//! The model's steps as system calls, for the strace tie-test: the same
//! scenarios the test runs on the real library, played on the model with a
//! fixed schedule, reduced to the calls `strace -e trace=openat,flock,
//! fstatat,newfstatat,fstat,pwrite64,ftruncate,unlinkat,renameat2,close`
//! shows on the PID file, on a replacement's temporary file and on the
//! replacement lock (by name, through the directory descriptor, or on a
//! descriptor an `openat` of one of them returned).
//!
//! The directory's own `openat`/`close` are set-up outside the model;
//! `pread64` (reading the old contents for the report) and the sharers
//! pipe's calls are not traced.

use stateright::Model;

use super::kernel::{Contents, Lock};
use super::process::{Pc, Pipe, Policy, Then};
use super::{Action, Config, OneHost, State, Step};

/// `openat` with `O_CREAT | O_EXCL`.
pub const OPENAT_EXCL: &str = "openat(O_CREAT|O_EXCL)";
/// The plain `openat`.
pub const OPENAT: &str = "openat";
/// `fstat` of the PID file's descriptor (glibc may issue it as
/// `newfstatat(fd, "", AT_EMPTY_PATH)`).
pub const FSTAT: &str = "fstat";
/// `fstatat(dir, name)`.
pub const FSTATAT: &str = "fstatat";
/// `flock` of the PID file's descriptor (or the new file's).
pub const FLOCK: &str = "flock";
/// `pwrite64` of the PID line.
pub const PWRITE: &str = "pwrite";
/// `ftruncate` to the PID line's length.
pub const FTRUNCATE: &str = "ftruncate";
/// `unlinkat(dir, name)` of the PID file.
pub const UNLINKAT: &str = "unlinkat";
/// `close` of the PID file's descriptor.
pub const CLOSE: &str = "close";
/// `openat(O_CREAT | O_EXCL)` of a replacement's temporary name.
pub const OPENAT_TEMP: &str = "openat(temporary, O_CREAT|O_EXCL)";
/// `fstatat` of a replacement's temporary name.
pub const FSTATAT_TEMP: &str = "fstatat(temporary)";
/// `unlinkat` of a replacement's temporary name.
pub const UNLINKAT_TEMP: &str = "unlinkat(temporary)";
/// `renameat2(temporary, path, RENAME_EXCHANGE)`.
pub const EXCHANGE: &str = "renameat2(RENAME_EXCHANGE)";
/// `openat(O_CREAT)` of the replacement lock, `.<name>.replace`.
pub const OPENAT_TURN: &str = "openat(turn, O_CREAT)";
/// `fstat` of the replacement lock's descriptor.
pub const FSTAT_TURN: &str = "fstat(turn)";
/// `flock` of the replacement lock.
pub const FLOCK_TURN: &str = "flock(turn)";
/// `fstatat` of the replacement lock's name.
pub const FSTATAT_TURN: &str = "fstatat(turn)";
/// `unlinkat` of the replacement lock's name.
pub const UNLINKAT_TURN: &str = "unlinkat(turn)";
/// `close` of the replacement lock's descriptor.
pub const CLOSE_TURN: &str = "close(turn)";

/// One process acquires a fresh lock (no file yet), returns from `main`.
pub fn acquire_and_release() -> Vec<&'static str> {
    alone(None)
}

/// Like [`acquire_and_release`], over a stale file with garbage longer than
/// a PID line: it is locked, overwritten and truncated.
pub fn stale_garbage_then_release() -> Vec<&'static str> {
    alone(Some(Contents::Garbage))
}

/// A second process (`on_conflict = "exit"`) meets a running holder: the
/// second one's calls.
pub fn conflict() -> Vec<&'static str> {
    let model = OneHost::new(plain(vec![Policy::Exit, Policy::Exit], None));
    let mut state = model.init_states()[0];
    run_until_main(&model, &mut state, 0);
    let mut calls = Vec::new();
    while state.procs[1].alive() {
        calls.extend(take(&model, &mut state, 1, Step::Next));
    }
    calls
}

/// A reader holds a shared lock on a stale file (`flock -s`); a start
/// freezes it and replaces it (`replace.rs`), runs, returns from `main`:
/// the start's calls.
pub fn pinned_by_a_reader() -> Vec<&'static str> {
    let model = OneHost::new(Config {
        instances: vec![Policy::Exit],
        reader_locks: vec![Lock::Shared],
        initial_files: vec![Some(Contents::Pid(super::STALE_PID))],
        ..Config::none()
    });
    let mut state = model.init_states()[0];
    take(&model, &mut state, 1, Step::Next);
    take(&model, &mut state, 1, Step::Take(Lock::Shared));
    let mut calls = run_until_main(&model, &mut state, 0);
    calls.extend(take(&model, &mut state, 0, Step::ReturnFromMain));
    while state.procs[0].alive() {
        calls.extend(take(&model, &mut state, 0, Step::Next));
    }
    calls
}

fn alone(file: Option<Contents>) -> Vec<&'static str> {
    let model = OneHost::new(plain(vec![Policy::Exit], file));
    let mut state = model.init_states()[0];
    let mut calls = run_until_main(&model, &mut state, 0);
    calls.extend(take(&model, &mut state, 0, Step::ReturnFromMain));
    while state.procs[0].alive() {
        calls.extend(take(&model, &mut state, 0, Step::Next));
    }
    calls
}

/// Nothing but the instances: no crashes, no outsiders.
fn plain(instances: Vec<Policy>, file: Option<Contents>) -> Config {
    Config {
        instances,
        initial_files: vec![file],
        ..Config::none()
    }
}

fn run_until_main(model: &OneHost, state: &mut State, slot: usize) -> Vec<&'static str> {
    let mut calls = Vec::new();
    while state.procs[slot].pc != Pc::Run {
        assert!(state.procs[slot].alive(), "the scenario's acquirer gave up");
        calls.extend(take(model, state, slot, Step::Next));
    }
    calls
}

fn take(model: &OneHost, state: &mut State, slot: usize, step: Step) -> Vec<&'static str> {
    let action = Action::Proc(slot as u8, step);
    let after = model
        .next_state(state, action)
        .expect("a scenario step applies");
    let calls = syscalls(state, slot, step, &after);
    *state = after;
    calls
}

/// The calls a step makes on the PID file, a temporary file or the
/// replacement lock, given what it found.
pub fn syscalls(before: &State, slot: usize, step: Step, after: &State) -> Vec<&'static str> {
    match step {
        Step::ReturnFromMain | Step::Exit if lets_go_alone(before, slot) => vec![FSTATAT],
        Step::Next => next_calls(slot, before, after),
        _ => Vec::new(),
    }
}

/// An owner letting go that nobody shares the lock with: `let_go` goes on
/// to `unlink_if_ours`' fstatat.
fn lets_go_alone(state: &State, slot: usize) -> bool {
    let proc = state.procs[slot];
    let shared = proc.pipe == Pipe::Open
        && state.procs.iter().enumerate().any(|(other, p)| {
            other != slot && p.alive() && p.pipe == Pipe::Open && p.fd == proc.fd
        });
    proc.is_owner() && !shared
}

fn next_calls(slot: usize, before: &State, after: &State) -> Vec<&'static str> {
    let (proc, now) = (before.procs[slot], after.procs[slot]);
    let then = now.pc;
    let has_file = now.fd.is_some();
    match proc.pc {
        // lock_file fstats the descriptor open_file returns.
        Pc::Open if then == Pc::Flock => vec![OPENAT_EXCL, FSTAT],
        Pc::Open => vec![OPENAT_EXCL],
        Pc::OpenPlain if has_file => vec![OPENAT, FSTAT],
        Pc::OpenPlain => vec![OPENAT],
        Pc::Lstat | Pc::Verify => vec![FSTATAT],
        Pc::Flock
        | Pc::BusyShared { .. }
        | Pc::BusyFlock { .. }
        | Pc::DaemonFlock
        | Pc::Recheck => {
            vec![FLOCK]
        }
        Pc::WaitLock if then == Pc::Verify => vec![FLOCK],
        // The file lost its name: the wait's `still_named` (an lstat of the
        // absolute path, not through the directory's descriptor), then the
        // lock loop closes the file.
        Pc::WaitLock if then == Pc::Open => vec![FLOCK, CLOSE],
        // Still named: the shared probe after the failed exclusive try.
        Pc::WaitLock => vec![FLOCK, FLOCK],
        // only_shared's LOCK_UN, then the lock loop closes the file.
        Pc::WaitUnlock => vec![FLOCK, CLOSE],
        // file_pid's fstat (and pread, not traced) before the holders.
        Pc::Busy { .. } => vec![FSTAT],
        Pc::CloseRetry | Pc::Refuse | Pc::Close | Pc::StopClose => vec![CLOSE],
        Pc::TurnOpen => vec![OPENAT_TURN, FSTAT_TURN],
        Pc::TurnLock => match then {
            Pc::TurnOpen => vec![FLOCK_TURN, FSTATAT_TURN, CLOSE_TURN],
            Pc::Exchange => vec![FLOCK_TURN, FSTATAT_TURN, FSTATAT, OPENAT_TEMP, FLOCK],
            _ => vec![FLOCK_TURN, FSTATAT_TURN, FSTATAT],
        },
        Pc::CreateTemp => vec![OPENAT_TEMP, FLOCK],
        // ENOENT: the new file is discarded.
        Pc::Exchange if before.kernel.entry.is_none() => vec![EXCHANGE, UNLINKAT_TEMP, CLOSE],
        Pc::Exchange => vec![EXCHANGE, FSTATAT_TEMP],
        Pc::SwapBack => vec![EXCHANGE, UNLINKAT_TEMP, CLOSE],
        Pc::TurnOver(then) => {
            let mut calls = Vec::new();
            if then == Then::Locked {
                calls.push(UNLINKAT_TEMP);
            }
            if proc.turn.is_some() {
                calls.push(FSTATAT_TURN);
                if before.kernel.turn.is_some() && after.kernel.turn.is_none() {
                    calls.push(UNLINKAT_TURN);
                }
                calls.push(CLOSE_TURN);
            }
            calls.push(CLOSE);
            if then == Then::Locked {
                // replace::stat_of, for the lock loop's check.
                calls.push(FSTAT);
            }
            calls
        }
        Pc::Write | Pc::DaemonWrite => vec![PWRITE],
        Pc::Truncate | Pc::DaemonTruncate => vec![FTRUNCATE],
        Pc::Unlink | Pc::ExitUnlink(_) => vec![UNLINKAT],
        // rewrite_pid: fstat, pwrite of the sharer's PID.
        Pc::Rewrite if before.kernel.inodes != after.kernel.inodes => vec![FSTAT, PWRITE],
        Pc::Handler if lets_go_alone(before, slot) => vec![FSTATAT],
        Pc::Adopt => vec![FSTATAT, FSTAT, FLOCK],
        Pc::DaemonCheck => vec![FSTAT, FSTATAT],
        Pc::StopOpen if has_file => vec![OPENAT, FSTAT],
        Pc::StopOpen => vec![OPENAT],
        _ => Vec::new(),
    }
}
