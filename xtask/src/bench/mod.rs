//! `cargo xtask bench`: the agent's cost, measured, written to
//! docs/benchmarks.md as ratios against a baseline from the same run.
//!
//! The headline is `paired`: one nginx with a captured and an uncaptured
//! port, 1-second runs alternating inside one run, so this VM's drift
//! between runs cancels. Then:
//!
//! 1. criterion: the userspace pipeline on synthetic packet and syscall
//!    records (events/s).
//! 2. wrk against nginx serving a small file over keep-alive, nginx pinned
//!    to CPU 0 and wrk to CPU 1, six arms per round in alternating order:
//!    without the agent, with the packet capture (the default), with the
//!    syscall capture, with the agent attached but nginx not selected, with
//!    `--no-http`, and with the packet capture's records dropped unparsed
//!    (the kernel side alone), and a second run without the agent, whose
//!    ratio to the first (A/A) shows the harness's own noise. Medians of
//!    per-round throughput ratios with their confidence intervals, and the
//!    agent's CPU and memory from procfs.
//! 3. The cost of an unrelated syscall (getppid in a tight loop) without
//!    the agent and with each capture, in rounds alternating the states.
//! 4. The packet programs' own run time per request, from the kernel's BPF
//!    statistics, against nginx's CPU time per request: the in-kernel cost
//!    without the run-to-run noise of throughput on a shared VM.
//! 5. redis-benchmark against redis-server, without and with the agent
//!    timing every command (`redis`).

mod bystander;
mod instructions;
mod my_paired;
mod nginx;
mod paired;
mod pg_paired;
mod redis;
mod redis_paired;
mod report;
mod tcp_health;
pub mod tools;
mod traces_paired;

use std::path::Path;

use anyhow::{Result, ensure};

use self::{
    report::{Report, render},
    tools::{
        Flavor, Nginx, Run, criterion, free_port, measure, median, per_round_ratios, probe_cost,
        syscall_cost,
    },
};

/// Rounds of the arms the target is about (without, packets, and the
/// second run without): the run-to-run noise of this VM is 10-20 %, so
/// the median needs many.
const ROUNDS: usize = 20;
/// The other arms run every SECONDARY_EVERY-th round.
const SECONDARY_EVERY: usize = 2;
const RUN_SECS: u64 = 6;
const WRK_CONNECTIONS: u32 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Without,
    Packets,
    Syscalls,
    Idle,
    NoHttp,
    /// The packet capture with every record read and dropped unparsed:
    /// the kernel programs and the ring alone.
    Drain,
    /// A second run without the agent, at the other end of the round: its
    /// ratio to `Without` is what the harness reads when nothing changed.
    Again,
}

impl Arm {
    const ALL: [Arm; 7] = [
        Arm::Without,
        Arm::Packets,
        Arm::Syscalls,
        Arm::Idle,
        Arm::NoHttp,
        Arm::Drain,
        Arm::Again,
    ];

    /// Run in every round (the others every SECONDARY_EVERY-th).
    fn primary(self) -> bool {
        matches!(self, Arm::Without | Arm::Packets | Arm::Again)
    }

    /// Agent arguments besides --port; None: no agent.
    fn agent_args(self) -> Option<&'static [&'static str]> {
        match self {
            Arm::Without | Arm::Again => None,
            Arm::Packets | Arm::Idle => Some(&[]),
            Arm::Syscalls => Some(&["--capture", "syscalls"]),
            Arm::NoHttp => Some(&["--no-http"]),
            Arm::Drain => Some(&["--test-fault", "discard-records"]),
        }
    }
}

