//! Redis servers: the machine's own (`PIDLOCK_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379/13`: a database number of the tests' own), and
//! `redis-server`s a test starts for itself, with no persistence, on free
//! loopback ports (or inside a network namespace the test made), with TLS
//! or as a replica when asked; each is killed when dropped. An
//! administrator's connection goes through a Unix socket, reachable from any
//! namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::Certs;
use super::{DEADLINE, free_port, require};

/// The machine's server, or `None` (and a message) outside CI.
pub(crate) fn machine_url() -> Option<String> {
    let url = std::env::var("PIDLOCK_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/13".to_owned());
    let reached = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
    match reached {
        Ok(_) => Some(url),
        Err(error) => {
            assert!(!super::in_ci(), "CI=true and no Redis at {url}: {error}");
            eprintln!("skipped: no Redis at {url} ({error}); set PIDLOCK_TEST_REDIS_URL");
            None
        }
    }
}

/// An administrator's connection to `url` (plaintext).
pub(crate) fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(DEADLINE))
        .unwrap_or_else(|error| panic!("admin connection to {url}: {error}"))
}

/// The lock key of `key`, as the engine names it.
pub(crate) fn lock_key(key: &str) -> String {
    format!("pidlock:{{{key}}}")
}

fn server_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.exists())
}

/// How to start a server.
#[derive(Default)]
pub(crate) struct Setup<'a> {
    /// Also listen with TLS, with this certificate (its CA verifies clients'
    /// view of it; clients need no certificate).
    pub tls: Option<&'a Certs>,
    /// Replicate this port's server on 127.0.0.1.
    pub replica_of: Option<u16>,
    /// Start inside this network namespace.
    pub netns: Option<String>,
    /// Listen on these addresses (default 127.0.0.1).
    pub bind: Option<String>,
    /// More `--name value` arguments.
    pub args: Vec<String>,
}

/// A running server of the test's own.
pub(crate) struct RedisServer {
    child: Child,
    /// The plaintext port.
    pub port: u16,
    /// The TLS port, when asked for.
    pub tls_port: Option<u16>,
    pub dir: tempfile::TempDir,
    command: Vec<String>,
}

impl RedisServer {
    /// Starts one and waits until it answers, or `None` (outside CI)
    /// without `redis-server`.
    pub(crate) fn start(setup: Setup<'_>) -> Option<Self> {
        let binary = require(
            "redis-server (apt-get install redis-server)",
            server_binary(),
        )?;
        let dir = tempfile::Builder::new()
            .prefix("pidlock-redis-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let mut command = Vec::new();
        if let Some(netns) = &setup.netns {
            command.extend(["ip", "netns", "exec", netns.as_str()].map(str::to_owned));
        }
        command.push(binary.display().to_string());
        let arg = |command: &mut Vec<String>, name: &str, value: &str| {
            command.push(format!("--{name}"));
            command.push(value.to_owned());
        };
        arg(&mut command, "port", &port.to_string());
        // One argument per address: redis-server quotes an argument with a
        // space as one value.
        command.push("--bind".to_owned());
        command.extend(
            setup
                .bind
                .as_deref()
                .unwrap_or("127.0.0.1")
                .split_whitespace()
                .map(str::to_owned),
        );
        // Only the namespaces' and loopback addresses are ever bound; a
        // server there that refuses non-loopback clients would refuse the
        // holder in its own namespace.
        arg(&mut command, "protected-mode", "no");
        arg(&mut command, "save", "");
        arg(&mut command, "appendonly", "no");
        arg(&mut command, "dir", &dir.path().display().to_string());
        arg(
            &mut command,
            "unixsocket",
            &dir.path().join("redis.sock").display().to_string(),
        );
        arg(
            &mut command,
            "logfile",
            &dir.path().join("redis.log").display().to_string(),
        );
        let tls_port = setup.tls.map(|certs| {
            let tls_port = free_port();
            arg(&mut command, "tls-port", &tls_port.to_string());
            arg(
                &mut command,
                "tls-cert-file",
                &certs.server_cert.display().to_string(),
            );
            arg(
                &mut command,
                "tls-key-file",
                &certs.server_key.display().to_string(),
            );
            arg(
                &mut command,
                "tls-ca-cert-file",
                &certs.ca.display().to_string(),
            );
            arg(&mut command, "tls-auth-clients", "no");
            tls_port
        });
        if let Some(primary) = setup.replica_of {
            command.push("--replicaof".to_owned());
            command.push("127.0.0.1".to_owned());
            command.push(primary.to_string());
        }
        command.extend(setup.args);
        let server = Self {
            child: spawn(&command),
            port,
            tls_port,
            dir,
            command,
        };
        server.wait_ready();
        Some(server)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// A plaintext URL to 127.0.0.1, database `db`.
    pub(crate) fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// An administrator's connection (Unix socket), database `db`.
    pub(crate) fn admin(&self, db: u32) -> redis::Connection {
        redis::Client::open(self.socket_url(db))
            .and_then(|client| client.get_connection_with_timeout(DEADLINE))
            .unwrap_or_else(|error| panic!("admin connection: {error}\n{}", self.log()))
    }

    fn socket_url(&self, db: u32) -> String {
        format!("unix://{}?db={db}", self.socket().display())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        while !Path::new(&self.socket()).exists()
            || redis::Client::open(self.socket_url(0))
                .and_then(|client| client.get_connection())
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection))
                .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until this replica has its primary's data.
    pub(crate) fn wait_in_sync(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut self.admin(0))
                .expect("INFO");
            if info.contains("master_link_status:up") {
                return;
            }
            assert!(Instant::now() < deadline, "replica never in sync: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye, no save).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server and starts it again on the same ports, with the same
    /// settings: without persistence, it comes back empty.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.socket());
        self.child = spawn(&self.command);
        self.wait_ready();
    }

    /// The server's log so far, for failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

fn spawn(command: &[String]) -> Child {
    Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
