//! Deploys, measured: the example bot run the ways it is deployed (a
//! systemd restart, blue/green on one host, containers sharing a volume, a
//! rolling update across two hosts through PostgreSQL and through Redis, the
//! database cut from the holder, a crash loop, and two hosts with no shared
//! store), against the Bot API double, which records every `getUpdates`
//! with the process and host that made it.
//!
//! From those polls each shape counts overlapping pollers (a 409, or a
//! process polling again after another one started), updates lost or
//! delivered twice (the double numbers them, the echo bot answers each with
//! its text), and measures the time with no poller at each hand-over. It
//! fails on any overlap, loss or duplicate; the last shape, where nothing
//! is shared, expects the 409s and measures how many polls each side makes
//! before it prints the INSTANCE CONFLICT report.
//!
//! SIGKILL (the crash loop, and `docker stop` past its grace) loses what
//! the killed process was doing, lock or no lock: teloxide confirms a batch
//! of updates with its next `getUpdates`, while the handlers still run, so
//! an update it fetched and confirmed but had not answered yet is gone, and
//! one it answered before it could confirm it is delivered again. Those two
//! are counted apart, each only when the polls show it (the killed process
//! confirmed the lost update; it never confirmed the repeated one); any
//! other loss or repeat fails the test.
//!
//! `cargo test -p teloxide-bot --test deploys -- --nocapture` runs a few
//! hand-overs per shape; `PIDLOCK_DEPLOYS_FULL=1` runs ten or more (the
//! table in DEPLOYS.md). Each test prints its row of that table. The
//! shapes across hosts need root, `ip`, `nft`, PostgreSQL's binaries and
//! `redis-server`: without them they say so and pass, except under
//! `CI=true`. `PIDLOCK_DEPLOYS_SEED` repeats the crash loop's random kills.

mod bot_api;
#[path = "../../../tests/servers/mod.rs"]
mod servers;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bot_api::{BotApi, Outcome};
use nix::sys::signal::Signal;
use servers::{DEADLINE, Process};

const CHAT: i64 = 4242;
const TOKEN: &str = "123456:TEST-TOKEN";
/// A stop that takes longer is given SIGKILL, as `docker stop` does after
/// its default grace.
const DOCKER_GRACE: Duration = Duration::from_secs(10);
/// How many messages arrive just before each stop.
const BURST: usize = 20;

fn full() -> bool {
    std::env::var("PIDLOCK_DEPLOYS_FULL").is_ok_and(|value| value == "1")
}

/// Hand-overs per shape: ten in the full run, three otherwise.
fn handovers() -> usize {
    if full() { 10 } else { 3 }
}

/// The bot, its standby (`on_conflict = "wait"`), and the replica that
/// locks across hosts too.
const BOT: &str = env!("CARGO_BIN_EXE_teloxide-bot");
const STANDBY: &str = env!("CARGO_BIN_EXE_teloxide-bot-standby");
const ACROSS_HOSTS: &str = env!("CARGO_BIN_EXE_teloxide-bot-across-hosts");

/// Where a bot runs.
#[derive(Clone)]
enum Place {
    /// A process of this host.
    Here,
    /// PID 1 of a PID namespace of its own (`unshare`), as in a container.
    Container,
    /// Inside a network namespace the test made: another host.
    Netns(String),
}

/// How to start one bot.
#[derive(Clone)]
struct Spec {
    program: &'static str,
    /// Its data directory; the PID file is `data/bot.pid` in it.
    dir: PathBuf,
    host: &'static str,
    place: Place,
    env: Vec<(&'static str, String)>,
}

impl Spec {
    fn new(program: &'static str, dir: &Path, host: &'static str) -> Self {
        std::fs::create_dir_all(dir).expect("data directory");
        Self {
            program,
            dir: dir.to_owned(),
            host,
            place: Place::Here,
            env: Vec::new(),
        }
    }

    fn place(mut self, place: Place) -> Self {
        self.place = place;
        self
    }

