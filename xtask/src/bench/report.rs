//! docs/benchmarks.md, written from one run's measurements.

use std::{fmt::Write as _, process::Command};

use super::{
    ROUNDS, RUN_SECS, SECONDARY_EVERY, WRK_CONNECTIONS,
    redis::{REDIS_REQUESTS, REDIS_ROUNDS, RedisBench},
    tools::{Pipeline, ProbeCost, SyscallCost},
};

pub struct Report {
    pub pipeline: Pipeline,
    pub packets_ratios: Vec<f64>,
    /// A second run without the agent / the first, per round (A/A).
    pub again_ratios: Vec<f64>,
    pub syscalls_ratio: f64,
    pub idle_ratio: f64,
    pub no_http_ratio: f64,
    pub drain_ratio: f64,
    /// (arm, req/s per round)
    pub rps: Vec<(String, Vec<f64>)>,
    pub cpu_per_10k: f64,
    pub syscalls_cpu_per_10k: f64,
    pub rss: u64,
    pub hwm: u64,
    pub seen: f64,
    pub sent: f64,
    pub syscall_cost: SyscallCost,
    pub probe_cost: ProbeCost,
    pub redis: RedisBench,
    pub paired: super::paired::Paired,
    /// Redis, timed / untimed server, without pipelining and with -P 16.
    pub redis_paired: [super::paired::Paired; 2],
}

