//! Per-request HTTP metrics end to end: two independent servers (Python's
//! http.server and axum/hyper), a client that counts what it got, and the
//! agent's numbers compared with those counts exactly.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{Agent, Client, NetNs, Server, free_port, require_root, wait_for};

const SLEEP_MS: u64 = 200;

/// (route template, status) → count, as the client saw it.
type Expected = BTreeMap<(String, u16), u64>;

/// A deterministic mix: mostly 200s, some 404s and 500s, templated user
/// ids, and query strings carrying a secret that must never surface.
fn path_for(i: u64) -> (String, &'static str) {
    match i % 10 {
        0..=4 => ("/ok".into(), "/ok"),
        5 => (format!("/ok?api_key=SECRET-{i}&user=x"), "/ok"),
        6 | 7 => ("/missing".into(), "/missing"),
        8 => ("/error".into(), "/error"),
        _ => (
            format!("/users/{}?session=SECRET-{i}", i * 7919 % 100_000),
            "/users/{id}",
        ),
    }
}

/// Drives the known mix against `port`: `keepalive` requests spread over 4
/// keep-alive connections, 6 pipelined batches of 4 requests in one write
/// each, and 5 sleeping requests. Returns what the client counted.
fn drive(port: u16, keepalive: u64) -> Expected {
    let mut expected = Expected::new();
    let mut record = |route: &str, status: u16| {
        *expected.entry((route.to_owned(), status)).or_default() += 1;
    };
    let mut conns: Vec<Client> = (0..4)
        .map(|_| Client::connect(port).expect("connect"))
        .collect();
    for i in 0..keepalive {
        let (path, route) = path_for(i);
        let status = conns[(i % 4) as usize].get(&path).expect("request");
        record(route, status);
    }
    let mut pipelined = Client::connect(port).expect("connect");
    for batch in 0..6u64 {
        let paths: Vec<(String, &str)> = (0..4).map(|j| path_for(batch * 4 + j + 3)).collect();
        let raw: Vec<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
        let statuses = pipelined.pipeline(&raw).expect("pipelined batch");
        for ((_, route), status) in paths.iter().zip(statuses) {
            record(route, status);
        }
    }
    let mut sleeper = Client::connect(port).expect("connect");
    for _ in 0..5 {
        let status = sleeper.get(&format!("/sleep/{SLEEP_MS}")).expect("sleep");
        record("/sleep/{id}", status);
    }
    expected
}

#[test]
fn per_route_counts_and_latency_match_the_clients_ground_truth_from_packets() {
    per_route_counts_and_latency("packets");
}

#[test]
fn per_route_counts_and_latency_match_the_clients_ground_truth_from_syscalls() {
    per_route_counts_and_latency("syscalls");
}