    fn env(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.env.push((name, value.into()));
        self
    }
}

/// A running bot; killed (with its `unshare` or `ip netns exec`) when
/// dropped.
struct Instance {
    process: Process,
    label: String,
    /// The bot's own PID (not `unshare`'s), in the test's PID namespace.
    pid: i32,
}

impl Instance {
    fn signal(&self, signal: Signal) {
        // An instance that already exited (a lost lock ends the holder
        // by itself) has nothing left to signal.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal);
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.child.try_wait().expect("wait")
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {within:?}:\n{}",
                self.label,
                self.process.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for a line of its stderr containing `needle`.
    fn says(&self, needle: &str) {
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.process.stderr_line(needle, DEADLINE)
        }));
        assert!(
            found.is_ok(),
            "{} did not say {needle:?}:\n{}",
            self.label,
            self.process.stderr_so_far()
        );
    }
}

/// One shape's run: its double, the bots it started and the messages sent.
struct Deploy {
    api: BotApi,
    shape: &'static str,
    engine: &'static str,
    started: usize,
    hosts: HashMap<String, &'static str>,
    /// Labels of the instances that got SIGKILL.
    killed: HashSet<String>,
    /// When the test saw each instance exit.
    exits: HashMap<String, Instant>,
    /// The texts sent, by update id.
    sent: Vec<(i64, String)>,
}

/// What a shape's polls and replies show.
struct Findings {
    handovers: Vec<Handover>,
    /// 409s, plus polls by a process after another one had started polling.
    overlaps: usize,
    conflicts: usize,
    lost: Vec<i64>,
    /// Updates never answered that a process killed with SIGKILL had
    /// fetched and confirmed (teloxide confirms a batch with its next
    /// `getUpdates`, while the handlers run): lost with the process, as
    /// they would be without any lock.
    lost_to_kill: usize,
    /// Deliveries beyond the first, of updates the first process confirmed
    /// or was not killed before confirming.
    duplicates: Vec<i64>,
    /// Deliveries beyond the first of updates handled by a process killed
    /// with SIGKILL before it confirmed them.
    redelivered_after_kill: usize,
    /// How many hosts (client addresses) polled.
    peers: usize,
}

struct Handover {
    from: String,
    to: String,
    /// From the end of the last poll of `from` to the start of the first
    /// poll of `to`; zero if they touched.
    gap: Duration,
}

impl Deploy {
    fn new(shape: &'static str, engine: &'static str, api: BotApi) -> Self {
        Self {
            api,
            shape,
            engine,
            started: 0,
            hosts: HashMap::new(),
            killed: HashSet::new(),
            exits: HashMap::new(),
            sent: Vec::new(),
        }
    }

    fn start(&mut self, spec: &Spec) -> Instance {
        self.started += 1;
        let label = format!("p{}", self.started);
        let pid_file = spec.dir.join("data").join("bot.pid");
        let mut bot = Command::new(spec.program);
        bot.env("TELOXIDE_TOKEN", TOKEN)
            .env("TELEGRAM_API_URL", self.api.url_for(&label))
            .env("BOT_PID_FILE", &pid_file)
            .env_remove("TELOXIDE_PROXY")
            .env_remove("PIDLOCK_LOG")
            .env_remove("NOTIFY_SOCKET");
        for (name, value) in &spec.env {
            bot.env(name, value);
        }
        let mut command = match &spec.place {
            Place::Here => bot,
            Place::Container => {
                let mut command = Command::new("unshare");
                command
                    .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
                    .arg(spec.program);
                for (name, value) in bot.get_envs() {
                    match value {
                        Some(value) => command.env(name, value),
                        None => command.env_remove(name),
                    };
                }
                command
            }
            Place::Netns(ns) => servers::netns::Wire::inside(ns, &bot),
        };
        command.current_dir(&spec.dir);
        let process = Process::start(command);
        let pid = match spec.place {
            Place::Container => container_init(process.pid()),
            _ => process.pid(),
        };
        self.hosts.insert(label.clone(), spec.host);
        Instance {
            process,
            label,
            pid,
        }
    }

    /// Waits for `bot` to exit, and notes when it did.
    fn wait_exit(&mut self, bot: &mut Instance, within: Duration) -> std::process::ExitStatus {
        let status = bot.wait_exit(within);
        self.exits.insert(bot.label.clone(), Instant::now());
        status
    }

    /// SIGKILL, and the wait for the exit.
    fn kill(&mut self, bot: &mut Instance) {
        bot.signal(Signal::SIGKILL);
        self.killed.insert(bot.label.clone());
        self.wait_exit(bot, DEADLINE);
    }

