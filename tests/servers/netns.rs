//! A real network partition: two network namespaces joined by a veth pair
//! (both made here, removed when dropped), and an nftables drop rule on both
//! ends that cuts the wire without closing anything. Needs root, `ip` and
//! `nft` (Debian's iproute2 and nftables).

use std::io::Write;
use std::process::{Command, Stdio};

use super::{is_root, require, run};

/// The server's side of the veth pair, and the holder's. Link-local
/// addresses: they exist only inside the two namespaces made here.
pub(crate) const SERVER_ADDR: &str = "169.254.13.1";
pub(crate) const HOLDER_ADDR: &str = "169.254.13.2";

/// Two namespaces joined by a veth pair; deleted when dropped.
pub(crate) struct Wire {
    pub holder_ns: String,
    pub server_ns: String,
    holder_if: String,
    server_if: String,
}

impl Wire {
    /// `tag` (one letter) tells apart the wires of tests running at once
    /// in one process; the PID, those of two runs of the suite.
    pub(crate) fn make(tag: char) -> Self {
        let id = std::process::id() % 100_000;
        let wire = Self {
            holder_ns: format!("pidlock-{tag}h{id}"),
            server_ns: format!("pidlock-{tag}s{id}"),
            holder_if: format!("pl{tag}h{id}"),
            server_if: format!("pl{tag}s{id}"),
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
    pub(crate) fn cut(&self) {
        self.drop_rules("", "");
    }

    /// Drops the packets of TCP port `port` (a server's, on the server's
    /// side) both ways at both ends; everything else still flows, so the
    /// holder loses its database and keeps every other service.
    pub(crate) fn cut_port(&self, port: u16) {
        self.drop_rules(&format!("tcp sport {port} "), &format!("tcp dport {port} "));
    }

    /// The drop rules, with `from_server` matching packets the server sent
    /// and `to_server` packets sent to it (empty: all packets).
    fn drop_rules(&self, from_server: &str, to_server: &str) {
        for (ns, interface) in self.ends() {
            let (incoming, outgoing) = if ns == self.holder_ns {
                (from_server, to_server)
            } else {
                (to_server, from_server)
            };
            let rules = format!(
                "table inet pidlock_cut {{\n\
                   chain incoming {{ type filter hook input priority -300; iifname \"{interface}\" {incoming}drop; }}\n\
                   chain outgoing {{ type filter hook output priority -300; oifname \"{interface}\" {outgoing}drop; }}\n\
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

    pub(crate) fn heal(&self) {
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
    pub(crate) fn inside(ns: &str, command: &Command) -> Command {
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

pub(crate) fn tools() -> Option<()> {
    let found = |program: &str| Command::new(program).arg("-V").output().is_ok();
    require("root (for network namespaces)", is_root().then_some(()))?;
    require("ip (iproute2)", found("ip").then_some(()))?;
    require("nft (apt-get install nftables)", found("nft").then_some(()))
}
