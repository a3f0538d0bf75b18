//! The paired bench for Redis: three redis-servers pinned to CPU 0, the
//! agent (running throughout) timing the commands of the first only, and
//! redis-benchmark (CPU 1) alternating runs of about a second between the
//! timed and an untimed server (order flipped every pair), interleaved
//! with pairs of the two untimed ones (A/A). Without pipelining and with
//! `-P 16`, where every command of a ~1 M commands/s stream is captured.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, ensure};

use super::{
    paired::{Paired, run_pairs},
    redis::{cpu_busy, server},
    tools::{RunningAgent, free_port, output_within, pinned, with_bpf_stats},
};
use crate::load::cpu_seconds;

/// Pairs of each kind.
pub const REDIS_PAIRS: usize = 24;
const CLIENTS: u32 = 32;

/// One redis-benchmark run of `n` GETs with pipelining `p`: commands/s.
fn run(port: u16, n: u64, p: u32) -> Result<f64> {
    let mut cmd = pinned(1, "redis-benchmark");
    cmd.args(["-p", &port.to_string(), "-c", &CLIENTS.to_string()])
        .args([
            "-n",
            &n.to_string(),
            "-P",
            &p.to_string(),
            "-t",
            "get",
            "--csv",
        ]);
    let (status, text) = output_within(&mut cmd, Duration::from_secs(60))?;
    ensure!(status.success(), "redis-benchmark failed: {text}");
    text.lines()
        .find(|l| l.starts_with("\"GET\""))
        .and_then(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
        .with_context(|| format!("no GET rate in redis-benchmark output: {text}"))
}

/// GETs the agent timed.
fn timed(admin: u16) -> Result<f64> {
    crate::load::metric_sum(
        admin,
        "apm_db_server_operation_duration_seconds_count{db_operation_name=\"GET\"",
    )
}

pub fn redis_paired(agent: &Path, pipeline: u32) -> Result<Paired> {
    let (a, b, c) = (free_port()?, free_port()?, free_port()?);
    ensure!(a != b && b != c && a != c, "ports collided");
    let _servers = [server(a)?, server(b)?, server(c)?];
    std::thread::sleep(Duration::from_millis(500));
    let pa = a.to_string();
    let running = RunningAgent::start(agent, a, &["--redis-port", &pa], false)?;
    // About a second per run, from a warm-up run's rate.
    let rate = run(b, 100_000, pipeline)?;
    let n = (rate as u64).max(10_000);
    for port in [a, b, c] {
        let _ = run(port, n / 4, pipeline)?;
    }
    with_bpf_stats(|| {
        let timed0 = timed(running.admin)?;
        let agent0 = cpu_seconds(running.pid())?;
        let busy0 = cpu_busy()?;
        let mut out = Paired::default();
        let (bpf_time, _) = run_pairs(
            &mut out,
            REDIS_PAIRS,
            [a, b, c],
            &format!("redis -P {pipeline}"),
            |port| Ok((run(port, n, pipeline)?, n as f64)),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let sent = out.sent.max(1.0);
        out.paired = timed(running.admin)? - timed0;
        out.bpf_ns = bpf_time as f64 / sent;
        out.agent_ns = (cpu_seconds(running.pid())? - agent0) * 1e9 / sent;
        // CPU 0 runs the three servers: its busy time per command of all.
        let all = sent * 4.0;
        out.server_ns = (cpu_busy()?[0] - busy0[0]) * 1e9 / all;
        Ok(out)
    })
}