    /// Waits for the first `getUpdates` of `bot`.
    fn polling(&self, bot: &Instance) {
        self.polling_within(bot, DEADLINE);
    }

    fn polling_within(&self, bot: &Instance, within: Duration) {
        assert!(
            self.api.wait_until(within, |api| api
                .polls()
                .iter()
                .any(|poll| poll.label == bot.label)),
            "{} never polled:\n{}",
            bot.label,
            bot.process.stderr_so_far()
        );
    }

    /// Of `bots`, the first that polls (the one that got the lock).
    fn first_polling(&self, bots: &[&str]) -> String {
        let mut found = None;
        assert!(
            self.api.wait_until(DEADLINE, |api| {
                api.polls()
                    .iter()
                    .any(|poll| bots.contains(&poll.label.as_str()))
            }),
            "none of {bots:?} polled"
        );
        for poll in self.api.polls() {
            if bots.contains(&poll.label.as_str()) {
                found = Some(poll.label);
                break;
            }
        }
        found.expect("a poll")
    }

    /// A burst of messages, and the wait until the bot answered the first
    /// of them: the stop that follows comes with updates being handled,
    /// fetched and not fetched yet.
    fn burst(&mut self) {
        let first = self.sent.len() + 1;
        let texts: Vec<String> = (first..first + BURST)
            .map(|n| format!("{} #{n}", self.shape))
            .collect();
        let ids = self.api.inject_messages(CHAT, texts.clone());
        self.sent.extend(ids.into_iter().zip(texts));
        let text = self.sent[first - 1].1.clone();
        assert!(
            self.api.wait_until(DEADLINE, |api| api.sent(&text) >= 1),
            "{text} was not answered"
        );
    }

    /// Messages, without waiting for an answer.
    fn send(&mut self, count: usize) {
        let first = self.sent.len() + 1;
        let texts: Vec<String> = (first..first + count)
            .map(|n| format!("{} #{n}", self.shape))
            .collect();
        let ids = self.api.inject_messages(CHAT, texts.clone());
        self.sent.extend(ids.into_iter().zip(texts));
    }

    /// Waits until every message sent was answered and `bot` polled twice
    /// more after that (so that a redelivery would have shown), then stops
    /// it with SIGTERM.
    fn settle(&mut self, mut bot: Instance) {
        let texts: Vec<String> = self.sent.iter().map(|(_, text)| text.clone()).collect();
        let answered = self
            .api
            .wait_until(DEADLINE, |api| texts.iter().all(|text| api.sent(text) >= 1));
        if answered {
            let polls = self.api.polls().len();
            assert!(
                self.api
                    .wait_until(DEADLINE, |api| api.polls().len() >= polls + 2),
                "{} stopped polling:\n{}",
                bot.label,
                bot.process.stderr_so_far()
            );
        }
        // Unanswered messages show as lost in the findings.
        bot.signal(Signal::SIGTERM);
        let status = self.wait_exit(&mut bot, DEADLINE);
        assert!(
            status.success(),
            "{}: {status:?}\n{}",
            bot.label,
            bot.process.stderr_all()
        );
    }

