//! `Upgrade: h2c` end to end: hypercorn (which implements the upgrade;
//! nginx does not) answers nghttp's upgrade request with `101 Switching
//! Protocols` and that request over HTTP/2 as stream 1, then the
//! connection's other requests as HTTP/2 streams, in a namespace whose
//! loopback is Ethernet-like (MTU 1500). The ground truth is what nghttp
//! itself received: the agent's HTTP/2 counts per route and status must
//! equal it, the upgraded requests included.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use apm_e2e::{
    Agent, free_port,
    process::stop,
    prod::{LinkNs, py_app_bin},
    require_root, wait_for,
};

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers");

/// "ROUTE STATUS" → requests over HTTP/2 on `port`.
fn counted(agent: &Agent, port: u16) -> BTreeMap<String, u64> {
    agent.metrics().expect("metrics").tally(
        "http_server_request_duration_seconds_count",
        &[
            ("server_port", &port.to_string()),
            ("network_protocol_version", "2"),
        ],
        &["http_route", "http_response_status_code"],
    )
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.0, libc::SIGTERM);
    }
}

#[test]
fn requests_upgraded_to_h2c_and_their_connections_streams_are_counted_exactly() {
    require_root();
    let port = free_port().expect("port");
    let link = LinkNs::create("h2c-up", &[port], 0).expect("link");
    let hypercorn = py_app_bin().join("hypercorn");
    let _server = Server(
        link.ns
            .command(hypercorn.to_str().expect("UTF-8 path"))
            .args(["--bind", &format!("127.0.0.1:{port}"), "h2c_app:app"])
            .current_dir(Path::new(SERVERS))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hypercorn (installed by cargo xtask test)"),
    );
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "hypercorn");

    // 20 connections: the first request of each is the upgrade (a small
    // item, or 64 KiB whose frames follow the 101's head), then two more
    // streams.
    let base = format!("http://127.0.0.1:{port}");
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..20 {
        let first = if i % 2 == 0 {
            format!("{base}/items/{i}")
        } else {
            format!("{base}/big")
        };
        let out = link
            .ns
            .command("nghttp")
            .args(["-u", "-v", "-n", &first])
            .arg(format!("{base}/missing"))
            .arg(format!("{base}/items/{}", 100 + i))
            .output()
            .expect("nghttp (installed by cargo xtask test)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("HTTP Upgrade success"),
            "nghttp: {text}"
        );
        // The statuses in the order nghttp received them, by path: each
        // stream's :status line follows its request's.
        for line in text.lines().filter(|l| l.contains(":status: ")) {
            let status: u16 = line
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("status");
            let route = match status {
                404 => "/missing",
                _ if line.contains("stream_id=1)") && i % 2 == 1 => "/big",
                _ => "/items/{id}",
            };
            *received.entry(format!("{route} {status}")).or_default() += 1;
        }
    }
    assert_eq!(received.values().sum::<u64>(), 60, "{received:?}");
    link.check_link(100).expect("an MTU-1500 link");
    let settled = wait_for(Duration::from_secs(20), || {
        (counted(&agent, port) == received).then_some(())
    });
    let m = agent.metrics().expect("metrics");
    assert!(
        settled.is_some(),
        "the agent counted {:?}\nnghttp received {received:?}\n{}",
        counted(&agent, port),
        m.text
            .lines()
            .filter(
                |l| (l.contains("unpaired_total{") || l.contains("resyncs_total{"))
                    && !l.ends_with(" 0")
            )
            .collect::<Vec<_>>()
            .join("\n")
    );
    for reason in ["gap", "malformed", "hpack_unknown", "closed_mid_response"] {
        assert_eq!(
            m.value(
                "apm_http_requests_unpaired_total",
                &[("service_name", "hypercorn"), ("reason", reason)]
            ),
            Some(0.0),
            "{reason}"
        );
    }
    // No request is left as the 101 of HTTP/1.1.
    assert_eq!(
        m.sum("http_server_request_duration_seconds_count", "hypercorn")
            - received.values().sum::<u64>() as f64,
        0.0,
        "{}",
        m.text
    );
}
