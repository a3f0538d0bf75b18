//! What `--capture-tls` costs a process it does not monitor, per TLS call
//! (`--case tls-bystander`).
//!
//! The probes live in monitored processes only, so a bystander's SSL
//! calls hit no breakpoint; what reaches it is the syscall tracepoints the
//! TLS capture attaches, in the syscalls its SSL calls make. bystander.py
//! (one process on CPU 0) times SSL calls on a socket BIO (one syscall
//! each) against SSL calls on a memory BIO (none), in alternating 20 ms
//! turns, and prints both every second: their ratio cancels the VM's speed
//! of that second. Blocks of seconds alternate: no agent, the agent (on
//! CPU 1, `--capture-tls`), no agent, a sham block with no agent either,
//! the agent's and the sham's places swapped every cycle. Each agent (or
//! sham) second's ratio over the mean of its neighbouring no-agent blocks'
//! medians is the cost; the sham's is the A/A.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use super::tools::{RunningAgent, free_port, median, median_ci95, pinned};

/// Seconds per block, of which the first [`SETTLE`] are not counted (the
/// agent starting or stopping).
const BLOCK: usize = 6;
const SETTLE: usize = 2;
/// Cycles of (off, agent, off, sham), the last two swapped every other.
const CYCLES: usize = 6;

const SCRIPT: &str = include_str!("bystander.py");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Off,
    Agent,
    Sham,
}

/// The schedule: blocks in order, ending with an off block.
fn schedule() -> Vec<Block> {
    let mut blocks = Vec::new();
    for cycle in 0..CYCLES {
        let (x, y) = if cycle % 2 == 0 {
            (Block::Agent, Block::Sham)
        } else {
            (Block::Sham, Block::Agent)
        };
        blocks.extend([Block::Off, x, Block::Off, y]);
    }
    blocks.push(Block::Off);
    blocks
}

/// The result: per-second ratios and what a socket-BIO call costs.
pub struct Bystander {
    /// Agent seconds: (socket / memory) over the neighbouring no-agent
    /// blocks' median of the same.
    pub agent: Vec<f64>,
    /// The same for the sham blocks (A/A).
    pub sham: Vec<f64>,
    /// Median nanoseconds per socket-BIO SSL call without the agent.
    pub socket_ns: f64,
    /// The same for a memory-BIO SSL call.
    pub memory_ns: f64,
}

impl Bystander {
    pub fn line(&self) -> String {
        let (mut agent, mut sham) = (self.agent.clone(), self.sham.clone());
        let (q, (lo, hi)) = (median(&mut agent), median_ci95(&mut agent));
        let (aa, (aa_lo, aa_hi)) = (median(&mut sham), median_ci95(&mut sham));
        let added = |q: f64| (q - 1.0) * self.socket_ns;
        format!(
            "TLS in a process not monitored (Python ssl, `--capture-tls` agent on the other CPU): \
             an SSL call on a socket BIO (one syscall) with/without the agent {q:.3} \
             (95 % CI {lo:.3}–{hi:.3}), A/A {aa:.3} ({aa_lo:.3}–{aa_hi:.3}), over {} seconds: \
             {:.0} ns added per call ({:.0} to {:.0}) of {:.0} ns; an SSL call on a memory BIO \
             ({:.0} ns, no syscall) hits no probe and no tracepoint",
            agent.len(),
            added(q),
            added(lo),
            added(hi),
            self.socket_ns,
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
    let port = free_port()?;
    let mut args = vec!["--capture-tls"];
    args.extend_from_slice(extra);
    // (block, socket ns, memory ns) per second.
    let mut seconds: Vec<(usize, f64, f64)> = Vec::new();
    // Warm-up: a second thrown away.
    lines.next().context("bystander.py ended")??;
    for (i, block) in schedule().into_iter().enumerate() {
        let running = match block {
            Block::Agent => Some(RunningAgent::start(agent, port, &args, false)?),
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
    let (mut agent, mut sham) = (Vec::new(), Vec::new());
    for &(i, socket, memory) in seconds {
        let out = match blocks[i] {
            Block::Agent => &mut agent,
            Block::Sham => &mut sham,
            Block::Off => continue,
        };
        // Blocks alternate, so an agent or sham block has an off block on
        // each side.
        let baseline = (ratio_median(i - 1) + ratio_median(i + 1)) / 2.0;
        out.push(socket / memory / baseline);
    }
    let off = |f: fn(&(usize, f64, f64)) -> f64| {
        let mut v: Vec<f64> = seconds
            .iter()
            .filter(|s| blocks[s.0] == Block::Off)
            .map(f)
            .collect();
        median(&mut v)
    };
    Bystander {
        agent,
        sham,
        socket_ns: off(|s| s.1),
        memory_ns: off(|s| s.2),
    }
}
