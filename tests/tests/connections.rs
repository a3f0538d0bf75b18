//! Connection counting end to end: the real agent with its eBPF programs in
//! this kernel, scripted listeners, counts compared with what the test did.

use std::{process::Command, time::Duration};

use apm_common::maps::Role;
use apm_e2e::{Agent, Listener, connect_many, free_port, get, require_root, wait_for};

const WAIT: Duration = Duration::from_secs(15);

fn port_label(port: u16) -> String {
    port.to_string()
}

/// The accept/close tracepoints saw the same 200 accepts and 80 closes in
/// the listener process.
fn syscall_side_saw_the_same(m: &apm_e2e::Metrics) {
    assert_eq!(
        m.value(
            "apm_accepted_sockets_total",
            &[("service_name", "apm-listener")]
        ),
        Some(200.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.value(
            "apm_accepted_sockets_closed_total",
            &[("service_name", "apm-listener")]
        ),
        Some(80.0),
        "{}",
        m.text
    );
}

/// Waits until the agent has found the listener's process (so its accept
/// syscalls are traced too), identified by the series for `port`.
fn wait_until_named(agent: &Agent, port: u16, service: &str) {
    let p = port_label(port);
    let found = wait_for(WAIT, || {
        let m = agent.metrics().ok()?;
        let named = m
            .value(
                "apm_tcp_connections_accepted_total",
                &[("server_port", &p), ("service_name", service)],
            )
            .is_some();
        let tracked = m.value("apm_tracked_processes", &[]).unwrap_or(0.0) >= 1.0;
        (named && tracked).then_some(())
    });
    assert!(
        found.is_some(),
        "agent never named port {port} as {service}: {}",
        agent.log_text()
    );
}

#[test]
fn accepted_closed_and_active_match_what_the_listener_did() {
    require_root();
    counts_match("packets", &[]);
    counts_match("packets", &["--capture-tls"]);
    // Without the kernel's BTF, TLS is keyed by descriptor: accepts and
    // closes are traced.
    counts_match("packets", &["--capture-tls", "--kernel-btf", NO_BTF]);
    counts_match("syscalls", &[]);
}

/// A `--kernel-btf` that cannot be read.
const NO_BTF: &str = "/nonexistent/vmlinux";

/// With `--capture capture` and `extra` arguments.
fn counts_match(capture: &str, extra: &[&str]) {
    let (selected, other) = (free_port().expect("port"), free_port().expect("port"));
    assert_ne!(selected, other);
    let port = selected.to_string();
    let mut args = vec!["--capture", capture, "--port", &port];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args).expect("agent");
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value("apm_ebpf_up", &[]),
        Some(1.0),
        "{}",
        agent.log_text()
    );

    // 4 batches of 50 (std's listen backlog is 128): 200 accepted, 20 of
    // each batch closed by the server, so 80 closed and 120 still open.
    let mut listener = Listener::start(selected, 50, 20).expect("listener");
    let mut unselected = Listener::start(other, 50, 10).expect("listener");
    wait_until_named(&agent, selected, "apm-listener");

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.extend(connect_many(selected, 50).expect("connect"));
        listener.go().expect("accept batch");
    }
    clients.extend(connect_many(other, 50).expect("connect"));
    unselected.go().expect("accept batch");

    let m = agent.metrics().expect("metrics");
    let labels = [("server_port", selected.to_string())];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        m.value("apm_tcp_connections_accepted_total", &labels),
        Some(200.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.value("apm_tcp_connections_closed_total", &labels),
        Some(80.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.value("apm_tcp_connections_active", &labels),
        Some(120.0),
        "{}",
        m.text
    );
    if capture == "packets" && !extra.contains(&NO_BTF) {
        // No syscall is traced (TLS is keyed by socket), so there are no
        // per-process accept counts.
        assert!(
            !m.text.contains("apm_accepted_sockets_total{"),
            "{}",
            m.text
        );
    } else {
        syscall_side_saw_the_same(&m);
    }
    let other = format!("server_port=\"{other}\"");
    let other = format!("server_port=\"{other}\"");
    assert!(
        !m.text.contains(&other),
        "unselected port appears in /metrics:\n{}",
        m.text
    );
    for reason in ["sockets_map_full", "ports_map_full", "conns_map_full"] {
        assert_eq!(
            m.value("apm_ebpf_drops_total", &[("reason", reason)]),
            Some(0.0)
        );
    }
    drop(clients);
}