fn per_route_counts_and_latency(capture: &str) {
    require_root();
    let (rust_port, py_port) = (free_port().expect("port"), free_port().expect("port"));
    let rust = Server::rust(rust_port).expect("apm-httpd");
    let python = Server::python(py_port).expect("python3 http.server");
    let agent = Agent::start(&[
        "--capture",
        capture,
        "--port",
        &rust_port.to_string(),
        "--port",
        &py_port.to_string(),
    ])
    .expect("agent");
    agent.wait_for_service(rust_port, "apm-httpd");
    agent.wait_for_service(py_port, "python3");

    let cases = [
        ("apm-httpd", rust_port, 10_000u64),
        ("python3", py_port, 3_000u64),
    ];
    for (service, port, keepalive) in cases {
        let expected = drive(port, keepalive);
        let total: u64 = expected.values().sum();
        assert_eq!(total, keepalive + 24 + 5);
        let m = agent.wait_for_paired(service, total, Duration::from_secs(30));
        let got = m.route_counts(service);
        assert_eq!(
            got, expected,
            "{service}: agent counts differ from the client's"
        );
        assert_eq!(m.sum("apm_http_requests_seen_total", service), total as f64);
        assert_eq!(
            m.sum("apm_http_requests_unpaired_total", service),
            0.0,
            "{service}: unpaired requests:\n{}",
            m.text
        );
        let p = port.to_string();
        assert!(
            m.matching(
                "http_server_request_duration_seconds_count",
                &[("service_name", service)]
            )
            .all(|s| s.labels["server_port"] == p),
            "{service}: wrong server_port label"
        );

        // The sleeping route's median, from /stats/requests (1% sketch).
        let v = agent.stats_requests().expect("stats");
        let body = v.to_string();
        let sleep = v["services"][service]["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["route"] == "/sleep/{id}")
            .unwrap_or_else(|| panic!("{service}: no sleep route in {body}"))
            .clone();
        assert_eq!(sleep["count"], 5);
        let p50 = sleep["p50_seconds"].as_f64().expect("p50");
        let want = SLEEP_MS as f64 / 1000.0;
        assert!(
            (p50 - want).abs() <= want * 0.10,
            "{service}: sleep median {p50}s, slept {want}s"
        );
        assert!(
            !body.contains("SECRET"),
            "query leaked into /stats/requests"
        );
    }

    let m = agent.metrics().expect("metrics");
    assert!(
        !m.text.contains("SECRET"),
        "query string leaked into /metrics"
    );
    assert!(
        !agent.log_text().contains("SECRET"),
        "query string leaked into logs"
    );
    assert_eq!(
        m.value("apm_ebpf_drops_total", &[("reason", "ringbuf_full")]),
        Some(0.0)
    );
    drop((rust, python));
}

#[test]
fn fifty_thousand_distinct_paths_stay_under_the_route_cap() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "apm-httpd");

    // 50 x 10 x 10 x 10 distinct paths; no position collapses (the root
    // keeps up to 100 words, the others 10), so only the route cap (1000)
    // bounds them. Pipelined in batches of 10 to keep the test quick.
    // Words, not numbers: a segment with digits would be a placeholder.
    let w = |n: u8| format!("{}{}", (b'a' + n / 26) as char, (b'a' + n % 26) as char);
    let paths: Vec<String> = (0..50u8)
        .flat_map(|a| {
            (0..10u8).flat_map(move |b| {
                (0..10u8).flat_map(move |c| {
                    (0..10u8).map(move |d| format!("/s-{}/t-{}/u-{}/x-{}", w(a), w(b), w(c), w(d)))
                })
            })
        })
        .collect();
    assert_eq!(paths.len(), 50_000);
    let mut clients: Vec<Client> = (0..4)
        .map(|_| Client::connect(port).expect("connect"))
        .collect();
    for (i, batch) in paths.chunks(10).enumerate() {
        let raw: Vec<&str> = batch.iter().map(String::as_str).collect();
        let statuses = clients[i % 4].pipeline(&raw).expect("batch");
        assert!(statuses.iter().all(|&s| s == 200));
    }
    let service = "apm-httpd";
    let m = agent.wait_for_paired(service, 50_000, Duration::from_secs(60));
    let counts = m.route_counts(service);
    let routes: std::collections::BTreeSet<&String> = counts.keys().map(|(r, _)| r).collect();
    assert!(routes.len() <= 1001, "{} routes exported", routes.len());
    assert_eq!(
        m.value("apm_http_routes", &[("service_name", service)]),
        Some(1000.0)
    );
    let overflow = m
        .value(
            "apm_http_route_overflow_total",
            &[("service_name", service)],
        )
        .expect("overflow counter");
    let in_overflow_route = counts
        .get(&("{overflow}".to_owned(), 200))
        .copied()
        .unwrap_or(0);
    let named: u64 = counts
        .iter()
        .filter(|((r, _), _)| r != "{overflow}")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(named, 1000);
    assert_eq!(overflow as u64, 49_000);
    assert_eq!(in_overflow_route, 49_000);
    drop(server);
}