/// `cargo xtask bench --paired-only`: the headline alone, printed and
/// written to the `paired` section of docs/benchmarks.md; with `cases`
/// (nginx, nginx-h2c, nginx-tls, tls-bystander, traces, traces-all, postgres, mariadb, redis1, redis16) or `extra` agent
/// arguments, only printed.
pub fn paired_only(root: &Path, agent: &Path, cases: &[String], extra: &[String]) -> Result<()> {
    let work = std::env::temp_dir().join("apm-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www"))?;
    std::fs::write(work.join("www/index.html"), "<html>apm bench</html>\n")?;
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let wanted = |c: &str| cases.is_empty() || cases.iter().any(|w| w == c);
    let mut lines = Vec::new();
    if wanted("nginx") {
        let nginx = paired::nginx_paired(agent, &work, &extra, Flavor::Plain)?;
        lines.push(nginx.line("nginx, captured/uncaptured server", "request"));
        println!("{}", lines[lines.len() - 1]);
    }
    if wanted("nginx-h2c") {
        let nginx = paired::nginx_paired(agent, &work, &extra, Flavor::H2c)?;
        lines.push(nginx.line(
            "nginx over HTTP/2 with prior knowledge (h2load -c4 -m8), captured/uncaptured server",
            "request",
        ));
        println!("{}", lines[lines.len() - 1]);
    }
    if wanted("nginx-tls") {
        paired::certificate(&work)?;
        let nginx = paired::nginx_paired(agent, &work, &extra, Flavor::Tls)?;
        lines.push(nginx.line(
            "nginx over TLS (wrk over HTTPS, keep-alive), captured/uncaptured server",
            "request",
        ));
        println!("{}", lines[lines.len() - 1]);
    }
    if wanted("tls-bystander") {
        paired::certificate(&work)?;
        let b = bystander::bystander(agent, &work, &extra)?;
        lines.push(b.line());
        println!("{}", lines[lines.len() - 1]);
    }
    // The defaults (every request a span, 5 % exported), and every trace
    // exported.
    for (case, sampling) in [
        ("traces", &[][..]),
        (
            "traces-all",
            &[
                "--trace-sample-ratio",
                "1",
                "--trace-max-spans-per-second",
                "100000000",
            ][..],
        ),
    ] {
        if wanted(case) {
            let t = traces_paired::traces_paired(agent, &work, sampling, &extra)?;
            lines.push(t.line());
            println!("{}", lines[lines.len() - 1]);
        }
    }
    if wanted("postgres") {
        let pg = pg_paired::pg_paired(agent, &work, &extra)?;
        lines.push(pg.line(
            "postgres (pgbench -S -M prepared -c 4), timed/untimed server",
            "statement",
        ));
        println!("{}", lines[lines.len() - 1]);
    }
    if wanted("mariadb") {
        let my = my_paired::my_paired(agent, &work, &extra)?;
        lines.push(my.line(
            "mariadb (mariadb-slap, a point SELECT, -c 4), timed/untimed server",
            "statement",
        ));
        println!("{}", lines[lines.len() - 1]);
    }
    if wanted("tcp-health") {
        let t = tcp_health::tcp_health(root, agent, &extra)?;
        lines.push(t.line());
        println!("{}", lines[lines.len() - 1]);
    }
    for p in [1, 16] {
        if !wanted(&format!("redis{p}")) {
            continue;
        }
        let r = redis_paired::redis_paired(agent, p, &extra)?;
        lines.push(r.line(&format!("redis -P {p}, timed/untimed server"), "command"));
        println!("{}", lines[lines.len() - 1]);
    }
    if !cases.is_empty() || !extra.is_empty() {
        return Ok(());
    }
    let body = format!(
        "## Paired (`cargo xtask bench --paired-only`, {})\n\nCost measured as the servers feel it, in the same second for the captured and the uncaptured ones: three identical servers (nginx with one worker serving a 23-byte file, or redis-server) share CPU 0, one closed-loop client each (wrk -c32, or redis-benchmark GET -c32) runs on CPU 1 with the agent, all loaded at once. The scheduler gives each server the same CPU time, so each second's throughput ratio is the inverse ratio of their costs per request. The captured server rotates over three blocks of 30 seconds, a fresh agent each, started at rest so that what it timed compares exactly with what its server counted. The servers' own counters (stub_status, INFO commandstats) are read every second; medians of the per-second ratios with their 95 % intervals, A/A the two uncaptured servers. \"Added\" is the server CPU per request times (1/ratio - 1). Packet-program time per request (both CPUs, every program run) from the kernel's BPF statistics in a window after the slices with the captured server's client alone (they slow every program run, so they are off while the ratio is read); agent CPU over the slices per captured request.\n\n{}\n",
        crate::load::utc_now(),
        lines
            .iter()
            .map(|l| format!("- {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    crate::docs::write_section(root, "paired", &body)
}

/// `cargo xtask bench --instructions-only`: the pipeline's instructions
/// per request, printed and written to their docs/benchmarks.md section.
pub fn instructions_only(root: &Path) -> Result<()> {
    let counted = instructions::instructions(root)?;
    println!("{}", counted.line());
    let body = format!(
        "## Instructions per request (`cargo xtask bench --instructions-only`, {})\n\nThe agent's userspace work per request, counted by callgrind on the criterion bench's traffic (`apm-agent/benches/instructions.rs`): runs of {} and {} replays after a warm-up, the difference over the requests between them. Exact to the instruction, so it shows a cut that criterion's timings on this VM cannot.\n\n- {}\n",
        crate::load::utc_now(),
        instructions::SHORT,
        instructions::LONG,
        counted.line()
    );
    crate::docs::write_section(root, "instructions", &body)
}

pub fn bench(root: &Path, agent: &Path) -> Result<()> {
    let pipeline = criterion(root)?;
    instructions_only(root)?;
    let work = std::env::temp_dir().join("apm-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www"))?;
    std::fs::write(work.join("www/index.html"), "<html>apm bench</html>\n")?;
    let paired = paired::nginx_paired(agent, &work, &[], Flavor::Plain)?;
    let redis_paired = [
        redis_paired::redis_paired(agent, 1, &[])?,
        redis_paired::redis_paired(agent, 16, &[])?,
    ];
    let port = free_port()?;
    let nginx = Nginx::start(&work, port)?;
    // Warm up nginx and the page cache.
    let _ = tools::wrk(port, 2)?;

    let mut runs: Vec<(Arm, Vec<Run>)> = Arm::ALL.iter().map(|&a| (a, Vec::new())).collect();
    for round in 0..ROUNDS {
        // Reverse the order every other round to cancel drift.
        let mut order: Vec<Arm> = Arm::ALL
            .into_iter()
            .filter(|a| round % SECONDARY_EVERY == 0 || a.primary())
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for arm in order {
            // Idle: probes attached, nginx not selected: what attaching
            // costs by itself.
            let selected = if arm == Arm::Idle { free_port()? } else { port };
            let mut run = measure(port, arm.agent_args().map(|a| (agent, a)), selected)?;
            run.round = round;
            eprintln!("xtask bench: round {round} {arm:?}: {:.0} req/s", run.rps);
            if let Some((_, v)) = runs.iter_mut().find(|(a, _)| *a == arm) {
                v.push(run);
            }
        }
    }
    let syscall_cost = syscall_cost(agent, port)?;
    let probe_cost = probe_cost(agent, port)?;
    drop(nginx);
    let redis = redis::redis_bench(agent)?;
    let of = |arm: Arm| {
        runs.iter()
            .find(|(a, _)| *a == arm)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default()
    };
    let without = of(Arm::Without);
    let ratio = |arm: Arm| median(&mut per_round_ratios(of(arm), without));
    let agent_runs = |arm: Arm| {
        let usage: Vec<_> = of(arm)
            .iter()
            .filter_map(|r| r.agent.as_ref())
            .filter(|u| u.requests > 0.0)
            .collect();
        usage
    };
    let packets = agent_runs(Arm::Packets);
    ensure!(!packets.is_empty(), "no agent measurements");
    let cpu_per_10k = |usage: &[&tools::AgentUsage]| {
        median(
            &mut usage
                .iter()
                .map(|u| u.cpu_seconds / u.requests.max(1.0) * 10_000.0)
                .collect::<Vec<_>>(),
        )
    };
    let paired_line = (
        paired.median(),
        paired.ci95(),
        paired.aa_median(),
        paired.bpf_ns,
        paired.agent_ns,
    );
    let doc = render(&Report {
        pipeline,
        packets_ratios: per_round_ratios(of(Arm::Packets), without),
        again_ratios: per_round_ratios(of(Arm::Again), without),
        syscalls_ratio: ratio(Arm::Syscalls),
        idle_ratio: ratio(Arm::Idle),
        no_http_ratio: ratio(Arm::NoHttp),
        drain_ratio: ratio(Arm::Drain),
        rps: Arm::ALL
            .iter()
            .map(|&a| (format!("{a:?}"), of(a).iter().map(|r| r.rps).collect()))
            .collect(),
        cpu_per_10k: cpu_per_10k(&packets),
        syscalls_cpu_per_10k: cpu_per_10k(&agent_runs(Arm::Syscalls)),
        rss: packets.iter().map(|u| u.rss_kib).max().unwrap_or(0),
        hwm: packets.iter().map(|u| u.hwm_kib).max().unwrap_or(0),
        seen: packets.iter().map(|u| u.requests).sum(),
        sent: of(Arm::Packets).iter().map(|r| r.requests).sum(),
        syscall_cost,
        probe_cost,
        redis,
        paired,
        redis_paired,
    });
    let doc = crate::docs::with_sections(root, &doc);
    let path = root.join(crate::docs::BENCHMARKS);
    std::fs::write(&path, doc).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    println!(
        "paired, captured/uncaptured port of one nginx: {:.3} (95 % CI {:.3}-{:.3}), A/A {:.3}; {:.0} ns in the packet programs + {:.0} ns in the agent per request",
        paired_line.0,
        paired_line.1.0,
        paired_line.1.1,
        paired_line.2,
        paired_line.3,
        paired_line.4,
    );
    println!(
        "throughput with/without agent: packets {:.3}, syscalls {:.3} (A/A, no agent in either: {:.3}); getppid {:.0} ns without, {:.0} ns with packets; written to docs/benchmarks.md",
        ratio(Arm::Packets),
        ratio(Arm::Syscalls),
        ratio(Arm::Again),
        syscall_cost.without,
        syscall_cost.packets,
    );
    Ok(())
}