#[test]
fn a_server_started_after_the_agent_is_picked_up() {
    require_root();
    // Every-port mode (no selection) and selection by process name.
    for args in [&[][..], &["--comm", "apm-listener"][..]] {
        let agent = Agent::start(args).expect("agent");
        let port = free_port().expect("port");
        let mut listener = Listener::start(port, 30, 0).expect("listener");
        wait_until_named(&agent, port, "apm-listener");
        let clients = connect_many(port, 30).expect("connect");
        listener.go().expect("accept");
        let m = agent.metrics().expect("metrics");
        let p = port.to_string();
        let labels = [
            ("server_port", p.as_str()),
            ("service_name", "apm-listener"),
        ];
        assert_eq!(
            m.value("apm_tcp_connections_accepted_total", &labels),
            Some(30.0),
            "args {args:?}: {}",
            m.text
        );
        assert_eq!(m.value("apm_tcp_connections_active", &labels), Some(30.0));
        drop(clients);
        // Client-side closes make the server sockets CLOSE_WAIT (still
        // active); the listener's exit closes them for good.
        drop(listener);
        let p2 = p.clone();
        let closed = wait_for(WAIT, || {
            let m = agent.metrics().ok()?;
            let labels = [
                ("server_port", p2.as_str()),
                ("service_name", "apm-listener"),
            ];
            (m.value("apm_tcp_connections_closed_total", &labels) == Some(30.0)
                && m.value("apm_tcp_connections_active", &labels) == Some(0.0))
            .then_some(())
        });
        assert!(
            closed.is_some(),
            "args {args:?}: {}",
            agent.metrics().expect("m").text
        );
    }
}

/// Loaded BPF programs named like one of apm's (bpftool shows full names
/// from BTF).
fn apm_programs_loaded() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (installed by cargo xtask test)");
    assert!(out.status.success(), "bpftool failed: {out:?}");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    progs
        .as_array()
        .expect("array")
        .iter()
        .filter(|p| {
            let name = p["name"].as_str().unwrap_or("");
            apm_common::maps::PROBES
                .iter()
                .any(|probe| probe.program == name)
                || apm_common::maps::TLS_PROGRAMS.contains(&name)
        })
        .count()
}

/// [`apm_programs_loaded`] once the kernel has released what an exited
/// agent held: its descriptors are closed after it is reaped, and a raw
/// tracepoint's program only after an RCU grace period.
fn programs_released() -> usize {
    wait_for(WAIT, || (apm_programs_loaded() == 0).then_some(0)).unwrap_or_else(apm_programs_loaded)
}

/// Programs of a role in the object, and the TLS uprobes (loaded at
/// start with `--capture-tls`) when `tls`.
fn programs(roles: &[Role], tls: bool) -> usize {
    let tls = if tls {
        apm_common::maps::TLS_PROGRAMS.len()
    } else {
        0
    };
    apm_common::maps::PROBES
        .iter()
        .filter(|p| roles.contains(&p.role))
        .count()
        + tls
}

/// cgroup programs attached anywhere, from `bpftool cgroup tree`.
fn cgroup_programs_named(names: &[&str]) -> usize {
    let out = Command::new("bpftool")
        .args(["cgroup", "tree"])
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| names.iter().any(|n| l.contains(n)))
        .count()
}

#[test]
fn sigterm_detaches_every_program() {
    require_root();
    let cgroup_hooks = ["capture_ingress", "capture_egress", "connect4", "connect6"];
    // TCP health's tracepoints in every mode: they fire only on
    // retransmissions and resets.
    let packets = [
        Role::Connections,
        Role::TcpHealth,
        Role::PacketData,
        Role::Outbound,
    ];
    // TLS reading with packets keys plaintext by socket (this kernel has
    // BTF): no syscall tracepoint, nothing on the read path.
    let packets_tls = packets;
    // Without it, by descriptor: the accept, close and connect
    // tracepoints, and the read entries.
    let packets_tls_no_btf = [
        Role::Connections,
        Role::TcpHealth,
        Role::PacketData,
        Role::Outbound,
        Role::SyscallState,
        Role::TlsReads,
    ];
    let syscalls = [
        Role::Connections,
        Role::TcpHealth,
        Role::SyscallState,
        Role::SyscallData,
    ];
    for (capture, tls, btf, roles) in [
        ("packets", false, true, &packets[..]),
        ("packets", true, true, &packets_tls[..]),
        ("packets", true, false, &packets_tls_no_btf[..]),
        ("syscalls", false, true, &syscalls[..]),
    ] {
        assert_eq!(programs_released(), 0, "programs left over before the test");
        let mut args = vec!["--capture", capture];
        if tls {
            args.push("--capture-tls");
        }
        if !btf {
            args.extend(["--kernel-btf", NO_BTF]);
        }
        let mut agent = Agent::start(&args).expect("agent");
        assert_eq!(
            apm_programs_loaded(),
            programs(roles, tls),
            "{}",
            agent.log_text()
        );
        let on_cgroups = cgroup_programs_named(&cgroup_hooks);
        assert_eq!(on_cgroups, if capture == "packets" { 4 } else { 0 });
        let status = agent.terminate(WAIT).expect("terminate");
        assert!(
            status.success(),
            "agent exited with {status}: {}",
            agent.log_text()
        );
        assert_eq!(programs_released(), 0, "programs left after SIGTERM");
        assert_eq!(
            cgroup_programs_named(&cgroup_hooks),
            0,
            "cgroup programs left after SIGTERM"
        );
        assert!(agent.log_text().contains("eBPF programs detached"));
    }
}

