//! What must not leave the host, who may read the admin API, and readiness
//! when the agent's own pipeline breaks: against the real agent, a real
//! HTTP server and a real redis-server with a password.

use std::time::{Duration, Instant};

use apm_e2e::{Agent, Client, Redis, Server, free_port, get, get_with, require_root, wait_for};
use serde_json::Value;

/// Every marker below contains this word (any case); no output of the
/// agent may contain it.
const MARK: &str = "marker";
const REDIS_PASSWORD: &str = "Redis-MARKER-pw-4711";

/// Requests whose targets carry identifiers, and the route each must be
/// filed under.
const PATHS: &[(&str, &str)] = &[
    (
        "/users/alice.marker@example.com/orders",
        "/users/{var}/orders",
    ),
    ("/reset/sk_live_MARKER4eC39HqLyjWDarjtT1zd", "/reset/{var}"),
    ("/cart;jsessionid=MARKERSESSION0123/items", "/cart/items"),
    (
        "/t/eyJhbGciOiJIUzI1NiJ9.eyJNQVJLRVIiOiJtYXJrZXIifQ.c2lnbmF0dXJl-marker",
        "/t/{var}",
    ),
    (
        "http://bob:MARKERPW@internal.example:8080/proxied",
        "/proxied",
    ),
    ("/proxy/marker-host.internal:5432/q", "/proxy/{var}/q"),
    ("/ok?token=MARKERQUERY", "/ok"),
];

#[test]
fn identifiers_and_credentials_never_leave_the_agent() {
    require_root();
    let redis_port = free_port().expect("port");
    let _redis = Redis::with_password(redis_port, REDIS_PASSWORD);
    let check = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}");
    let shown = format!("redis://127.0.0.1:{redis_port}");
    let port = free_port().expect("port");
    let server = Server::python(port).expect("server");
    let agent = Agent::start(&[
        "--port",
        &port.to_string(),
        "--check",
        &check,
        "--check-interval",
        "1s",
    ])
    .expect("agent");
    agent.wait_for_service(port, "python3");
    let _ = server.pid();

    let mut client = Client::connect(port).expect("connect");
    let rounds = 3u64;
    for _ in 0..rounds {
        for (path, _) in PATHS {
            client.get(path).expect("request");
        }
    }
    let total = rounds * PATHS.len() as u64;
    let m = agent.wait_for_paired("python3", total, Duration::from_secs(10));
    let routes = m.route_counts("python3");
    for (path, route) in PATHS {
        let n: u64 = routes
            .iter()
            .filter(|((r, _), _)| r == route)
            .map(|(_, n)| n)
            .sum();
        assert!(n >= rounds, "{path} not filed under {route}: {routes:?}");
    }

    // The password worked (requirepass answers NOAUTH without it), and the
    // check is shown without it.
    let pong = wait_for(Duration::from_secs(10), || {
        let v: Value =
            serde_json::from_str(&get(agent.addr, "/health/detailed").ok()?.body).ok()?;
        let d = v["checks"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == format!("dependency {shown}"))?
            .clone();
        (d["detail"] == "PONG").then_some(d)
    });
    assert!(
        pong.is_some(),
        "{}",
        get(agent.addr, "/health/detailed").expect("detailed").body
    );

    let mut outputs = Vec::new();
    for path in [
        "/metrics",
        "/stats/requests",
        "/stats/system",
        "/health/detailed",
        "/logs/recent?limit=100000",
    ] {
        let r = get(agent.addr, path).expect(path);
        outputs.push((path.to_owned(), r.body));
    }
    // A failed check logs its error: make one fail, then read the logs.
    drop(_redis);
    let failed = wait_for(Duration::from_secs(5), || {
        let logs = get(agent.addr, "/logs/recent?level=warn").ok()?.body;
        logs.contains("dependency check failed").then_some(logs)
    });
    outputs.push((
        "/logs/recent (check failed)".into(),
        failed.expect("a failed-check log"),
    ));
    outputs.push(("stdout".into(), agent.log_text()));
    for (what, text) in &outputs {
        assert!(
            !text.to_lowercase().contains(MARK),
            "{what} leaks a marker: {}",
            excerpt(text)
        );
        assert!(!text.contains(REDIS_PASSWORD), "{what} leaks the password");
    }
    assert!(
        outputs[0].1.contains(&shown),
        "the check is shown as {shown}"
    );
}

