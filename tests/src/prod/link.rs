//! The Ethernet-like link: a namespace whose loopback has MTU 1500, one
//! segment per packet and optional loss, with nftables packet counters.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use crate::NetNs;

/// Packets larger than this never leave a socket in a [`LinkNs`].
pub const MTU: u64 = 1500;

/// The nftables table a [`LinkNs`] counts (and drops) packets with.
const TABLE: &str = "apm_prod";

/// Runs `cmd` and fails with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with `input` on its stdin and fails unless it succeeds.
fn run_with_input(cmd: &mut Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} with {input:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A network namespace whose loopback carries traffic the way an Ethernet
/// link does: MTU 1500, segmentation offloads off and at most one segment
/// per packet (`gso_max_segs 1`: TCP always builds GSO packets, which a
/// loopback without offloads would only split after the packet programs
/// saw them), so a request or response of more than 1448 bytes spans
/// several packets in both directions. An nftables table counts the
/// servers' packets and any packet over 1500 bytes, and with
/// `loss_percent` > 0 drops that share of the servers' packets at random
/// in each direction on the input hook: after the sender's stack (and,
/// for the server's segments, after the agent's egress program) saw
/// them, so each drop is a real loss the sender recovers from by
/// retransmitting. The server's ingress capture sees the hole and the
/// late retransmission; its egress capture sees the retransmission again.
pub struct LinkNs {
    pub ns: NetNs,
    pub ports: Vec<u16>,
    pub loss_percent: u32,
}

/// The packet counters of a [`LinkNs`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets over [`MTU`] bytes sent by anyone in the namespace.
    pub oversize: u64,
    /// Packets the servers sent.
    pub server_out: u64,
    /// Packets the clients sent to the servers.
    pub client_out: u64,
    /// Client-to-server packets dropped before the server saw them.
    pub lost_to_server: u64,
    /// Server-to-client packets dropped before the client saw them.
    pub lost_to_client: u64,
    /// Handshakes whose last ACK was dropped ([`LinkNs::lose_handshake_acks`]).
    pub lost_handshake_acks: u64,
    /// TCP segments retransmitted in the namespace (/proc/net/snmp).
    pub retransmitted: u64,
}

impl LinkNs {
    /// The namespace with its link and nftables table set up for the
    /// servers' `ports`; fails (naming what) if any setting did not take.
    pub fn create(tag: &str, ports: &[u16], loss_percent: u32) -> Result<Self> {
        let ns = NetNs::create(tag);
        let name = ns.name().to_owned();
        run_ok(Command::new("ip").args([
            "-n",
            &name,
            "link",
            "set",
            "lo",
            "mtu",
            "1500",
            "gso_max_segs",
            "1",
        ]))?;
        run_ok(
            ns.command("ethtool")
                .args(["-K", "lo", "tso", "off", "gso", "off", "gro", "off"]),
        )?;
        let link = run_ok(Command::new("ip").args(["-n", &name, "-d", "link", "show", "lo"]))?;
        ensure!(
            link.contains("mtu 1500") && link.contains("gso_max_segs 1 "),
            "lo of {name} is not MTU 1500 with one segment per packet: {link}"
        );
        let features = run_ok(ns.command("ethtool").args(["-k", "lo"]))?;
        for feature in [
            "tcp-segmentation-offload: off",
            "generic-segmentation-offload: off",
            "generic-receive-offload: off",
        ] {
            ensure!(features.contains(feature), "lo of {name}: {features}");
        }
        let set = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut rules = format!(
            "table inet {TABLE} {{\n\
             \x20 chain output {{\n\
             \x20   type filter hook output priority 0; policy accept;\n\
             \x20   meta length > {MTU} counter comment \"oversize\"\n\
             \x20   tcp sport {{ {set} }} counter comment \"server_out\"\n\
             \x20   tcp dport {{ {set} }} counter comment \"client_out\"\n\
             \x20 }}\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority 0; policy accept;\n"
        );
        if loss_percent > 0 {
            rules.push_str(&format!(
                "\x20   tcp dport {{ {set} }} numgen random mod 100 < {loss_percent} counter drop comment \"lost_to_server\"\n\
                 \x20   tcp sport {{ {set} }} numgen random mod 100 < {loss_percent} counter drop comment \"lost_to_client\"\n"
            ));
        }
        rules.push_str("  }\n}\n");
        run_with_input(ns.command("nft").args(["-f", "-"]), &rules)?;
        Ok(Self {
            ns,
            ports: ports.to_vec(),
            loss_percent,
        })
    }

