//! The `pidlock` command (DESIGN.md, *CLI and supervisors*): `status`, `stop` and `wait` on a PID
//! file, with the exit codes of LSB init scripts for `status`, and `run`,
//! which gives a command the lock (see `run.rs`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pidlock_core::{Error, Escalation, Holder, Pid, Status, Stop, StopSignal, Stopped};

use crate::duration;

const USAGE: &str = "\
usage: pidlock status PATH
       pidlock stop PATH [--timeout DURATION] [--kill] [--signal INT]
       pidlock wait PATH [--timeout DURATION]
       pidlock run [--wait | --takeover] [--timeout DURATION] [--exit-code N]
                   [--notify-ready] [--log warn|error] PATH -- COMMAND [ARGS...]

status  exit 0: running; 1: not running but the PID file exists; 3: not running
stop    SIGTERM (or --signal INT|HUP|QUIT) to the verified holder, then
        wait (default 10s); --kill sends SIGKILL if it is still there
wait    block until the lock is free; exit 1 if --timeout passes first
run     take the lock on PATH, then run COMMAND sharing it, and exit as it
        does; the file names COMMAND, which status and stop see. If another
        instance holds the lock, exit 1 (or N) without running COMMAND, or
        --wait for it (up to --timeout), or --takeover from it (SIGTERM,
        SIGKILL after --timeout, 10s by default). 127: COMMAND not found;
        126: it cannot be run. --notify-ready: READY=1 to systemd once the
        lock is held. --log warn: no INFO lines (for cron)
DURATION is like 500ms, 30s, 5m";

/// LSB `status` codes; 4 is "status unknown" (an error).
const RUNNING: u8 = 0;
const DEAD_WITH_PID_FILE: u8 = 1;
const USAGE_ERROR: u8 = 2;
const NOT_RUNNING: u8 = 3;
const ERROR: u8 = 4;

/// Runs the command line `args` (without the program name).
pub(crate) fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    // Like any Unix tool, end quietly when the reader of our output goes
    // away (`pidlock status PATH | head -1`) instead of panicking in println!.
    // SAFETY: restoring the default action installs no handler code.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let args: Vec<OsString> = args.into_iter().collect();
    // `run`'s command may take `--help` of its own: only `run` itself knows
    // where its options end.
    if args.first().is_some_and(|verb| verb == "run") {
        return match crate::run::Run::parse(args.into_iter().skip(1)) {
            Ok(Some(run)) => ExitCode::from(run.run()),
            Ok(None) => {
                println!("{USAGE}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("pidlock: {message}\n{USAGE}");
                ExitCode::from(USAGE_ERROR)
            }
        };
    }
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match Command::parse(args) {
        Ok(command) => ExitCode::from(command.run()),
        Err(message) => {
            eprintln!("pidlock: {message}\n{USAGE}");
            ExitCode::from(USAGE_ERROR)
        }
    }
}

enum Command {
    Status(PathBuf),
    Stop {
        path: PathBuf,
        timeout: Duration,
        kill: bool,
        signal: StopSignal,
    },
    Wait {
        path: PathBuf,
        timeout: Option<Duration>,
    },
}