    fn findings(&self) -> Findings {
        let polls = self.api.polls();
        let conflicts = polls
            .iter()
            .filter(|poll| poll.outcome == Outcome::Conflict)
            .count();
        // Answered polls, in the order they came: each process's polls must
        // be one run, after the previous process's.
        let mut interleaved = 0;
        let mut seen = HashSet::new();
        let mut last: Option<&str> = None;
        for poll in polls
            .iter()
            .filter(|poll| matches!(poll.outcome, Outcome::Answered(_)))
        {
            if last != Some(poll.label.as_str()) {
                if !seen.insert(poll.label.as_str()) {
                    interleaved += 1;
                }
                last = Some(poll.label.as_str());
            }
        }
        // Hand-overs: the processes in the order of their first poll.
        let mut order: Vec<&str> = Vec::new();
        for poll in &polls {
            if !order.contains(&poll.label.as_str()) {
                order.push(&poll.label);
            }
        }
        let handovers = order
            .windows(2)
            .map(|pair| {
                let last_end = self.stopped_polling(&polls, pair[0]);
                let first_start = polls
                    .iter()
                    .find(|poll| poll.label == pair[1])
                    .expect("a poll")
                    .opened;
                Handover {
                    from: pair[0].to_owned(),
                    to: pair[1].to_owned(),
                    gap: first_start.saturating_duration_since(last_end),
                }
            })
            .collect();
        // Deliveries: the echo bot answers each message with its text.
        let calls = self.api.calls();
        let mut lost = Vec::new();
        let mut lost_to_kill = 0;
        let mut duplicates = Vec::new();
        let mut redelivered_after_kill = 0;
        for (id, text) in &self.sent {
            let replies: Vec<&str> = calls
                .iter()
                .filter(|call| call.method == "sendMessage" && call.params["text"] == *text)
                .map(|call| call.label.as_str())
                .collect();
            let Some(first) = replies.first() else {
                let confirmed_by_killed = polls.iter().any(|poll| {
                    self.killed.contains(&poll.label)
                        && matches!(&poll.outcome, Outcome::Answered(ids) if ids.contains(id))
                        && polls
                            .iter()
                            .any(|later| later.label == poll.label && later.offset > *id)
                });
                if confirmed_by_killed {
                    lost_to_kill += 1;
                } else {
                    lost.push(*id);
                }
                continue;
            };
            let extra = replies.len() - 1;
            let unconfirmed_at_kill = self.killed.contains(*first)
                && !polls
                    .iter()
                    .any(|poll| poll.label == *first && poll.offset > *id);
            if extra == 0 {
            } else if unconfirmed_at_kill {
                redelivered_after_kill += extra;
            } else {
                duplicates.extend(std::iter::repeat_n(*id, extra));
            }
        }
        let peers: HashSet<&str> = polls.iter().map(|poll| poll.peer.as_str()).collect();
        Findings {
            handovers,
            overlaps: conflicts + interleaved,
            conflicts,
            lost,
            lost_to_kill,
            duplicates,
            redelivered_after_kill,
            peers: peers.len(),
        }
    }

    /// When the process `label` stopped polling: the answer to its last
    /// poll, or, if it died with a poll open (the double sees the hang-up
    /// only at its next look), its death as the test saw it. A poll it
    /// dropped while stopping cleanly ended before its next poll began.
    fn stopped_polling(&self, polls: &[bot_api::Poll], label: &str) -> Instant {
        let mine: Vec<&bot_api::Poll> = polls.iter().filter(|poll| poll.label == label).collect();
        let last = mine.last().expect("a poll");
        let answered = mine
            .iter()
            .filter(|poll| poll.outcome != Outcome::Abandoned)
            .filter_map(|poll| poll.closed)
            .max();
        let died_polling = (last.outcome == Outcome::Abandoned).then(|| {
            let detected = last.closed.expect("closed");
            self.exits
                .get(label)
                .map_or(detected, |exit| detected.min(*exit))
        });
        answered
            .into_iter()
            .chain(died_polling)
            .max()
            .unwrap_or(last.opened)
    }

