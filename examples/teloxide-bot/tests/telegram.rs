//! The teloxide bot, run for real against a local Bot API double: the fix
//! shown on the framework its users run, against the failure they see.
//! `cargo test --workspace --all-features telegram` runs these; the stop
//! and hand-over times they measure are printed (`-- --nocapture`).

mod bot_api;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bot_api::BotApi;
use nix::sys::signal::{Signal, kill};
use pidlock_core::{Error, PidLock, Signals};

const DEADLINE: Duration = Duration::from_secs(30);
const CHAT: i64 = 4242;

/// A running bot, its stderr collected as it comes.
struct Bot {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Collects stderr until the pipe closes, which it does when the bot exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Bot {
    fn start(api: &BotApi, dir: &Path, pid_file: &Path) -> Self {
        Self::spawn(command(api, dir, pid_file))
    }

    /// The standby: the same echo bot with `on_conflict = "wait"`.
    fn start_standby(api: &BotApi, dir: &Path, pid_file: &Path) -> Self {
        let program = env!("CARGO_BIN_EXE_teloxide-bot-standby");
        Self::spawn(command_for(program, api.url(), dir, pid_file))
    }

    /// The bot with the attribute's own `path = "data/bot.pid"`, relative to
    /// `dir`.
    fn start_with_the_default_path(api: &BotApi, dir: &Path) -> Self {
        let mut command = command(api, dir, Path::new(""));
        command.env_remove("BOT_PID_FILE");
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("spawn the bot");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let collected = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// The exit status, once the bot has exited and its last stderr bytes
    /// are in (the reader sees the pipe close).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().unwrap()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Some(status)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, signal: Signal) {
        kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).expect("kill");
    }

    /// Ctrl-C, once, and the exit status when the bot has exited. The bot
    /// listens for it from before it polls, and every test sends it after
    /// the first poll: one is enough, and a bot that ignores it fails here.
    fn interrupt(&mut self) -> ExitStatus {
        self.stop(Signal::SIGINT).0
    }

    /// `signal`, once, then the exit status and how long the bot took to
    /// exit after it was sent.
    fn stop(&mut self, signal: Signal) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal(signal);
        let status = self.wait_exit(&format!("the bot did not exit on {signal}"));
        (status, sent.elapsed())
    }

    /// The exit status, once the bot has exited (within [`DEADLINE`]).
    fn wait_exit(&mut self, failure: &str) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{failure}:\n{}\n{}",
                self.stderr(),
                self.threads()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Each thread's name, state, where it sleeps and its signal masks: what
    /// to look at when a bot did not react to a signal.
    fn threads(&self) -> String {
        let mut report = String::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return report;
        };
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            let fields: Vec<&str> = status
                .lines()
                .filter(|line| {
                    [
                        "Name:", "State:", "SigPnd:", "SigBlk:", "SigIgn:", "SigCgt:",
                    ]
                    .iter()
                    .any(|key| line.starts_with(key))
                })
                .collect();
            report.push_str(&format!("{} wchan={wchan}\n", fields.join(" ")));
        }
        report
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(api: &BotApi, dir: &Path, pid_file: &Path) -> Command {
    command_for(env!("CARGO_BIN_EXE_teloxide-bot"), api.url(), dir, pid_file)
}

