//! The measuring tools of `cargo xtask bench`: criterion, nginx, wrk, the
//! agent under test, and procfs readings of its CPU and memory.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

pub use super::nginx::{Flavor, Nginx};
use super::{RUN_SECS, WRK_CONNECTIONS};
use crate::load::{cpu_seconds, http_get, memory};

/// Pipeline throughputs from criterion, events per second.
#[derive(Clone, Copy, Debug)]
pub struct Pipeline {
    pub packets: f64,
    pub syscalls: f64,
    /// RESP records (Redis commands and replies, as packets).
    pub resp: f64,
}

pub fn criterion(root: &Path) -> Result<Pipeline> {
    eprintln!("xtask bench: criterion pipeline benchmark");
    let out = cargo_bench(root, "pipeline", &["--", "--noplot"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    ensure!(out.status.success(), "cargo bench failed");
    // The bench prints packets first, then syscalls, then RESP.
    match parse_criterion_throughputs(&text)[..] {
        [packets, syscalls, resp, ..] => Ok(Pipeline {
            packets,
            syscalls,
            resp,
        }),
        _ => bail!("expected three throughput lines in criterion's output"),
    }
}

/// `cargo bench -p apm-agent --bench BENCH ARGS…`, its stdout captured.
pub fn cargo_bench(root: &Path, bench: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args(["bench", "-p", "apm-agent", "--bench", bench])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo bench --bench {bench}"))
}

/// The middle estimates of criterion's `thrpt: [low mid high]` lines, per
/// second, in output order.
pub fn parse_criterion_throughputs(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("thrpt:"))
        .filter_map(parse_throughput_line)
        .collect()
}

fn parse_throughput_line(line: &str) -> Option<f64> {
    let inside = line.split('[').nth(1)?.split(']').next()?;
    let words: Vec<&str> = inside.split_whitespace().collect();
    let (value, unit) = (words.get(2)?, words.get(3)?);
    let scale = match *unit {
        "elem/s" => 1.0,
        "Kelem/s" => 1e3,
        "Melem/s" => 1e6,
        "Gelem/s" => 1e9,
        _ => return None,
    };
    value.parse::<f64>().ok().map(|v| v * scale)
}

pub struct Run {
    /// The round it ran in (ratios pair runs of one round).
    pub round: usize,
    pub rps: f64,
    /// Requests wrk completed.
    pub requests: f64,
    pub agent: Option<AgentUsage>,
}

pub struct AgentUsage {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Requests the agent paired during the run.
    pub requests: f64,
}

/// A running agent selecting `selected`, stopped (SIGTERM) on drop.
pub struct RunningAgent {
    child: Child,
    pub admin: u16,
}

impl RunningAgent {
    pub fn start(agent: &Path, selected: u16, extra: &[&str], nginx: bool) -> Result<Self> {
        let admin = free_port()?;
        // On the client's CPU: the ratio then shows what the probes cost
        // the server, and the agent's own CPU is reported on its own.
        let child = pinned(1, &agent.to_string_lossy())
            .args([
                "--listen",
                &format!("127.0.0.1:{admin}"),
                "--port",
                &selected.to_string(),
            ])
            .args(["--log-format", "json", "--log-level", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the agent")?;
        let running = Self { child, admin };
        wait_ready(admin, selected, nginx)?;
        Ok(running)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One wrk run against nginx on `port`, with the agent (and its extra
/// arguments) selecting `selected` when given.
pub fn measure(port: u16, agent: Option<(&Path, &[&str])>, selected: u16) -> Result<Run> {
    let Some((agent, extra)) = agent else {
        let (rps, requests) = wrk(port, RUN_SECS)?;
        return Ok(Run {
            round: 0,
            rps,
            requests,
            agent: None,
        });
    };
    let running = RunningAgent::start(agent, selected, extra, selected == port)?;
    let (pid, admin) = (running.child.id(), running.admin);
    let result = (|| {
        let cpu0 = cpu_seconds(pid)?;
        let paired0 = paired(admin)?;
        let (rps, sent) = wrk(port, RUN_SECS)?;
        // Let the reader drain what the kernel queued during the run.
        std::thread::sleep(Duration::from_millis(500));
        let cpu = cpu_seconds(pid)? - cpu0;
        let requests = paired(admin)? - paired0;
        let (rss_kib, hwm_kib) = memory(pid)?;
        Ok(Run {
            round: 0,
            rps,
            requests: sent,
            agent: Some(AgentUsage {
                cpu_seconds: cpu,
                rss_kib,
                hwm_kib,
                requests,
            }),
        })
    })();
    drop(running);
    result
}

/// What the packet programs cost per request, read from the kernel's own
/// accounting (`kernel.bpf_stats_enabled`) during one wrk run, next to the
/// CPU time nginx spent per request in the same run.
#[derive(Clone, Copy, Debug)]
pub struct ProbeCost {
    /// Nanoseconds the cgroup_skb programs ran, per request.
    pub bpf_ns_per_request: f64,
    /// Program runs per request (segments seen, both directions).
    pub runs_per_request: f64,
    /// Nanoseconds of nginx CPU (user + system) per request.
    pub nginx_ns_per_request: f64,
}

const STATS_SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Runs `f` with the kernel's BPF run-time statistics on, restoring the
/// switch after.
pub fn with_bpf_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = std::fs::read_to_string(STATS_SWITCH).context("reading bpf_stats_enabled")?;
    std::fs::write(STATS_SWITCH, "1").context("enabling BPF run-time statistics")?;
    let result = f();
    let _ = std::fs::write(STATS_SWITCH, before.trim());
    result
}

pub fn probe_cost(agent: &Path, port: u16) -> Result<ProbeCost> {
    with_bpf_stats(|| {
        let _agent = RunningAgent::start(agent, port, &[], true)?;
        let programs = ["capture_ingress", "capture_egress"];
        let (time0, runs0) = bpf_run_time(&programs)?;
        let nginx0 = nginx_cpu_seconds()?;
        let (_, requests) = wrk(port, RUN_SECS)?;
        let (time1, runs1) = bpf_run_time(&programs)?;
        let nginx = nginx_cpu_seconds()? - nginx0;
        let requests = requests.max(1.0);
        Ok(ProbeCost {
            bpf_ns_per_request: (time1 - time0) as f64 / requests,
            runs_per_request: (runs1 - runs0) as f64 / requests,
            nginx_ns_per_request: nginx * 1e9 / requests,
        })
    })
}

/// (run_time_ns, run_cnt) summed over the loaded programs named `names`,
/// from `bpftool prog show --json`.
pub fn bpf_run_time(names: &[&str]) -> Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool")?;
    ensure!(out.status.success(), "bpftool prog show failed");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let mut total = (0, 0);
    for p in progs.as_array().context("bpftool: not an array")? {
        if names.iter().any(|n| p["name"] == *n) {
            total.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            total.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(total)
}

/// Busy time of CPUs 0 and 1 so far (everything but idle and iowait),
/// seconds, from /proc/stat.
pub fn cpu_busy() -> Result<[f64; 2]> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut busy = [0.0; 2];
    for (cpu, slot) in busy.iter_mut().enumerate() {
        let line = stat
            .lines()
            .find(|l| l.starts_with(&format!("cpu{cpu} ")))
            .with_context(|| format!("no cpu{cpu} in /proc/stat"))?;
        let ticks: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        ensure!(ticks.len() >= 7, "short cpu line in /proc/stat: {line}");
        *slot = (ticks.iter().take(8).sum::<f64>() - ticks[3] - ticks[4]) / hz;
    }
    Ok(busy)
}

/// CPU seconds of every nginx process (ours is the only one).
pub fn nginx_cpu_seconds() -> Result<f64> {
    cpu_seconds_of("nginx")
}

/// CPU seconds so far of every process named `comm` (the bench's servers:
/// their workers and backends too).
pub fn cpu_seconds_of(comm: &str) -> Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if name.trim() == comm {
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// What an unrelated syscall costs (ns per getppid) without the agent and
/// with each capture running: medians over rounds that alternate the
/// states, each the fastest of 3 runs of 500 000 calls. This VM's speed
/// drifts by 20 % over seconds, so one measurement per state is noise;
/// the ratios pair each state with the runs without the agent around it.
#[derive(Clone, Copy, Debug)]
pub struct SyscallCost {
    pub without: f64,
    pub packets: f64,
    pub syscalls: f64,
    pub packets_ratio: f64,
    pub syscalls_ratio: f64,
    pub rounds: usize,
}

const SYSCALL_ROUNDS: usize = 8;

pub fn syscall_cost(agent: &Path, port: u16) -> Result<SyscallCost> {
    let probe = || {
        (0..3)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..500_000 {
                    // SAFETY: getppid takes no arguments and cannot fail.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                }
                start.elapsed().as_nanos() as f64 / 5e5
            })
            .fold(f64::INFINITY, f64::min)
    };
    let with = |extra: &[&str]| -> Result<f64> {
        let _agent = RunningAgent::start(agent, port, extra, true)?;
        Ok(probe())
    };
    let (mut without, mut packets, mut syscalls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut packets_ratio, mut syscalls_ratio) = (Vec::new(), Vec::new());
    for _ in 0..SYSCALL_ROUNDS {
        let before = probe();
        let p = with(&[])?;
        let between = probe();
        let s = with(&["--capture", "syscalls"])?;
        let after = probe();
        packets_ratio.push(p / ((before + between) / 2.0));
        syscalls_ratio.push(s / ((between + after) / 2.0));
        without.extend([before, between, after]);
        packets.push(p);
        syscalls.push(s);
    }
    Ok(SyscallCost {
        without: median(&mut without),
        packets: median(&mut packets),
        syscalls: median(&mut syscalls),
        packets_ratio: median(&mut packets_ratio),
        syscalls_ratio: median(&mut syscalls_ratio),
        rounds: SYSCALL_ROUNDS,
    })
}

fn wait_ready(admin: u16, port: u16, nginx: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let needle = if nginx {
        format!("server_port=\"{port}\",service_name=\"nginx\"")
    } else {
        format!("server_port=\"{port}\"")
    };
    while Instant::now() < deadline {
        if let Ok(body) = http_get(admin, "/metrics")
            && body.contains(&needle)
            && body.contains("apm_ebpf_up 1")
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the agent did not start monitoring port {port} within 20 s")
}

pub fn paired(admin: u16) -> Result<f64> {
    crate::load::metric_sum(admin, "apm_http_requests_paired_total{")
}

/// Runs wrk; returns (requests/s, requests completed).
pub fn wrk(port: u16, secs: u64) -> Result<(f64, f64)> {
    let out = pinned(1, "wrk")
        .args([
            "-t1",
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{secs}s"),
        ])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    // "  123456 requests in 8.00s, 20.00MB read"
    let total = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request total in wrk output: {text}"))?;
    Ok((rps, total))
}

/// `program` pinned to `cpu` with taskset when the machine has two CPUs or
/// more (nginx on CPU 0, wrk on CPU 1, as shared/TOOLCHAIN.md measured).
pub fn pinned(cpu: usize, program: &str) -> Command {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        return Command::new(program);
    }
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), program]);
    cmd
}

/// Runs `cmd` to its end, or kills it after `limit`; returns its exit
/// status and standard output (through a file, so a child that writes much
/// cannot block on a full pipe while nobody reads it).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<(ExitStatus, String)> {
    let path = std::env::temp_dir().join(format!("apm-bench-out-{}", std::process::id()));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut child = cmd
        .stdout(file)
        .stdin(Stdio::null())
        .spawn()
        .context("starting a bench client")?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            bail!("still running after {} s; killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    Ok((status, out))
}

/// Throughput of each run relative to the baseline run of the same round.
/// Each run's throughput over the baseline run of the same round.
pub fn per_round_ratios(runs: &[Run], baseline: &[Run]) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let b = baseline.iter().find(|b| b.round == r.round)?;
            Some(r.rps / b.rps)
        })
        .collect()
}

