//! `pidlock run PATH -- COMMAND [ARGS...]`: the lock of `#[single_instance]`
//! for any program (a Python bot, a cron job, a shell script).
//!
//! The wrapper takes the lock as the attribute does, with the same protocol,
//! policies, messages and notifications, then starts the command so that it
//! shares the lock ([`PidFileGuard::share_with`]): the command inherits the
//! locked descriptor, so the lock is never free while the command runs, even
//! if the wrapper is SIGKILLed. The file names the command
//! ([`PidFileGuard::name_holder`]), so `pidlock status`, `pidlock stop` and
//! another start's conflict report name it. The wrapper stays the owner: when
//! the command has ended it releases the lock and removes the file, unless
//! something the command left behind (a daemon it forked) still holds the
//! lock, which then keeps the file.
//!
//! # Signals
//!
//! While the lock is being taken (which may mean waiting for it), SIGTERM and
//! friends end `run` as they end any program, the command not yet started.
//! Once the lock is held, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and
//! SIGUSR2 are blocked and taken with `sigwaitinfo`, with SIGCHLD: each is
//! passed on to the command, except one that the kernel sent to the whole
//! foreground process group (Ctrl-C, Ctrl-\ in a terminal), which reached
//! the command as well when it is in our process group; passing it on would
//! deliver it twice. A signal that asks to stop and arrives before the
//! command is started means it is never started.
//!
//! The command gets the signal mask and the dispositions `run` was started
//! with (an ignored SIGHUP under `nohup` stays ignored), not ours.
//!
//! # Exit status
//!
//! The command's: its exit code, or, when a signal ended it, the same
//! signal ends `run` once the file is gone (a shell shows 128 + n, systemd
//! sees "killed by SIGTERM", a clean stop, and a shell script stops on the
//! Ctrl-C its command died of). 127 when the command is not found, 126 when
//! it cannot be run; 1 (or `--exit-code`) when the lock is not obtained.
//!
//! # PID 1
//!
//! As the first process of a PID namespace (a container without `--init`),
//! `run` is what tini would be: signals reach it (blocked signals are queued
//! even for PID 1, which has no default actions), it passes them on, and it
//! reaps every orphan the namespace hands it. A signal cannot end PID 1, so
//! when a signal ended the command, `run` exits with 128 + n instead. Outside
//! a container, `run` is a child subreaper (Linux), so that what the command
//! daemonized is found among its children when the command has ended: the
//! file is then left to it, naming it.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd;
use pidlock_core::{LogLevel, OnConflict, Pid, PidFileGuard, PidLock};

use crate::duration;

/// What `run` passes on to the command: what stops a program, and the two
/// signals programs take for "reload" or "reopen the logs".
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Of those, the ones that mean "stop": arriving before the command was
/// started, the command is not started at all.
const STOPPING: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The shells' codes: the command was not found, or cannot be run.
const NOT_FOUND: u8 = 127;
const CANNOT_RUN: u8 = 126;

/// A parsed `pidlock run`.
#[derive(Debug)]
pub(crate) struct Run {
    path: PathBuf,
    on_conflict: OnConflict,
    exit_code: u8,
    notify_ready: bool,
    log_level: Option<LogLevel>,
    command: Vec<OsString>,
}

