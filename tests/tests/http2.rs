//! HTTP/2 with prior knowledge (h2c), end to end: Debian's nginx with
//! `listen … http2` in a network namespace whose loopback is an
//! Ethernet-like link (MTU 1500, one segment per packet), driven by
//! h2load (Debian's nghttp2-client) with a fixed request count and many
//! concurrent streams per connection. nginx's access log is the ground
//! truth: the agent's counts per route and status must equal it.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, free_port,
    prod::{LinkNs, Nginx},
    require_root, wait_for,
};

/// (method, route, status) → requests, HTTP/2 only, on `port`.
fn counted(agent: &Agent, port: u16) -> BTreeMap<(String, String, u16), u64> {
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    m.matching(
        "http_server_request_duration_seconds_count",
        &[("server_port", &p), ("network_protocol_version", "2")],
    )
    .map(|s| {
        let status = s.labels["http_response_status_code"]
            .parse()
            .expect("status");
        (
            (
                s.labels["http_request_method"].clone(),
                s.labels["http_route"].clone(),
                status,
            ),
            s.value as u64,
        )
    })
    .collect()
}

fn nginx_h2c(tag: &str, loss_percent: u32) {
    require_root();
    let port = free_port().expect("port");
    let link = LinkNs::create(tag, &[port], loss_percent).expect("link");
    let nginx = Nginx::start_with(&link.ns, port, true).expect("nginx");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "nginx");

    let base = format!("http://127.0.0.1:{port}");
    let uris: Vec<String> = [
        "/index.html",
        "/small.txt",
        "/no-such-page",
        "/static/app.js",
    ]
    .iter()
    .map(|p| format!("{base}{p}"))
    .collect();
    let out = link
        .ns
        .command("h2load")
        .args(["-n", "4000", "-c", "4", "-m", "32", "-t", "1"])
        .args(&uris)
        .output()
        .expect("h2load (installed by cargo xtask test)");
    let text = String::from_utf8_lossy(&out.stdout);
    // h2load counts the 404s as failed: what matters is that all were
    // done, with no stream errored.
    assert!(
        out.status.success() && text.contains("4000 done") && text.contains(" 0 errored"),
        "h2load: {text}"
    );
    let served = nginx.log_counts().expect("access log");
    assert_eq!(served.values().sum::<u64>(), 4000, "harness: {served:?}");
    let settled = wait_for(Duration::from_secs(20), || {
        (counted(&agent, port) == served).then_some(())
    });
    assert!(
        settled.is_some(),
        "the agent counted {:?}\nnginx served {served:?}\nits losses: {}",
        counted(&agent, port),
        agent
            .metrics()
            .expect("metrics")
            .text
            .lines()
            .filter(
                |l| (l.contains("unpaired_total{") || l.contains("resyncs_total{"))
                    && !l.ends_with(" 0")
            )
            .collect::<Vec<_>>()
            .join("\n")
    );
    let m = agent.metrics().expect("metrics");
    for reason in ["gap", "malformed", "hpack_unknown", "reset"] {
        assert_eq!(
            m.value(
                "apm_http_requests_unpaired_total",
                &[("service_name", "nginx"), ("reason", reason)]
            ),
            Some(0.0),
            "{reason}: {}",
            m.text
        );
    }
}

#[test]
fn nginx_h2c_under_h2load_is_counted_exactly_per_route_and_status() {
    nginx_h2c("h2c", 0);
}
