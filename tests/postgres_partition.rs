//! A real network partition: the holder runs in a network namespace of its
//! own, joined by a veth pair to a namespace where the test's own
//! PostgreSQL listens (both namespaces made here, removed when done), and
//! an nftables drop rule on both ends cuts the wire without closing
//! anything.
//! The server's keepalives then end the holder's session; the holder must
//! have stopped before the standby (next to the server) acquires. Ten runs,
//! each gap printed and asserted positive.
//!
//! Needs root, `ip` and `nft` (Debian's iproute2 and nftables); without them the test says so and passes,
//! except under `CI=true`.
#![cfg(feature = "postgres")]

mod pg_server;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use pg_server::{
    DEADLINE, PgServer, Process, Setup, engine, field, is_root, ms, now_ns, require, run,
    short_lease, unique_key,
};

/// The server's side of the veth pair, and the holder's. Link-local
/// addresses: they exist only inside the two namespaces made here.
const SERVER_ADDR: &str = "169.254.13.1";
const HOLDER_ADDR: &str = "169.254.13.2";

/// The lease settings of the holders: lease 2 s + grace 1 s < 4 s.
const SERVER_TIMEOUT: Duration = Duration::from_secs(4);

const RUNS: usize = 10;

/// Two namespaces joined by a veth pair; deleted when dropped.
struct Wire {
    holder_ns: String,
    server_ns: String,
    holder_if: String,
    server_if: String,
}

impl Wire {
    fn make() -> Self {
        let id = std::process::id() % 100_000;
        let wire = Self {
            holder_ns: format!("pidlock-h{id}"),
            server_ns: format!("pidlock-s{id}"),
            holder_if: format!("plh{id}"),
            server_if: format!("pls{id}"),
        };
        for ns in [&wire.holder_ns, &wire.server_ns] {
            run(Command::new("ip").args(["netns", "add", ns]));
        }
        run(Command::new("ip").args([
            "link",
            "add",
            &wire.holder_if,
            "netns",
            &wire.holder_ns,
            "type",
            "veth",
            "peer",
            "name",
            &wire.server_if,
            "netns",
            &wire.server_ns,
        ]));
        for (ns, interface, addr) in [
            (&wire.holder_ns, &wire.holder_if, HOLDER_ADDR),
            (&wire.server_ns, &wire.server_if, SERVER_ADDR),
        ] {
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                interface,
            ]));
            run(Command::new("ip").args(["-n", ns, "link", "set", interface, "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        wire
    }

    fn ends(&self) -> [(&str, &str); 2] {
        [
            (&self.holder_ns, &self.holder_if),
            (&self.server_ns, &self.server_if),
        ]
    }

    /// Drops every packet both ways at both ends; nothing is closed.
    ///
    /// With nftables rather than `tc netem loss 100%`: kernels built without
    /// netem (as this project's machines are) have nf_tables, and a drop
    /// rule is just as silent.
    fn cut(&self) {
        for (ns, interface) in self.ends() {
            let rules = format!(
                "table inet pidlock_cut {{\n\
                   chain incoming {{ type filter hook input priority -300; iifname \"{interface}\" drop; }}\n\
                   chain outgoing {{ type filter hook output priority -300; oifname \"{interface}\" drop; }}\n\
                 }}\n"
            );
            let mut nft = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("nft");
            nft.stdin
                .take()
                .expect("stdin")
                .write_all(rules.as_bytes())
                .expect("nft rules");
            assert!(nft.wait().expect("nft").success(), "nft refused the rules");
        }
    }

    fn heal(&self) {
        for (ns, _) in self.ends() {
            run(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "nft",
                "delete",
                "table",
                "inet",
                "pidlock_cut",
            ]));
        }
    }

    /// `command` run inside namespace `ns`.
    fn inside(ns: &str, command: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", ns])
            .arg(command.get_program())
            .args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(name, value),
                None => wrapped.env_remove(name),
            };
        }
        wrapped
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // Deleting a namespace removes the veth pair in it (and its peer).
        for ns in [&self.holder_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn tools() -> Option<()> {
    let found = |program: &str| Command::new(program).arg("-V").output().is_ok();
    require("root (for network namespaces)", is_root().then_some(()))?;
    require("ip (iproute2)", found("ip").then_some(()))?;
    require("nft (apt-get install nftables)", found("nft").then_some(()))
}

#[test]
fn postgres_partitioned_holder_stops_before_the_standby_acquires() {
    let Some(()) = tools() else { return };
    let wire = Wire::make();
    let Some(server) = PgServer::start(Setup {
        netns: Some(wire.server_ns.clone()),
        listen: Some(format!("{SERVER_ADDR},127.0.0.1")),
        ..Setup::default()
    }) else {
        return;
    };
    let mut gaps = Vec::new();
    for run_number in 1..=RUNS {
        let key = unique_key("partition");
        let mut holder = engine(&server.url_at(SERVER_ADDR), &key);
        short_lease(&mut holder, SERVER_TIMEOUT);
        let mut holder = Process::start(Wire::inside(&wire.holder_ns, &holder));
        let term = field(&holder.line_starting("held", DEADLINE), "term");
        let mut standby = engine(&server.url(), &key);
        // No handover: the gap below is the lease arithmetic's alone.
        short_lease(&mut standby, SERVER_TIMEOUT)
            .env("PIDLOCK_TEST_WAIT", "1")
            .env("PIDLOCK_TEST_HANDOVER_MS", "0");
        let standby = Process::start(Wire::inside(&wire.server_ns, &standby));
        // Blocked in the server: the lock is granted the moment it is free.
        std::thread::sleep(Duration::from_millis(300));

        let cut_at = now_ns();
        wire.cut();
        let stopped_at = field(&holder.line_starting("stopping", DEADLINE), "at");
        let held = standby.line_starting("held", DEADLINE);
        let acquired_at = field(&held, "at");
        let _ = holder.wait(DEADLINE);
        let stderr = holder.stderr_all();
        wire.heal();

        let gap = acquired_at - stopped_at;
        eprintln!(
            "run {run_number:2}: holder stopped {:7.1} ms after the cut, standby acquired {:7.1} ms after the cut: gap {:7.1} ms",
            ms(stopped_at - cut_at),
            ms(acquired_at - cut_at),
            ms(gap)
        );
        assert!(
            stderr.contains(&format!("Lost the PostgreSQL lock \"{key}\" (term {term})")),
            "{stderr}"
        );
        assert!(field(&held, "term") > term, "{held} after term {term}");
        if run_number == 1 {
            let said = stderr
                .lines()
                .find(|line| line.contains("Lost"))
                .unwrap_or("");
            eprintln!("run  1: the holder said: {said}");
        }
        gaps.push(gap);
    }
    let shown: Vec<String> = gaps.iter().map(|gap| format!("{:.0}", ms(*gap))).collect();
    eprintln!(
        "gaps (holder stop -> standby acquire), ms: {}",
        shown.join(", ")
    );
    assert!(
        gaps.iter().all(|&gap| gap > 0),
        "two holders at once: {shown:?}"
    );
}
