//! `cargo xtask flood [--record]`: hostile input at scale against the real
//! agent (every listener monitored, as by default). One million requests
//! with distinct paths to nginx, and ten thousand short-lived processes
//! that each listen on a new port and take one connection. Measured: the
//! series the agent exports, its route and port state, its memory, that
//! idle ports and series are gone after --series-ttl, and what /metrics,
//! /api/dashboard and /health/ready take meanwhile (p99 ≤ 50 ms).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    bench::tools::{Nginx, free_port},
    load::{memory, metric_sum, utc_now},
};

const PATHS: u64 = 1_000_000;
const PROCESSES: usize = 10_000;
const CONNECTIONS: usize = 16;
const PIPELINE: u64 = 100;
/// Series TTL of the flood's agent, so that expiry shows within the run.
const TTL_SECS: u64 = 30;
/// The bound the agent's RSS must stay under (documented in
/// docs/benchmarks.md).
const RSS_BOUND_MIB: f64 = 150.0;

/// The hidden `flood-listener` subcommand: listen on a new port, print it,
/// take one connection (or give up after a second), exit.
pub fn listener() -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if l.accept().is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Path `i`: three word-like segments from its digits (the templater keeps
/// words until a parent has too many children), one in five an email.
fn path(i: u64) -> String {
    let word = |n: u64| {
        let mut s = String::new();
        let mut n = n;
        for _ in 0..3 {
            s.push((b'a' + (n % 26) as u8) as char);
            n /= 26;
        }
        s
    };
    if i.is_multiple_of(5) {
        format!("/users/u{i}@example.com/orders")
    } else {
        format!("/w-{}/x-{}/y-{}", word(i), word(i / 7), word(i / 49))
    }
}

fn drive_paths(port: u16) -> Result<u64> {
    let per = PATHS / CONNECTIONS as u64;
    let threads: Vec<_> = (0..CONNECTIONS as u64)
        .map(|c| {
            std::thread::spawn(move || -> Result<u64> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut reader = BufReader::new(s.try_clone()?);
                let mut done = 0;
                let mut i = c * per;
                while i < (c + 1) * per {
                    let end = (i + PIPELINE).min((c + 1) * per);
                    let batch: String = (i..end)
                        .map(|n| format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", path(n)))
                        .collect();
                    s.write_all(batch.as_bytes())?;
                    for _ in i..end {
                        crate::load::read_response(&mut reader)?;
                        done += 1;
                    }
                    i = end;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    Ok(total)
}

fn short_lived_processes() -> Result<usize> {
    let me = std::env::current_exe()?;
    let mut done = 0;
    for chunk in (0..PROCESSES).collect::<Vec<_>>().chunks(8) {
        let mut children = Vec::new();
        for _ in chunk {
            let mut child = Command::new(&me)
                .arg("flood-listener")
                .stdout(Stdio::piped())
                .spawn()
                .context("spawning a listener")?;
            let mut port = String::new();
            if let Some(out) = child.stdout.take() {
                BufReader::new(out).read_line(&mut port)?;
            }
            let port: u16 = port.trim().parse().context("listener port")?;
            let _ = TcpStream::connect(("127.0.0.1", port));
            children.push(child);
        }
        for mut c in children {
            c.wait()?;
            done += 1;
        }
    }
    Ok(done)
}

struct Snapshot {
    series: usize,
    duration_series: usize,
    port_series: usize,
    routes: f64,
    over_budget: f64,
    ports_full: f64,
    rss_mib: f64,
    hwm_mib: f64,
}

fn snapshot(admin: u16, pid: u32) -> Result<Snapshot> {
    let body = crate::load::http_get(admin, "/metrics")?;
    let lines: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    let (rss, hwm) = memory(pid)?;
    Ok(Snapshot {
        series: lines.len(),
        duration_series: lines
            .iter()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
            .count(),
        port_series: lines
            .iter()
            .filter(|l| l.starts_with("apm_tcp_connections_active{"))
            .count(),
        routes: metric_sum(admin, "apm_http_routes{")?,
        over_budget: metric_sum(admin, "apm_http_series_over_budget_total")?,
        ports_full: metric_sum(admin, "apm_ebpf_drops_total{reason=\"ports_map_full\"}")?,
        rss_mib: rss as f64 / 1024.0,
        hwm_mib: hwm as f64 / 1024.0,
    })
}

/// What /metrics, /api/dashboard and /health/ready may take at p99 while
/// the flood runs (capture on its own thread; readers on snapshots).
const P99_BOUND_MS: f64 = 50.0;

/// Probes the admin endpoints while `on`: /api/dashboard and /health/ready
/// in turn every 10 ms, /metrics every second (a fast Prometheus; with
/// ~17 000 series each scrape encodes for ~20 ms, so scraping it every
/// 30 ms would itself take most of a CPU). Each one's latencies in
/// milliseconds (a failed request counts as 5 s).
fn probe_endpoints(
    admin: u16,
    on: &std::sync::atomic::AtomicBool,
) -> Vec<(&'static str, Vec<f64>)> {
    let mut out: Vec<(&'static str, Vec<f64>)> = ["/metrics", "/api/dashboard", "/health/ready"]
        .into_iter()
        .map(|e| (e, Vec::new()))
        .collect();
    let mut i = 0;
    let mut last_scrape = Instant::now();
    while on.load(std::sync::atomic::Ordering::Relaxed) {
        let at = if last_scrape.elapsed() >= Duration::from_secs(1) {
            last_scrape = Instant::now();
            0
        } else {
            1 + i % 2
        };
        let (endpoint, ms) = &mut out[at];
        let t = Instant::now();
        let ok =
            crate::load::http_get(admin, endpoint).is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
        ms.push(if ok {
            t.elapsed().as_secs_f64() * 1e3
        } else {
            5000.0
        });
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    out
}

pub fn flood(root: &Path, agent: &Path, record: bool) -> Result<()> {
    let work = std::env::temp_dir().join("apm-flood");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www"))?;
    let port = free_port()?;
    let _nginx = Nginx::start(&work, port)?;
    let admin = free_port()?;
    let agent = crate::load::spawn_agent(agent, admin, &["--series-ttl", &format!("{TTL_SECS}s")])?;
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !crate::load::http_get(admin, "/metrics")
        .is_ok_and(|b| b.contains(&format!("server_port=\"{port}\",service_name=\"nginx\"")))
    {
        ensure!(Instant::now() < deadline, "the agent did not find nginx");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = snapshot(admin, pid)?;
    let probing = std::sync::atomic::AtomicBool::new(true);
    let (flooded, probes) = std::thread::scope(|s| {
        let prober = s.spawn(|| probe_endpoints(admin, &probing));
        let flooded = (|| -> Result<_> {
            let t = Instant::now();
            let sent = drive_paths(port)?;
            let paths_secs = t.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs(2));
            let after_paths = snapshot(admin, pid)?;
            let t = Instant::now();
            let spawned = short_lived_processes()?;
            Ok((
                sent,
                paths_secs,
                after_paths,
                spawned,
                t.elapsed().as_secs_f64(),
            ))
        })();
        probing.store(false, std::sync::atomic::Ordering::Relaxed);
        (flooded, prober.join())
    });
    let (sent, paths_secs, after_paths, spawned, procs_secs) = flooded?;
    let probes = probes.map_err(|_| anyhow::anyhow!("the endpoint prober panicked"))?;
    std::thread::sleep(Duration::from_secs(2));
    let after_procs = snapshot(admin, pid)?;
    // Past the TTL (plus a refresh), idle ports and series are gone.
    std::thread::sleep(Duration::from_secs(TTL_SECS + 5));
    let expired = snapshot(admin, pid)?;
    let peak = [&after_paths, &after_procs, &expired]
        .iter()
        .map(|s| s.hwm_mib)
        .fold(0.0, f64::max);
    let rows = [
        ("agent started, nginx found", &before),
        ("after 1 000 000 distinct paths", &after_paths),
        ("after 10 000 short-lived listeners", &after_procs),
        ("after --series-ttl (30 s here) without traffic", &expired),
    ];
    let mut s = format!(
        "## Flood\n\n`cargo xtask flood --record` on {}: the agent monitors every listener (the default) with `--series-ttl {TTL_SECS}s`. {sent} requests with distinct paths ({:.0} s; 16 keep-alive connections, pipelined by 100; four in five three word-like segments, one in five an email) to nginx, then {spawned} processes ({:.0} s) that each listen on a new port and take one connection. Bounds: routes per service `--max-routes` 1000, duration series `--max-series` 20 000, kernel ports map 1024 entries; **RSS bound {RSS_BOUND_MIB:.0} MiB, peak {peak:.1} MiB**.\n\n| when | series in /metrics | duration series | port series | routes (all services) | over series budget | ports map full | RSS (MiB) |\n|---|---|---|---|---|---|---|---|\n",
        utc_now(),
        paths_secs,
        procs_secs,
    );
    for (when, x) in rows {
        s.push_str(&format!(
            "| {when} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            x.series,
            x.duration_series,
            x.port_series,
            x.routes,
            x.over_budget,
            x.ports_full,
            x.rss_mib
        ));
    }
    s.push_str(&format!(
        "\nThe admin endpoints during both floods: /api/dashboard and /health/ready in turn every 10 ms, /metrics every second (p99 bound {P99_BOUND_MS} ms):\n\n| endpoint | probes | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|\n"
    ));
    for (endpoint, mut ms) in probes.clone() {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        s.push_str(&format!(
            "| `{endpoint}` | {} | {:.1} | {:.1} | {:.1} |\n",
            ms.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        ));
    }
    println!("{s}");
    if record {
        crate::docs::write_section(root, "flood", &s)?;
    }
    for (endpoint, mut ms) in probes {
        ms.sort_by(f64::total_cmp);
        let p99 = ms
            .get(((ms.len() * 99).div_ceil(100)).saturating_sub(1))
            .copied()
            .unwrap_or(f64::MAX);
        ensure!(
            p99 <= P99_BOUND_MS,
            "{endpoint}: p99 {p99:.1} ms during the flood, over {P99_BOUND_MS} ms"
        );
    }
    if peak > RSS_BOUND_MIB {
        bail!("agent RSS peaked at {peak:.1} MiB, over the {RSS_BOUND_MIB} MiB bound");
    }
    ensure!(
        after_paths.routes <= 1001.0,
        "routes not bounded: {}",
        after_paths.routes
    );
    ensure!(
        expired.port_series < after_procs.port_series.max(2),
        "idle port series were not removed after the TTL"
    );
    Ok(())
}
