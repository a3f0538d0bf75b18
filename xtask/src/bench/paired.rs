//! The paired bench: the capture's cost as the servers feel it, measured
//! in the same second for the captured and the uncaptured servers, so that
//! whatever slows this VM in that second slows all of them.
//!
//! Three identical servers (one worker each) share CPU 0; one closed-loop
//! client per server runs on CPU 1, all three loaded at once, and the
//! agent (also on CPU 1) captures one of them. The scheduler gives the
//! three servers the same CPU time, so within any second each one's
//! throughput is that time over its own cost per request (its user time,
//! its syscalls and the packet programs that run in them): captured over
//! uncaptured is the inverse ratio of their costs. Every second the
//! servers' own counters (nginx's stub_status, Redis's INFO commandstats)
//! are read, the order flipped every second; the figure is the median of
//! the per-second ratios with its 95 % interval, and the two uncaptured
//! servers' ratio is the A/A check. The captured server rotates over three
//! blocks (a fresh agent each, started at rest, so that what it timed
//! compares exactly with what its server counted). Sequential 1-second
//! runs against one server (the first design) read A/A per second
//! anywhere from 0.70 to 1.45 here: the VM's speed changes within
//! seconds, not only between runs.
//!
//! The kernel's BPF run-time statistics cost each program run two clock
//! reads, so they are switched on only for a window after the slices: the
//! packet programs' time per captured request comes from there.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::tools::{
    Flavor, Nginx, RunningAgent, bpf_run_time, cpu_busy, free_port, median, median_ci95,
    nginx_cpu_seconds, pinned, with_bpf_stats,
};
use crate::load::cpu_seconds;

/// One-second slices of the ratio, over all blocks.
pub const SLICES: usize = 90;
/// Seconds of load before a block's first slice, and of the BPF
/// statistics window after the last block's last.
pub const WARM_UP_SECS: u64 = 3;
const BPF_WINDOW_SECS: u64 = 5;
/// A block's clients run at most this long: every phase, and a margin.
pub const LOAD_SECS: u64 = WARM_UP_SECS + (SLICES / BLOCKS) as u64 + BPF_WINDOW_SECS + 5;

#[derive(Default)]
pub struct Paired {
    /// Captured / uncaptured throughput, per second.
    pub ratios: Vec<f64>,
    /// Uncaptured / uncaptured, per second (A/A).
    pub aa: Vec<f64>,
    /// Nanoseconds the packet programs ran per captured request.
    pub bpf_ns: f64,
    /// Packet-program runs per captured request.
    pub bpf_runs: f64,
    /// The agents' largest peak RSS (VmHWM), KiB.
    pub agent_hwm_kib: u64,
    /// Nanoseconds of agent CPU per captured request.
    pub agent_ns: f64,
    /// Nanoseconds of CPU 0 (the servers') per request of all three.
    pub server_ns: f64,
    /// How busy CPU 1 (the clients', the agent's) was over the slices:
    /// below 1, a client waiting for CPU is not what limits its server.
    pub clients_busy: f64,
    /// Requests the agent paired / requests the captured server counted.
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

    /// CPU-0 time each captured request adds, from the ratio: B's cost per
    /// request times (1/ratio - 1).
    pub fn added_ns(&self) -> f64 {
        self.server_ns * (1.0 / self.median().max(1e-9) - 1.0)
    }

    /// One line of figures, for `what`, per `unit` (request, command).
    pub fn line(&self, what: &str, unit: &str) -> String {
        let ((lo, hi), (aa_lo, aa_hi)) = (self.ci95(), self.aa_ci95());
        format!(
            "{what}: {:.3} (95 % CI {lo:.3}-{hi:.3}) over {} seconds, A/A {:.3} ({aa_lo:.3}-{aa_hi:.3}); per {unit}: {:.0} ns added to the server's CPU (of {:.0} ns), {:.0} ns in the packet programs ({:.1} runs), {:.0} ns in the agent (peak RSS {:.1} MiB); timed {:.0} of {:.0}; clients' CPU {:.0} % busy",
            self.median(),
            self.ratios.len(),
            self.aa_median(),
            self.added_ns(),
            self.server_ns,
            self.bpf_ns,
            self.bpf_runs,
            self.agent_ns,
            self.agent_hwm_kib as f64 / 1024.0,
            self.paired,
            self.sent,
            self.clients_busy * 100.0
        )
    }
}

/// The clients of one bench, killed when dropped.
pub struct Clients(pub Vec<Child>);

impl Clients {
    /// Kills the clients at `which`.
    fn stop(&mut self, which: &[usize]) {
        for &i in which {
            if let Some(c) = self.0.get_mut(i) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop(&(0..self.0.len()).collect::<Vec<_>>());
    }
}

/// What a bench gives the sampler: the three servers' own counters of the
/// requests (or commands) their clients sent so far, an agent capturing
/// server `k` (started at rest), what an agent (by its admin port) has
/// timed so far (paired requests or timed commands), the servers' CPU
/// seconds so far, and the clients (loading all three servers until
/// dropped).
pub struct Subject<'a> {
    pub counters: &'a mut dyn FnMut(usize) -> Result<f64>,
    pub agent: &'a mut dyn FnMut(usize) -> Result<RunningAgent>,
    pub timed: &'a dyn Fn(u16) -> Result<f64>,
    pub server_cpu: &'a mut dyn FnMut() -> Result<f64>,
    pub clients: &'a mut dyn FnMut() -> Result<Clients>,
    pub what: &'a str,
    /// The programs whose run time per request the BPF window reads.
    pub programs: &'a [&'a str],
}

