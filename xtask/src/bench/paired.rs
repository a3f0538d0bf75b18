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
        let programs = ["capture_ingress", "capture_egress"];
        let paired0 = super::tools::paired(running.admin)?;
        let agent0 = cpu_seconds(running.pid())?;
        let nginx0 = nginx_cpu_seconds()?;
        let mut out = Paired::default();
        let (mut bpf_time, mut all_requests) = (0u64, 0.0);
        for pair in 0..PAIRS {
            let flip = pair % 2 == 1;
            // Captured against uncaptured.
            let (mut rps_a, mut rps_b) = (0.0, 0.0);
            for port in if flip { [b, a] } else { [a, b] } {
                if port == a {
                    let (t0, _) = bpf_run_time(&programs)?;
                    let (rps, n) = wrk(port, RUN_SECS)?;
                    let (t1, _) = bpf_run_time(&programs)?;
                    bpf_time += t1 - t0;
                    out.sent += n;
                    all_requests += n;
                    rps_a = rps;
                } else {
                    let (rps, n) = wrk(port, RUN_SECS)?;
                    all_requests += n;
                    rps_b = rps;
                }
            }
            out.ratios.push(rps_a / rps_b);
            out.captured_rps.push(rps_a);
            // Uncaptured against uncaptured.
            let (mut rps_c, mut rps_b2) = (0.0, 0.0);
            for port in if flip { [b, c] } else { [c, b] } {
                let (rps, n) = wrk(port, RUN_SECS)?;
                all_requests += n;
                if port == c {
                    rps_c = rps;
                } else {
                    rps_b2 = rps;
                }
            }
            out.aa.push(rps_c / rps_b2);
            eprintln!(
                "xtask bench: pair {pair}: captured/uncaptured {:.3}, A/A {:.3}",
                rps_a / rps_b,
                rps_c / rps_b2
            );
        }
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
