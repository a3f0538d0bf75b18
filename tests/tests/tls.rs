//! TLS read at the TLS library (`--capture-tls`): Debian's nginx with `ssl`,
//! driven by curl (a connection per request) and wrk (keep-alive),
//! counted per route and status against nginx's own access log and timed
//! like the same requests on a plaintext port of the same nginx; and a
//! redis-server serving TLS only, counted against INFO commandstats.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use apm_e2e::{
    Agent, Redis, Server, commandstats, free_port,
    process::{Scratch, stop},
    require_root, server_counts,
    tls::{Counts, attached, breakpoints, certified, counted, wait_probed},
    wait_for,
};

/// nginx with one TLS and one plaintext server, the same locations on
/// both, logging `port status uri` per request.
struct Nginx {
    child: Child,
    tls: u16,
    plain: u16,
    // Last: removed after nginx has stopped.
    dir: Scratch,
}

impl Nginx {
    fn start() -> Self {
        let (tls, plain) = (free_port().expect("port"), free_port().expect("port"));
        let (dir, cert, key) = certified("tls-nginx", tls);
        std::fs::create_dir_all(dir.0.join("www")).expect("scratch");
        // A body of many TLS records and TCP segments.
        let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(dir.0.join("www/big"), big).expect("file");
        let d = dir.0.display();
        let locations = format!(
            "location = /ok {{ return 200 \"ok\\n\"; }}\n\
             location = /missing {{ return 404 \"no\\n\"; }}\n\
             location = /big {{ }}\n\
             location = /slow {{ alias {d}/www/big; limit_rate 2m; }}"
        );
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  log_format apm '$server_port $status $uri $request_completion';\n  access_log {d}/access.log apm;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n  root {d}/www;\n\
             server {{ listen 127.0.0.1:{tls} ssl; ssl_certificate {cert};\n\
             ssl_certificate_key {key};\n{locations} }}\n\
             server {{ listen 127.0.0.1:{plain};\n{locations} }}\n}}\n"
        );
        std::fs::write(dir.0.join("nginx.conf"), conf).expect("conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.0.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (installed by cargo xtask test)");
        let up = wait_for(Duration::from_secs(10), || {
            [tls, plain]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
                .then_some(())
        });
        assert!(
            up.is_some(),
            "nginx did not listen: {}",
            log(&dir.0, "error.log")
        );
        Self {
            child,
            tls,
            plain,
            dir,
        }
    }

    fn url(&self, port: u16, path: &str) -> String {
        let scheme = if port == self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}{path}")
    }

    /// The responses nginx logged as sent in full, per (port, uri,
    /// status). wrk stops with requests in flight: their responses are
    /// cut short, and the agent counts them as unpaired, not as timed.
    fn logged(&self) -> Counts {
        let mut counts = Counts::new();
        for line in log(&self.dir.0, "access.log").lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let [port, status, uri, "OK"] = f[..] {
                *counts
                    .entry((
                        port.parse().expect("port"),
                        uri.to_owned(),
                        status.parse().expect("status"),
                    ))
                    .or_default() += 1;
            }
        }
        counts
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, so the master stops its worker too (SIGKILL would
        // orphan it).
        stop(&mut self.child, libc::SIGTERM);
    }
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// curl, a connection per request; returns the status codes it got.
fn curl(url: &str, times: usize) -> Vec<u16> {
    (0..times)
        .map(|_| {
            let out = Command::new("curl")
                .args([
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "10",
                ])
                .arg(url)
                .output()
                .expect("curl (installed by cargo xtask test)");
            String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
        })
        .collect()
}

