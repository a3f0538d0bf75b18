//! gRPC over HTTP/2 (cleartext, prior knowledge), end to end: a grpcio
//! server with unary and server-streaming methods (tests/servers/
//! grpc_server.py), driven by a grpcio client with a known mix that
//! includes NOT_FOUND and DEADLINE_EXCEEDED (grpc_client.py). The
//! client's own counts per method and status are the ground truth, and
//! its own timing of the method that sleeps 50 ms.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, free_port,
    grpc::{GrpcServer, GrpcTlsServer, drive, drive_across, drive_tls},
    require_root,
    tls::wait_probed,
    wait_for,
};

/// The agent's `rpc_server_call_duration_seconds_count` per "METHOD
/// STATUS" on `port`.
fn counted(agent: &Agent, port: u16) -> BTreeMap<String, u64> {
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    m.matching(
        "rpc_server_call_duration_seconds_count",
        &[("server_port", &p)],
    )
    .map(|s| {
        assert_eq!(s.labels["rpc_system_name"], "grpc");
        let key = format!(
            "{} {}",
            s.labels["rpc_method"], s.labels["rpc_response_status_code"]
        );
        (key, s.value as u64)
    })
    .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn grpc_calls_are_counted_per_method_and_status_and_timed() {
    require_root();
    let port = free_port().expect("port");
    let _server = GrpcServer::start(port);
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "python");
    let (sent, slow) = drive(port, 20);
    exact_and_timed(&agent, port, "python", &sent, slow);
}

/// The same over TLS: a @grpc/grpc-js server on Node (its OpenSSL read
/// by the TLS probes), the grpcio client negotiating h2 by ALPN.
#[test]
fn grpc_over_tls_is_counted_per_method_and_status_and_timed() {
    require_root();
    let port = free_port().expect("port");
    let server = GrpcTlsServer::start(port);
    let p = port.to_string();
    let agent = Agent::start(&["--capture-tls", "--port", &p]).expect("agent");
    agent.wait_for_service(port, "node");
    wait_probed(&agent, "uprobe:/");
    let (sent, slow) = drive_tls(port, 20, &server.ca);
    exact_and_timed(&agent, port, "node", &sent, slow);
}

/// The agent's counts on `port` (service `service`) equal what the
/// client got, none unpaired, and the 50 ms method's median in
/// /stats/requests is within 10 % of the client's own.
fn exact_and_timed(
    agent: &Agent,
    port: u16,
    service: &str,
    sent: &BTreeMap<String, u64>,
    mut slow: Vec<f64>,
) {
    assert_eq!(sent["/shop.Cart/Hang DEADLINE_EXCEEDED"], 20, "{sent:?}");
    assert_eq!(sent["/shop.Cart/Get NOT_FOUND"], 20, "{sent:?}");
    let settled = wait_for(Duration::from_secs(20), || {
        (&counted(agent, port) == sent).then_some(())
    });
    assert!(
        settled.is_some(),
        "the agent counted {:?}\nthe client got {sent:?}\n{}",
        counted(agent, port),
        agent.log_text()
    );
    let m = agent.metrics().expect("metrics");
    for reason in ["gap", "hpack_unknown", "malformed", "closed_mid_response"] {
        assert_eq!(
            m.value(
                "apm_rpc_calls_unpaired_total",
                &[("service_name", service), ("reason", reason)]
            ),
            Some(0.0),
            "{reason}"
        );
    }
    let v = agent.stats_requests().expect("stats");
    let body = v.to_string();
    let route = v["services"][service]["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == "/shop.Cart/Slow")
        .unwrap_or_else(|| panic!("no Slow method in {body}"))
        .clone();
    assert_eq!(route["count"], 20);
    let p50 = route["p50_seconds"].as_f64().expect("p50");
    let want = median(&mut slow);
    assert!(
        (p50 - want).abs() <= want * 0.10,
        "Slow median {p50}s, the client's {want}s"
    );
}

/// Requests the agent could not name: HTTP/2 requests and gRPC calls
/// counted as `hpack_unknown` on `port`'s service.
fn unknown(agent: &Agent) -> u64 {
    let m = agent.metrics().expect("metrics");
    [
        "apm_http_requests_unpaired_total",
        "apm_rpc_calls_unpaired_total",
    ]
    .iter()
    .filter_map(|family| {
        m.value(
            family,
            &[("service_name", "python"), ("reason", "hpack_unknown")],
        )
    })
    .sum::<f64>() as u64
}

/// An agent started while a client's channel (one HTTP/2 connection) is
/// open, its HPACK tables filled by calls the agent never saw: no call
/// is given a wrong method or status, or taken for an HTTP request, and
/// the ones it cannot name are counted.
#[test]
fn a_channel_older_than_the_agent_gets_no_wrong_method_and_its_unknown_calls_counted() {
    require_root();
    let port = free_port().expect("port");
    let _server = GrpcServer::start(port);
    let mut started = None;
    let (sent, _) = drive_across(port, 10, || {
        let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
        agent.wait_for_service(port, "python");
        started = Some(agent);
    });
    let agent = started.expect("the agent");
    let total: u64 = sent.values().sum();
    assert_eq!(sent["/shop.Cart/Late UNIMPLEMENTED"], 1, "{sent:?}");
    let settled = wait_for(Duration::from_secs(20), || {
        let named: u64 = counted(&agent, port).values().sum();
        (named + unknown(&agent) == total).then_some(())
    });
    let named = counted(&agent, port);
    eprintln!(
        "named {named:?}, unknown {}, the client got {sent:?}",
        unknown(&agent)
    );
    assert!(
        settled.is_some(),
        "named {} + unknown {} != {total}\n{}",
        named.values().sum::<u64>(),
        unknown(&agent),
        agent.log_text()
    );
    for (call, n) in &named {
        assert!(
            sent.get(call).is_some_and(|s| s >= n),
            "{call} counted {n} times: the client got {sent:?}"
        );
    }
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    let http: Vec<String> = m
        .matching(
            "http_server_request_duration_seconds_count",
            &[("server_port", &p)],
        )
        .map(|s| format!("{:?}", s.labels))
        .collect();
    assert!(http.is_empty(), "calls taken for HTTP requests: {http:?}");
}