/// Median of per-round ratios with its 95 % confidence interval and
/// quartiles.
fn spread(ratios: &[f64]) -> String {
    let mut v = ratios.to_vec();
    let (lo, hi) = super::tools::median_ci95(&mut v);
    let (q1, q3) = super::tools::quartiles(&mut v);
    format!(
        "{:.3} (95 % CI of the median {lo:.3}-{hi:.3}; quartiles {q1:.3}-{q3:.3})",
        super::tools::median(&mut v)
    )
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let c = &r.syscall_cost;
    let p = &r.probe_cost;
    let pr = &r.paired;
    let ((lo, hi), (aa_lo, aa_hi)) = (pr.ci95(), pr.aa_ci95());
    let rows = [
        (
            format!(
                "**paired**: three nginx on one CPU loaded at once by wrk, one captured (rotating over three blocks): captured / uncaptured, median of {} one-second slices",
                pr.ratios.len()
            ),
            format!("{:.3} (95 % CI {lo:.3}-{hi:.3})", pr.median()),
            ">= 0.98, lower bound within 0.02",
        ),
        (
            format!(
                "**paired A/A**: the same seconds, the two uncaptured nginx, median of {} slices",
                pr.aa.len()
            ),
            format!("{:.3} (95 % CI {aa_lo:.3}-{aa_hi:.3})", pr.aa_median()),
            "0.99-1.01",
        ),
        (
            "**paired**: CPU added per captured request: packet programs (kernel BPF statistics in a window after the slices, the captured server's client alone) + agent process (its CPU over the slices / requests of the captured server); nginx's own CPU per request for scale".into(),
            format!(
                "{:.0} ns + {:.0} ns = {:.2} µs (nginx {:.0} ns); paired {:.0} of {:.0} sent",
                pr.bpf_ns,
                pr.agent_ns,
                (pr.bpf_ns + pr.agent_ns) / 1000.0,
                pr.server_ns,
                pr.paired,
                pr.sent
            ),
            "<= 0.75 µs",
        ),
        (
            "**paired** Redis: three redis-servers on one CPU loaded at once by redis-benchmark GET, the agent timing one (rotating); per-second ratios of timed / untimed (A/A: two untimed), without pipelining".into(),
            r.redis_paired[0].line("-P 1", "command"),
            ">= 0.98; A/A 0.99-1.01",
        ),
        (
            "**paired** Redis, the same with `-P 16` (every command of a ~1 M commands/s stream captured)".into(),
            r.redis_paired[1].line("-P 16", "command"),
            ">= 0.95; A/A 0.99-1.01",
        ),
        (
            "packet programs' run time per request (kernel BPF statistics) / nginx CPU per request"
                .into(),
            format!(
                "{:.0} ns / {:.0} ns = {:.2} % ({:.1} program runs per request)",
                p.bpf_ns_per_request,
                p.nginx_ns_per_request,
                100.0 * p.bpf_ns_per_request / p.nginx_ns_per_request.max(1.0),
                p.runs_per_request
            ),
            "<= 3 %",
        ),
        (
            format!(
                "nginx throughput with the agent (packet capture, the default) / without, median of {} rounds",
                r.packets_ratios.len()
            ),
            spread(&r.packets_ratios),
            ">= 0.97",
        ),
        (
            format!(
                "the same harness with no agent in either run (A/A: a second run without the agent / the first, in the same round), median of {} rounds",
                r.again_ratios.len()
            ),
            spread(&r.again_ratios),
            "1 within its interval: the harness's noise",
        ),
        (
            "the same with `--capture syscalls`".into(),
            format!("{:.3}", r.syscalls_ratio),
            "",
        ),
        (
            "the same, agent attached but nginx not selected".into(),
            format!("{:.3}", r.idle_ratio),
            "",
        ),
        (
            "the same with `--no-http` (connection counting only)".into(),
            format!("{:.3}", r.no_http_ratio),
            "",
        ),
        (
            "the same, packet capture with every record read from the ring and dropped unparsed (the kernel side alone; a diagnostic arm)".into(),
            format!("{:.3}", r.drain_ratio),
            "",
        ),
        (
            format!(
                "getppid() in a tight loop: without agent / packet capture / syscall capture (medians of {} alternating rounds; ratios to the runs without the agent around each)",
                c.rounds
            ),
            format!(
                "{:.0} / {:.0} / {:.0} ns ({:.3} / {:.3})",
                c.without, c.packets, c.syscalls, c.packets_ratio, c.syscalls_ratio
            ),
            "packets within 5 % of without",
        ),
        (
            "agent CPU per 10 000 req/s: packets (syscalls)".into(),
            format!("{:.3} ({:.3}) cores", r.cpu_per_10k, r.syscalls_cpu_per_10k),
            "<= 0.1 core",
        ),
        (
            "agent RSS at the end of a packet run (peak)".into(),
            format!(
                "{:.1} MiB ({:.1} MiB)",
                r.rss as f64 / 1024.0,
                r.hwm as f64 / 1024.0
            ),
            "<= 50 MiB",
        ),
        (
            "userspace pipeline on one core: packet records (syscall records; Redis packet records)".into(),
            format!(
                "{:.2} ({:.2}; {:.2}) M events/s",
                r.pipeline.packets / 1e6,
                r.pipeline.syscalls / 1e6,
                r.pipeline.resp / 1e6
            ),
            ">= 1 M events/s",
        ),
        (
            "requests the agent paired / requests wrk completed (packet runs)".into(),
            format!("{:.0} / {:.0}", r.seen, r.sent),
            "equal, give or take those in flight when wrk stops",
        ),
        (
            format!(
                "redis-benchmark throughput (SET and GET) with the agent timing every command / without, median of {} rounds",
                r.redis.ratios.len()
            ),
            spread(&r.redis.ratios),
            ">= 0.95",
        ),
        (
            format!(
                "the same harness with no agent in either run (A/A: a second redis-benchmark run without the agent / the first, in the same round), median of {} rounds",
                r.redis.again_ratios.len()
            ),
            spread(&r.redis.again_ratios),
            "1 within its interval: the harness's noise",
        ),
        (
            "busy time per Redis command of CPU 0 (redis-server's) and CPU 1 (redis-benchmark's and the agent's), with the agent / without, medians of per-round ratios".into(),
            format!(
                "CPU 0: {:.2} / {:.2} µs ({:.3}); CPU 1: {:.2} / {:.2} µs ({:.3}); the agent process alone: {:.2} µs",
                RedisBench::cpu_median(&r.redis.cpu_with, 0),
                RedisBench::cpu_median(&r.redis.cpu_without, 0),
                r.redis.cpu_ratio(0),
                RedisBench::cpu_median(&r.redis.cpu_with, 1),
                RedisBench::cpu_median(&r.redis.cpu_without, 1),
                r.redis.cpu_ratio(1),
                super::tools::median(&mut r.redis.agent_us.clone()),
            ),
            "",
        ),
        (
            "Redis commands the agent timed / commands redis-benchmark sent (runs with the agent)"
                .into(),
            format!("{:.0} / {:.0}", r.redis.timed, r.redis.sent),
            "equal",
        ),
    ];
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` on {date}, kernel {}, {cpus} CPUs. Every number is measured in the same run as its baseline; nothing here is asserted by a test.\n",
        kernel.trim()
    );
    let _ = writeln!(s, "| measure | result | target |\n|---|---|---|");
    for (what, result, target) in rows {
        let _ = writeln!(s, "| {what} | {result} | {target} |");
    }
    let _ = writeln!(s, "\n## Method\n");
    let _ = writeln!(
        s,
        "- nginx (1 worker, access log off) serves a 23-byte file on loopback, pinned to CPU 0 (taskset); wrk runs {RUN_SECS} s with 1 thread and {WRK_CONNECTIONS} keep-alive connections, pinned to CPU 1. The agent runs on CPU 1 too (taskset), beside the client: the ratio shows what the kernel programs cost the server's CPU, and the agent's own CPU is reported on its own row (on a host with spare CPU, that is where it goes; on this saturated 2-CPU machine it would otherwise be taken from nginx or wrk). Every round runs nginx without the agent and with the agent selecting it (`--port`, packet capture); every {SECONDARY_EVERY}nd round also runs the agent with `--capture syscalls`, the agent attached but selecting an unused port, the agent selecting nginx with `--no-http`, and the packet capture with `--test-fault discard-records` (the reader drops every record unparsed: what the kernel programs and the ring cost, without the agent's parsing on the client's CPU). Every round ends with a second run without the agent (A/A): its ratio to the first is what this harness reads when nothing changed. {ROUNDS} rounds, the order reversed every other round; ratios are medians of per-round ratios against the same round's run without the agent. The 95 % confidence interval of a median is distribution-free: the k-th smallest and k-th largest per-round ratios, k from the binomial distribution (the 6th and 15th of 20)."
    );
    for (arm, rps) in &r.rps {
        let _ = writeln!(s, "- {arm} (req/s): {}", list(rps, 0));
    }
    let _ = writeln!(
        s,
        "- Per-round ratios, packet capture / without: {}",
        list(&r.packets_ratios, 3)
    );
    let _ = writeln!(
        s,
        "- Per-round ratios, second run without / first run without (A/A): {}",
        list(&r.again_ratios, 3)
    );
    let _ = writeln!(
        s,
        "- Agent CPU is utime + stime from /proc/PID/stat over the wrk run, normalised to 10 000 req/s by the requests it paired. RSS and its peak (VmHWM) from /proc/PID/status; the ring buffer is 8 MiB of it."
    );
    let _ = writeln!(
        s,
        "- Redis: redis-server (no persistence) pinned to CPU 0, redis-benchmark pinned to CPU 1 with 32 clients, {REDIS_REQUESTS} SETs then {REDIS_REQUESTS} GETs per run, no pipelining; the agent (on CPU 1) selects the server with `--port` and `--redis-port`. {REDIS_ROUNDS} rounds of a run without the agent, one with it and a second one without (A/A), the order reversed every other round. Without (req/s): {}; with: {}; per-round ratios: {}; A/A ratios: {}.",
        list(&r.redis.without, 0),
        list(&r.redis.with, 0),
        list(&r.redis.ratios, 3),
        list(&r.redis.again_ratios, 3)
    );
    let busy = |cpu: usize| {
        let mut b: Vec<f64> = r
            .redis
            .cpu_without
            .iter()
            .zip(&r.redis.without)
            .map(|(c, rps)| c[cpu] * rps / 1e6 * 100.0)
            .collect();
        super::tools::median(&mut b)
    };
    let _ = writeln!(
        s,
        "- Busy time per Redis command is a CPU's non-idle time in /proc/stat over the run (user, system, irq and softirq: the kernel programs included wherever they run) divided by the commands sent. Without the agent, CPU 0 (redis-server) was {:.0} % busy and CPU 1 (redis-benchmark) {:.0} % (medians): whichever is near 100 % bounds the throughput, and the agent's own CPU, on CPU 1, counts against the throughput only when that is CPU 1.",
        busy(0),
        busy(1)
    );
    let _ = writeln!(
        s,
        "- The programs' run time is the kernel's own accounting (`kernel.bpf_stats_enabled=1` for one extra {RUN_SECS} s packet run, restored afterwards): `run_time_ns` and `run_cnt` of `capture_ingress` and `capture_egress` from `bpftool prog show`, divided by the requests wrk completed; nginx's CPU is utime + stime of its processes over the same run. Both sides of loopback traffic run the programs (client and server sockets), but only the server's port is selected, so most runs stop at the port lookup."
    );
    let _ = writeln!(
        s,
        "- The syscall cost is getppid() called 500 000 times in a row from xtask itself, the fastest of 3 such runs per measurement; each round measures without the agent, with the packet capture, without, with the syscall capture, and without again, and each capture's ratio is to the mean of the runs without the agent on either side of it (this VM's speed drifts by up to 20 % within seconds)."
    );
    let _ = writeln!(
        s,
        "- The pipeline benchmark is `cargo bench -p apm-agent --bench pipeline` (criterion): 64 keep-alive connections with paths that need templating and responses with nginx's eight headers (since 7ff2a3c; before, three), as packet records (one ingress and one egress segment per request, through reassembly) and as syscall records (one read and two writes per request); and redis-benchmark's traffic as the server's packets (a SET and a GET per connection and round, 16-byte keys, each command and reply one segment)."
    );
    let _ = writeln!(s, "\n## Reading the numbers\n");
    let _ = writeln!(
        s,
        "On this shared 2-CPU VM, wrk's throughput varies by 10 to 20 % from one run to the next with nothing changed (see the req/s lists), which is as large as the effect being measured; the medians above carry that noise. The A/A row measures it in the same run: a ratio whose confidence interval overlaps the A/A row's cannot be told from no change, and a target of 0.97 asks the median to be known to about ±0.01, which on this machine would take hundreds of rounds. The kernel's run-time accounting of the programs is the precise figure for their cost. The packet capture attaches no syscall tracepoint: its programs run per packet of the host, and for an unselected port do one array lookup. The syscall capture puts every syscall of every task (wrk's included) on the kernel's tracing slow path, which the getppid row shows directly. The agent process's own CPU is reported separately. Requests paired below requests completed means records were lost (`apm_ebpf_drops_total{{reason=\"ringbuf_full\"}}`, then `apm_http_requests_unpaired_total{{reason=\"gap\"}}`) or wrk's last in-flight requests were cut off by the end of the run."
    );
    s
}