    /// Prints the shape's row (only the hand-overs `counted` if given)
    /// and fails on any overlap, loss or duplicate, or too few hand-overs.
    fn report(&self, counted: Option<&[(String, String)]>, wanted: usize) -> Findings {
        let findings = self.findings();
        let gaps: Vec<Duration> = findings
            .handovers
            .iter()
            .filter(|handover| {
                counted.is_none_or(|pairs| {
                    pairs
                        .iter()
                        .any(|(from, to)| *from == handover.from && *to == handover.to)
                })
            })
            .map(|handover| handover.gap)
            .collect();
        for handover in &findings.handovers {
            eprintln!(
                "{} / {}: {} ({}) -> {} ({}): {:.1} ms without a poller",
                self.shape,
                self.engine,
                handover.from,
                self.hosts[&handover.from],
                handover.to,
                self.hosts[&handover.to],
                ms(handover.gap)
            );
        }
        println!(
            "| {} | {} | {} | {} | {} / {}{}{} | {} |",
            self.shape,
            self.engine,
            gaps.len(),
            findings.overlaps,
            findings.lost.len(),
            findings.duplicates.len(),
            if findings.lost_to_kill > 0 {
                format!(
                    " (+{} lost with a SIGKILLed process)",
                    findings.lost_to_kill
                )
            } else {
                String::new()
            },
            if findings.redelivered_after_kill > 0 {
                format!(
                    " (+{} redelivered after SIGKILL)",
                    findings.redelivered_after_kill
                )
            } else {
                String::new()
            },
            median_max(&gaps)
        );
        eprintln!(
            "{} / {}: {} messages, {} processes, {} polls, {} 409s",
            self.shape,
            self.engine,
            self.sent.len(),
            self.started,
            self.api.polls().len(),
            findings.conflicts
        );
        assert_eq!(
            findings.overlaps, 0,
            "two pollers at once ({} 409s)",
            findings.conflicts
        );
        assert!(findings.lost.is_empty(), "lost: {:?}", findings.lost);
        assert!(
            findings.duplicates.is_empty(),
            "delivered twice: {:?}",
            findings.duplicates
        );
        assert!(
            gaps.len() >= wanted,
            "{} hand-overs, {wanted} wanted",
            gaps.len()
        );
        findings
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn median_max(gaps: &[Duration]) -> String {
    let mut sorted = gaps.to_vec();
    sorted.sort();
    match sorted.last() {
        None => "-".to_owned(),
        Some(max) => format!(
            "{:.0} ms / {:.0} ms",
            ms(sorted[(sorted.len() - 1) / 2]),
            ms(*max)
        ),
    }
}

/// The child `unshare --fork` started: PID 1 of the new PID namespace, as
/// the host sees it (what `docker stop` signals).
fn container_init(unshare: i32) -> i32 {
    let path = format!("/proc/{unshare}/task/{unshare}/children");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let children = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().expect("a PID");
        }
        assert!(Instant::now() < deadline, "unshare started no child");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `docker stop`: SIGTERM, and SIGKILL if the bot is still running after
/// the grace. Returns whether it took SIGKILL.
fn docker_stop(deploy: &mut Deploy, bot: &mut Instance) -> bool {
    bot.signal(Signal::SIGTERM);
    let deadline = Instant::now() + DOCKER_GRACE;
    while Instant::now() < deadline {
        if bot.exited().is_some() {
            deploy.exits.insert(bot.label.clone(), Instant::now());
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    deploy.kill(bot);
    true
}

/// A small random generator for the crash loop (xorshift), its seed printed.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = std::env::var("PIDLOCK_DEPLOYS_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |now| now.as_nanos() as u64)
                    | 1
            });
        eprintln!("crash loop: PIDLOCK_DEPLOYS_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// 1. systemd with `Restart=always`: SIGTERM (`systemctl restart`), and the
///    next start as soon as the old process has exited.
#[test]
fn deploys_1_systemd_restart() {
    let mut deploy = Deploy::new("1. systemd restart", "PID file", BotApi::start());
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(BOT, dir.path(), "host");
    let mut bot = deploy.start(&spec);
    deploy.polling(&bot);
    for _ in 0..handovers() {
        deploy.burst();
        bot.signal(Signal::SIGTERM);
        let status = deploy.wait_exit(&mut bot, DEADLINE);
        assert!(status.success(), "{status:?}");
        bot = deploy.start(&spec);
        deploy.polling(&bot);
    }
    deploy.send(BURST);
    deploy.settle(bot);
    deploy.report(None, handovers());
}

/// 2. Blue/green on one host: the new version (the standby, `on_conflict =
///    "wait"`) starts while the old one runs, then the old one is stopped.
#[test]
fn deploys_2_blue_green() {
    let mut deploy = Deploy::new("2. blue/green, one host", "PID file", BotApi::start());
    let dir = tempfile::tempdir().unwrap();
    let mut old = deploy.start(&Spec::new(BOT, dir.path(), "host"));
    deploy.polling(&old);
    for _ in 0..handovers() {
        let new = deploy.start(&Spec::new(STANDBY, dir.path(), "host"));
        new.says("waiting for it to exit");
        deploy.burst();
        old.signal(Signal::SIGTERM);
        let status = deploy.wait_exit(&mut old, DEADLINE);
        assert!(status.success(), "{status:?}");
        deploy.polling(&new);
        old = new;
    }
    deploy.send(BURST);
    deploy.settle(old);
    deploy.report(None, handovers());
}

/// 3. Two containers sharing the data volume, each bot PID 1 of its own
///    PID namespace (both with `on_conflict = "wait"`): `docker stop` on
///    the one that polls (SIGTERM, SIGKILL after the grace), the other
///    takes over, and the restart policy starts the stopped one again, to
///    wait in its turn.
#[test]
fn deploys_3_containers_sharing_a_volume() {
    if !servers::is_root() {
        assert!(!servers::in_ci(), "CI=true and not root (for unshare)");
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let mut deploy = Deploy::new("3. containers, shared volume", "PID file", BotApi::start());
    let volume = tempfile::tempdir().unwrap();
    let spec = Spec::new(STANDBY, volume.path(), "host").place(Place::Container);
    let mut a = deploy.start(&spec);
    deploy.polling(&a);
    let mut b = deploy.start(&spec);
    b.says("aiting for");
    let mut killed = 0;
    for _ in 0..handovers() {
        deploy.burst();
        if docker_stop(&mut deploy, &mut a) {
            killed += 1;
        }
        // The restart policy starts it again at once.
        a = deploy.start(&spec);
        // Either may win the lock: the one that waited, or the one just
        // restarted (before the waiting one is woken); the other waits.
        let first = deploy.first_polling(&[&b.label, &a.label]);
        if first == a.label {
            assert!(b.exited().is_none(), "the waiting container exited");
        } else {
            a.says("aiting for");
            std::mem::swap(&mut a, &mut b);
        }
    }
    eprintln!("containers: {killed} stops needed SIGKILL");
    deploy.send(BURST);
    deploy.settle(a);
    drop(b);
    deploy.report(None, handovers());
}

/// Two hosts: each a network namespace with its own data directory. The
/// database (the test's own server) and the Bot API double listen on host
/// B's side of the wire; host A reaches both over it.
struct TwoHosts {
    wire: servers::netns::Wire,
    url: String,
    db_port: u16,
    dirs: tempfile::TempDir,
    key: String,
    _postgres: Option<servers::postgres::PgServer>,
    _redis: Option<servers::redis::RedisServer>,
}

impl TwoHosts {
    fn make(engine: &str, tag: char) -> Option<Self> {
        servers::netns::tools()?;
        let wire = servers::netns::Wire::make(tag);
        let addr = servers::netns::SERVER_ADDR;
        let (url, db_port, postgres, redis) = if engine == "PostgreSQL" {
            let server = servers::postgres::PgServer::start(servers::postgres::Setup {
                netns: Some(wire.server_ns.clone()),
                listen: Some(addr.to_owned()),
                ..Default::default()
            })?;
            (server.url_at(addr), server.port, Some(server), None)
        } else {
            let server = servers::redis::RedisServer::start(servers::redis::Setup {
                netns: Some(wire.server_ns.clone()),
                bind: Some(addr.to_owned()),
                ..Default::default()
            })?;
            let url = format!("redis://{addr}:{}/0", server.port);
            (url, server.port, None, Some(server))
        };
        Some(Self {
            wire,
            url,
            db_port,
            dirs: tempfile::tempdir().unwrap(),
            key: servers::unique_key("deploys"),
            _postgres: postgres,
            _redis: redis,
        })
    }

    fn api(&self) -> BotApi {
        BotApi::start_in(&self.wire.server_ns, servers::netns::SERVER_ADDR)
    }

    /// A replica on host `a` or `b`, locking across hosts.
    fn replica(&self, host: &'static str) -> Spec {
        let ns = if host == "A" {
            &self.wire.holder_ns
        } else {
            &self.wire.server_ns
        };
        Spec::new(ACROSS_HOSTS, &self.dirs.path().join(host), host)
            .place(Place::Netns(ns.clone()))
            .env("BOT_LOCK_URL", &self.url)
            .env("BOT_LOCK_KEY", &self.key)
    }
}

/// 4. A rolling update across two hosts: the new replica starts on the
///    other host and waits in the database, the old one gets SIGTERM.
fn rolling_update(engine: &'static str, tag: char) {
    let Some(hosts) = TwoHosts::make(engine, tag) else {
        return;
    };
    let mut deploy = Deploy::new("4. rolling update, two hosts", engine, hosts.api());
    let mut old = deploy.start(&hosts.replica("A"));
    deploy.polling(&old);
    let mut next = "B";
    for _ in 0..handovers() {
        let new = deploy.start(&hosts.replica(next));
        new.says("Waiting for the");
        deploy.burst();
        old.signal(Signal::SIGTERM);
        let status = deploy.wait_exit(&mut old, DEADLINE);
        assert!(status.success(), "{status:?}");
        deploy.polling(&new);
        old = new;
        next = if next == "A" { "B" } else { "A" };
    }
    deploy.send(BURST);
    deploy.settle(old);
    let findings = deploy.report(None, handovers());
    assert_eq!(findings.peers, 2, "the polls did not come from two hosts");
}

#[test]
fn deploys_4_rolling_update_through_postgres() {
    rolling_update("PostgreSQL", 'd');
}

#[test]
fn deploys_4_rolling_update_through_redis() {
    rolling_update("Redis", 'e');
}

/// 5. The database cut from the holder (only its port: the holder still
///    reaches the Bot API): the holder must stop polling before the standby
///    on the other host starts. Then the wire is healed and the holder's
///    host takes the bot back by a rolling update, for the next cut.
fn database_cut(engine: &'static str, tag: char) {
    let Some(hosts) = TwoHosts::make(engine, tag) else {
        return;
    };
    let mut deploy = Deploy::new("5. database cut from the holder", engine, hosts.api());
    let cuts = if full() { handovers() } else { 1 };
    // The holder's lease (10 s) and grace (5 s), the server's limit (30 s)
    // and the hand-over after a holder that did not release (1 s).
    let within = Duration::from_secs(60);
    let mut holder = deploy.start(&hosts.replica("A"));
    deploy.polling(&holder);
    let mut cut_handovers = Vec::new();
    for run in 1..=cuts {
        let mut standby = deploy.start(&hosts.replica("B"));
        standby.says("Waiting for the");
        deploy.burst();
        let cut = Instant::now();
        hosts.wire.cut_port(hosts.db_port);
        let status = deploy.wait_exit(&mut holder, within);
        deploy.polling_within(&standby, within);
        let polls = deploy.api.polls();
        let stopped = deploy.stopped_polling(&polls, &holder.label);
        let started = polls
            .iter()
            .find(|poll| poll.label == standby.label)
            .expect("a poll")
            .opened;
        let stderr = holder.process.stderr_all();
        hosts.wire.heal();
        assert!(
            stderr.contains(&format!("Lost the {engine} lock")),
            "{stderr}"
        );
        eprintln!(
            "{engine} cut {run}: the holder stopped polling {:.1} s after the cut and exited with {status:?}; the standby polled {:.1} s after the cut",
            stopped.saturating_duration_since(cut).as_secs_f64(),
            started.saturating_duration_since(cut).as_secs_f64()
        );
        cut_handovers.push((holder.label.clone(), standby.label.clone()));
        // Back to host A, for the next cut.
        holder = deploy.start(&hosts.replica("A"));
        holder.says("Waiting for the");
        deploy.burst();
        standby.signal(Signal::SIGTERM);
        let status = deploy.wait_exit(&mut standby, DEADLINE);
        assert!(status.success(), "{status:?}");
        deploy.polling(&holder);
    }
    deploy.send(BURST);
    deploy.settle(holder);
    deploy.report(Some(&cut_handovers), cuts);
}

#[test]
fn deploys_5_database_cut_postgres() {
    database_cut("PostgreSQL", 'f');
}

#[test]
fn deploys_5_database_cut_redis() {
    database_cut("Redis", 'g');
}

/// 6. A crash loop: the bot killed with SIGKILL at random moments (while
///    it starts, while it polls, while it answers a burst), and started
///    again by its supervisor (this test) as soon as it is gone.
#[test]
fn deploys_6_crash_loop() {
    let mut deploy = Deploy::new("6. crash loop (SIGKILL)", "PID file", BotApi::start());
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(BOT, dir.path(), "host");
    let mut random = Random::new();
    let kills = handovers() * 2;
    for _ in 0..kills {
        let mut bot = deploy.start(&spec);
        // The random moment: while it starts (a quarter of the kills),
        // or after it polled and got a burst, within the burst's handling
        // (half of those) or later.
        let moment = if random.below(4) == 0 {
            random.below(300)
        } else {
            deploy.polling(&bot);
            deploy.send(1 + random.below(BURST as u64) as usize);
            if random.below(2) == 0 {
                random.below(30)
            } else {
                random.below(300)
            }
        };
        std::thread::sleep(Duration::from_millis(moment));
        deploy.kill(&mut bot);
    }
    let bot = deploy.start(&spec);
    deploy.polling(&bot);
    deploy.send(BURST);
    deploy.settle(bot);
    // Some starts are killed before they poll: not every kill is a
    // hand-over between pollers.
    deploy.report(None, 1);
}

/// 7. A laptop and a server with no store in common (two PID files, no
///    `url`): both poll, Telegram answers 409, and each side prints the
///    INSTANCE CONFLICT report. Measured: the polls each side makes up to
///    and including the 409 that brought the report.
#[test]
fn deploys_7_no_shared_store() {
    let runs = if full() { 10 } else { 2 };
    let mut polls_until_report = Vec::new();
    let mut conflicts = 0;
    for _ in 0..runs {
        let mut deploy = Deploy::new(
            "7. laptop + server, nothing shared",
            "none",
            BotApi::start(),
        );
        let (laptop, server) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut bots = [
            deploy.start(&Spec::new(BOT, laptop.path(), "laptop")),
            deploy.start(&Spec::new(BOT, server.path(), "server")),
        ];
        for bot in &bots {
            bot.says("ERROR - INSTANCE CONFLICT: Telegram refused getUpdates");
        }
        let polls = deploy.api.polls();
        for bot in &bots {
            let mine: Vec<_> = polls
                .iter()
                .filter(|poll| poll.label == bot.label)
                .collect();
            let until = mine
                .iter()
                .position(|poll| poll.outcome == Outcome::Conflict)
                .expect("a 409 before the report")
                + 1;
            polls_until_report.push(until);
        }
        conflicts += deploy.api.conflicts();
        // The count every other shape asserts zero sees these two.
        assert!(deploy.findings().overlaps > 0, "two pollers not counted");
        for bot in &mut bots {
            bot.signal(Signal::SIGINT);
            assert!(deploy.wait_exit(bot, DEADLINE).success());
        }
    }
    polls_until_report.sort_unstable();
    assert!(conflicts >= runs * 2, "{conflicts} 409s in {runs} runs");
    println!(
        "| 7. laptop + server, nothing shared | none | {runs} runs | {conflicts} 409s (expected) | - | polls until the report: {} / {} |",
        polls_until_report[(polls_until_report.len() - 1) / 2],
        polls_until_report[polls_until_report.len() - 1]
    );
}

/// The configurations DEPLOYS.md gives: the unit passes `systemd-analyze
/// verify` (with `ExecStart=` pointed at the built bot, which it checks
/// exists), and the compose file and the Deployment are YAML with the keys
/// the text relies on.
#[test]
fn deploy_configurations_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let unit = std::fs::read_to_string(dir.join("bot.service")).unwrap();
    let installed = "/usr/local/bin/teloxide-bot";
    assert!(unit.contains(&format!("ExecStart={installed}\n")), "{unit}");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let scratch = tempfile::tempdir().unwrap();
        let copy = scratch.path().join("bot.service");
        std::fs::write(&copy, unit.replace(installed, BOT)).unwrap();
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "bot.service: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        assert!(
            !servers::in_ci(),
            "systemd-analyze is missing (Debian package systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed");
    }

    let yaml = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        yaml_rust2::YamlLoader::load_from_str(&text)
            .unwrap_or_else(|error| panic!("{name}: {error}"))
    };
    let compose = &yaml("compose.yaml")[0];
    for service in ["bot", "bot-next"] {
        let service = &compose["services"][service];
        assert_eq!(service["restart"].as_str(), Some("unless-stopped"));
        assert!(service["stop_grace_period"].as_str().is_some());
        assert!(
            service["volumes"][0]
                .as_str()
                .is_some_and(|volume| volume.starts_with("bot-data:"))
        );
    }
    let documents = yaml("deployment.yaml");
    let deployment = documents
        .iter()
        .find(|document| document["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["strategy"]["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxSurge"].as_i64(),
        Some(1)
    );
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(),
        Some(0)
    );
    // One stop grace everywhere: systemd's, Docker's and the pod's.
    assert!(unit.contains("\nTimeoutStopSec=30s\n"));
    assert_eq!(
        compose["services"]["bot"]["stop_grace_period"].as_str(),
        Some("30s")
    );
    assert_eq!(
        spec["template"]["spec"]["terminationGracePeriodSeconds"].as_i64(),
        Some(30)
    );
    // No readiness probe: a pod waiting for the lock would never be Ready.
    assert!(spec["template"]["spec"]["containers"][0]["readinessProbe"].is_badvalue());
}
