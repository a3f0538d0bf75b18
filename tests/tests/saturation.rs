//! Saturation per service, end to end: CPU wait (two busy loops pinned
//! with a monitored server to one CPU), CPU throttling (the server in a
//! cgroup with `cpu.max` at 20 % of a CPU, driven to saturation), and
//! descriptor usage against a process's limit. The server's load is wrk
//! on the other CPU, bounded in time.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use apm_e2e::{
    Agent, Metrics, NetNs, Server, cgroups::Cgroup, free_port, process::stop, require_root,
    wait_for,
};

const SERVICE: &str = "apm-httpd";

/// `taskset` pinning every thread of `pid` to `cpu`.
fn pin(pid: u32, cpu: u32) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux)");
    assert!(ok.success(), "taskset {pid}");
}

/// wrk on CPU 1 against `port` for `secs` seconds (32 connections: the
/// server always has work).
fn load(port: u16, secs: u32) {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c32"])
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/ok"))
        .output()
        .expect("wrk (installed by cargo xtask test)");
    assert!(out.status.success(), "wrk: {out:?}");
}

fn counter(m: &Metrics, name: &str) -> f64 {
    m.value(name, &[("service_name", SERVICE)]).unwrap_or(0.0)
}

/// How much `name` grew per second of a `secs`-second load on `port`.
fn rate_under_load(agent: &Agent, port: u16, secs: u32, name: &str) -> f64 {
    // The sampler reads every second: samples before and after the load
    // bound what it did (an idle server adds nothing in between).
    let settle = || std::thread::sleep(Duration::from_millis(1500));
    settle();
    let before = counter(&agent.metrics().expect("metrics"), name);
    load(port, secs);
    settle();
    let after = counter(&agent.metrics().expect("metrics"), name);
    (after - before) / f64::from(secs)
}

/// A busy loop pinned to CPU 0, killed when dropped.
struct Spin(Child);

impl Spin {
    fn start() -> Self {
        Self(
            Command::new("taskset")
                .args(["-c", "0", "sh", "-c", "while :; do :; done"])
                .spawn()
                .expect("sh"),
        )
    }
}

impl Drop for Spin {
    fn drop(&mut self) {
        stop(&mut self.0, libc::SIGKILL);
    }
}

fn agent_for(port: u16) -> Agent {
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, SERVICE);
    agent.wait_for_process(SERVICE);
    agent
}

#[test]
fn a_server_sharing_its_cpu_with_busy_loops_waits_for_it() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    pin(server.pid(), 0);
    let agent = agent_for(port);
    let alone = rate_under_load(&agent, port, 4, "apm_service_cpu_wait_seconds_total");
    let spins = [Spin::start(), Spin::start()];
    let shared = rate_under_load(&agent, port, 4, "apm_service_cpu_wait_seconds_total");
    drop(spins);
    eprintln!("CPU wait, s/s: alone {alone:.3}, with two busy loops {shared:.3}");
    assert!(shared > 0.5, "with two busy loops: {shared}");
    assert!(alone < 0.2, "alone: {alone}");
    let v = agent.stats_system().expect("stats");
    assert!(
        v["sample"]["services"][SERVICE]["saturation"]["cpu_wait_seconds_total"]
            .as_f64()
            .is_some_and(|s| s > 2.0),
        "{v}"
    );
}

#[test]
fn a_server_over_its_cpu_max_is_throttled_and_one_under_it_is_not() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    let cgroup = Cgroup::create("throttle");
    cgroup.adopt(server.pid());
    let agent = agent_for(port);
    let throttled = "container_cpu_cfs_throttled_periods_total";
    let unlimited = rate_under_load(&agent, port, 3, throttled);
    cgroup.limit_cpu(0.2);
    let limited = rate_under_load(&agent, port, 3, throttled);
    let m = agent.metrics().expect("metrics");
    let seconds = counter(&m, "container_cpu_cfs_throttled_seconds_total");
    eprintln!(
        "throttled periods/s: unlimited {unlimited:.1}, at 20 % {limited:.1}; throttled {seconds:.2} s"
    );
    assert_eq!(unlimited, 0.0);
    // 10 periods a second, nearly all of them throttled at saturation.
    assert!(limited > 5.0, "{limited}");
    assert!(seconds > 1.0, "{seconds}");
    assert_eq!(
        m.value("apm_service_cpu_limit_cores", &[("service_name", SERVICE)]),
        Some(0.2)
    );
    drop((agent, server));
}