impl Run {
    /// Parses the words after `run`; `Ok(None)` for `--help`. Options come
    /// before the command, which starts after `--` or at the first word
    /// after PATH: everything from there is the command's.
    pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Option<Self>, String> {
        let mut args = args.into_iter();
        let (mut wait, mut takeover, mut notify_ready) = (false, false, false);
        let mut timeout = None;
        let mut exit_code = None;
        let mut log_level = None;
        let mut path = None;
        let mut command = Vec::new();
        while let Some(arg) = args.next() {
            let mut value = |option: &str| -> Result<String, String> {
                let value = args.next().ok_or(format!("{option} needs a value"))?;
                value
                    .into_string()
                    .map_err(|_| format!("{option} is not text"))
            };
            match arg.to_str() {
                Some("--") => {
                    command.extend(args.by_ref());
                    break;
                }
                Some("-h" | "--help") => return Ok(None),
                Some("--wait") => wait = true,
                Some("--takeover") => takeover = true,
                Some("--notify-ready") => notify_ready = true,
                Some("--timeout") => {
                    let text = value("--timeout")?;
                    timeout = Some(
                        duration::parse(&text)
                            .ok_or_else(|| format!("cannot read {text:?} as a duration"))?,
                    );
                }
                Some("--exit-code") => {
                    let text = value("--exit-code")?;
                    exit_code = Some(text.parse::<u8>().map_err(|_| {
                        format!("--exit-code takes a number from 0 to 255, not {text:?}")
                    })?);
                }
                Some("--log") => {
                    let text = value("--log")?;
                    log_level = Some(
                        text.parse::<LogLevel>()
                            .map_err(|error| format!("--log {text:?}: {error}"))?,
                    );
                }
                Some(flag) if flag.starts_with('-') && flag.len() > 1 => {
                    return Err(format!("unknown option {flag} for run"));
                }
                _ if path.is_none() => path = Some(PathBuf::from(arg)),
                _ => {
                    command.push(arg);
                    command.extend(args.by_ref());
                    break;
                }
            }
        }
        let path = path.ok_or("run needs a PATH: pidlock run PATH -- COMMAND [ARGS...]")?;
        if command.is_empty() {
            return Err("run needs a command: pidlock run PATH -- COMMAND [ARGS...]".to_owned());
        }
        let on_conflict = match (wait, takeover, timeout) {
            (true, true, _) => return Err("--wait and --takeover exclude each other".to_owned()),
            (true, false, timeout) => OnConflict::Wait { timeout },
            (false, true, timeout) => OnConflict::Takeover {
                timeout: timeout.unwrap_or(OnConflict::DEFAULT_TAKEOVER_TIMEOUT),
            },
            (false, false, Some(_)) => {
                return Err(
                    "--timeout needs --wait or --takeover: without them a held lock refuses at once"
                        .to_owned(),
                );
            }
            (false, false, None) => OnConflict::Exit,
        };
        Ok(Some(Self {
            path,
            on_conflict,
            exit_code: exit_code.unwrap_or(1),
            notify_ready,
            log_level,
            command,
        }))
    }

    /// Takes the lock, runs the command sharing it, and returns its exit
    /// status; ends by the command's signal if one ended it (module docs).
    pub(crate) fn run(self) -> u8 {
        // A reader of our stderr that went away (`... 2>&1 | head -1`) must
        // not end `run` halfway through its release: "Releasing PID
        // lock..." comes before the file is removed. The command gets
        // SIGPIPE at its default action all the same (std resets it).
        // SAFETY: installs "ignore", no handler code.
        let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) };
        let started_with = Started::now();
        let mut lock = PidLock::new(&self.path)
            .on_conflict(self.on_conflict)
            .notify_ready(self.notify_ready);
        if let Some(level) = self.log_level {
            lock = lock.log_level(level);
        }
        // The default `Signals::Auto`: a signal that lands after the lock is
        // taken and before it is blocked below removes the file, then ends
        // `run` by its default action; the command has not started yet.
        let mut guard = match lock.acquire() {
            Ok(guard) => guard,
            Err(error) => {
                error.report().emit();
                return self.exit_code;
            }
        };
        let waited = signal_set(FORWARDED.iter().chain([&Signal::SIGCHLD]));
        // Fails only for an invalid `how`.
        let _ = signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&waited), None);
        if let Some(signal) = take_pending(&STOPPING) {
            release(guard);
            die_of(signal);
        }
        become_subreaper();
        let program = &self.command[0];
        let mut command = std::process::Command::new(program);
        command.args(&self.command[1..]);
        guard.share_with(&mut command);
        // SAFETY: runs in the forked child before `exec`, and only calls
        // pthread_sigmask(3) and sigaction(2), which are async-signal-safe.
        unsafe { command.pre_exec(move || started_with.restore()) };
        let child = match command.spawn() {
            // A PID is positive and below pid_max (at most 2^22): it fits.
            Ok(child) => unistd::Pid::from_raw(child.id() as i32),
            Err(error) => {
                let code = cannot_start(program, &error);
                release(guard);
                return code;
            }
        };
        // The `Child` is not waited for through std: `supervise` reaps it
        // with every orphan, as a subreaper must.
        if let Some(pid) = Pid::new(child.as_raw())
            && let Err(error) = guard.name_holder(pid)
        {
            eprintln!(
                "pidlock: {error}; the file names pidlock (PID {}), which holds the lock too",
                guard.pid()
            );
        }
        let ended = supervise(child, &waited);
        release(guard);
        match ended {
            Ended::Exited(code) => code,
            Ended::Killed(signal) => die_of(signal),
            Ended::Lost => {
                eprintln!("pidlock: the command (PID {child}) ended, and its exit status was lost");
                1
            }
        }
    }
}