    /// From now on, drops the first payload-less ACK each client sends a
    /// server (the handshake's last), once per connection (a conntrack
    /// mark remembers it): the first request's segment then completes the
    /// handshake, and the kernel filters it on the listening socket.
    pub fn lose_handshake_acks(&self) -> Result<()> {
        let set = self
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let rule = format!(
            "insert rule inet {TABLE} input tcp dport {{ {set} }} \
             tcp flags & (fin | syn | rst | psh | ack) == ack meta length < 64 \
             ct mark != 0x41 ct mark set 0x41 counter drop comment \"lost_handshake_ack\"\n"
        );
        run_with_input(self.ns.command("nft").args(["-f", "-"]), &rule)
    }

    /// From now on, loses nothing (the input chain's rules and their
    /// counters go: read [`Self::check_loss`] first).
    pub fn stop_loss(&self) -> Result<()> {
        run_ok(
            self.ns
                .command("nft")
                .args(["flush", "chain", "inet", TABLE, "input"]),
        )
        .map(|_| ())
    }

    /// The counters now.
    pub fn counters(&self) -> Result<LinkCounters> {
        let json = run_ok(
            self.ns
                .command("nft")
                .args(["-j", "list", "table", "inet", TABLE]),
        )?;
        let v: serde_json::Value = serde_json::from_str(&json).context("nft -j")?;
        let mut c = LinkCounters::default();
        for item in v["nftables"].as_array().context("nftables")? {
            let rule = &item["rule"];
            let Some(comment) = rule["comment"].as_str() else {
                continue;
            };
            let packets = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|e| e["counter"]["packets"].as_u64())
                .with_context(|| format!("counter of {comment}"))?;
            match comment {
                "oversize" => c.oversize = packets,
                "server_out" => c.server_out = packets,
                "client_out" => c.client_out = packets,
                "lost_to_server" => c.lost_to_server = packets,
                "lost_to_client" => c.lost_to_client = packets,
                "lost_handshake_ack" => c.lost_handshake_acks = packets,
                _ => {}
            }
        }
        let snmp = run_ok(self.ns.command("cat").arg("/proc/net/snmp"))?;
        let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
        ensure!(tcp.len() == 2, "no Tcp lines in /proc/net/snmp: {snmp}");
        let names = tcp[0].split_whitespace();
        let values = tcp[1].split_whitespace();
        c.retransmitted = names
            .zip(values)
            .find(|(n, _)| *n == "RetransSegs")
            .and_then(|(_, v)| v.parse().ok())
            .context("RetransSegs")?;
        Ok(c)
    }

    /// Fails unless every packet stayed within the MTU and the servers
    /// sent and received at least `packets` packets each way.
    pub fn check_link(&self, packets: u64) -> Result<LinkCounters> {
        let c = self.counters()?;
        ensure!(
            c.oversize == 0,
            "{} packets over {MTU} bytes: the link is not Ethernet-like ({c:?})",
            c.oversize
        );
        ensure!(
            c.server_out >= packets && c.client_out >= packets,
            "fewer than {packets} packets each way: {c:?}"
        );
        Ok(c)
    }

    /// Fails unless the link really lost packets both ways and TCP
    /// retransmitted them.
    pub fn check_loss(&self) -> Result<LinkCounters> {
        let c = self.counters()?;
        ensure!(
            c.lost_to_server > 0 && c.lost_to_client > 0 && c.retransmitted > 0,
            "the lossy link lost nothing: {c:?}"
        );
        Ok(c)
    }
}