/// A keep-alive connection opened and used before the agent starts, its
/// server thread blocked in recv() on it since then.
#[test]
fn a_connection_blocked_in_read_before_the_agent_started_is_timed() {
    early_connection("packets");
}

#[test]
fn connections_open_before_the_agent_started_are_paired_from_syscalls() {
    early_connection("syscalls");
}

fn early_connection(capture: &str) {
    require_root();
    let port = free_port().expect("port");
    let server = Server::python(port).expect("python3 http.server");
    // Accepted, and used once, before the agent exists.
    let mut early = Client::connect(port).expect("connect");
    assert_eq!(early.get("/ok").expect("request"), 200);

    let agent = Agent::start(&["--capture", capture, "--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "python3");
    // Packets: the request arrives after the programs are attached, so it
    // is timed like any other. Syscalls: the recv() that returns it began
    // before the agent attached, so its arguments were never seen; its
    // response counts as one without a request (or, if the thread was not
    // yet blocked, it is paired). Every later request is paired.
    assert_eq!(early.get("/ok").expect("request"), 200);
    for _ in 0..20 {
        assert_eq!(early.get("/missing?token=SECRET").expect("request"), 404);
    }
    let m = wait_for(Duration::from_secs(15), || {
        let m = agent.metrics().ok()?;
        let missing = m
            .route_counts("python3")
            .get(&("/missing".to_owned(), 404))
            .copied();
        (missing == Some(20)).then_some(m)
    })
    .unwrap_or_else(|| panic!("{}", agent.metrics().expect("metrics").text));
    let counts = m.route_counts("python3");
    let first = counts.get(&("/ok".to_owned(), 200)).copied().unwrap_or(0);
    assert_eq!(counts.len(), 1 + usize::from(first == 1), "{counts:?}");
    let orphan = m
        .value(
            "apm_http_stream_resyncs_total",
            &[
                ("service_name", "python3"),
                ("reason", "response_without_request"),
            ],
        )
        .unwrap_or(0.0);
    assert_eq!(
        first as f64 + orphan,
        1.0,
        "the first response is either paired or an orphan"
    );
    if capture == "packets" {
        assert_eq!((first, orphan), (1, 0.0), "{}", m.text);
    }
    // A response without request is no request seen: nothing unpaired.
    assert_eq!(m.sum("apm_http_requests_unpaired_total", "python3"), 0.0);
    drop(server);
}

#[test]
fn a_server_in_its_own_network_namespace_is_found_and_timed() {
    require_root();
    let ns = NetNs::create("one");
    let port = free_port().expect("port");
    let mut cmd = ns.command("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/servers/httpd.py"))
        .arg(port.to_string());
    let server = Server::start(cmd, port).expect("python3 http.server in the namespace");
    // The agent runs in the host's namespace, where nothing listens on port.
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "python3");

    // The client must be inside the namespace too: Python's http.client,
    // one keep-alive connection, 50 + 10 requests.
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {port})\n\
         n = {{}}\n\
         for path in ['/ok'] * 50 + ['/missing?k=SECRET'] * 10:\n\
         \x20   c.request('GET', path)\n\
         \x20   r = c.getresponse(); r.read()\n\
         \x20   n[r.status] = n.get(r.status, 0) + 1\n\
         print(n[200], n[404])\n"
    );
    let out = ns
        .command("python3")
        .args(["-c", &script])
        .output()
        .expect("client");
    assert!(out.status.success(), "client: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "50 10");

    let m = agent.wait_for_paired("python3", 60, Duration::from_secs(15));
    let expected: Expected = [
        (("/ok".to_owned(), 200), 50),
        (("/missing".to_owned(), 404), 10),
    ]
    .into();
    assert_eq!(m.route_counts("python3"), expected);
    let p = port.to_string();
    assert_eq!(
        m.value(
            "apm_tcp_connections_accepted_total",
            &[("server_port", p.as_str())]
        ),
        Some(1.0)
    );
    drop(server);
}