/// What `run` was started with, for the command: its signal mask, and
/// whether SIGCHLD was ignored (which `run` must undo for itself: with
/// SIGCHLD ignored, the kernel reaps the command and its status is lost).
#[derive(Clone, Copy)]
struct Started {
    mask: SigSet,
    sigchld_ignored: bool,
}

impl Started {
    fn now() -> Self {
        let mask = SigSet::thread_get_mask().unwrap_or_else(|_| SigSet::empty());
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: installs the default action, no handler code.
        let previous = unsafe { signal::sigaction(Signal::SIGCHLD, &default) };
        let sigchld_ignored = previous.is_ok_and(|old| matches!(old.handler(), SigHandler::SigIgn));
        Self {
            mask,
            sigchld_ignored,
        }
    }

    /// In the command's child, before `exec`: async-signal-safe.
    fn restore(self) -> io::Result<()> {
        if self.sigchld_ignored {
            let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
            // SAFETY: installs "ignore", no handler code.
            unsafe { signal::sigaction(Signal::SIGCHLD, &ignore) }.map_err(io::Error::from)?;
        }
        signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.mask), None)
            .map_err(io::Error::from)
    }
}

fn signal_set<'a>(signals: impl IntoIterator<Item = &'a Signal>) -> SigSet {
    signals.into_iter().copied().collect()
}

/// A stopping signal already pending (it is blocked), taken off: `run` was
/// asked to stop before it started the command.
fn take_pending(signals: &[Signal]) -> Option<Signal> {
    let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call, as a valid set.
    let pending = unsafe { SigSet::from_sigset_t_unchecked(pending.assume_init()) };
    let signal = signals
        .iter()
        .copied()
        .find(|&signal| pending.contains(signal))?;
    // Pending and blocked: sigwait returns at once, taking it.
    signal_set([&signal]).wait().ok()
}

/// Makes orphans of the command's (a daemon it forked) our children while
/// we live, so that the release finds one that still holds the lock among
/// them and names it in the file it leaves.
fn become_subreaper() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// How the command ended.
enum Ended {
    Exited(u8),
    Killed(Signal),
    /// Someone else reaped it (cannot happen once SIGCHLD is not ignored).
    Lost,
}

/// Passes signals on to the command until it ends; reaps every child that
/// ends meanwhile (orphans handed to us as PID 1 or as subreaper).
fn supervise(command: unistd::Pid, waited: &SigSet) -> Ended {
    loop {
        match next_signal(waited) {
            Ok((Signal::SIGCHLD, _)) => {}
            Ok((signal, origin)) => {
                if !reached_command_too(signal, origin, command) {
                    // The command is our unreaped child: its PID cannot
                    // have been given to another process.
                    let _ = signal::kill(command, signal);
                }
                continue;
            }
            // Cannot wait for signals (never seen): wait for the command.
            Err(_) => return reap(command, WaitPidFlag::empty()).unwrap_or(Ended::Lost),
        }
        if let Some(ended) = reap(command, WaitPidFlag::WNOHANG) {
            return ended;
        }
    }
}

