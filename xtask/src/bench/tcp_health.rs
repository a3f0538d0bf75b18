//! What the TCP health tracepoints cost (`--case tcp-health`).
//!
//! They run on every retransmission and reset of the host, monitored or
//! not, and on nothing else: a paired captured/uncaptured port would pay
//! the same invocation on both sides, so the kernel's own accounting
//! (`kernel.bpf_stats_enabled`) is the measure. The same bulk transfers
//! (tests/servers/tcp_peer.py, 16 connections of 64 KiB exchanges in a
//! namespace of its own with an MTU-1500 loopback) run twice with the
//! agent monitoring the server's port: on a clean link, where the
//! programs should not run at all, then with nftables dropping 2 % of the
//! port's packets each way, where they run once per retransmitted buffer
//! and per reset. Reported: runs and nanoseconds per run, against the
//! namespace's own `RetransSegs`, and the programs' share of the run's
//! wall time on one CPU.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::tools::{RunningAgent, bpf_run_time, free_port, with_bpf_stats};

/// The programs, as `bpftool` names them (from their BTF).
const PROGRAMS: [&str; 4] = [
    "tcp_retransmit_skb",
    "tcp_retransmit_synack",
    "tcp_send_reset",
    "tcp_receive_reset",
];
const NS: &str = "apm-bench-tcph";
const LOSS_PERCENT: u32 = 2;
/// Exchanges per connection, each 64 KiB down and 4 KiB up.
const ROUNDS: u32 = 400;

/// One phase's numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phase {
    pub runs: u64,
    pub ns: u64,
    pub retransmitted: u64,
    pub secs: f64,
}

pub struct TcpHealthCost {
    pub clean: Phase,
    pub lossy: Phase,
}

impl TcpHealthCost {
    pub fn line(&self) -> String {
        let per_run = |p: &Phase| p.ns as f64 / p.runs.max(1) as f64;
        let share = |p: &Phase| p.ns as f64 / (p.secs * 1e9) * 100.0;
        format!(
            "TCP health tracepoints: clean link {} runs in {:.1} s ({} segments retransmitted); \
             {LOSS_PERCENT} % loss: {} runs for {} segments retransmitted, {:.0} ns a run, \
             {:.4} % of one CPU over the {:.1} s run",
            self.clean.runs,
            self.clean.secs,
            self.clean.retransmitted,
            self.lossy.runs,
            self.lossy.retransmitted,
            per_run(&self.lossy),
            share(&self.lossy),
            self.lossy.secs,
        )
    }
}

/// The namespace, deleted on drop.
struct Namespace;

impl Namespace {
    fn create() -> Result<Self> {
        // One a run that was killed left behind.
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", NS]))?;
        let ns = Self;
        run(Command::new("ip").args(["-n", NS, "link", "set", "lo", "up", "mtu", "1500"]))?;
        Ok(ns)
    }

    fn command(program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", NS, program]);
        cmd
    }

    /// Drops `percent` of `port`'s packets each way (none: no rule).
    fn lose(port: u16, percent: u32) -> Result<()> {
        let rules = format!(
            "table inet apm_bench {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
             tcp dport {port} numgen random mod 100 < {percent} drop\n  \
             tcp sport {port} numgen random mod 100 < {percent} drop\n }}\n}}\n"
        );
        let mut nft = Self::command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("nft")?;
        nft.stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        ensure!(nft.wait()?.success(), "nft refused the loss rules");
        Ok(())
    }

    /// `RetransSegs` of the namespace.
    fn retransmitted() -> Result<u64> {
        let out = Self::command("cat").arg("/proc/net/snmp").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
        ensure!(tcp.len() == 2, "no Tcp lines in /proc/net/snmp");
        tcp[0]
            .split_whitespace()
            .zip(tcp[1].split_whitespace())
            .find(|(n, _)| *n == "RetransSegs")
            .and_then(|(_, v)| v.parse().ok())
            .context("RetransSegs")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("{cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed");
    Ok(())
}

/// A `tcp_peer.py` process, killed on drop.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn start(script: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Namespace::command("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting tcp_peer.py")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take().context("stdin")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let peer = Self {
            child,
            stdin,
            lines,
        };
        peer.expect("listening", Duration::from_secs(10))?;
        Ok(peer)
    }

    fn expect(&self, word: &str, within: Duration) -> Result<()> {
        let line = self
            .lines
            .recv_timeout(within)
            .with_context(|| format!("tcp_peer.py did not say {word:?}"))?;
        if !line.starts_with(word) {
            bail!("tcp_peer.py said {line:?}, not {word:?}");
        }
        Ok(())
    }

    fn command(&mut self, line: &str, reply: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.expect(reply, Duration::from_secs(300))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tcp_health(root: &Path, agent: &Path, extra: &[&str]) -> Result<TcpHealthCost> {
    let script = root.join("tests/servers/tcp_peer.py");
    let _ns = Namespace::create()?;
    let (port, lport) = (free_port()?, free_port()?);
    let _server = Peer::start(&script, &["serve", &port.to_string()])?;
    let mut client = Peer::start(&script, &["client", &lport.to_string()])?;
    let _agent = RunningAgent::start(agent, port, extra, false)?;
    let phase = |client: &mut Peer| -> Result<Phase> {
        with_bpf_stats(|| {
            let (t0, r0) = (bpf_run_time(&PROGRAMS)?, Namespace::retransmitted()?);
            let start = Instant::now();
            client.command(&format!("load {port} 16 {ROUNDS} 65536 4096"), "loaded")?;
            client.command("close", "closed")?;
            let secs = start.elapsed().as_secs_f64();
            let (t1, r1) = (bpf_run_time(&PROGRAMS)?, Namespace::retransmitted()?);
            Ok(Phase {
                runs: t1.1 - t0.1,
                ns: t1.0 - t0.0,
                retransmitted: r1 - r0,
                secs,
            })
        })
    };
    let clean = phase(&mut client)?;
    Namespace::lose(port, LOSS_PERCENT)?;
    let lossy = phase(&mut client)?;
    Ok(TcpHealthCost { clean, lossy })
}
