//! `--case traces`: what making, joining and exporting spans costs, in the
//! same run. Three nginx servers share CPU 0 as in the paired bench; two
//! agents run at once on CPU 1: one makes every request a span and exports
//! every trace (`--trace-sample-ratio 1`) to an OTLP receiver in this
//! process, the other captures with `--no-traces`. Each second both
//! captured servers' counters are read (order flipped every second): their
//! throughput ratio is what tracing costs the server; the two agents' CPU
//! per request over each block is what it costs the agent. The servers
//! each agent captures rotate between blocks, and the third server
//! (uncaptured) gives the A/A against the untraced one.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use super::{
    paired::{SLICES, WARM_UP_SECS, nginx_requests, read_all, three_nginx, wrk_clients},
    tools::{RunningAgent, median, median_ci95},
};
use crate::load::{cpu_seconds, metric_sum};

const BLOCKS: usize = 3;

/// The figures of the traces case.
#[derive(Default)]
pub struct TracesPaired {
    /// Traced / untraced server throughput, per second.
    ratios: Vec<f64>,
    /// Uncaptured / untraced, per second.
    aa: Vec<f64>,
    /// Agent CPU per request, per block: traced, untraced (ns).
    traced_ns: Vec<f64>,
    untraced_ns: Vec<f64>,
    /// Spans the collector accepted per traced request.
    exported: f64,
    /// OTLP bytes received per traced request.
    bytes: f64,
    /// Spans dropped per traced request, by reason (those seen).
    dropped: Vec<(&'static str, f64)>,
    /// The traced agent's arguments.
    args: String,
}

/// The reasons of apm_trace_spans_dropped_total.
const DROPS: [&str; 5] = [
    "pending_full",
    "sampled_out",
    "rate_limited",
    "queue_full",
    "export_failed",
];

fn dropped(admin: u16) -> Result<[f64; 5]> {
    let mut v = [0.0; 5];
    for (i, reason) in DROPS.iter().enumerate() {
        v[i] = metric_sum(
            admin,
            &format!("apm_trace_spans_dropped_total{{reason=\"{reason}\"}}"),
        )?;
    }
    Ok(v)
}

impl TracesPaired {
    pub fn line(&self) -> String {
        let (r, (lo, hi)) = (
            median(&mut self.ratios.clone()),
            median_ci95(&mut self.ratios.clone()),
        );
        let (a, (alo, ahi)) = (
            median(&mut self.aa.clone()),
            median_ci95(&mut self.aa.clone()),
        );
        let (t, u) = (
            median(&mut self.traced_ns.clone()),
            median(&mut self.untraced_ns.clone()),
        );
        let dropped: Vec<String> = self
            .dropped
            .iter()
            .filter(|(_, n)| *n > 0.0)
            .map(|(r, n)| format!("{n:.2} {r}"))
            .collect();
        format!(
            "nginx, traced ({}) / captured with --no-traces: {r:.3} (95 % CI {lo:.3}-{hi:.3}) over {} seconds, uncaptured/untraced {a:.3} ({alo:.3}-{ahi:.3}); agent CPU per request {t:.0} ns traced, {u:.0} ns not ({:+.0} ns, median of {} blocks); per request {:.2} spans and {:.0} OTLP bytes exported, spans dropped: {}",
            self.args,
            self.ratios.len(),
            t - u,
            self.traced_ns.len(),
            self.exported,
            self.bytes,
            if dropped.is_empty() {
                "none".to_owned()
            } else {
                dropped.join(", ")
            }
        )
    }
}

/// An OTLP/HTTP receiver that answers every POST with 200 and counts the
/// bytes; on CPU 1 with the clients and agents.
fn receiver() -> Result<(u16, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    std::thread::spawn(move || {
        pin_this_thread(1);
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    counted.fetch_add(length as u64, Ordering::Relaxed);
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if reader.get_mut().write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, bytes))
}

fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `sampling`: the traced agent's sampling arguments (an OTLP endpoint is
/// added).
pub fn traces_paired(
    agent: &Path,
    work: &Path,
    sampling: &[&str],
    extra: &[&str],
) -> Result<TracesPaired> {
    let (served, status, servers) = three_nginx(work, "traces", super::tools::Flavor::Plain)?;
    let (rport, received) = receiver()?;
    let endpoint = format!("http://127.0.0.1:{rport}");
    let mut traced_args = vec!["--otlp-endpoint", &endpoint];
    traced_args.extend_from_slice(sampling);
    traced_args.extend_from_slice(extra);
    let mut untraced_args = vec!["--no-traces"];
    untraced_args.extend_from_slice(extra);
    let mut reads = [0.0; 3];
    let mut counter = |i: usize| nginx_requests(status[i], &mut reads[i]);
    let mut out = TracesPaired {
        args: if sampling.is_empty() {
            "default sampling".to_owned()
        } else {
            sampling.join(" ")
        },
        ..TracesPaired::default()
    };
    let mut drops = [0.0; 5];
    let (mut exported, mut traced_requests, mut bytes) = (0.0, 0.0, 0.0);
    for block in 0..BLOCKS {
        let (t, u, c) = (block % 3, (block + 1) % 3, (block + 2) % 3);
        let traced = RunningAgent::start(agent, served[t], &traced_args, true)?;
        let untraced = RunningAgent::start(agent, served[u], &untraced_args, true)?;
        let exported0 = metric_sum(traced.admin, "apm_trace_spans_exported_total")?;
        let rest = counter(t)?;
        let drops0 = dropped(traced.admin)?;
        let bytes0 = received.load(Ordering::Relaxed);
        let clients = wrk_clients(&served, "http")?;
        std::thread::sleep(Duration::from_secs(WARM_UP_SECS));
        let cpu0 = (cpu_seconds(traced.pid())?, cpu_seconds(untraced.pid())?);
        let mut prev = read_all(&mut counter, false)?;
        let first = prev;
        let start = Instant::now();
        for slice in 1..=SLICES / BLOCKS {
            let due = start + Duration::from_secs(slice as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let now = read_all(&mut counter, slice % 2 == 1)?;
            let d: Vec<f64> = now.iter().zip(prev).map(|(n, p)| n - p).collect();
            ensure!(
                d.iter().all(|&x| x > 0.0),
                "traces: a server served nothing in slice {slice}: {d:?}"
            );
            out.ratios.push(d[t] / d[u]);
            out.aa.push(d[c] / d[u]);
            eprintln!(
                "xtask bench: traces block {block} second {slice}: traced/untraced {:.3}, uncaptured/untraced {:.3}",
                d[t] / d[u],
                d[c] / d[u]
            );
            prev = now;
        }
        let cpu1 = (cpu_seconds(traced.pid())?, cpu_seconds(untraced.pid())?);
        out.traced_ns
            .push((cpu1.0 - cpu0.0) * 1e9 / (prev[t] - first[t]).max(1.0));
        out.untraced_ns
            .push((cpu1.1 - cpu0.1) * 1e9 / (prev[u] - first[u]).max(1.0));
        drop(clients);
        // The last traces: their roots' grace period, then a batch.
        std::thread::sleep(Duration::from_secs(3));
        exported += metric_sum(traced.admin, "apm_trace_spans_exported_total")? - exported0;
        bytes += (received.load(Ordering::Relaxed) - bytes0) as f64;
        for (d, (now, then)) in drops
            .iter_mut()
            .zip(dropped(traced.admin)?.iter().zip(drops0))
        {
            *d += now - then;
        }
        traced_requests += counter(t)? - rest;
        drop((traced, untraced));
    }
    out.exported = exported / traced_requests.max(1.0);
    out.bytes = bytes / traced_requests.max(1.0);
    out.dropped = DROPS
        .iter()
        .zip(drops)
        .map(|(&r, n)| (r, n / traced_requests.max(1.0)))
        .collect();
    drop(servers);
    Ok(out)
}