/// Reaps every child that has ended (waiting for one first when `flags`
/// say so); how the command ended, if it has.
fn reap(command: unistd::Pid, flags: WaitPidFlag) -> Option<Ended> {
    let any = unistd::Pid::from_raw(-1);
    let mut ended = None;
    loop {
        // Once the command is found, the rest is reaped without waiting.
        let flags = if ended.is_some() {
            WaitPidFlag::WNOHANG
        } else {
            flags
        };
        match waitpid(any, Some(flags)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                // An exit code is 0..=255: the low byte is all there is.
                ended = Some(Ended::Exited(code as u8));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                ended = Some(Ended::Killed(signal));
            }
            Ok(WaitStatus::StillAlive) => return ended,
            Err(Errno::ECHILD) => return Some(ended.unwrap_or(Ended::Lost)),
            // An orphan ended: reaped, nothing to report; go on until none
            // is left (SIGCHLD does not queue: one may stand for several).
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return ended,
        }
    }
}

/// Who sent a signal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A process (`kill`, `pidlock stop`, systemd, docker).
    Process,
    /// The kernel (`SI_KERNEL`): a terminal's Ctrl-C, Ctrl-\ or hang-up.
    Kernel,
}

/// Whether a signal that reached `run` reached the command too: the kernel
/// sends a terminal's signals to its whole foreground process group, which
/// is ours; the command is in it unless it made a group of its own. A
/// terminal's hang-up (SIGHUP) goes to the session leader alone, so when
/// `run` leads the session it passes that on.
fn reached_command_too(signal: Signal, origin: Origin, command: unistd::Pid) -> bool {
    origin == Origin::Kernel
        && !(signal == Signal::SIGHUP && unistd::getsid(None) == Ok(unistd::getpid()))
        && unistd::getpgid(Some(command)) == Ok(unistd::getpgrp())
}

/// The next of `set` (all blocked), and who sent it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn next_signal(set: &SigSet) -> nix::Result<(Signal, Origin)> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: `set` is a valid signal set and `info` is writable.
        let taken = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
        match Errno::result(taken) {
            Ok(number) => {
                // SAFETY: filled by the successful call (and zeroed before).
                let code = unsafe { info.assume_init_ref() }.si_code;
                let origin = if code == libc::SI_KERNEL {
                    Origin::Kernel
                } else {
                    Origin::Process
                };
                return Ok((Signal::try_from(number)?, origin));
            }
            // A signal outside the set with a handler, or SIGCONT.
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
}

/// Without `sigwaitinfo` (macOS) the sender is unknown: every signal is
/// passed on.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn next_signal(set: &SigSet) -> nix::Result<(Signal, Origin)> {
    set.wait().map(|signal| (signal, Origin::Process))
}

/// Lets go of the lock, reporting a file that could not be removed.
fn release(mut guard: PidFileGuard) {
    if let Err(error) = guard.release() {
        eprintln!("pidlock: {error}");
    }
}

/// Ends `run` by `signal`, as the command ended: its default action, with
/// no core file of ours. Where that does not end the process (PID 1 of a
/// PID namespace has no default actions), exits with 128 + n instead, what
/// a shell reports for a process killed by signal n.
fn die_of(signal: Signal) -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the limit it is given.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs the default action, no handler code.
    let _ = unsafe { signal::sigaction(signal, &default) };
    let _ = signal::raise(signal);
    // Blocked, it was left pending: unblocking delivers it here.
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&signal_set([&signal])), None);
    std::process::exit(128 + signal as i32)
}

