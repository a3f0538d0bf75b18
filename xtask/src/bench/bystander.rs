//! What `--capture-tls` costs a process it does not monitor, per TLS call
//! (`--case tls-bystander`).
//!
//! The probes live in monitored processes only, so a bystander's SSL
//! calls hit no breakpoint; what can reach it is what the TLS capture
//! attaches for every process (keyed by descriptor: syscall
//! tracepoints; with packets, nothing since memory-BIO objects are tied
//! as they send, where a read note on `sock_recv_length` ran for every
//! socket read on the host while a memory-BIO process was monitored). bystander.py (one process on CPU 0)
//! times SSL calls on a socket BIO (syscalls) against SSL calls on a
//! memory BIO (none), in alternating 20 ms turns, and prints both every
//! second: their ratio cancels the VM's speed of that second. Blocks of
//! seconds alternate with blocks of none: the agent with `--capture-tls`
//! (on CPU 1) monitoring a TLS server on socket BIOs, the same monitoring
//! one on memory BIOs (tls_server.py, idle: there to be probed), the
//! default agent, and a sham with no agent either, in turn. Each second's
//! ratio over the mean of its neighbouring no-agent blocks' medians is its
//! cost; the sham's is the A/A. What reading TLS costs the bystander is a
//! TLS agent's median over the default agent's, paired within each cycle
//! (they ran within a minute of each other).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::tools::{RunningAgent, free_port, median, median_ci95, pinned};

/// Seconds per block, of which the first [`SETTLE`] are not counted (the
/// agent starting or stopping).
const BLOCK: usize = 6;
const SETTLE: usize = 2;
/// Cycles of (off, w, off, x, off, y, off, z), (w, x, y, z) an order of
/// the four: 24 (about 20 minutes) resolve a TLS agent from the default
/// one to ±100 ns per call on the reference VM; 12 do not.
const CYCLES: usize = 24;

const SCRIPT: &str = include_str!("bystander.py");
const SERVER: &str = include_str!("tls_server.py");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Off,
    /// The agent with `--capture-tls`, monitoring a socket-BIO server.
    Tls,
    /// The same, monitoring a memory-BIO (asyncio) server.
    Memory,
    /// The default agent.
    Plain,
    Sham,
}

/// Blocks per cycle.
const PER_CYCLE: usize = 8;

/// The schedule: blocks in order, ending with an off block.
fn schedule() -> Vec<Block> {
    use Block::{Memory, Plain, Sham, Tls};
    const ORDERS: [[Block; 4]; 8] = [
        [Tls, Memory, Plain, Sham],
        [Memory, Plain, Sham, Tls],
        [Plain, Sham, Tls, Memory],
        [Sham, Tls, Memory, Plain],
        [Sham, Plain, Memory, Tls],
        [Tls, Sham, Plain, Memory],
        [Memory, Tls, Sham, Plain],
        [Plain, Memory, Tls, Sham],
    ];
    let mut blocks = Vec::new();
    for cycle in 0..CYCLES {
        for b in ORDERS[cycle % ORDERS.len()] {
            blocks.extend([Block::Off, b]);
        }
    }
    blocks.push(Block::Off);
    blocks
}

/// The result: per-second and per-cycle ratios, and what a call costs.
pub struct Bystander {
    /// Seconds with the TLS agent: (socket / memory) over the neighbouring
    /// no-agent blocks' median of the same.
    tls: Vec<f64>,
    /// The same monitoring the memory-BIO server.
    memory: Vec<f64>,
    /// The same with the default agent.
    plain: Vec<f64>,
    /// The same for the sham blocks (A/A).
    sham: Vec<f64>,
    /// Per cycle: the TLS agent's median over the default agent's.
    own: Vec<f64>,
    /// The same monitoring the memory-BIO server.
    own_memory: Vec<f64>,
    /// Median nanoseconds per socket-BIO SSL call without an agent.
    socket_ns: f64,
    /// The same for a memory-BIO SSL call.
    memory_ns: f64,
}

/// "q (95 % CI lo–hi)" of a sample.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    let q = median(&mut v);
    let (lo, hi) = median_ci95(&mut v);
    (q, lo, hi)
}

impl Bystander {
    pub fn line(&self) -> String {
        let ns = |q: f64| (q - 1.0) * self.socket_ns;
        let paired = |own: &[f64]| {
            let (q, lo, hi) = summary(own);
            format!(
                "{q:.3} (95 % CI {lo:.3}–{hi:.3}): {:.0} ns per call ({:.0} to {:.0})",
                ns(q),
                ns(lo),
                ns(hi)
            )
        };
        let alone = |v: &[f64]| {
            let (q, lo, hi) = summary(v);
            format!("{q:.3} ({lo:.3}–{hi:.3})")
        };
        format!(
            "TLS in a process not monitored (Python ssl on CPU 0, agents on CPU 1), a \
             socket-BIO SSL call of {:.0} ns: with the `--capture-tls` agent over with the \
             default agent, over {} cycles, monitoring a socket-BIO TLS server {}; monitoring \
             a memory-BIO one (asyncio) {}. Against no agent, over {} \
             seconds each: `--capture-tls` {}, monitoring asyncio {}, default {}, A/A {}. A \
             memory-BIO call ({:.0} ns, no syscall) hits no probe and no tracepoint",
            self.socket_ns,
            self.own.len(),
            paired(&self.own),
            paired(&self.own_memory),
            self.tls.len(),
            alone(&self.tls),
            alone(&self.memory),
            alone(&self.plain),
            alone(&self.sham),
            self.memory_ns
        )
    }
}