impl Command {
    fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let mut args = args.into_iter();
        let verb = args.next().ok_or("no command given")?;
        let mut path = None;
        let mut timeout = None;
        let mut kill = false;
        let mut signal = None;
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--timeout") => {
                    let value = args.next().ok_or("--timeout needs a value")?;
                    let value = value.to_str().ok_or("--timeout is not text")?;
                    timeout = Some(
                        duration::parse(value)
                            .ok_or_else(|| format!("cannot read {value:?} as a duration"))?,
                    );
                }
                Some("--kill") => kill = true,
                Some("--signal") => {
                    let value = args.next().ok_or("--signal needs a value")?;
                    let value = value.to_str().ok_or("--signal is not text")?;
                    signal = Some(value.parse::<StopSignal>()?);
                }
                Some(flag) if flag.starts_with("--") => {
                    return Err(format!("unknown option {flag}"));
                }
                _ if path.is_none() => path = Some(PathBuf::from(arg)),
                _ => return Err("more than one PATH given".to_owned()),
            }
        }
        let path = path.ok_or("no PATH given")?;
        match verb.to_str() {
            Some("status") if timeout.is_none() && !kill && signal.is_none() => {
                Ok(Self::Status(path))
            }
            Some("stop") => Ok(Self::Stop {
                path,
                timeout: timeout.unwrap_or(Duration::from_secs(10)),
                kill,
                signal: signal.unwrap_or_default(),
            }),
            Some("wait") if !kill && signal.is_none() => Ok(Self::Wait { path, timeout }),
            Some("status" | "wait") => Err("option not valid for this command".to_owned()),
            _ => Err(format!("unknown command {verb:?}")),
        }
    }

    fn run(self) -> u8 {
        match self {
            Self::Status(path) => match pidlock_core::status(&path) {
                Ok(Status::Running(holder)) => {
                    println!("{}: running ({})", path.display(), describe_holder(&holder));
                    if holder.is_verified()
                        && let Some(pid) = holder.pid()
                    {
                        // The same line the holder sends systemd as STATUS=.
                        let absolute = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
                        println!("  PID {pid} holds the lock on {}", absolute.display());
                        print_process(pid);
                    }
                    RUNNING
                }
                Ok(Status::Stale { pid, readers }) => {
                    let said =
                        pid.map_or_else(|| "no valid PID".to_owned(), |pid| format!("PID {pid}"));
                    println!(
                        "{}: not running, but the PID file remains ({said})",
                        path.display()
                    );
                    for reader in readers {
                        println!("  held open by a reader, not an instance: {reader}");
                    }
                    DEAD_WITH_PID_FILE
                }
                Ok(Status::NotRunning) => {
                    println!("{}: not running", path.display());
                    NOT_RUNNING
                }
                Err(error) => fail(&error),
            },
            Self::Stop {
                path,
                timeout,
                kill,
                signal,
            } => {
                let escalation = if kill {
                    Escalation::Kill
                } else {
                    Escalation::Report
                };
                let stop = Stop::new()
                    .signal(signal)
                    .timeout(timeout)
                    .escalation(escalation);
                match stop.run(&path) {
                    Ok(Stopped::NotRunning) => {
                        println!("{}: not running", path.display());
                        0
                    }
                    Ok(Stopped::Exited { pid, now_held_by }) => {
                        println!(
                            "{}: PID {pid} stopped{}",
                            path.display(),
                            successor(now_held_by.as_ref())
                        );
                        0
                    }
                    Ok(Stopped::Killed { pid, now_held_by }) => {
                        println!(
                            "{}: PID {pid} killed after {}{}",
                            path.display(),
                            duration::format(timeout),
                            successor(now_held_by.as_ref())
                        );
                        0
                    }
                    Ok(Stopped::StillRunning(pid)) => {
                        eprintln!(
                            "pidlock: {}: PID {pid} is still running after {}{}",
                            path.display(),
                            duration::format(timeout),
                            if kill {
                                " and SIGKILL"
                            } else {
                                "; add --kill to send SIGKILL"
                            }
                        );
                        1
                    }
                    Err(error) => fail(&error),
                }
            }
            Self::Wait { path, timeout } => match pidlock_core::wait_until_free(&path, timeout) {
                Ok(true) => 0,
                Ok(false) => {
                    eprintln!(
                        "pidlock: {}: still held after {}",
                        path.display(),
                        duration::format(timeout.unwrap_or_default())
                    );
                    1
                }
                Err(error) => fail(&error),
            },
        }
    }
}

/// "; the lock is now held by PID N", after a stop that a standby followed.
fn successor(holder: Option<&Holder>) -> String {
    match holder {
        Some(holder) if holder.is_verified() => holder.pid().map_or_else(String::new, |pid| {
            format!("; the lock is now held by PID {pid}")
        }),
        Some(_) => "; the lock is held again, by a process that cannot be verified".to_owned(),
        None => String::new(),
    }
}

fn fail(error: &Error) -> u8 {
    eprintln!("pidlock: {error}");
    ERROR
}

fn describe_holder(holder: &Holder) -> String {
    match holder {
        Holder::Kernel {
            pid,
            others,
            ns_pid,
        } => {
            let mut text = format!("PID {pid}, verified with the kernel");
            if let Some(ns_pid) = ns_pid {
                text.push_str(&format!(
                    "; it calls itself PID {ns_pid}: another PID namespace, e.g. a container"
                ));
            }
            if !others.is_empty() {
                let others: Vec<String> = others.iter().map(Pid::to_string).collect();
                text.push_str(&format!("; sharing its lock: PID {}", others.join(", ")));
            }
            text
        }
        Holder::File(pid) => format!(
            "PID unknown: no process here can be verified as the holder; the PID file says {pid}"
        ),
        Holder::Taker(pid) => format!(
            "PID unknown: the file is another user's; the kernel's lock list says PID {pid} took the lock"
        ),
        Holder::Unknown => "PID unknown: no process here can be verified as the holder".to_owned(),
    }
}

/// The holder's command line and start time, from `/proc` where there is one.
fn print_process(pid: Pid) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) {
        let words: Vec<String> = cmdline
            .split(|&byte| byte == 0)
            .filter(|word| !word.is_empty())
            .map(|word| String::from_utf8_lossy(word).into_owned())
            .collect();
        println!("  command: {}", words.join(" "));
    }
    if let Some(started) = start_time(pid) {
        let ago = SystemTime::now()
            .duration_since(started)
            .unwrap_or_default();
        let ago = match ago.as_secs() {
            0 => "just now".to_owned(),
            secs => format!("{} ago", duration::age(Duration::from_secs(secs))),
        };
        println!("  started: {} ({ago})", utc(started));
    }
}

/// Field 22 of `/proc/PID/stat` (clock ticks after boot) plus `btime` from
/// `/proc/stat` (boot, in seconds since the epoch).
fn start_time(pid: Pid) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count
    // fields after its closing parenthesis, where field 3 begins.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after_name.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let per_second = u64::try_from(per_second).ok().filter(|&n| n > 0)?;
    Some(UNIX_EPOCH + Duration::from_secs(boot) + Duration::from_millis(ticks * 1000 / per_second))
}

/// `YYYY-MM-DD HH:MM:SS UTC`, by the days-to-civil conversion of
/// H. Hinnant's date algorithms.
fn utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00:00 UTC"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_795_866_867)),
            "2026-11-28 11:54:27 UTC"
        );
    }
}