/// Says why the command could not be started, as a shell would, and
/// returns the shell's code for it.
fn cannot_start(program: &OsStr, error: &io::Error) -> u8 {
    let name = Path::new(program).display();
    let errno = error.raw_os_error().map(Errno::from_raw);
    let searched = !program.as_bytes().contains(&b'/');
    let found = locate(program, searched);
    let (code, why) = match errno {
        Some(Errno::ENOENT) => match &found {
            // The file is there: what it names to run it is not.
            Some(file) => match interpreter(file) {
                Some(interpreter) => (
                    CANNOT_RUN,
                    format!("bad interpreter {interpreter}: No such file or directory"),
                ),
                None => (
                    CANNOT_RUN,
                    "No such file or directory (the file exists; the dynamic loader it names does not)"
                        .to_owned(),
                ),
            },
            None if searched => (NOT_FOUND, "command not found".to_owned()),
            None => (NOT_FOUND, Errno::ENOENT.desc().to_owned()),
        },
        Some(Errno::EACCES) if found.as_deref().is_some_and(Path::is_dir) => {
            (CANNOT_RUN, Errno::EISDIR.desc().to_owned())
        }
        Some(errno) => (CANNOT_RUN, errno.desc().to_owned()),
        None => (CANNOT_RUN, error.to_string()),
    };
    eprintln!("pidlock: {name}: {why}");
    code
}

/// The file `exec` would have run for `program`: the path itself, or the
/// first match in `PATH` when the name has no slash.
fn locate(program: &OsStr, searched: bool) -> Option<PathBuf> {
    let exists = |path: &Path| path.symlink_metadata().is_ok();
    if !searched {
        let path = PathBuf::from(program);
        return exists(&path).then_some(path);
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The interpreter a script's `#!` line names.
fn interpreter(script: &Path) -> Option<String> {
    let mut head = [0; 256];
    let read = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = line.split(|&byte| byte == b'\n').next()?;
    let word = line
        .split(|byte| byte.is_ascii_whitespace())
        .find(|word| !word.is_empty())?;
    Some(String::from_utf8_lossy(word).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Option<Run>, String> {
        Run::parse(words.iter().map(OsString::from))
    }

    #[test]
    fn the_command_starts_after_the_double_dash_or_the_path() {
        let run = parse(&["--wait", "bot.pid", "--", "python3", "--version"])
            .unwrap()
            .unwrap();
        assert_eq!(run.path, PathBuf::from("bot.pid"));
        assert_eq!(run.command, ["python3", "--version"]);
        assert_eq!(run.on_conflict, OnConflict::Wait { timeout: None });
        let run = parse(&["bot.pid", "sh", "-c", "exit 3"]).unwrap().unwrap();
        assert_eq!(run.command, ["sh", "-c", "exit 3"]);
        assert_eq!(run.on_conflict, OnConflict::Exit);
        assert_eq!(run.exit_code, 1);
    }

    #[test]
    fn options_are_checked_together() {
        let run = parse(&["--takeover", "--exit-code", "7", "p", "--", "true"])
            .unwrap()
            .unwrap();
        assert_eq!(
            run.on_conflict,
            OnConflict::Takeover {
                timeout: OnConflict::DEFAULT_TAKEOVER_TIMEOUT
            }
        );
        assert_eq!(run.exit_code, 7);
        let error = |words: &[&str]| parse(words).unwrap_err();
        assert!(error(&["--wait", "--takeover", "p", "--", "true"]).contains("exclude"));
        assert!(error(&["--timeout", "5s", "p", "--", "true"]).contains("needs --wait"));
        assert!(error(&["--exit-code", "256", "p", "--", "true"]).contains("0 to 255"));
        assert!(error(&["--timeout", "5", "--wait", "p", "--", "true"]).contains("duration"));
        assert!(error(&["p"]).contains("needs a command"));
        assert!(error(&["p", "--"]).contains("needs a command"));
        assert!(error(&["--", "true"]).contains("needs a PATH"));
        assert!(error(&["--kill", "p", "--", "true"]).contains("unknown option --kill"));
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn a_script_names_its_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job");
        std::fs::write(&script, "#! /usr/bin/pyth0n -u\nprint()\n").unwrap();
        assert_eq!(interpreter(&script).as_deref(), Some("/usr/bin/pyth0n"));
        std::fs::write(&script, "\x7fELF").unwrap();
        assert_eq!(interpreter(&script), None);
    }
}