/// The text around the first marker, for the failure message.
fn excerpt(text: &str) -> String {
    let lower = text.to_lowercase();
    let at = lower.find(MARK).unwrap_or(0);
    let start = lower[..at]
        .char_indices()
        .rev()
        .nth(200)
        .map_or(0, |(i, _)| i);
    text[start..].chars().take(400).collect()
}

#[test]
fn a_token_guards_every_admin_endpoint_but_health() {
    require_root();
    let token = "e2e-token-0f3a9c";
    let file = std::env::temp_dir().join(format!("apm-e2e-token-{}", std::process::id()));
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let metrics_port = free_port().expect("port");
    let agent = Agent::start(&[
        "--auth-token-file",
        file.to_str().expect("path"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
        "--no-ebpf",
    ])
    .expect("agent");
    let bearer = format!("Bearer {token}");
    // /stats/system answers 503 until the first sample.
    wait_for(Duration::from_secs(10), || {
        let r = get_with(agent.addr, "/stats/system", &[("Authorization", &bearer)]).ok()?;
        (r.status == 200).then_some(())
    })
    .expect("first sample");
    for path in [
        "/metrics",
        "/stats/requests",
        "/stats/system",
        "/health/detailed",
        "/logs/recent",
    ] {
        let none = get(agent.addr, path).expect(path);
        assert_eq!(none.status, 401, "{path} without a token");
        let v: Value = serde_json::from_str(&none.body).expect("401 is JSON");
        assert_eq!(v["error"], "unauthorized", "{path}");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        let wrong = get_with(
            agent.addr,
            path,
            &[("Authorization", "Bearer e2e-token-0f3a9d")],
        )
        .expect(path);
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let right = get_with(agent.addr, path, &[("Authorization", &bearer)]).expect(path);
        assert_eq!(right.status, 200, "{path} with the token: {}", right.body);
    }
    assert_eq!(get(agent.addr, "/health").expect("health").status, 200);
    assert_eq!(get(agent.addr, "/health/ready").expect("ready").status, 200);

    // The metrics listener serves /metrics (with the token) and no admin
    // route.
    let m: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().expect("addr");
    assert_eq!(get(m, "/metrics").expect("metrics").status, 401);
    let r = get_with(m, "/metrics", &[("Authorization", &bearer)]).expect("metrics");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("apm_build_info"), "{}", r.body);
    for path in ["/logs/recent", "/stats/requests", "/health/detailed"] {
        let r = get_with(m, path, &[("Authorization", &bearer)]).expect(path);
        assert_eq!(r.status, 404, "{path} on the metrics listener");
    }
    std::fs::remove_file(file).ok();
}

#[test]
fn a_dead_pipeline_fails_liveness_and_the_agent_exits_to_be_restarted() {
    require_root();
    let port = free_port().expect("port");
    let _server = Server::python(port).expect("server");
    let started = Instant::now();
    let mut agent = Agent::start(&[
        "--port",
        &port.to_string(),
        "--test-fault",
        "poison-pipeline",
    ])
    .expect("agent");
    // The pipeline's thread panics one second after start. Liveness turns
    // 503 naming it, and the watchdog (checking every second) ends the
    // agent with EX_SOFTWARE so the kubelet or systemd restarts it.
    // Once liveness fails, readiness and /health/detailed say so too.
    let mut dead_seen = None;
    let status = wait_for(Duration::from_secs(10), || {
        if dead_seen.is_none()
            && let Ok(r) = get(agent.addr, "/health")
            && r.status == 503
            && let (Ok(ready), Ok(detailed)) = (
                get(agent.addr, "/health/ready"),
                get(agent.addr, "/health/detailed"),
            )
        {
            dead_seen = Some((r.body, ready, detailed));
        }
        std::thread::sleep(Duration::from_millis(20));
        agent.exited()
    })
    .unwrap_or_else(|| panic!("still running after 10 s: {}", agent.log_text()));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(70), "{}", agent.log_text());
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    let log = agent.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "one ERROR line: {log}");
    assert!(
        errors[0].contains("request pipeline") && errors[0].contains("restarts"),
        "{log}"
    );
    // The watchdog exits at the second check that finds it dead, so
    // liveness answered 503 for at least a second before.
    let (body, ready, detailed) =
        dead_seen.unwrap_or_else(|| panic!("/health never answered 503: {log}"));
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"], "dead", "{v}");
    assert!(body.contains("request pipeline"), "{body}");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let v: Value = serde_json::from_str(&ready.body).expect("json");
    let pipeline = v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == "request pipeline")
        .cloned()
        .expect("request pipeline task");
    assert_eq!(pipeline["alive"], false, "{v}");
    assert_eq!(detailed.status, 503, "{}", detailed.body);
    assert!(
        detailed.body.contains("task request pipeline"),
        "{}",
        detailed.body
    );
    eprintln!("the agent exited with 70 {took:?} after start");
}

