//! redis-benchmark against a redis-server pinned to CPU 0 (the client and
//! the agent on CPU 1, as for nginx), without the agent and with it
//! selecting the server, and without it again (A/A), rounds alternating:
//! the throughput ratio, the harness's own noise, and the
//! commands the agent timed against those redis-benchmark sent.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use super::tools::{RunningAgent, cpu_busy, free_port, median, output_within, pinned};
use crate::load::cpu_seconds;

/// Rounds of the two arms (without, with), order alternating.
pub const REDIS_ROUNDS: usize = 20;
/// Requests per command per run, 32 clients, no pipelining: the per-request
/// cost is what the ratio shows.
pub const REDIS_REQUESTS: u64 = 100_000;
const REDIS_CLIENTS: u32 = 32;

pub struct RedisBench {
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    pub ratios: Vec<f64>,
    /// A second run without the agent / the first, per round (A/A).
    pub again_ratios: Vec<f64>,
    /// Commands the agent timed (server side) / commands redis-benchmark sent.
    pub timed: f64,
    pub sent: f64,
    /// Per round, busy CPU time per command of CPU 0 (redis-server's) and
    /// CPU 1 (the client's), without and with the agent, in microseconds.
    pub cpu_without: Vec<[f64; 2]>,
    pub cpu_with: Vec<[f64; 2]>,
    /// The agent's own CPU per command, microseconds (runs with it).
    pub agent_us: Vec<f64>,
}

impl RedisBench {
    /// Median over rounds of CPU `cpu`'s time per command with the agent
    /// / without it.
    pub fn cpu_ratio(&self, cpu: usize) -> f64 {
        let mut r: Vec<f64> = self
            .cpu_with
            .iter()
            .zip(&self.cpu_without)
            .map(|(w, o)| w[cpu] / o[cpu].max(1e-9))
            .collect();
        median(&mut r)
    }

    /// Median of CPU `cpu`'s time per command in `runs`, microseconds.
    pub fn cpu_median(runs: &[[f64; 2]], cpu: usize) -> f64 {
        median(&mut runs.iter().map(|r| r[cpu]).collect::<Vec<_>>())
    }
}

/// One redis-benchmark run: its rate, and the busy CPU time per command
/// of CPUs 0 and 1 over it (microseconds).
fn measured(port: u16) -> Result<(f64, [f64; 2])> {
    let before = cpu_busy()?;
    let rps = run(port)?;
    let after = cpu_busy()?;
    let commands = 2.0 * REDIS_REQUESTS as f64;
    Ok((rps, [0, 1].map(|c| (after[c] - before[c]) / commands * 1e6)))
}

pub(super) struct Server(Child);

/// A redis-server on `port`, pinned to CPU 0, persisting nothing.
pub(super) fn server(port: u16) -> Result<Server> {
    Ok(Server(
        pinned(0, "redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
    ))
}

impl Server {
    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long one redis-benchmark run may take (a run takes seconds), and
/// how often a run that hangs is tried again.
const RUN_LIMIT: Duration = Duration::from_secs(60);
const RUN_ATTEMPTS: usize = 3;

/// redis-benchmark's mean requests/s over SET and GET. redis-benchmark
/// 7.0 can spin forever in its write path (seen here once in ~50 runs,
/// with no agent running and no socket open): such a run is killed and
/// tried again.
fn run(port: u16) -> Result<f64> {
    let mut attempt = 1;
    let (status, text) = loop {
        let mut cmd = pinned(1, "redis-benchmark");
        cmd.args(["-p", &port.to_string(), "-c", &REDIS_CLIENTS.to_string()])
            .args(["-n", &REDIS_REQUESTS.to_string(), "-t", "set,get", "--csv"]);
        match output_within(&mut cmd, RUN_LIMIT) {
            Ok(done) => break done,
            Err(e) if attempt < RUN_ATTEMPTS => {
                eprintln!("xtask bench: redis-benchmark {e}; trying again");
                attempt += 1;
            }
            Err(e) => return Err(e.context("running redis-benchmark")),
        }
    };
    ensure!(status.success(), "redis-benchmark failed: {text}");
    // "SET","129870.13",...
    let rps: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
        .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
        .collect();
    ensure!(
        rps.len() == 2,
        "no SET/GET rates in redis-benchmark output: {text}"
    );
    Ok(rps.iter().sum::<f64>() / 2.0)
}

/// SETs and GETs the agent timed (redis-benchmark's CONFIG GETs aside).
fn timed(admin: u16) -> Result<f64> {
    let mut total = 0.0;
    for op in ["SET", "GET"] {
        total += crate::load::metric_sum(
            admin,
            &format!("apm_db_server_operation_duration_seconds_count{{db_operation_name=\"{op}\""),
        )?;
    }
    Ok(total)
}

pub fn redis_bench(agent: &Path) -> Result<RedisBench> {
    let port = free_port()?;
    let server = server(port)?;
    std::thread::sleep(Duration::from_millis(500));
    let _ = run(port)?; // warm-up
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut again_ratios = Vec::new();
    let (mut timed_total, mut sent) = (0.0, 0.0);
    let (mut cpu_without, mut cpu_with, mut agent_us) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..REDIS_ROUNDS {
        // Without, with, and without again (A/A), reversed every other
        // round; the agent's run sits between the two without it.
        let mut rates = [0.0f64; 3];
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for arm in order {
            if arm != 1 {
                let (rps, cpu) = measured(port)?;
                rates[arm] = rps;
                if arm == 0 {
                    cpu_without.push(cpu);
                }
                continue;
            }
            let p = port.to_string();
            let running = RunningAgent::start(agent, port, &["--redis-port", &p], false)?;
            let before = timed(running.admin)?;
            let agent_before = cpu_seconds(running.pid())?;
            let (rps, cpu) = measured(port)?;
            let agent_cpu = cpu_seconds(running.pid())? - agent_before;
            rates[1] = rps;
            cpu_with.push(cpu);
            agent_us.push(agent_cpu / (2.0 * REDIS_REQUESTS as f64) * 1e6);
            std::thread::sleep(Duration::from_millis(500));
            timed_total += timed(running.admin)? - before;
            sent += 2.0 * REDIS_REQUESTS as f64;
            drop(running);
        }
        eprintln!(
            "xtask bench: redis round {round}: {:.0} without, {:.0} with the agent, {:.0} without again",
            rates[0], rates[1], rates[2]
        );
        without.push(rates[0]);
        with.push(rates[1]);
        ratios.push(rates[1] / rates[0].max(1.0));
        again_ratios.push(rates[2] / rates[0].max(1.0));
    }
    drop(server);
    Ok(RedisBench {
        without,
        with,
        ratios,
        again_ratios,
        timed: timed_total,
        sent,
        cpu_without,
        cpu_with,
        agent_us,
    })
}
