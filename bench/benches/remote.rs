//! The lock across hosts, each engine against the machine's own server
//! (`PIDLOCK_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! `PIDLOCK_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/13`), beside a
//! floor: the least a client of that server can do for the same lock
//! (PostgreSQL: connect, `pg_try_advisory_lock`, `pg_advisory_unlock`;
//! Redis: connect, `SET NX PX`, `DEL`), with no checks, term or lease.
//!
//! 1. acquire + release, uncontended;
//! 2. refusal: a second acquirer told who holds the lock;
//! 3. hand-over: a standby waiting in the server holds the lock after the
//!    holder's guard is dropped (the time from the drop to the standby's
//!    `acquire` returning).
//!
//! Variants run interleaved, round after round, and medians are reported.
//!
//! `cargo bench -p pidlock-bench --features engines --bench remote`

use std::sync::mpsc;
use std::time::{Duration, Instant};

use pidlock_core::{Error, LogLevel, OnConflict, PgLock, RedisLock, RemoteGuard};

const ROUNDS: usize = 15;
const ITERS: usize = 10;
const HANDOVERS: usize = 60;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Postgres,
    Redis,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Redis => "Redis",
        }
    }

    fn url(self) -> String {
        match self {
            Self::Postgres => std::env::var("PIDLOCK_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
            Self::Redis => std::env::var("PIDLOCK_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/13".to_owned()),
        }
    }

    fn lock(self, key: &str, on_conflict: OnConflict) -> pidlock_core::Result<RemoteGuard> {
        match self {
            Self::Postgres => PgLock::new(self.url(), key)
                .on_conflict(on_conflict)
                .log_level(LogLevel::Warn)
                .acquire(),
            Self::Redis => RedisLock::new(self.url(), key)
                .on_conflict(on_conflict)
                .log_level(LogLevel::Warn)
                .acquire(),
        }
    }

    /// The floor: one connection, take the lock, give it back.
    fn floor(self, key: &str) {
        match self {
            Self::Postgres => {
                let mut client =
                    postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect");
                let id = PgLock::lock_id(key);
                let got: bool = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&id])
                    .expect("lock")
                    .get(0);
                assert!(got);
                client
                    .execute("SELECT pg_advisory_unlock($1)", &[&id])
                    .expect("unlock");
            }
            Self::Redis => {
                let mut connection = redis::Client::open(self.url())
                    .and_then(|client| client.get_connection())
                    .expect("connect");
                let name = format!("floor:{key}");
                let set: Option<String> = redis::cmd("SET")
                    .arg(&name)
                    .arg("token")
                    .arg("NX")
                    .arg("PX")
                    .arg(15_000)
                    .query(&mut connection)
                    .expect("SET");
                assert!(set.is_some());
                let _: i64 = redis::cmd("DEL")
                    .arg(&name)
                    .query(&mut connection)
                    .expect("DEL");
            }
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

fn main() {
    let engines = [Engine::Postgres, Engine::Redis];
    let key = format!("pidlock-bench-{}", std::process::id());

    // 1. acquire + release, and the floor, interleaved.
    let mut samples = vec![Vec::new(); 4];
    for _ in 0..ROUNDS {
        for (index, engine) in engines.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..ITERS {
                engine.floor(&key);
            }
            samples[index * 2].push(started.elapsed() / ITERS as u32);
            let started = Instant::now();
            for _ in 0..ITERS {
                drop(engine.lock(&key, OnConflict::Exit).expect("lock"));
            }
            samples[index * 2 + 1].push(started.elapsed() / ITERS as u32);
        }
    }
    let medians: Vec<Duration> = samples.into_iter().map(median).collect();
    println!("\nacquire + release, uncontended ({ROUNDS} rounds of {ITERS}; median per op)");
    println!("| engine | floor | pidlock | ratio |");
    println!("|---|---:|---:|---:|");
    for (index, engine) in engines.iter().enumerate() {
        let (floor, ours) = (medians[index * 2], medians[index * 2 + 1]);
        println!(
            "| {} | {} | {} | {:.1} |",
            engine.name(),
            ms(floor),
            ms(ours),
            ours.as_secs_f64() / floor.as_secs_f64()
        );
    }

    // 2. refusal.
    println!(
        "\nrefusal: Error::RemoteHeld naming the holder ({ROUNDS} rounds of {ITERS}; median per op)"
    );
    println!("| engine | median |");
    println!("|---|---:|");
    for engine in engines {
        let _holder = engine.lock(&key, OnConflict::Exit).expect("holder");
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..ITERS {
                match engine.lock(&key, OnConflict::Exit) {
                    Err(Error::RemoteHeld { .. }) => {}
                    other => panic!("expected RemoteHeld, got {other:?}"),
                }
            }
            samples.push(started.elapsed() / ITERS as u32);
        }
        println!("| {} | {} |", engine.name(), ms(median(samples)));
    }

    // 3. hand-over: two threads take turns; each waits in the server while
    // the other holds, and the holder drops its guard once the waiter is
    // blocked (a short pause after the waiter said it starts waiting).
    println!(
        "\nclean hand-over: drop -> the waiting standby's acquire returns ({HANDOVERS} hand-overs)"
    );
    println!("| engine | median | p90 | max |");
    println!("|---|---:|---:|---:|");
    for engine in engines {
        let mut took = Vec::new();
        let mut holder = engine.lock(&key, OnConflict::Exit).expect("first holder");
        for _ in 0..HANDOVERS {
            let (send, receive) = mpsc::channel();
            let key = key.clone();
            let standby = std::thread::spawn(move || {
                let guard = engine
                    .lock(&key, OnConflict::Wait { timeout: None })
                    .expect("standby");
                let _ = send.send(Instant::now());
                guard
            });
            // Long enough for the standby to be refused once and block.
            std::thread::sleep(Duration::from_millis(150));
            let dropped = Instant::now();
            drop(holder);
            let acquired = receive.recv().expect("standby acquired");
            took.push(acquired.duration_since(dropped));
            holder = standby.join().expect("standby thread");
        }
        drop(holder);
        took.sort_unstable();
        println!(
            "| {} | {} | {} | {} |",
            engine.name(),
            ms(took[took.len() / 2]),
            ms(took[took.len() * 9 / 10]),
            ms(took[took.len() - 1])
        );
    }
}
