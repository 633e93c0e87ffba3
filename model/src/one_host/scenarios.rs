//! The model's steps as system calls, for the strace tie-test: the same
//! scenarios the test runs on the real library, played on the model with a
//! fixed schedule, reduced to the calls `strace -e trace=openat,flock,
//! fstatat,newfstatat,fstat,pwrite64,ftruncate,unlinkat,close` shows on the
//! PID file (by name, through the directory descriptor, or on its own
//! descriptor).
//!
//! The directory's own `openat`/`close` are set-up outside the model, and
//! `pread64` (reading the old contents for the report) is not traced.

use stateright::Model;

use super::kernel::Contents;
use super::process::{Pc, Policy};
use super::{Action, Config, Mutations, OneHost, State, Step};

/// `openat` with `O_CREAT | O_EXCL`.
pub const OPENAT_EXCL: &str = "openat(O_CREAT|O_EXCL)";
/// The plain `openat`.
pub const OPENAT: &str = "openat";
/// `fstat` of the PID file's descriptor (glibc may issue it as
/// `newfstatat(fd, "", AT_EMPTY_PATH)`).
pub const FSTAT: &str = "fstat";
/// `fstatat(dir, name)`.
pub const FSTATAT: &str = "fstatat";
pub const FLOCK: &str = "flock";
pub const PWRITE: &str = "pwrite";
pub const FTRUNCATE: &str = "ftruncate";
pub const UNLINKAT: &str = "unlinkat";
pub const CLOSE: &str = "close";

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
        fork: false,
        daemonize: false,
        restart: false,
        crash: false,
        outside_rm: 0,
        stopper: false,
        pid_reuse: false,
        initial_files: vec![file],
        solo_bound: 0,
        mutations: Mutations::default(),
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

/// The calls on the PID file a step makes, given what it found.
pub fn syscalls(before: &State, slot: usize, step: Step, after: &State) -> Vec<&'static str> {
    let proc = before.procs[slot];
    let now = after.procs[slot];
    match step {
        // release_now / remove_held_files: unlink_if_ours' fstatat, for
        // the owner only.
        Step::ReturnFromMain | Step::Exit if proc.is_owner() => vec![FSTATAT],
        Step::Next => next_calls(proc.pc, now.pc, now.fd.is_some(), proc.is_owner()),
        _ => Vec::new(),
    }
}

fn next_calls(pc: Pc, then: Pc, has_file: bool, owner: bool) -> Vec<&'static str> {
    match pc {
        // lock_file fstats the descriptor open_file returns.
        Pc::Open if then == Pc::Flock => vec![OPENAT_EXCL, FSTAT],
        Pc::Open => vec![OPENAT_EXCL],
        Pc::OpenPlain if has_file => vec![OPENAT, FSTAT],
        Pc::OpenPlain => vec![OPENAT],
        Pc::Lstat | Pc::Verify => vec![FSTATAT],
        Pc::Flock | Pc::BusyFlock { .. } | Pc::WaitLock | Pc::DaemonFlock => vec![FLOCK],
        // A conflict decided: file_pid's fstat for the report.
        Pc::Busy { .. } if matches!(then, Pc::Refuse | Pc::WaitLock | Pc::Pin) => vec![FSTAT],
        Pc::CloseRetry | Pc::Refuse | Pc::Close | Pc::StopClose => vec![CLOSE],
        Pc::Write | Pc::DaemonWrite => vec![PWRITE],
        Pc::Truncate | Pc::DaemonTruncate => vec![FTRUNCATE],
        Pc::Unlink | Pc::ExitUnlink(_) => vec![UNLINKAT],
        Pc::Handler if owner => vec![FSTATAT],
        Pc::Adopt => vec![FSTATAT, FSTAT, FLOCK],
        Pc::DaemonCheck => vec![FSTAT, FSTATAT],
        Pc::StopOpen if has_file => vec![OPENAT, FSTAT],
        Pc::StopOpen => vec![OPENAT],
        _ => Vec::new(),
    }
}
