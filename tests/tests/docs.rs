//! docs/metrics.md and a live /metrics list the same metric families.

use std::{collections::BTreeSet, time::Duration};

use std::io::{Read as _, Write as _};

use apm_e2e::{Agent, Client, Redis, Server, databases, free_port, require_root, wait_for};

/// Metric names in docs/metrics.md, and those documented as existing only
/// while descriptors are tracked (`--capture syscalls`, or TLS reading).
fn documented() -> (BTreeSet<String>, BTreeSet<String>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    let mut all = BTreeSet::new();
    let mut descriptor_only = BTreeSet::new();
    for line in text.lines() {
        let Some((name, rest)) = line.strip_prefix("| `").and_then(|l| l.split_once('`')) else {
            continue;
        };
        all.insert(name.to_owned());
        if rest.contains("descriptor tracking only") {
            descriptor_only.insert(name.to_owned());
        }
    }
    (all, descriptor_only)
}

/// The metric families a live agent with `--capture CAPTURE` (and `extra`
/// arguments) exports once
/// it has seen HTTP and Redis traffic (this process, listening, is a
/// monitored Redis client), sampled, checked a dependency, and fired an
/// alert at a receiver that is down.
fn exported(capture: &str, extra: &[&str]) -> BTreeSet<String> {
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    // In a cgroup with limits, as in a container: its cgroup families.
    let cgroup = apm_e2e::cgroups::Cgroup::create(&format!("docs-{capture}"));
    cgroup.limit_cpu(4.0);
    cgroup.limit_memory(4 << 30);
    cgroup.adopt(server.pid());
    let rport = free_port().expect("port");
    let _redis = Redis::start(rport);
    let pgport = free_port().expect("port");
    let _pg = databases::postgres(pgport, "unused", "trust", &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let gport = free_port().expect("port");
    let _grpc = apm_e2e::grpc::GrpcServer::start(gport);
    let check = format!("tcp://127.0.0.1:{port}");
    let dead = free_port().expect("port");
    let config = apm_e2e::always_firing_config(
        &format!("DocsAlways_{capture}"),
        &format!("[[alerts.receivers]]\nwebhook = \"http://127.0.0.1:{dead}/\"\n"),
    );
    let rport_text = rport.to_string();
    let mut args = vec![
        "--capture",
        capture,
        "--check",
        &check,
        "--check-interval",
        "1s",
        "--config",
        config.to_str().expect("path"),
        "--redis-port",
        &rport_text,
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args).expect("agent");
    agent.wait_for_service(port, "apm-httpd");
    agent.wait_for_service(rport, "redis-server");
    agent.wait_for_service(pgport, "postgres");
    assert!(databases::psql(pgport, &["SELECT 1"]).0);
    let lport = listener.local_addr().expect("addr").port();
    let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
    agent.wait_for_service(lport, me.trim());
    // This process (a monitored service) asks Redis twice.
    let mut redis = std::net::TcpStream::connect(("127.0.0.1", rport)).expect("redis");
    redis
        .write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        .expect("write");
    let mut reply = [0u8; 12];
    redis.read_exact(&mut reply).expect("replies");
    assert_eq!(&reply, b"+PONG\r\n$-1\r\n");
    // An abortive close: a reset the server's port receives and this
    // service's pool sends.
    let aborted = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    apm_e2e::close_with_reset(aborted);
    let mut client = Client::connect(port).expect("connect");
    for _ in 0..3 {
        assert_eq!(client.get("/ok").expect("request"), 200);
    }
    agent.wait_for_service(gport, "python");
    apm_e2e::grpc::drive(gport, 1);
    // The same calls made by a monitored service: its client families.
    let cport = free_port().expect("port");
    apm_e2e::grpc::drive_as_service(gport, 1, cport, || {
        agent.wait_for_service(cport, "python");
    });
    // What is still missing from a scrape (empty: every family is there).
    let missing = |m: &apm_e2e::Metrics| {
        let mut missing = Vec::new();
        // At least: a port is reused between tests, and a stray client of
        // an earlier one may still knock (exactness is the HTTP suites').
        let paired = m
            .value(
                "apm_http_requests_paired_total",
                &[("service_name", "apm-httpd")],
            )
            .is_some_and(|n| n >= 3.0);
        // Sampled and checked at least once too, so every family is there.
        let sampled =
            m.value("apm_service_processes", &[("service_name", "apm-httpd")]) == Some(1.0);
        let checked = m.value("apm_dependency_up", &[("dependency", check.as_str())]) == Some(1.0);
        let alerted = m.text.contains("apm_alert_notifications_total{");
        let served = m
            .text
            .contains("apm_db_server_operation_duration_seconds_count{");
        let client = capture != "packets"
            || m.text
                .contains("db_client_operation_duration_seconds_count{");
        let pooled = m.text.contains("apm_outbound_connections_active{");
        let reset = m.text.contains("apm_tcp_resets_total{")
            && m.text.contains("apm_outbound_resets_total{");
        // The syscall capture follows a descriptor in the process that
        // accepted it: PostgreSQL's forked backends are not followed.
        let sql = capture != "packets" || m.text.contains("db_system_name=\"postgresql\"");
        // HTTP/2 is read from packets: a syscall record holds 1 KiB of a
        // read, and a frame header past it loses the framing.
        let rpc = capture != "packets"
            || (m.text.contains("rpc_server_call_duration_seconds_count{")
                && m.text.contains("rpc_client_call_duration_seconds_count{"));
        for (ok, what) in [
            (paired, "3 requests paired"),
            (sampled, "the service sampled"),
            (checked, "the dependency checked"),
            (alerted, "an alert sent"),
            (served, "Redis timed server side"),
            (client, "Redis timed client side"),
            (pooled, "the pool counted"),
            (reset, "a reset counted"),
            (sql, "a SQL statement timed server side"),
            (
                m.text.contains("apm_service_cpu_limit_cores{"),
                "the server's cgroup read",
            ),
            (rpc, "a gRPC call timed"),
        ] {
            if !ok {
                missing.push(what);
            }
        }
        missing
    };
    // Every condition is one that only time completes on a loaded CI
    // machine (a sampler period, a check, an evaluation): a generous bound.
    let m = wait_for(Duration::from_secs(30), || {
        let m = agent.metrics().ok()?;
        missing(&m).is_empty().then_some(m)
    })
    .unwrap_or_else(|| {
        let m = agent.metrics().expect("metrics");
        panic!(
            "still missing after 30 s: {:?}\n{}\n{}",
            missing(&m),
            m.text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains("_bucket") && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("\n"),
            agent.log_text()
        )
    });
    std::fs::remove_file(config).ok();
    drop((server, redis, listener, cgroup));
    m.text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn every_exported_metric_is_documented_and_every_documented_one_exported() {
    require_root();
    // Packets without TLS reading (the default) track no descriptor.
    let packets = exported("packets", &[]);
    let syscalls = exported("syscalls", &[]);
    let (mut documented, descriptor_only) = documented();
    if !std::path::Path::new("/proc/pressure").exists() {
        // Kernels without PSI have no pressure series.
        documented.retain(|n| !n.starts_with("apm_host_pressure"));
    }
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // cgroup v1 controllers: no stall totals per cgroup.
        documented.retain(|n| !n.starts_with("container_pressure_"));
    }
    let exported: BTreeSet<String> = packets.union(&syscalls).cloned().collect();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}"
    );
    // Packets without TLS export everything but what the docs mark as
    // needing descriptor tracking, and those really do.
    let not_in_packets: BTreeSet<String> = documented.difference(&packets).cloned().collect();
    assert_eq!(not_in_packets, descriptor_only);
    assert!(!descriptor_only.is_empty());
}