/// The first and third quartiles (nearest rank) of `v`.
pub fn quartiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

/// A distribution-free 95 % confidence interval of the median of `v`:
/// the k-th smallest and k-th largest values, with k the largest rank such
/// that fewer than k of n values fall below the true median with
/// probability at most 2.5 % (binomial with p = 1/2). For n = 20 that is
/// the 6th and 15th values. Up to 8 values k is 1, the whole range; below
/// 6 values even that covers the median with less than 95 %.
pub fn median_ci95(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    // P(B <= j) for B ~ Binomial(n, 1/2), accumulated term by term.
    let mut term = 0.5f64.powi(n as i32);
    let mut cdf = term;
    let mut k = 1;
    for j in 0..n {
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
        cdf += term;
    }
    let k = k.min(n.div_ceil(2));
    (v[k - 1], v[n - k])
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_hangs_is_killed_at_its_limit() {
        let (status, out) =
            output_within(Command::new("echo").arg("done"), Duration::from_secs(5)).expect("echo");
        assert!(status.success());
        assert_eq!(out, "done\n");
        let started = Instant::now();
        let hung = output_within(Command::new("sleep").arg("30"), Duration::from_millis(300));
        assert!(hung.is_err(), "sleep 30 was not cut off");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn median_interval_uses_the_binomial_order_statistics() {
        let mut twenty: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(median_ci95(&mut twenty), (6.0, 15.0));
        let mut twelve: Vec<f64> = (1..=12).map(f64::from).collect();
        assert_eq!(median_ci95(&mut twelve), (3.0, 10.0));
        let mut few = vec![2.0, 1.0, 3.0];
        assert_eq!(median_ci95(&mut few), (1.0, 3.0));
        assert_eq!(median_ci95(&mut []), (0.0, 0.0));
    }

    #[test]
    fn criterion_throughput_line() {
        let out = "pipeline/x\n                        time:   [8.5 ms 8.8 ms 9.2 ms]\n                        thrpt:  [1.3395 Melem/s 1.3888 Melem/s 1.4409 Melem/s]\n";
        let two = format!("{out}{}", out.replace("1.3888 Melem/s", "950.00 Kelem/s"));
        assert_eq!(parse_criterion_throughputs(&two), [1_388_800.0, 950_000.0]);
        assert!(parse_criterion_throughputs("nothing").is_empty());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
