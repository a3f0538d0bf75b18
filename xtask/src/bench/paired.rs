//! The paired bench: the capture's cost measured inside one run, where
//! this VM's drift (10-20 % between runs minutes apart) cancels.
//!
//! One nginx process (one worker, CPU 0) listens on three ports: A is
//! captured by the agent (running throughout, on CPU 1 with wrk), B and C
//! are not. wrk alternates 1-second runs: an A/B pair (order flipped every
//! pair), then a C/B pair, the A/A check that reads what the harness
//! measures when nothing differs. The headline is the median of A/B with
//! its 95 % interval, next to the median of C/B; the added CPU per
//! request is split into the packet programs (the kernel's own BPF run-time
//! statistics, read around each A run) and the agent process (its CPU over
//! the bench per request it paired).

use std::{path::Path, time::Duration};

use anyhow::{Result, ensure};

use super::tools::{
    Nginx, RunningAgent, bpf_run_time, free_port, median, median_ci95, nginx_cpu_seconds,
    with_bpf_stats, wrk,
};
use crate::load::cpu_seconds;

/// Pairs of each kind.
pub const PAIRS: usize = 40;
/// Seconds per wrk run.
const RUN_SECS: u64 = 1;

#[derive(Default)]
pub struct Paired {
    /// Captured / uncaptured throughput, per pair.
    pub ratios: Vec<f64>,
    /// Uncaptured / uncaptured, per pair (A/A).
    pub aa: Vec<f64>,
    /// Requests/s on the captured port, per run.
    pub captured_rps: Vec<f64>,
    /// Nanoseconds the packet programs ran per captured request.
    pub bpf_ns: f64,
    /// Nanoseconds of agent CPU per captured request.
    pub agent_ns: f64,
    /// Nanoseconds of the server's CPU per request (all ports).
    pub server_ns: f64,
    /// Requests the agent paired / requests wrk completed on A.
    pub paired: f64,
    pub sent: f64,
}

impl Paired {
    pub fn median(&self) -> f64 {
        median(&mut self.ratios.clone())
    }

    pub fn ci95(&self) -> (f64, f64) {
        median_ci95(&mut self.ratios.clone())
    }

    pub fn aa_median(&self) -> f64 {
        median(&mut self.aa.clone())
    }

    pub fn aa_ci95(&self) -> (f64, f64) {
        median_ci95(&mut self.aa.clone())
    }

    /// One line of figures, for `what`, per `unit` (request, command).
    pub fn line(&self, what: &str, unit: &str) -> String {
        let ((lo, hi), (aa_lo, aa_hi)) = (self.ci95(), self.aa_ci95());
        format!(
            "{what}: {:.3} (95 % CI {lo:.3}-{hi:.3}) over {} pairs, A/A {:.3} ({aa_lo:.3}-{aa_hi:.3}); per {unit}: {:.0} ns in the packet programs + {:.0} ns in the agent (server {:.0} ns); timed {:.0} of {:.0}",
            self.median(),
            self.ratios.len(),
            self.aa_median(),
            self.bpf_ns,
            self.agent_ns,
            self.server_ns,
            self.paired,
            self.sent
        )
    }
}

/// Runs `pairs` pairs of `a` (captured) against `b`, order flipped every
/// pair, each followed by an A/A pair of `c` against `b`; `run(port)` is
/// one timed run: (rate, requests or commands done). Fills `out`'s ratios,
/// A/A ratios, captured rates and units sent to `a`; returns the packet
/// programs' run time over the captured runs (ns) and the units of all.
pub fn run_pairs(
    out: &mut Paired,
    pairs: usize,
    [a, b, c]: [u16; 3],
    what: &str,
    mut run: impl FnMut(u16) -> Result<(f64, f64)>,
) -> Result<(u64, f64)> {
    let programs = ["capture_ingress", "capture_egress"];
    let (mut bpf_time, mut all) = (0u64, 0.0);
    for pair in 0..pairs {
        let flip = pair % 2 == 1;
        let mut rates = [0.0f64; 4];
        let order = if flip { [b, a, b, c] } else { [a, b, c, b] };
        for (k, port) in order.into_iter().enumerate() {
            let t0 = if port == a {
                bpf_run_time(&programs)?.0
            } else {
                0
            };
            let (rate, n) = run(port)?;
            all += n;
            if port == a {
                bpf_time += bpf_run_time(&programs)?.0 - t0;
                out.sent += n;
            }
            // Slots: a, b (first pair); c, b (A/A pair).
            let slot = match (k < 2, port == b) {
                (true, false) => 0,
                (true, true) => 1,
                (false, false) => 2,
                (false, true) => 3,
            };
            rates[slot] = rate;
        }
        out.ratios.push(rates[0] / rates[1]);
        out.captured_rps.push(rates[0]);
        out.aa.push(rates[2] / rates[3]);
        eprintln!(
            "xtask bench: {what} pair {pair}: captured/uncaptured {:.3}, A/A {:.3}",
            rates[0] / rates[1],
            rates[2] / rates[3]
        );
    }
    Ok((bpf_time, all))
}

pub fn nginx_paired(agent: &Path, work: &Path) -> Result<Paired> {
    let (a, b, c) = (free_port()?, free_port()?, free_port()?);
    ensure!(a != b && b != c && a != c, "ports collided");
    let _nginx = Nginx::start_ports(work, &[a, b, c])?;
    let running = RunningAgent::start(agent, a, &[], true)?;
    // Warm up every port and the page cache.
    for port in [a, b, c] {
        let _ = wrk(port, 1)?;
    }
    with_bpf_stats(|| {
        let paired0 = super::tools::paired(running.admin)?;
        let agent0 = cpu_seconds(running.pid())?;
        let nginx0 = nginx_cpu_seconds()?;
        let mut out = Paired::default();
        let (bpf_time, all_requests) = run_pairs(&mut out, PAIRS, [a, b, c], "nginx", |port| {
            wrk(port, RUN_SECS)
        })?;
        // Let the agent drain what the last runs queued.
        std::thread::sleep(Duration::from_millis(500));
        let sent = out.sent.max(1.0);
        out.paired = super::tools::paired(running.admin)? - paired0;
        out.bpf_ns = bpf_time as f64 / sent;
        out.agent_ns = (cpu_seconds(running.pid())? - agent0) * 1e9 / sent;
        out.server_ns = (nginx_cpu_seconds()? - nginx0) * 1e9 / all_requests.max(1.0);
        Ok(out)
    })
}
