//! What timing HTTP from packets gives beyond the syscall capture, end to
//! end: responses written with writev framed exactly, recovery after the
//! ring buffer lost records, servers on one port in two network namespaces
//! kept apart, and IPv6.

use std::time::Duration;

use apm_e2e::{Agent, Client, NetNs, Server, free_port, python_client, require_root};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn chunked_responses_written_with_writev_and_empty_bodies_pair_exactly() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::python(port).expect("python3 http.server");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "python3");
    // /chunked: one sendmsg of [head + first chunk, "0\r\n\r\n"];
    // /empty: "Content-Length: 0" and nothing after it.
    let paths: Vec<&str> = ["/chunked", "/empty", "/chunked", "/ok", "/empty"]
        .iter()
        .copied()
        .cycle()
        .take(60)
        .collect();
    let expected = python_client(None, "127.0.0.1", port, &paths).expect("client");
    assert_eq!(expected.values().sum::<u64>(), 60);
    let m = agent.wait_for_paired("python3", 60, WAIT);
    assert_eq!(m.route_counts("python3"), expected);
    assert_eq!(
        m.sum("apm_http_requests_unpaired_total", "python3"),
        0.0,
        "{}",
        m.text
    );
    drop(server);
}

#[test]
fn after_ring_buffer_loss_new_connections_pair_exactly() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    // 16 KiB: about a hundred records.
    let agent = Agent::start(&["--port", &port.to_string(), "--ring-buffer-bytes", "16384"])
        .expect("agent");
    agent.wait_for_service(port, "apm-httpd");

    // The reader drains the ring as fast as the kernel fills it, so it is
    // stopped (SIGSTOP, as a starved agent would be) while 8 connections
    // send 50 requests each, one at a time: 800 records for a ring of
    // about a hundred. The kernel programs keep running meanwhile.
    let stopped = Stopped::new(agent.pid().expect("agent pid"));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port).expect("connect");
                for _ in 0..50 {
                    assert_eq!(c.get("/burst").expect("burst"), 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("burst thread");
    }
    drop(stopped);
    let lost = apm_e2e::wait_for(WAIT, || {
        agent
            .metrics()
            .ok()?
            .value("apm_ebpf_drops_total", &[("reason", "ringbuf_full")])
            .filter(|&n| n > 0.0)
    });
    assert!(
        lost.is_some(),
        "no record was lost with the reader stopped:\n{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_millis(200));

    // A new connection at a pace the small ring holds: every request of it
    // is paired with its own response.
    let mut c = Client::connect(port).expect("connect");
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..100 {
        let path = if i % 4 == 3 { "/missing" } else { "/after" };
        *statuses
            .entry((path.to_owned(), c.get(path).expect("request")))
            .or_insert(0u64) += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let m = apm_e2e::wait_for(WAIT, || {
        let m = agent.metrics().ok()?;
        let counts = m.route_counts("apm-httpd");
        statuses
            .iter()
            .all(|(k, v)| counts.get(k) == Some(v))
            .then_some(m)
    });
    let m = m.unwrap_or_else(|| {
        let m = agent.metrics().expect("metrics");
        panic!("{statuses:?} never matched:\n{}", m.text)
    });
    let counts = m.route_counts("apm-httpd");
    assert_eq!(counts.get(&("/after".to_owned(), 200)), Some(&75));
    assert_eq!(counts.get(&("/missing".to_owned(), 404)), Some(&25));
    // Nothing of the bursts was attributed to the new connection's routes,
    // and fewer than were sent were paired: records of them were lost.
    let bursts = counts
        .get(&("/burst".to_owned(), 200))
        .copied()
        .unwrap_or(0);
    let sent = 8 * 50;
    assert!(bursts < sent, "{bursts} paired of {sent} sent");
    drop(server);
}

#[test]
fn two_servers_on_one_port_in_two_namespaces_have_separate_counts() {
    require_root();
    let (a, b) = (NetNs::create("a"), NetNs::create("b"));
    let port = free_port().expect("port");
    let rust = Server::rust_in(&a, port).expect("apm-httpd in namespace a");
    let python = Server::python_at(b.command("python3"), "127.0.0.1", port).expect("python3 in b");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    // Both processes found, each named after itself (not after the other
    // namespace's listener on the same port).
    apm_e2e::assert_two_namespaces_apart(&agent, &a, &b, port);
    drop((rust, python));
}

#[test]
fn an_ipv6_loopback_server_is_timed() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::python_at(std::process::Command::new("python3"), "::1", port)
        .expect("python3 on ::1");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "python3");
    let mut paths = vec!["/ok"; 40];
    paths.extend(["/missing?k=SECRET"; 10]);
    let expected = python_client(None, "::1", port, &paths).expect("client");
    let m = agent.wait_for_paired("python3", 50, WAIT);
    assert_eq!(m.route_counts("python3"), expected);
    assert!(!m.text.contains("SECRET"));
    drop(server);
}

#[test]
fn without_a_cgroup_v2_root_http_is_timed_from_syscalls_and_health_says_so() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::python(port).expect("python3 http.server");
    let agent = Agent::start(&[
        "--port",
        &port.to_string(),
        "--cgroup-root",
        "/nonexistent/cgroup2",
    ])
    .expect("agent");
    agent.wait_for_service(port, "python3");
    let mut paths = vec!["/ok"; 30];
    paths.extend(["/error"; 3]);
    let expected = python_client(None, "127.0.0.1", port, &paths).expect("client");
    let m = agent.wait_for_paired("python3", 33, WAIT);
    assert_eq!(m.route_counts("python3"), expected);

    let log = agent.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("packet capture unavailable"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("/nonexistent/cgroup2"),
        "{}",
        warnings[0]
    );
    let health = apm_e2e::get(agent.addr, "/health/detailed").expect("health");
    let v: serde_json::Value = serde_json::from_str(&health.body).expect("json");
    let capture = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "capture")
        .expect("capture check")
        .clone();
    assert_eq!(capture["status"], "degraded", "{capture}");
    assert!(
        capture["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("HTTP timed from syscalls")),
        "{capture}"
    );
    assert_eq!(
        m.value(
            "apm_ebpf_probe_attached",
            &[("probe", "syscalls:sys_enter_read")]
        ),
        Some(1.0)
    );
    drop(server);
}

/// A process stopped with SIGSTOP until this is dropped (also on a
/// failed assertion, so the agent is never left stopped).
struct Stopped(libc::pid_t);

impl Stopped {
    fn new(pid: u32) -> Self {
        let pid = libc::pid_t::try_from(pid).expect("pid");
        // SAFETY: kill(2) on the agent this test started; no memory is
        // shared.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in new.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}
