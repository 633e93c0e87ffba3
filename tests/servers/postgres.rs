//! PostgreSQL servers (and the programs around them) that a test starts for
//! itself: `initdb` in a temporary directory, a free loopback port (or an
//! address inside a network namespace the test made), and `pg_ctl stop` plus
//! removal when dropped. As root they run as the `postgres` user, since
//! PostgreSQL refuses to run as root.
//!
//! Without the server binaries these helpers say so and the tests skip,
//! except under `CI=true`, where a missing binary fails them.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{free_port, is_root, require, run};

/// The machine's server for the tests that need no server of their own:
/// `PIDLOCK_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
/// `None` (and a message) without one, outside CI.
pub(crate) fn machine_url() -> Option<String> {
    let url = std::env::var("PIDLOCK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    match postgres::Client::connect(&url, postgres::NoTls) {
        Ok(_) => Some(url),
        Err(error) => {
            assert!(
                !super::in_ci(),
                "CI=true and no PostgreSQL at {url}: {error}"
            );
            eprintln!("skipped: no PostgreSQL at {url} ({error}); set PIDLOCK_TEST_POSTGRES_URL");
            None
        }
    }
}

/// The newest installed PostgreSQL's binaries (Debian's layout), or
/// `PIDLOCK_TEST_PG_BIN`.
pub(crate) fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PIDLOCK_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// `command` as the user PostgreSQL and PgBouncer accept: `postgres` when we
/// are root, ourselves otherwise.
pub(crate) fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Gives `path` to the server user (as root; otherwise it is ours already).
pub(crate) fn chown_to_server_user(path: &Path) {
    if !is_root() {
        return;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("user database")
        .expect("no user postgres");
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).expect("chown");
}

/// How to set up a server.
#[derive(Default)]
pub(crate) struct Setup {
    /// Lines for `postgresql.conf`.
    pub conf: String,
    /// The whole `pg_hba.conf` (default: trust everyone, TLS or not).
    pub hba: Option<String>,
    /// Start it inside this network namespace.
    pub netns: Option<String>,
    /// Listen here (default 127.0.0.1).
    pub listen: Option<String>,
}

/// A running server of the test's own.
pub(crate) struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    netns: Option<String>,
}

impl PgServer {
    /// Starts one, or `None` (outside CI) without the binaries.
    pub(crate) fn start(setup: Setup) -> Option<Self> {
        let bin = require("PostgreSQL's initdb (/usr/lib/postgresql/*/bin)", pg_bin())?;
        let dir = tempfile::Builder::new()
            .prefix("pidlock-pg-")
            .tempdir()
            .expect("tempdir");
        chown_to_server_user(dir.path());
        let data = dir.path().join("data");
        run(as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
            ])
            .args(["--locale", "C"]));
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '{}'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 40\n\
             shared_buffers = 16MB\nlog_min_messages = warning\n",
            setup.listen.as_deref().unwrap_or("127.0.0.1"),
            dir.path().display()
        );
        conf.push_str(&setup.conf);
        append(&data.join("postgresql.conf"), &conf);
        let hba = setup.hba.unwrap_or_else(|| {
            "local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n"
                .to_owned()
        });
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        let server = Self {
            dir,
            port,
            bin,
            netns: setup.netns,
        };
        server.pg_ctl(&["start", "-w", "-t", "30"]);
        Some(server)
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pg_ctl` on this server (in its namespace, as the server user).
    pub(crate) fn pg_ctl(&self, args: &[&str]) -> String {
        let mut command = self.pg_ctl_command();
        command
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(args);
        run(&mut command)
    }

    /// The `pg_ctl` command of this server: in its network namespace if it
    /// has one, as the server user.
    fn pg_ctl_command(&self) -> Command {
        let pg_ctl = self.bin.join("pg_ctl");
        match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]);
                if is_root() {
                    command.args([
                        "setpriv",
                        "--reuid=postgres",
                        "--regid=postgres",
                        "--init-groups",
                    ]);
                }
                command.arg(&pg_ctl);
                command
            }
            None => as_server_user(&pg_ctl),
        }
    }

    /// A URL over TCP to `host` (an address the server listens on).
    pub(crate) fn url_at(&self, host: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    pub(crate) fn url(&self) -> String {
        self.url_at("127.0.0.1")
    }

    /// A URL through the Unix socket: reachable from any network namespace.
    pub(crate) fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres sslmode=disable",
            self.dir.path().display(),
            self.port
        )
    }

    /// An administrator's connection (Unix socket, no TLS).
    pub(crate) fn admin(&self) -> postgres::Client {
        postgres::Client::connect(&self.socket_url(), postgres::NoTls).expect("admin connection")
    }

    /// The server's log so far, for failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl_command()
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub(crate) fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The advisory key of `key` as `pg_locks` shows it.
pub(crate) fn holder_backend(admin: &mut postgres::Client, key: &str) -> Option<i32> {
    let id = pidlock_core::PgLock::lock_id(key);
    admin
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
            &[&(id >> 32), &(id & 0xffff_ffff)],
        )
        .expect("pg_locks")
        .map(|row| row.get(0))
}
