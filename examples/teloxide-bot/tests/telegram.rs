//! The teloxide bot, run for real against a local Bot API double: the fix
//! shown on the framework its users run, against the failure they see.
//! `cargo test --workspace --all-features telegram` runs these.

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
        let mut child = command(api, dir, pid_file).spawn().expect("spawn the bot");
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
        let deadline = Instant::now() + DEADLINE;
        self.signal(Signal::SIGINT);
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the bot did not exit on Ctrl-C:\n{}\n{}",
                self.stderr(),
                self.threads()
            );
            std::thread::sleep(Duration::from_millis(10));
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_teloxide-bot"));
    command
        .current_dir(dir)
        .env("TELOXIDE_TOKEN", "123456:TEST-TOKEN")
        .env("TELEGRAM_API_URL", api.url())
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
fn telegram_guarded_second_bot_exits_1_and_telegram_sees_no_conflict() {
    let api = BotApi::start();
    let (dir, pid_file) = scratch();
    let mut first = Bot::start(&api, dir.path(), &pid_file);
    assert!(
        polling(&api, 1),
        "the first bot never polled:\n{}",
        first.stderr()
    );

    let second = command(&api, dir.path(), &pid_file).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
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

#[test]
fn telegram_unguarded_bots_get_409_and_the_report_says_the_poller_is_elsewhere() {
    let api = BotApi::start();
    let (dir, _) = scratch();
    // Two lock paths: the locks do not see each other, as on two hosts.
    let mut first = Bot::start(&api, dir.path(), &dir.path().join("first.pid"));
    let mut second = Bot::start(&api, dir.path(), &dir.path().join("second.pid"));
    assert!(
        api.wait_until(DEADLINE, |api| api.conflicts() >= 2),
        "no 409 from the double:\n{}\n{}",
        first.stderr(),
        second.stderr()
    );
    let reports = |bot: &Bot| {
        bot.stderr()
            .contains("ERROR - INSTANCE CONFLICT: Telegram refused getUpdates")
    };
    assert!(
        wait_for(|| reports(&first) || reports(&second)),
        "no INSTANCE CONFLICT report:\n{}\n{}",
        first.stderr(),
        second.stderr()
    );
    let report = if reports(&first) {
        first.stderr()
    } else {
        second.stderr()
    };
    assert!(report.contains("holds the local lock on"), "{report}");
    assert!(
        report.contains("So the other poller is not behind this lock"),
        "{report}"
    );
    assert!(report.contains("url = \"postgres://...\""), "{report}");
    // Said once in full; later conflicts get one line each.
    assert_eq!(report.matches("INSTANCE CONFLICT:").count(), 1, "{report}");

    first.interrupt();
    second.interrupt();
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
            let lock = PidLock::new(&pid_file).signals(Signals::None).quiet(true);
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
    // timeout 0, limit 1 and the offset after the last update. Looked for by
    // its parameters, not as the last call recorded: the poll teloxide
    // dropped when it stopped travels on another connection, and the double
    // may read it after the confirmation.
    let calls = api.calls();
    let seen = || {
        let recent: Vec<String> = calls
            .iter()
            .rev()
            .take(6)
            .map(|call| format!("{} {}", call.method, call.params))
            .collect();
        format!(
            "last calls, newest first:\n{}\n{}",
            recent.join("\n"),
            bot.stderr()
        )
    };
    let confirmation = calls
        .iter()
        .rev()
        .find(|call| call.method == "getUpdates" && call.params["limit"] == 1)
        .unwrap_or_else(|| panic!("no confirming getUpdates; {}", seen()));
    assert_eq!(confirmation.params["offset"], update + 1, "{}", seen());
    assert!(
        confirmation.params["timeout"].as_u64().unwrap_or(0) == 0,
        "{}",
        seen()
    );
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
    bot.signal(Signal::SIGTERM);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = bot.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the bot did not exit:\n{}",
            bot.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", bot.stderr());
    assert!(!pid_file.exists(), "the PID file was left behind");
    let last = api
        .calls()
        .into_iter()
        .rev()
        .find(|call| call.method == "getUpdates")
        .unwrap();
    assert_eq!(last.params["offset"], update + 1, "{:?}", last.params);
}