/// Blocks of slices; the captured server rotates between blocks, so that
/// whatever differs between the three servers (where their memory landed,
/// which client the scheduler favours) weighs on every side alike.
const BLOCKS: usize = 3;

/// Samples a bench in BLOCKS blocks: each starts an agent capturing the
/// next server at rest, starts the clients, warms up, reads SLICES /
/// BLOCKS one-second slices, stops the clients and compares at rest what
/// the agent timed with what its server counted. The last block ends with
/// the BPF statistics window, the captured server's client alone.
pub fn sample(s: Subject) -> Result<Paired> {
    let mut out = Paired::default();
    let (mut agent_cpu, mut server_cpu, mut all, mut captured) = (0.0, 0.0, 0.0, 0.0);
    let (mut busy, mut secs) = (0.0, 0.0);
    for block in 0..BLOCKS {
        let k = block % 3;
        // The other two: one the denominator, one the A/A numerator,
        // swapped every second.
        let others = [(k + 1) % 3, (k + 2) % 3];
        let agent = (s.agent)(k)?;
        let (rest_timed, rest_served) = ((s.timed)(agent.admin)?, (s.counters)(k)?);
        let mut clients = (s.clients)()?;
        std::thread::sleep(Duration::from_secs(WARM_UP_SECS));
        let agent0 = cpu_seconds(agent.pid())?;
        let cpu0 = (s.server_cpu)()?;
        let busy0 = cpu_busy()?[1];
        let mut prev = read_all(s.counters, false)?;
        let first = prev;
        let start = Instant::now();
        for slice in 1..=SLICES / BLOCKS {
            let due = start + Duration::from_secs(slice as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let now = read_all(s.counters, slice % 2 == 1)?;
            let d: Vec<f64> = now.iter().zip(prev).map(|(n, p)| n - p).collect();
            ensure!(
                d.iter().all(|&x| x > 0.0),
                "{}: a server served nothing in slice {slice}: {d:?}",
                s.what
            );
            let [u, v] = if slice % 2 == 0 {
                others
            } else {
                [others[1], others[0]]
            };
            out.ratios.push(d[k] / d[u]);
            out.aa.push(d[v] / d[u]);
            eprintln!(
                "xtask bench: {} block {block} second {slice}: captured/uncaptured {:.3}, A/A {:.3}",
                s.what,
                d[k] / d[u],
                d[v] / d[u]
            );
            prev = now;
        }
        all += prev.iter().zip(first).map(|(n, f)| n - f).sum::<f64>();
        captured += prev[k] - first[k];
        agent_cpu += cpu_seconds(agent.pid())? - agent0;
        out.agent_hwm_kib = out.agent_hwm_kib.max(crate::load::memory(agent.pid())?.1);
        server_cpu += (s.server_cpu)()? - cpu0;
        busy += cpu_busy()?[1] - busy0;
        secs += start.elapsed().as_secs_f64();
        if block + 1 == BLOCKS {
            // The packet programs run on every packet of the host: with
            // the uncaptured servers' clients stopped, their time is the
            // captured server's (and its client's).
            clients.stop(&others);
            (out.bpf_ns, out.bpf_runs) = with_bpf_stats(|| {
                std::thread::sleep(Duration::from_millis(500));
                let (t0, n0) = (bpf_run_time(s.programs)?, (s.counters)(k)?);
                std::thread::sleep(Duration::from_secs(BPF_WINDOW_SECS));
                let (t1, n1) = (bpf_run_time(s.programs)?, (s.counters)(k)?);
                let served = (n1 - n0).max(1.0);
                Ok(((t1.0 - t0.0) as f64 / served, (t1.1 - t0.1) as f64 / served))
            })?;
        }
        drop(clients);
        std::thread::sleep(Duration::from_secs(1));
        out.paired += (s.timed)(agent.admin)? - rest_timed;
        out.sent += (s.counters)(k)? - rest_served;
    }
    out.agent_ns = agent_cpu * 1e9 / captured.max(1.0);
    out.server_ns = server_cpu * 1e9 / all.max(1.0);
    out.clients_busy = busy / secs.max(1e-9);
    Ok(out)
}

/// The three counters, read in turn (backwards when `flip`).
pub(super) fn read_all(
    counters: &mut dyn FnMut(usize) -> Result<f64>,
    flip: bool,
) -> Result<[f64; 3]> {
    let mut v = [0.0; 3];
    let order = if flip { [2, 1, 0] } else { [0, 1, 2] };
    for i in order {
        v[i] = counters(i)?;
    }
    Ok(v)
}

/// Six distinct free ports.
/// The SQL statements on `table` that the agent on `admin` timed, server
/// side (the PostgreSQL and MariaDB cases).
pub fn sql_timed(admin: u16, table: &str) -> Result<f64> {
    crate::load::metric_sum(
        admin,
        &format!("apm_db_server_operation_duration_seconds_count{{db_collection_name=\"{table}\""),
    )
}

pub fn six_ports() -> Result<[u16; 6]> {
    let mut ports = [0u16; 6];
    for i in 0..ports.len() {
        let mut p = free_port()?;
        while ports[..i].contains(&p) {
            p = free_port()?;
        }
        ports[i] = p;
    }
    Ok(ports)
}

/// Requests nginx has served so far from its clients: its stub_status on
/// `port` (the third number of "server accepts handled requests") less
/// the status requests, `reads` of them before this one.
pub(super) fn nginx_requests(port: u16, reads: &mut f64) -> Result<f64> {
    let text = crate::load::http_get(port, "/")?;
    *reads += 1.0;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
        .map(|n| n - *reads)
        .with_context(|| format!("no request count in stub_status: {text}"))
}

/// nginx serving a 23-byte file, over TLS with `tls` (the certificate in
/// `work`, made by [`certificate`]).
/// Three nginx (one worker each, on CPU 0) serving `work`'s page in
/// directories `{name}-{i}`, over TLS with `tls`: their ports, their
/// stub_status ports, and the servers (stopped when dropped).
pub(super) fn three_nginx(
    work: &Path,
    name: &str,
    flavor: Flavor,
) -> Result<([u16; 3], [u16; 3], Vec<Nginx>)> {
    let ports = six_ports()?;
    let (served, status) = (
        [ports[0], ports[1], ports[2]],
        [ports[3], ports[4], ports[5]],
    );
    let page = std::fs::read(work.join("www/index.html"))?;
    let mut servers = Vec::new();
    for (i, (&port, &status)) in served.iter().zip(&status).enumerate() {
        let dir = work.join(format!("{name}-{i}"));
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/index.html"), &page)?;
        if flavor == Flavor::Tls {
            for file in ["cert.pem", "key.pem"] {
                std::fs::copy(work.join(file), dir.join(file))?;
            }
        }
        servers.push(Nginx::start_ports(&dir, &[port], Some(status), flavor)?);
    }
    Ok((served, status, servers))
}

/// One wrk client (32 connections, on CPU 1) per server of `served`.
pub(super) fn wrk_clients(served: &[u16], scheme: &str) -> Result<Clients> {
    let clients = served.iter().map(|port| {
        pinned(1, "wrk")
            .args(["-t1", "-c32", &format!("-d{LOAD_SECS}s")])
            .arg(format!("{scheme}://127.0.0.1:{port}/index.html"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting wrk")
    });
    Ok(Clients(clients.collect::<Result<_>>()?))
}

pub fn nginx_paired(agent: &Path, work: &Path, extra: &[&str], flavor: Flavor) -> Result<Paired> {
    let (served, status, _servers) = three_nginx(work, "paired", flavor)?;
    let mut reads = [0.0; 3];
    sample(Subject {
        counters: &mut |i| nginx_requests(status[i], &mut reads[i]),
        agent: &mut |k| RunningAgent::start(agent, served[k], extra, true),
        timed: &super::tools::paired,
        server_cpu: &mut nginx_cpu_seconds,
        clients: &mut || match flavor {
            Flavor::Plain => wrk_clients(&served, "http"),
            Flavor::Tls => wrk_clients(&served, "https"),
            Flavor::H2c => h2load_clients(&served),
        },
        what: match flavor {
            Flavor::Plain => "nginx",
            Flavor::Tls => "nginx over TLS",
            Flavor::H2c => "nginx over h2c",
        },
        programs: if flavor == Flavor::Tls {
            &PROGRAMS_TLS
        } else {
            &PROGRAMS
        },
    })
}

/// One h2load client (4 connections of 8 streams each, on CPU 1) per
/// server of `served`, for as long as wrk's.
fn h2load_clients(served: &[u16]) -> Result<Clients> {
    let clients = served.iter().map(|port| {
        pinned(1, "h2load")
            .args(["-t1", "-c4", "-m8", &format!("-D{LOAD_SECS}")])
            .arg(format!("http://127.0.0.1:{port}/index.html"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting h2load")
    });
    Ok(Clients(clients.collect::<Result<_>>()?))
}

/// The packet programs, whose run time per request the BPF window reads.
pub const PROGRAMS: [&str; 2] = ["capture_ingress", "capture_egress"];
/// The same and the TLS probes.
const PROGRAMS_TLS: [&str; 7] = [
    "capture_ingress",
    "capture_egress",
    "ssl_read",
    "ssl_read_ex",
    "ssl_write",
    "ssl_write_ex",
    "ssl_return",
];

/// A self-signed certificate for nginx over TLS: `cert.pem` and `key.pem`
/// in `work`.
pub fn certificate(work: &Path) -> Result<()> {
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(work.join("key.pem"))
        .arg("-out")
        .arg(work.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?;
    ensure!(status.success(), "openssl req failed: {status}");
    Ok(())
}