fn command_for(program: &str, api_url: &str, dir: &Path, pid_file: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(dir)
        .env("TELOXIDE_TOKEN", "123456:TEST-TOKEN")
        .env("TELEGRAM_API_URL", api_url)
        .env("BOT_PID_FILE", pid_file)
        .env_remove("TELOXIDE_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn polling(api: &BotApi, polls: usize) -> bool {
    api.wait_until(DEADLINE, |api| api.count("getUpdates") >= polls)
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("data").join("bot.pid");
    (dir, pid_file)
}

#[test]
fn telegram_guarded_second_bot_exits_1_without_a_request_and_telegram_sees_no_conflict() {
    let api = BotApi::start();
    let (dir, pid_file) = scratch();
    let mut first = Bot::start(&api, dir.path(), &pid_file);
    assert!(
        polling(&api, 1),
        "the first bot never polled:\n{}",
        first.stderr()
    );

    // The second copy talks to a double of its own: any request it made
    // would show there.
    let its_api = BotApi::start();
    let second = command(&its_api, dir.path(), &pid_file).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        its_api.calls().is_empty(),
        "the refused copy made requests: {:?}",
        its_api.calls()
    );
    let pid = first.pid();
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ERROR - Another instance is already running (PID: {pid}).\n\
             \x20       Only one instance can run at a time.\n\
             \x20       PID file: {}\n\
             \x20       To stop the existing instance:\n\
             \x20         kill {pid}\n\
             \x20       Or use the /restart command from Telegram.\n",
            pid_file.display()
        )
    );

    api.inject_message(CHAT, "hello from the test");
    assert!(api.wait_until(DEADLINE, |api| api.sent("hello from the test") >= 1));
    // Several more polls go by: still answered exactly once.
    let polls = api.count("getUpdates");
    assert!(polling(&api, polls + 2));
    assert_eq!(api.sent("hello from the test"), 1);
    assert_eq!(
        api.conflicts(),
        0,
        "the double answered 409: two pollers ran"
    );

    assert!(first.interrupt().success());
}

/// The same bot started from two directories: `data/bot.pid` is two files,
/// two locks, and both poll. Each gets Telegram's 409 and the report, which
/// names the working directory that made its path.
#[test]
fn telegram_bots_from_two_directories_get_409_and_the_report_names_each_directory() {
    let api = BotApi::start();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = Bot::start_with_the_default_path(&api, one.path());
    let mut second = Bot::start_with_the_default_path(&api, two.path());
    let reported = |bot: &Bot| {
        bot.stderr()
            .contains("ERROR - INSTANCE CONFLICT: Telegram refused getUpdates")
    };
    assert!(
        wait_for(|| reported(&first) && reported(&second)),
        "not both reported ({} 409s from the double):\n{}\n{}",
        api.conflicts(),
        first.stderr(),
        second.stderr()
    );
    for (bot, dir) in [(&first, one.path()), (&second, two.path())] {
        let dir = dir.canonicalize().unwrap();
        let report = bot.stderr();
        let pid_file = dir.join("data/bot.pid");
        assert!(
            report.contains(&format!(
                "This process (PID {}) holds the local lock on {}.\n",
                bot.pid(),
                pid_file.display()
            )),
            "{report}"
        );
        assert!(
            report.contains(&format!(
                "{} is the relative path data/bot.pid in the working directory {}: a copy started from another directory locks another file.\n",
                pid_file.display(),
                dir.display()
            )),
            "{report}"
        );
        assert!(
            report.contains("So the other poller is not behind this lock"),
            "{report}"
        );
        assert!(report.contains("url = \"postgres://...\""), "{report}");
        // Said once in full; later conflicts get one line each.
        assert_eq!(report.matches("INSTANCE CONFLICT:").count(), 1, "{report}");
    }

    assert!(first.interrupt().success());
    assert!(second.interrupt().success());
}

