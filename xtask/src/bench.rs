//! `cargo xtask bench`: the agent's cost, measured, written to
//! docs/benchmarks.md as ratios against a baseline from the same run.
//!
//! 1. criterion: the userspace pipeline on synthetic records (events/s).
//! 2. wrk against nginx serving a small file over keep-alive, alternating
//!    runs without and with the agent (ABBA order), reporting the median
//!    throughput ratio, and the agent's CPU and memory from procfs.

use std::{
    fmt::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

const PAIRS: usize = 4;
const RUN_SECS: u64 = 8;
const WRK_CONNECTIONS: u32 = 32;

#[derive(Clone, Copy, Debug)]
enum Arm {
    Without,
    With,
    Idle,
    NoHttp,
}

struct Run {
    rps: f64,
    /// Requests wrk completed.
    requests: f64,
    agent: Option<AgentUsage>,
}

struct AgentUsage {
    cpu_seconds: f64,
    rss_kib: u64,
    hwm_kib: u64,
    requests: f64,
}

pub fn bench(root: &Path, agent: &Path) -> Result<()> {
    let pipeline = criterion(root)?;
    let work = std::env::temp_dir().join("apm-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www"))?;
    std::fs::write(work.join("www/index.html"), "<html>apm bench</html>\n")?;
    let port = free_port()?;
    let nginx = Nginx::start(&work, port)?;
    // Warm up nginx and the page cache.
    let _ = wrk(port, 2)?;

    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut idle = Vec::new();
    let mut no_http = Vec::new();
    for pair in 0..PAIRS {
        // Reverse the order every other round to cancel drift.
        let order = if pair % 2 == 0 {
            [Arm::Without, Arm::With, Arm::Idle, Arm::NoHttp]
        } else {
            [Arm::NoHttp, Arm::Idle, Arm::With, Arm::Without]
        };
        for arm in order {
            let run = match arm {
                Arm::Without => measure(port, None, port, &[])?,
                Arm::With => measure(port, Some(agent), port, &[])?,
                // Probes attached, but nginx not selected: what merely
                // attaching the syscall tracepoints costs.
                Arm::Idle => measure(port, Some(agent), free_port()?, &[])?,
                // Connection counting only.
                Arm::NoHttp => measure(port, Some(agent), port, &["--no-http"])?,
            };
            eprintln!("xtask bench: round {pair} {arm:?}: {:.0} req/s", run.rps);
            match arm {
                Arm::Without => without.push(run),
                Arm::With => with.push(run),
                Arm::Idle => idle.push(run),
                Arm::NoHttp => no_http.push(run),
            }
        }
    }
    drop(nginx);
    let idle_ratio = median(&mut per_round_ratios(&idle, &without));
    let no_http_ratio = median(&mut per_round_ratios(&no_http, &without));
    let mut ratios = per_round_ratios(&with, &without);
    let ratio = median(&mut ratios);
    let usage: Vec<&AgentUsage> = with
        .iter()
        .filter_map(|r| r.agent.as_ref())
        .filter(|u| u.requests > 0.0)
        .collect();
    ensure!(!usage.is_empty(), "no agent measurements");
    let cpu_cores = median(
        &mut usage
            .iter()
            .map(|u| u.cpu_seconds / RUN_SECS as f64)
            .collect::<Vec<_>>(),
    );
    let cpu_per_10k = median(
        &mut usage
            .iter()
            .map(|u| u.cpu_seconds / u.requests.max(1.0) * 10_000.0)
            .collect::<Vec<_>>(),
    );
    let rss = usage.iter().map(|u| u.rss_kib).max().unwrap_or(0);
    let hwm = usage.iter().map(|u| u.hwm_kib).max().unwrap_or(0);
    let seen: f64 = usage.iter().map(|u| u.requests).sum();
    let sent: f64 = with.iter().map(|r| r.requests).sum();

    let doc = render(&Report {
        pipeline,
        ratios,
        ratio,
        idle_ratio,
        no_http_ratio,
        without: without.iter().map(|r| r.rps).collect(),
        with: with.iter().map(|r| r.rps).collect(),
        idle: idle.iter().map(|r| r.rps).collect(),
        no_http: no_http.iter().map(|r| r.rps).collect(),
        cpu_cores,
        cpu_per_10k,
        rss,
        hwm,
        seen,
        sent,
    });
    let path = root.join("docs/benchmarks.md");
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "throughput ratio with/without agent: {ratio:.3}; agent CPU at 10k req/s: {cpu_per_10k:.3} cores; pipeline {:.2} M events/s; written to docs/benchmarks.md",
        pipeline / 1e6
    );
    Ok(())
}