#[test]
fn without_privileges_the_agent_degrades_and_keeps_serving() {
    require_root();
    let mut setpriv = Command::new("setpriv");
    setpriv.args(["--bounding-set=-all", "--inh-caps=-all", "--"]);
    let mut agent = Agent::start_with(setpriv, &[]).expect("agent without capabilities");
    let m = agent.metrics().expect("metrics");
    assert_eq!(m.value("apm_ebpf_up", &[]), Some(0.0), "{}", m.text);
    assert!(
        m.matching("apm_ebpf_probe_attached", &[])
            .all(|s| s.value == 0.0),
        "{}",
        m.text
    );
    let health = get(agent.addr, "/health").expect("health");
    assert_eq!(health.status, 200);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        agent.exited().is_none(),
        "agent exited: {}",
        agent.log_text()
    );
    let log = agent.log_text();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert_eq!(errors.len(), 1, "expected exactly one error line:\n{log}");
    assert!(errors[0].contains("CAP_BPF"), "{}", errors[0]);
}

#[test]
fn metrics_endpoint_speaks_prometheus_text_format() {
    require_root();
    let agent = Agent::start(&[]).expect("agent");
    // The connection families have series (and so a TYPE line) once the
    // first refresh has counted a port: the admin port's own connections.
    let counted = wait_for(Duration::from_secs(10), || {
        let r = get(agent.addr, "/metrics").ok()?;
        r.body
            .contains("apm_tcp_connections_accepted_total{")
            .then_some(r)
    });
    let r = counted.expect("no connection counted within 10 s");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        r.body
            .contains("# TYPE apm_tcp_connections_accepted_total counter")
    );
}

#[test]
fn no_http_attaches_only_the_connection_probes_and_still_counts_exactly() {
    require_root();
    let port = free_port().expect("port");
    let mut agent = Agent::start(&["--no-http", "--port", &port.to_string()]).expect("agent");
    // Only the TCP state and health tracepoints: no syscall and no
    // packet program.
    assert_eq!(
        apm_programs_loaded(),
        programs(&[Role::Connections, Role::TcpHealth], false),
        "{}",
        agent.log_text()
    );
    let mut listener = Listener::start(port, 20, 5).expect("listener");
    wait_until_named(&agent, port, "apm-listener");
    let clients = connect_many(port, 20).expect("connect");
    listener.go().expect("accept");
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    let labels = [("server_port", p.as_str())];
    assert_eq!(
        m.value("apm_tcp_connections_accepted_total", &labels),
        Some(20.0)
    );
    assert_eq!(
        m.value("apm_tcp_connections_closed_total", &labels),
        Some(5.0)
    );
    assert_eq!(m.value("apm_tcp_connections_active", &labels), Some(15.0));
    // The HTTP probes read 0 attached, and /health/detailed calls them off,
    // not failed.
    assert_eq!(
        m.value(
            "apm_ebpf_probe_attached",
            &[("probe", "syscalls:sys_enter_read")]
        ),
        Some(0.0)
    );
    let health = get(agent.addr, "/health/detailed").expect("health");
    let v: serde_json::Value = serde_json::from_str(&health.body).expect("json");
    let read = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "probe syscalls:sys_enter_read")
        .expect("read probe listed")
        .clone();
    assert_eq!(read["status"], "healthy", "{read}");
    assert_eq!(read["detail"], "off (--no-http)");
    drop(clients);
    agent.terminate(WAIT).expect("terminate");
    assert_eq!(apm_programs_loaded(), 0);
}

/// A listener no process holds (its only descriptor in flight in a Unix
/// socket's queue, as a kernel socket or one of a process the agent may
/// not look into has no owner it can find) is a service of its own named
/// by its port, and its connections are counted there exactly.
#[test]
fn a_listener_without_an_owner_is_named_by_its_port() {
    require_root();
    let port = free_port().expect("port");
    let script = format!(
        "import socket, time\n\
         l = socket.create_server(('127.0.0.1', {port}), backlog=64)\n\
         a, b = socket.socketpair()\n\
         socket.send_fds(a, [b'x'], [l.fileno()])\n\
         l.close()\n\
         print('listening', flush=True)\n\
         time.sleep(60)\n"
    );
    let mut python = Command::new("python3");
    python.args(["-c", &script]);
    let _holder = apm_e2e::Server::start(python, port).expect("python");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    let name = format!("port-{port}");
    let p = port_label(port);
    let labels = [("service_name", name.as_str()), ("server_port", p.as_str())];
    let named = agent.wait_for_metrics(WAIT, |m| {
        m.value("apm_tcp_connections_accepted_total", &labels) == Some(0.0)
    });
    assert!(named.is_some(), "never named {name}: {}", agent.log_text());
    let clients = connect_many(port, 5).expect("connect");
    let counted = agent.wait_for_metrics(WAIT, |m| {
        m.value("apm_tcp_connections_accepted_total", &labels) == Some(5.0)
            && m.value("apm_tcp_connections_active", &labels) == Some(5.0)
    });
    let m = agent.metrics().expect("metrics");
    assert!(counted.is_some(), "{}", m.text);
    // Its port has that one series: nothing under "unknown".
    let series = m
        .matching("apm_tcp_connections_accepted_total", &[("server_port", &p)])
        .count();
    assert_eq!(series, 1, "{}", m.text);
    drop(clients);
}