pub fn bystander(agent: &Path, work: &Path, extra: &[&str]) -> Result<Bystander> {
    let script = work.join("bystander.py");
    std::fs::write(&script, SCRIPT)?;
    let mut child = pinned(0, "python3")
        .arg(&script)
        .arg(work.join("cert.pem"))
        .arg(work.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bystander.py")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let (socket, memory) = (server(work, "socket")?, server(work, "asyncio")?);
    let mut tls_args = vec!["--capture-tls"];
    tls_args.extend_from_slice(extra);
    // (block, socket ns, memory ns) per second.
    let mut seconds: Vec<(usize, f64, f64)> = Vec::new();
    // Warm-up: a second thrown away.
    lines.next().context("bystander.py ended")??;
    for (i, block) in schedule().into_iter().enumerate() {
        let running = match block {
            Block::Tls => Some(RunningAgent::start(agent, socket.port, &tls_args, false)?),
            Block::Memory => Some(RunningAgent::start(agent, memory.port, &tls_args, false)?),
            Block::Plain => Some(RunningAgent::start(agent, socket.port, extra, false)?),
            Block::Off | Block::Sham => None,
        };
        for s in 0..BLOCK {
            let line = lines.next().context("bystander.py ended")??;
            let mut w = line.split_whitespace().map(str::parse::<f64>);
            let (Some(Ok(socket)), Some(Ok(memory))) = (w.next(), w.next()) else {
                bail!("bystander.py printed {line:?}");
            };
            if s >= SETTLE {
                seconds.push((i, socket, memory));
            }
            if s + 1 == SETTLE
                && let Some(running) = &running
            {
                probed_is(running, block != Block::Plain)?;
            }
        }
        drop(running);
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "stop");
    }
    let _ = child.wait();
    Ok(summarise(&schedule(), &seconds))
}

fn summarise(blocks: &[Block], seconds: &[(usize, f64, f64)]) -> Bystander {
    let ratio_median = |i: usize| {
        let mut r: Vec<f64> = seconds
            .iter()
            .filter(|s| s.0 == i)
            .map(|s| s.1 / s.2)
            .collect();
        median(&mut r)
    };
    // (block index, ratio over its neighbours) of every measured second.
    let mut measured: Vec<(usize, f64)> = Vec::new();
    for &(i, socket, memory) in seconds {
        if blocks[i] == Block::Off {
            continue;
        }
        // Blocks alternate, so a measured block has an off block on each
        // side.
        let baseline = (ratio_median(i - 1) + ratio_median(i + 1)) / 2.0;
        measured.push((i, socket / memory / baseline));
    }
    let of = |kind: Block, cycle: Option<usize>| -> Vec<f64> {
        measured
            .iter()
            .filter(|(i, _)| blocks[*i] == kind && cycle.is_none_or(|c| i / PER_CYCLE == c))
            .map(|&(_, r)| r)
            .collect()
    };
    let own = |kind: Block| {
        (0..CYCLES)
            .filter_map(|c| {
                let (mut t, mut p) = (of(kind, Some(c)), of(Block::Plain, Some(c)));
                (!t.is_empty() && !p.is_empty()).then(|| median(&mut t) / median(&mut p))
            })
            .collect()
    };
    let off = |f: fn(&(usize, f64, f64)) -> f64| {
        let mut v: Vec<f64> = seconds
            .iter()
            .filter(|s| blocks[s.0] == Block::Off)
            .map(f)
            .collect();
        median(&mut v)
    };
    Bystander {
        tls: of(Block::Tls, None),
        memory: of(Block::Memory, None),
        plain: of(Block::Plain, None),
        sham: of(Block::Sham, None),
        own: own(Block::Tls),
        own_memory: own(Block::Memory),
        socket_ns: off(|s| s.1),
        memory_ns: off(|s| s.2),
    }
}

/// A monitored TLS server (tls_server.py), stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tls_server.py in `mode` (socket, asyncio), listening, on CPU 1.
fn server(work: &Path, mode: &str) -> Result<Server> {
    let script = work.join("tls_server.py");
    std::fs::write(&script, SERVER)?;
    let port = free_port()?;
    let mut child = pinned(1, "python3")
        .arg(&script)
        .args([mode, &port.to_string()])
        .arg(work.join("cert.pem"))
        .arg(work.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tls_server.py")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let server = Server { child, port };
    if line.trim() != "listening" {
        bail!("tls_server.py {mode} printed {line:?}");
    }
    Ok(server)
}

/// Fails unless the agent has (`wanted`) or has not probed a TLS library
/// in the server it monitors: the blocks measure what they say.
fn probed_is(agent: &RunningAgent, wanted: bool) -> Result<()> {
    let body = crate::load::http_get(agent.admin, "/metrics")?;
    let probed = body
        .lines()
        .any(|l| l.starts_with("apm_ebpf_probe_attached{probe=\"uprobe:/") && l.ends_with(" 1"));
    if probed != wanted {
        bail!("a TLS library is probed: {probed}, wanted {wanted}");
    }
    Ok(())
}