struct Report {
    pipeline: f64,
    ratios: Vec<f64>,
    ratio: f64,
    idle_ratio: f64,
    no_http_ratio: f64,
    without: Vec<f64>,
    with: Vec<f64>,
    idle: Vec<f64>,
    no_http: Vec<f64>,
    cpu_cores: f64,
    cpu_per_10k: f64,
    rss: u64,
    hwm: u64,
    seen: f64,
    sent: f64,
}

fn render(r: &Report) -> String {
    let mut s = String::new();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` on {date}, kernel {}, {cpus} CPUs. Every number is measured in the same run as its baseline; nothing here is asserted by a test.\n",
        kernel.trim()
    );
    let _ = writeln!(s, "| measure | result | target |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| nginx throughput with the agent / without (median of {} rounds) | {:.3} | >= 0.97 |",
        r.ratios.len(),
        r.ratio
    );
    let _ = writeln!(
        s,
        "| the same, agent attached but nginx not selected (probe cost alone) | {:.3} | |",
        r.idle_ratio
    );
    let _ = writeln!(
        s,
        "| the same, agent selecting nginx with `--no-http` (connection counting only) | {:.3} | |",
        r.no_http_ratio
    );
    let _ = writeln!(
        s,
        "| agent CPU, normalised to 10 000 req/s | {:.3} cores | <= 0.1 core |",
        r.cpu_per_10k
    );
    let _ = writeln!(
        s,
        "| agent CPU during the wrk runs | {:.3} cores | |",
        r.cpu_cores
    );
    let _ = writeln!(
        s,
        "| agent RSS at the end of a run (peak) | {:.1} MiB ({:.1} MiB) | |",
        r.rss as f64 / 1024.0,
        r.hwm as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "| userspace pipeline (decode, pair, parse, template, record), one core | {:.2} M events/s | >= 1 M events/s |",
        r.pipeline / 1e6
    );
    let _ = writeln!(
        s,
        "| requests the agent paired / requests wrk completed (runs with the agent) | {:.0} / {:.0} | equal, give or take the requests in flight when wrk stops |",
        r.seen, r.sent
    );
    let _ = writeln!(s, "\n## Method\n");
    let _ = writeln!(
        s,
        "- nginx (1 worker, access log off) serves a 23-byte file on loopback; wrk runs {RUN_SECS} s with 1 thread and {WRK_CONNECTIONS} keep-alive connections. Each round runs four arms: without the agent, with the agent selecting nginx (`--port`), with the agent attached but selecting an unused port, and with the agent selecting nginx with `--no-http`; {PAIRS} rounds, the order reversed every other round; ratios are medians of per-round ratios against the same round's run without the agent."
    );
    let _ = writeln!(
        s,
        "- Without agent (req/s): {}\n- With agent (req/s): {}\n- Agent attached, nginx not selected (req/s): {}\n- Agent with --no-http (req/s): {}\n- Per-round ratios (with/without): {}",
        fmt(&r.without),
        fmt(&r.with),
        fmt(&r.idle),
        fmt(&r.no_http),
        r.ratios
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- Agent CPU is utime + stime from /proc/PID/stat over the wrk run; normalised to 10 000 req/s by dividing by the requests it paired. RSS and its peak (VmHWM) from /proc/PID/status."
    );
    let _ = writeln!(
        s,
        "- The pipeline benchmark is `cargo bench -p apm-agent --bench pipeline` (criterion): 64 keep-alive connections, one read and two writes per request, paths that need templating."
    );
    let _ = writeln!(s, "\n## Reading the numbers\n");
    let _ = writeln!(
        s,
        "On this 2-CPU machine wrk, nginx and the agent share the cores, and the syscall tracepoints also run for wrk's own syscalls; shared/TOOLCHAIN.md measured that merely attaching syscall tracepoints moves every syscall of every task onto the kernel's tracing slow path. The throughput ratio is therefore dominated by the kernel-side probe cost, not by the agent process, whose CPU is reported separately. Requests paired below requests completed means records were dropped (see `apm_ebpf_drops_total`) or wrk's last in-flight requests were cut off by the end of the run."
    );
    s
}

fn criterion(root: &Path) -> Result<f64> {
    eprintln!("xtask bench: criterion pipeline benchmark");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args([
            "bench",
            "-p",
            "apm-agent",
            "--bench",
            "pipeline",
            "--",
            "--noplot",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    ensure!(out.status.success(), "cargo bench failed");
    parse_criterion_throughput(&text).context("no throughput line in criterion's output")
}

/// The middle estimate of criterion's `thrpt: [low mid high]` line, per second.
fn parse_criterion_throughput(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("thrpt:"))?;
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

/// One wrk run against nginx on `port`, with the agent selecting
/// `selected` (plus `extra` arguments) when `agent` is given.
fn measure(port: u16, agent: Option<&Path>, selected: u16, extra: &[&str]) -> Result<Run> {
    let Some(agent) = agent else {
        let (rps, requests) = wrk(port, RUN_SECS)?;
        return Ok(Run {
            rps,
            requests,
            agent: None,
        });
    };
    let admin = free_port()?;
    let mut child = Command::new(agent)
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
    let result = (|| {
        wait_ready(admin, selected, selected == port)?;
        let pid = child.id();
        let cpu0 = cpu_seconds(pid)?;
        let paired0 = paired(admin)?;
        let (rps, sent) = wrk(port, RUN_SECS)?;
        // Let the reader drain what the kernel queued during the run.
        std::thread::sleep(Duration::from_millis(500));
        let cpu = cpu_seconds(pid)? - cpu0;
        let requests = paired(admin)? - paired0;
        let (rss_kib, hwm_kib) = memory(pid)?;
        Ok(Run {
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
    // SAFETY: kill with the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    result
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

fn paired(admin: u16) -> Result<f64> {
    let body = http_get(admin, "/metrics")?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("apm_http_requests_paired_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: utime is the 14th field overall.
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((kib("VmRSS:"), kib("VmHWM:")))
}

/// Runs wrk; returns (requests/s, requests completed).
fn wrk(port: u16, secs: u64) -> Result<(f64, f64)> {
    let out = Command::new("wrk")
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

/// Throughput of each run relative to the baseline run of the same round.
fn per_round_ratios(runs: &[Run], baseline: &[Run]) -> Vec<f64> {
    runs.iter()
        .zip(baseline)
        .map(|(r, b)| r.rps / b.rps)
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(work: &Path, port: u16) -> Result<Self> {
        let conf: PathBuf = work.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {w};\n  proxy_temp_path {w};\n  fastcgi_temp_path {w};\n  uwsgi_temp_path {w};\n  scgi_temp_path {w};\n\
                 server {{ listen 127.0.0.1:{port}; root {w}/www; }}\n}}\n",
                w = work.display()
            ),
        )?;
        let child = Command::new("nginx")
            .args(["-c", &conf.to_string_lossy(), "-p", &work.to_string_lossy()])
            .stdin(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_throughput_line() {
        let out = "pipeline/x\n                        time:   [8.5 ms 8.8 ms 9.2 ms]\n                        thrpt:  [1.3395 Melem/s 1.3888 Melem/s 1.4409 Melem/s]\n";
        assert_eq!(parse_criterion_throughput(out), Some(1_388_800.0));
        assert_eq!(parse_criterion_throughput("nothing"), None);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