#[test]
fn telegram_restart_keeps_the_pid_and_the_lock_and_resumes_polling() {
    let api = BotApi::start();
    let (dir, pid_file) = scratch();
    let mut bot = Bot::start(&api, dir.path(), &pid_file);
    assert!(polling(&api, 1), "the bot never polled:\n{}", bot.stderr());
    let pid = bot.pid();
    let starts = api.count("getMe");

    // A contender tries the lock in a tight loop for as long as the restart takes.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let contender = {
        let (stop, attempts, pid_file) =
            (Arc::clone(&stop), Arc::clone(&attempts), pid_file.clone());
        std::thread::spawn(move || {
            let lock = PidLock::new(&pid_file)
                .signals(Signals::None)
                .log_level(pidlock_core::LogLevel::Error);
            while !stop.load(Ordering::SeqCst) {
                match lock.acquire() {
                    Ok(_) => return Err("the contender got the lock during the restart".to_owned()),
                    Err(Error::AlreadyRunning { .. }) => attempts.fetch_add(1, Ordering::SeqCst),
                    Err(other) => return Err(other.to_string()),
                };
            }
            Ok(())
        })
    };

    api.inject_message(CHAT, "/restart");
    assert!(api.wait_until(DEADLINE, |api| api.sent("Restarting...") == 1));
    // The new image starts (getMe again) and polls again.
    assert!(
        api.wait_until(DEADLINE, |api| api.count("getMe") > starts),
        "the bot did not restart:\n{}",
        bot.stderr()
    );
    let polls = api.count("getUpdates");
    assert!(polling(&api, polls + 1));
    stop.store(true, Ordering::SeqCst);
    contender.join().unwrap().unwrap();
    assert!(attempts.load(Ordering::SeqCst) > 0);

    assert!(
        bot.child.try_wait().unwrap().is_none(),
        "the original process exited"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    let stderr = bot.stderr();
    assert!(
        stderr.contains(&format!(
            "INFO - PID file lock kept across restart (PID: {pid})"
        )),
        "{stderr}"
    );

    // Polling resumed: a new message is answered once, /restart is not seen again.
    api.inject_message(CHAT, "after the restart");
    assert!(api.wait_until(DEADLINE, |api| api.sent("after the restart") == 1));
    assert_eq!(api.sent("Restarting..."), 1, "/restart was delivered twice");
    assert_eq!(api.conflicts(), 0);

    assert!(bot.interrupt().success());
    assert!(!pid_file.exists());
}

#[test]
fn telegram_ctrl_c_runs_the_graceful_shutdown_and_removes_the_pid_file() {
    let api = BotApi::start();
    let (dir, pid_file) = scratch();
    let mut bot = Bot::start(&api, dir.path(), &pid_file);
    assert!(polling(&api, 1), "the bot never polled:\n{}", bot.stderr());
    let update = api.inject_message(CHAT, "hi");
    assert!(api.wait_until(DEADLINE, |api| api.sent("hi") == 1));

    let status = bot.interrupt();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", bot.stderr());
    assert!(!pid_file.exists(), "the PID file was left behind");
    // teloxide's shutdown confirms what it handled: a getUpdates with
    // timeout 0, limit 1 and the offset after the last update.
    assert_eq!(confirmed_below(&api.calls(), &bot), update + 1);
    let stderr = bot.stderr();
    assert!(
        stderr.ends_with(&format!(
            "INFO - Releasing PID lock...\nINFO - PID file lock released: {}\n",
            pid_file.display()
        )),
        "{stderr}"
    );
}