/// A certificate authority and a server certificate for `localhost` and
/// 127.0.0.1 signed by it, as PEM files in a directory of their own
/// (`tag`): (CA, cert, key).
fn tls_files(tag: &str) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let (ca, cert, key) = apm_e2e::https::certificate().expect("certificate");
    let dir = std::env::temp_dir().join(format!("apm-e2e-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    (ca, cert_file, key_file)
}

#[test]
fn with_a_certificate_the_token_travels_only_over_tls() {
    use apm_e2e::https::{client, get_tls, plain_attempt};
    require_root();
    let token = "e2e-tls-token-7c1d";
    let (ca, cert, key) = tls_files("agent");
    let metrics_port = free_port().expect("port");
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().expect("addr");
    let tls = client(&ca).expect("client");
    let up = |addr| {
        get_tls(&tls, addr, "localhost", "/health", &[])
            .ok()
            .map(|r| r.status == 200)
    };
    let agent = Agent::start_probed(
        std::process::Command::new(apm_e2e::agent_bin()),
        &[
            "--auth-token",
            token,
            "--tls-cert",
            cert.to_str().expect("path"),
            "--tls-key",
            key.to_str().expect("path"),
            "--metrics-listen",
            &metrics.to_string(),
            "--no-ebpf",
        ],
        up,
    )
    .expect("agent over TLS");
    let bearer = format!("Bearer {token}");
    for (addr, host) in [(metrics, "localhost"), (agent.addr, "127.0.0.1")] {
        // Over TLS, the certificate checked against the test's CA: the
        // token works, and is needed.
        let r = get_tls(&tls, addr, host, "/metrics", &[("Authorization", &bearer)])
            .expect("metrics over TLS");
        assert_eq!(r.status, 200, "{addr}");
        assert!(r.body.contains("apm_build_info"), "{}", r.body);
        let r = get_tls(&tls, addr, host, "/metrics", &[]).expect("no token");
        assert_eq!(r.status, 401, "{addr}");
        assert_eq!(
            get_tls(&tls, addr, host, "/health/ready", &[])
                .expect("ready")
                .status,
            200
        );
        // Plain HTTP, token and all: never answered. The server closes
        // the connection, at most after a TLS alert (a record of type 21).
        let answer =
            plain_attempt(addr, "/metrics", &[("Authorization", &bearer)]).expect("plain attempt");
        assert!(
            answer.is_empty() || answer[0] == 21,
            "{addr} answered plain HTTP: {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(!String::from_utf8_lossy(&answer).contains("HTTP/"));
        assert!(get(addr, "/health").is_err(), "plain /health answered");
    }
    // A client that does not trust the certificate gets nowhere.
    let (other_ca, other_cert, _) = tls_files("stranger");
    let stranger = client(&other_ca).expect("other CA");
    assert!(get_tls(&stranger, metrics, "localhost", "/health", &[]).is_err());
    let log = agent.log_text();
    assert!(log.contains("https://"), "{log}");
    assert!(!log.contains(token), "the token leaked into the log");
    for file in [cert, other_cert] {
        std::fs::remove_dir_all(file.parent().expect("dir")).ok();
    }
}