#[test]
fn a_process_near_its_descriptor_limit_reads_its_usage() {
    require_root();
    let port = free_port().expect("port");
    // A listener holding 60 descriptors under a soft limit of 64.
    let script = format!(
        "import resource, socket, sys, time\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n\
         s = socket.create_server(('127.0.0.1', {port}))\n\
         held = [open('/dev/null') for _ in range(56)]\n\
         print('listening', flush=True)\n\
         time.sleep(120)\n"
    );
    let mut python = Command::new("python3");
    python.args(["-c", &script]);
    let _server = Server::start(python, port).expect("python");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "python3");
    let usage = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics().ok()?;
        m.value("apm_service_fd_usage_ratio", &[("service_name", "python3")])
            .filter(|&r| r > 0.0)
    })
    .expect("fd usage of python3");
    eprintln!("descriptor usage {usage:.3}");
    // 56 files, the listener, the standard three: 60 of 64.
    assert!((0.9..=1.0).contains(&usage), "{usage}");
    // The built-in rule fires (held 30 s, evaluated every 10 s).
    let fired = wait_for(Duration::from_secs(60), || {
        let r = apm_e2e::get(agent.addr, "/alerts").ok()?;
        let doc: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        doc["firing"]
            .as_array()?
            .iter()
            .find(|a| a["alertname"] == "ServiceFdsAlmostExhausted")
            .cloned()
    });
    let alert = fired.expect("ServiceFdsAlmostExhausted firing");
    assert!(alert.to_string().contains("python3"), "{alert}");
}

#[test]
fn a_listener_that_never_accepts_reads_full_and_its_drops_are_counted_for_its_port() {
    full_listener(None);
}

/// The same in a network namespace of its own, as a container's or a
/// pod's listener is: the agent reads it from a socket made there.
#[test]
fn a_full_listener_in_another_network_namespace_is_read_there() {
    let ns = NetNs::create("backlog");
    full_listener(Some(&ns));
}

/// A listener with backlog 1 that never accepts (in `ns`, if given), hit
/// by 50 connection attempts of at most 100 ms: two are queued, the
/// rest's SYNs dropped while the queue is full, once each (a SYN is
/// retried after a second, and each attempt gives up long before).
fn full_listener(ns: Option<&NetNs>) {
    require_root();
    let port = free_port().expect("port");
    let script = format!(
        "import socket, time\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', {port}))\n\
         s.listen(1)\n\
         print('listening', flush=True)\n\
         time.sleep(60)\n"
    );
    let mut python = ns.map_or_else(|| Command::new("python3"), |ns| ns.command("python3"));
    python.args(["-c", &script]);
    let _server = Server::start(python, port).expect("python");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "python3");
    let overflows = |m: &Metrics| m.value("apm_host_tcp_listen_overflows_total", &[]);
    let before = wait_for(Duration::from_secs(10), || {
        overflows(&agent.metrics().ok()?)
    })
    .expect("the host's listen overflows");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let attempt = || {
        (0..50)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()
            })
            .collect::<Vec<_>>()
    };
    let held = match ns {
        Some(ns) => ns.run(attempt),
        None => attempt(),
    };
    let p = port.to_string();
    let labels = [("service_name", "python3"), ("server_port", p.as_str())];
    let read = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics().ok()?;
        let queued = m.value("apm_listen_queue_connections", &labels)?;
        let limit = m.value("apm_listen_queue_limit", &labels)?;
        let dropped = overflows(&m)? - before;
        let port_drops = m.value("apm_listen_drops_total", &labels)?;
        (queued > limit && port_drops > 0.0).then_some((queued, limit, dropped, port_drops))
    });
    let refused = 50 - held.len();
    eprintln!("{refused} not connected; queue, limit, host overflows, port drops: {read:?}");
    let (queued, limit, dropped, port_drops) = read.expect("a full queue and drops");
    assert_eq!((queued, limit), (2.0, 1.0));
    // The host's counters are the agent's namespace's.
    if ns.is_none() {
        assert!(dropped >= 1.0, "{dropped}");
    }
    // Every attempt that did not connect, on its own port (a sample may
    // fall between them: wait for the last).
    let exact = agent.wait_for_metrics(Duration::from_secs(10), |m| {
        m.value("apm_listen_drops_total", &labels) == Some(refused as f64)
    });
    assert!(
        exact.is_some(),
        "port drops {port_drops}, expected {refused}"
    );
}