fn wait_for(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `systemctl stop`, `docker stop` and `pidlock stop` send SIGTERM: the bot
/// runs the same graceful shutdown as on Ctrl-C (teloxide alone would not).
#[test]
fn telegram_sigterm_runs_the_graceful_shutdown_too() {
    let api = BotApi::start();
    let (dir, pid_file) = scratch();
    let mut bot = Bot::start(&api, dir.path(), &pid_file);
    assert!(polling(&api, 1), "the bot never polled:\n{}", bot.stderr());
    let update = api.inject_message(CHAT, "hi");
    assert!(api.wait_until(DEADLINE, |api| api.sent("hi") == 1));

    // The bot's SIGTERM listener is registered before it polls, so one
    // signal is enough.
    let (status, _) = bot.stop(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", bot.stderr());
    assert!(!pid_file.exists(), "the PID file was left behind");
    assert_eq!(confirmed_below(&api.calls(), &bot), update + 1);
}

/// The offset of the `getUpdates` with which teloxide confirmed what it
/// handled when it stopped (timeout 0, limit 1): every update below it is
/// confirmed. Looked for by its parameters, not as the last call recorded:
/// the poll teloxide dropped when it stopped travels on another connection,
/// and the double may read it after the confirmation.
fn confirmed_below(calls: &[bot_api::Call], bot: &Bot) -> i64 {
    let confirmation = calls.iter().rev().find(|call| {
        call.method == "getUpdates"
            && call.params["limit"] == 1
            && call.params["timeout"].as_u64().unwrap_or(0) == 0
    });
    let Some(confirmation) = confirmation else {
        let recent: Vec<String> = calls
            .iter()
            .rev()
            .take(6)
            .map(|call| format!("{} {}", call.method, call.params))
            .collect();
        panic!(
            "no confirming getUpdates; last calls, newest first:\n{}\n{}",
            recent.join("\n"),
            bot.stderr()
        );
    };
    confirmation.params["offset"]
        .as_i64()
        .unwrap_or_else(|| panic!("no offset: {}", confirmation.params))
}

/// How many stops each burst test makes; `BURST_RUNS` sets another number
/// (more to measure, as the report in the README did).
fn burst_runs() -> usize {
    std::env::var("BURST_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(5)
}

/// 300 messages from one chat (handled one after another, as teloxide
/// does per chat), the signal once 30 are answered, and the bot stopped:
/// within a second on an idle machine (the times are printed; the
/// assertion allows a busy one ten), exit status 0, PID file gone, and
/// exactly the handled updates confirmed: each one below the confirmed
/// offset answered once, none above it answered, and all of those still
/// pending at Telegram for the next start. Repeated, because the lost stop
/// this replaces happened in some runs and not others.
fn stop_mid_burst(signal: Signal) {
    const BURST: i64 = 300;
    const BOUND: Duration = Duration::from_secs(10);
    let mut times = Vec::new();
    for run in 1..=burst_runs() {
        let api = BotApi::start();
        let (dir, pid_file) = scratch();
        let mut bot = Bot::start(&api, dir.path(), &pid_file);
        assert!(polling(&api, 1), "the bot never polled:\n{}", bot.stderr());
        let ids = api.inject_messages(CHAT, (1..=BURST).map(|n| format!("burst {n}")));
        assert!(api.wait_until(DEADLINE, |api| api.count("sendMessage") >= 30));

        let (status, took) = bot.stop(signal);
        assert_eq!(status.code(), Some(0), "{status:?}\n{}", bot.stderr());
        assert!(!pid_file.exists(), "the PID file was left behind");
        let confirmed = confirmed_below(&api.calls(), &bot);
        let mut answered = 0;
        for (n, id) in (1..=BURST).zip(&ids) {
            let sent = api.sent(&format!("burst {n}"));
            let expected = usize::from(*id < confirmed);
            assert_eq!(
                sent, expected,
                "run {run}: update {id} answered {sent} times, confirmed below {confirmed}"
            );
            answered += sent;
        }
        assert_eq!(
            api.pending(),
            ids.iter().filter(|id| **id >= confirmed).count(),
            "run {run}: an update is neither answered nor left for the next start"
        );
        assert!(
            took < BOUND,
            "run {run}: stopping took {took:?}\n{}",
            bot.stderr()
        );
        eprintln!(
            "{signal} run {run}: stopped in {took:?}, {answered} of {BURST} answered and confirmed"
        );
        times.push(took);
    }
    times.sort();
    eprintln!(
        "{signal}: {} runs, stop times min {:?}, median {:?}, max {:?}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[test]
fn telegram_sigint_mid_burst_stops_promptly_and_confirms_exactly_the_handled_updates() {
    stop_mid_burst(Signal::SIGINT);
}

#[test]
fn telegram_sigterm_mid_burst_stops_promptly_and_confirms_exactly_the_handled_updates() {
    stop_mid_burst(Signal::SIGTERM);
}

/// A standby (`on_conflict = "wait"`) makes no request while it waits, and
/// takes over polling the moment the bot stops: Telegram sees no 409, and
/// every message is answered exactly once, before and after.
#[test]
fn telegram_wait_standby_takes_over_with_no_409_and_no_message_lost_or_repeated() {
    let api = BotApi::start();
    let (dir, pid_file) = scratch();
    let mut bot = Bot::start(&api, dir.path(), &pid_file);
    assert!(polling(&api, 1), "the bot never polled:\n{}", bot.stderr());
    let mut standby = Bot::start_standby(&api, dir.path(), &pid_file);
    assert!(
        wait_for(|| standby.stderr().contains("waiting for it to exit")),
        "the standby is not waiting:\n{}",
        standby.stderr()
    );
    assert_eq!(api.count("getMe"), 1, "the waiting standby made requests");
    api.inject_message(CHAT, "before");
    assert!(api.wait_until(DEADLINE, |api| api.sent("before") == 1));

    let (status, _) = bot.stop(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", bot.stderr());
    let confirmed = confirmed_below(&api.calls(), &bot);
    // The standby's first poll: after its own getMe.
    let first_poll = || {
        let calls = api.calls();
        let started = calls
            .iter()
            .filter(|call| call.method == "getMe")
            .nth(1)?
            .at;
        calls
            .iter()
            .find(|call| call.method == "getUpdates" && call.at > started)
            .map(|call| call.at)
    };
    assert!(
        api.wait_until(DEADLINE, |_| first_poll().is_some()),
        "the standby never polled:\n{}",
        standby.stderr()
    );
    let last_of_the_bot = api
        .calls()
        .iter()
        .find(|call| call.method == "getUpdates" && call.params["offset"] == confirmed)
        .map(|call| call.at)
        .unwrap();
    eprintln!(
        "hand-over: {:?} from the bot's last getUpdates to the standby's first",
        first_poll().unwrap().duration_since(last_of_the_bot)
    );

    api.inject_message(CHAT, "after");
    assert!(api.wait_until(DEADLINE, |api| api.sent("after") == 1));
    let polls = api.count("getUpdates");
    assert!(polling(&api, polls + 2));
    assert_eq!(api.sent("before"), 1, "a message was answered twice");
    assert_eq!(api.sent("after"), 1, "a message was answered twice");
    assert_eq!(
        api.conflicts(),
        0,
        "the double answered 409: two pollers ran"
    );
    assert!(standby.interrupt().success());
    assert!(!pid_file.exists());
}

/// A handler that does not finish keeps a clean stop from ending; a second
/// signal then ends the bot at once (status 128 + 2), and the PID file goes
/// with it.
#[test]
fn telegram_a_second_signal_while_a_handler_hangs_exits_at_once() {
    let api = BotApi::start();
    let (dir, pid_file) = scratch();
    let mut bot = Bot::start(&api, dir.path(), &pid_file);
    assert!(polling(&api, 1), "the bot never polled:\n{}", bot.stderr());
    api.hold_replies(true);
    api.inject_message(CHAT, "stuck");
    assert!(api.wait_until(DEADLINE, |api| api.count("sendMessage") == 1));

    bot.signal(Signal::SIGINT);
    // The first signal stopped the listener: it confirmed what it fetched.
    assert!(
        api.wait_until(DEADLINE, |api| api
            .calls()
            .iter()
            .any(|call| call.method == "getUpdates" && call.params["limit"] == 1)),
        "the listener did not stop:\n{}",
        bot.stderr()
    );
    assert!(
        bot.exited().is_none(),
        "the bot exited with a handler still running"
    );
    let (status, took) = bot.stop(Signal::SIGINT);
    api.hold_replies(false);
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", bot.stderr());
    assert!(!pid_file.exists(), "the PID file was left behind");
    let stderr = bot.stderr();
    assert!(
        stderr.contains("WARNING - SIGINT while the bot was stopping: exiting now"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!(
            "INFO - Releasing PID lock...\nINFO - PID file lock released: {}\n",
            pid_file.display()
        )),
        "{stderr}"
    );
    eprintln!("second SIGINT: exited in {took:?}");
}

/// A bot that cannot reach Telegram at the start (here: nothing listens at
/// the API's address) ends as teloxide's `dispatch` does, by a panic, and
/// the panic says why; unwinding through `main` removes the PID file.
#[test]
fn telegram_unreachable_api_ends_the_bot_with_the_reason_and_removes_the_pid_file() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let (dir, pid_file) = scratch();
    let program = env!("CARGO_BIN_EXE_teloxide-bot");
    let mut bot = Bot::spawn(command_for(program, &url, dir.path(), &pid_file));
    let status = bot.wait_exit("the bot did not give up");
    let stderr = bot.stderr();
    assert_eq!(status.code(), Some(101), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("the bot cannot start: Telegram's getMe failed (A network error: "),
        "{stderr}"
    );
    assert!(!pid_file.exists(), "the PID file was left behind");
}