/// `times` requests for `url` on each of `connections` keep-alive
/// connections at once (curl, each response read in full).
fn keep_alive(url: &str, connections: usize, times: usize) {
    let config: String = (0..times)
        .map(|_| format!("url = \"{url}\"\noutput = \"/dev/null\"\n"))
        .collect();
    let clients: Vec<Child> = (0..connections)
        .map(|_| {
            let mut curl = Command::new("curl")
                .args(["-sk", "--fail", "--max-time", "60", "-K", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("curl (installed by cargo xtask test)");
            use std::io::Write as _;
            let mut stdin = curl.stdin.take().expect("stdin");
            stdin.write_all(config.as_bytes()).expect("curl config");
            curl
        })
        .collect();
    for mut curl in clients {
        assert!(curl.wait().expect("curl").success(), "curl {url}");
    }
}

/// wrk for `seconds` on 4 keep-alive connections.
fn wrk(url: &str, seconds: u32) {
    let out = Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{seconds}s"), "--timeout", "5s"])
        .arg(url)
        .output()
        .expect("wrk (installed by cargo xtask test)");
    assert!(out.status.success(), "wrk: {out:?}");
}

fn only(counts: &Counts, port: u16) -> Counts {
    counts
        .iter()
        .filter(|((p, _, _), _)| *p == port)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The agent's mean duration of `route` on `port`, in seconds.
fn mean(agent: &Agent, port: u16, route: &str) -> f64 {
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    let labels = [
        ("server_port", p.as_str()),
        ("http_route", route),
        ("http_response_status_code", "200"),
    ];
    let sum = m
        .value("http_server_request_duration_seconds_sum", &labels)
        .unwrap_or(0.0);
    let count = m
        .value("http_server_request_duration_seconds_count", &labels)
        .unwrap_or(0.0);
    sum / count.max(1.0)
}

#[test]
fn nginx_over_https_is_counted_exactly_per_route_and_status() {
    nginx_over_https("packets");
}

#[test]
fn with_the_syscall_capture_too() {
    nginx_over_https("syscalls");
}

/// The agent with `--capture capture` against nginx's TLS and plaintext
/// servers under the same traffic.
fn nginx_over_https(capture: &str) {
    require_root();
    let nginx = Nginx::start();
    let (tls, plain) = (nginx.tls, nginx.plain);
    let (tls_port, plain_port) = (tls.to_string(), plain.to_string());
    let mut agent = Agent::start(&[
        "--capture-tls",
        "--capture",
        capture,
        "--port",
        &tls_port,
        "--port",
        &plain_port,
    ])
    .expect("agent");
    agent.wait_for_service(tls, "nginx");
    wait_probed(&agent, "libssl");
    if capture == "packets" {
        // With packets, TLS costs the rest of the host no syscall
        // tracepoint: the plaintext is keyed by socket.
        assert_eq!(attached(&agent, "syscalls:"), Vec::<String>::new());
    }
    // The probes live in the monitored processes only: the nginx worker's
    // libssl has a breakpoint per probed function, and a process that is
    // not monitored (a Python with ssl loaded) has none, so its TLS calls
    // cost it nothing.
    let worker = workers(nginx.child.id())[0];
    assert_eq!(breakpoints(worker, "libssl.so"), 5, "nginx worker {worker}");
    let mut bystander = Command::new("python3")
        .args(["-c", "import ssl, sys; sys.stdin.read()"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3");
    let mapped = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/maps", bystander.id()))
            .ok()
            .filter(|m| m.contains("libssl.so"))
    });
    assert!(mapped.is_some(), "python3 did not load libssl");
    assert_eq!(breakpoints(bystander.id(), "libssl.so"), 0, "a bystander");
    drop(bystander.stdin.take());
    let _ = bystander.wait();
    let health = apm_e2e::get(agent.addr, "/health/detailed").expect("health");
    let report: serde_json::Value = serde_json::from_str(&health.body).expect("JSON");
    let listed = report["checks"].as_array().is_some_and(|checks| {
        checks.iter().any(|c| {
            c["name"].as_str().is_some_and(|n| n.contains("libssl"))
                && c["status"] == "healthy"
                && c["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("OpenSSL 3"))
        })
    });
    assert!(listed, "libssl not in /health/detailed: {report}");

    for port in [tls, plain] {
        let paths = [
            ("/ok", 12, 200),
            ("/missing", 5, 404),
            ("/big", 3, 200),
            ("/slow", 3, 200),
        ];
        for (path, times, status) in paths {
            let got = curl(&nginx.url(port, path), times);
            assert!(got.iter().all(|&s| s == status), "{path}: {got:?}");
        }
        wrk(&nginx.url(port, "/ok"), 2);
        // Many-segment bodies on keep-alive connections, every response
        // read to its end: a client that stops mid-response (as wrk does
        // at its deadline) resets the connection, and what nginx had
        // queued and logged as sent never reaches the wire.
        keep_alive(&nginx.url(port, "/big"), 4, 40);
    }

    let logged = nginx.logged();
    let total: u64 = only(&logged, tls).values().sum();
    assert!(total > 100, "too few requests over TLS: {logged:?}");
    for (port, how) in [(tls, "over TLS"), (plain, "in plaintext")] {
        let settled = wait_for(Duration::from_secs(20), || {
            (counted(&agent, port) == only(&logged, port)).then_some(())
        });
        assert!(
            settled.is_some(),
            "{how} ({capture}), the agent counted {:?}\nnginx logged {:?}\n{}",
            counted(&agent, port),
            only(&logged, port),
            agent.log_text()
        );
    }
    let m = agent.metrics().expect("metrics");
    // No TLS byte reached a parser: the packet capture's verdict and the
    // syscall capture's first-read check leave the ciphertext alone.
    let not_http = m
        .value(
            "apm_http_stream_resyncs_total",
            &[("service_name", "nginx"), ("reason", "not_http")],
        )
        .unwrap_or(0.0);
    assert_eq!(not_http, 0.0, "ciphertext parsed as HTTP ({capture})");
    for reason in [
        "tls_unlinked",
        "tls_links_map_full",
        "tls_calls_map_full",
        "ringbuf_full",
    ] {
        assert_eq!(
            m.value("apm_ebpf_drops_total", &[("reason", reason)]),
            Some(0.0),
            "{reason}"
        );
    }
    // A response nginx paces (300 kB at 2 MB/s) takes as long to leave
    // either way: timed from the request to its last byte over TLS too.
    let (secure, clear) = (mean(&agent, tls, "/slow"), mean(&agent, plain, "/slow"));
    let (tiny, tiny_clear) = (mean(&agent, tls, "/ok"), mean(&agent, plain, "/ok"));
    eprintln!(
        "mean /slow: {secure:.4} s over TLS, {clear:.4} s in plaintext; \
         /ok: {tiny:.6} s, {tiny_clear:.6} s"
    );
    assert!(
        (secure / clear - 1.0).abs() <= 0.10,
        "/slow: {secure} s over TLS against {clear} s in plaintext"
    );
    agent.terminate(Duration::from_secs(10)).expect("terminate");
    assert_eq!(breakpoints(worker, "libssl.so"), 0, "probes left in nginx");
}

/// Breakpoints the kernel wrote into process `pid`'s copy of libssl's
/// code: bytes of its executable libssl mappings that read `int3` (0xcc)
/// in its memory but not in the file.
/// The pids of nginx `master`'s workers.
fn workers(master: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_ascii_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn redis_over_tls_is_counted_exactly_against_commandstats() {
    require_root();
    let port = free_port().expect("port");
    let (_dir, cert, key) = certified("tls-redis", port);
    let _redis = Redis::with_tls(port, &cert, &key);
    let p = port.to_string();
    let mut agent =
        Agent::start(&["--capture-tls", "--redis-port", &p, "--port", &p]).expect("agent");
    agent.wait_for_service(port, "redis-server");
    wait_probed(&agent, "libssl");

    // Three connections of 60 commands each, then ten of one command.
    let batch: String = (0..20)
        .map(|i| format!("SET k{i} v{i}\nGET k{i}\nINCR n\n"))
        .collect();
    for _ in 0..3 {
        let mut cli = Command::new("redis-cli")
            .args(["--tls", "--insecure", "-p", &p])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli");
        if let Some(mut stdin) = cli.stdin.take() {
            std::io::Write::write_all(&mut stdin, batch.as_bytes()).expect("commands");
        }
        assert!(cli.wait().expect("redis-cli").success());
    }
    for i in 0..10 {
        let out = Command::new("redis-cli")
            .args(["--tls", "--insecure", "-p", &p, "GET", &format!("k{i}")])
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "{out:?}");
    }
    // The load's commands: INFO and redis-cli's own are not in it.
    let load = |counts: BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        counts
            .into_iter()
            .filter(|(name, _)| ["SET", "GET", "INCR"].contains(&name.as_str()))
            .collect()
    };
    let truth = load(commandstats(port, true));
    assert_eq!(truth.values().sum::<u64>(), 190, "{truth:?}");
    let counted = || {
        load(server_counts(
            &agent.metrics().expect("metrics"),
            "redis-server",
        ))
    };
    let settled = wait_for(Duration::from_secs(20), || {
        (counted() == truth).then_some(())
    });
    assert!(
        settled.is_some(),
        "the agent counted {:?}, redis {truth:?}\n{}",
        counted(),
        agent.log_text()
    );
    agent.terminate(Duration::from_secs(10)).expect("terminate");
}

#[test]
fn a_process_that_loads_openssl_late_is_probed_then() {
    require_root();
    let port = free_port().expect("port");
    let (_dir, cert, key) = certified("tls-late", port);
    let p = port.to_string();
    let mut agent = Agent::start(&["--capture-tls", "--port", &p]).expect("agent");
    // Listening at once; `import ssl` 3 s later, after the agent has
    // traced the process without a libssl.
    let mut python3 = Command::new("python3");
    python3
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/servers/late_tls.py"))
        .args([p.as_str(), &cert, &key, "3"]);
    let _server = Server::start(python3, port).expect("late_tls.py");
    agent.wait_for_service(port, "python3");
    wait_probed(&agent, "libssl");
    let mut expected = Counts::new();
    for (path, times, status) in [("/ok", 5, 200), ("/missing", 3, 404)] {
        let got = curl(&format!("https://127.0.0.1:{port}{path}"), times);
        assert!(got.iter().all(|&s| s == status), "{path}: {got:?}");
        expected.insert((port, path.to_owned(), status), times as u64);
    }
    let settled = wait_for(Duration::from_secs(20), || {
        (counted(&agent, port) == expected).then_some(())
    });
    assert!(
        settled.is_some(),
        "the agent counted {:?}\n{}",
        counted(&agent, port),
        agent.log_text()
    );
    agent.terminate(Duration::from_secs(10)).expect("terminate");
}
