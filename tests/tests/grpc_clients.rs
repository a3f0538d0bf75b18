//! A monitored service's outbound HTTP/2 and gRPC calls, end to end: the
//! service is the client (it listens on a monitored port; the servers it
//! calls are not monitored). Cleartext: a grpcio client recognised by
//! its preface in the packet programs. Over TLS: a Node client
//! (@grpc/grpc-js and node:http2 on Node's OpenSSL) recognised by its
//! ClientHello, its plaintext from the TLS probes. The client's own
//! counts per method and status are the ground truth. The cleartext
//! calls also go over an MTU-1500 link with random loss.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, free_port,
    grpc::{GrpcServer, GrpcTlsServer, NodeClient, drive_as_service, drive_as_service_in},
    prod::LinkNs,
    require_root, shop_args,
    tls::wait_probed,
    wait_for,
};

/// The agent naming the service listening on `lport` `shop` (with
/// `extra` arguments), once it knows the service and its process.
fn shop_agent(lport: u16, extra: &[&str]) -> Agent {
    let l = lport.to_string();
    let args = shop_args(&l);
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    let agent = Agent::start(&args).expect("agent");
    agent.wait_for_service(lport, "shop");
    agent.wait_for_process("shop");
    agent
}

/// Shop's gRPC calls ("METHOD STATUS") and HTTP/2 requests ("GET
/// STATUS") to `port`, as the agent counted them.
fn calls(agent: &Agent, port: u16) -> BTreeMap<String, u64> {
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    let labels = [
        ("service_name", "shop"),
        ("server_address", "127.0.0.1"),
        ("server_port", p.as_str()),
    ];
    // Every series to `port` has the label's value: none is left out.
    for (family, label, value) in [
        (
            "rpc_client_call_duration_seconds_count",
            "rpc_system_name",
            "grpc",
        ),
        (
            "http_client_request_duration_seconds_count",
            "network_protocol_version",
            "2",
        ),
    ] {
        for s in m.matching(family, &labels) {
            assert_eq!(s.labels[label], value, "{s:?}");
        }
    }
    let mut calls = m.tally(
        "rpc_client_call_duration_seconds_count",
        &labels,
        &["rpc_method", "rpc_response_status_code"],
    );
    calls.extend(m.tally(
        "http_client_request_duration_seconds_count",
        &labels,
        &["http_request_method", "http_response_status_code"],
    ));
    calls
}

/// Waits until shop's calls to `port` are `sent`; then none unpaired
/// and nothing counted as served on `port`.
fn exact(agent: &Agent, port: u16, sent: &BTreeMap<String, u64>) {
    // Frames followed in the kernel, not copied whole by the fallback.
    for probe in ["probe cgroup_skb:ingress", "probe cgroup_skb:egress"] {
        assert_eq!(agent.check_detail(probe).expect("health"), "attached");
    }
    let settled = wait_for(Duration::from_secs(20), || {
        (&calls(agent, port) == sent).then_some(())
    });
    assert!(
        settled.is_some(),
        "the agent counted {:?}\nthe client got {sent:?}\n{}\n{}",
        calls(agent, port),
        agent
            .metrics()
            .map(|m| m
                .text
                .lines()
                .filter(|l| !l.starts_with("#")
                    && (l.contains("shop") || l.contains("drop") || l.contains("ringbuf"))
                    && !l.ends_with(" 0")
                    && !l.contains("_bucket"))
                .collect::<Vec<_>>()
                .join("\n"))
            .unwrap_or_default(),
        agent.log_text()
    );
    let m = agent.metrics().expect("metrics");
    for family in [
        "apm_rpc_client_calls_unpaired_total",
        "apm_http_client_requests_unpaired_total",
    ] {
        assert_eq!(m.sum(family, "shop"), 0.0, "{family}\n{}", m.text);
    }
    let p = port.to_string();
    let served = m
        .matching(
            "rpc_server_call_duration_seconds_count",
            &[("server_port", &p)],
        )
        .count();
    assert_eq!(
        served, 0,
        "calls of an unmonitored server counted as served"
    );
}

#[test]
fn a_services_grpc_calls_are_timed_as_its_client_per_method_and_status() {
    require_root();
    let (port, lport) = (free_port().expect("port"), free_port().expect("port"));
    let _server = GrpcServer::start(port);
    let mut started = None;
    let (sent, slow) = drive_as_service(port, 20, lport, || {
        started = Some(shop_agent(lport, &[]));
    });
    let agent = started.expect("the agent");
    assert_eq!(sent["/shop.Cart/Hang DEADLINE_EXCEEDED"], 20, "{sent:?}");
    assert_eq!(sent["/shop.Cart/Get NOT_FOUND"], 20, "{sent:?}");
    exact(&agent, port, &sent);
    // The 50 ms method's mean, against the client's own.
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    let of = |suffix: &str| {
        m.value(
            &format!("rpc_client_call_duration_seconds_{suffix}"),
            &[
                ("service_name", "shop"),
                ("rpc_method", "/shop.Cart/Slow"),
                ("server_port", &p),
            ],
        )
        .expect("Slow's series")
    };
    let mean = of("sum") / of("count");
    let want = slow.iter().sum::<f64>() / slow.len() as f64;
    assert!(
        (mean - want).abs() <= want * 0.10,
        "Slow's mean {mean}s, the client's {want}s"
    );
}

#[test]
fn a_services_http2_and_grpc_calls_over_tls_are_timed_as_its_client() {
    require_root();
    let (port, lport) = (free_port().expect("port"), free_port().expect("port"));
    let server = GrpcTlsServer::start(port);
    let mut client = NodeClient::start(lport, port, &server.ca);
    let agent = shop_agent(lport, &["--capture-tls"]);
    wait_probed(&agent, "uprobe:/");
    let got = client.drive(10);
    eprintln!("node client {} got {got:?}", client.pid());
    assert_eq!(got["/shop.Cart/Hang DEADLINE_EXCEEDED"], 10, "{got:?}");
    // The GETs by status, as the agent labels them.
    let sent: BTreeMap<String, u64> = got
        .into_iter()
        .map(|(k, n)| (k.replace("GET /shop.Cart/Get ", "GET "), n))
        .collect();
    exact(&agent, port, &sent);
}

/// The cleartext calls over an Ethernet-like link (MTU 1500) that drops
/// 2 % of the server port's packets each way: retransmissions, holes and
/// List's 24 KiB replies across many segments.
#[test]
fn a_services_grpc_calls_over_a_lossy_link_are_exact() {
    require_root();
    let (port, lport) = (free_port().expect("port"), free_port().expect("port"));
    let link = LinkNs::create("grpc-cl", &[port], 2).expect("link");
    let _server = GrpcServer::start_in(Some(&link.ns), port);
    let mut started = None;
    let (sent, _) = drive_as_service_in(Some(&link.ns), port, 20, lport, || {
        started = Some(shop_agent(lport, &[]));
    });
    let agent = started.expect("the agent");
    eprintln!("lossy link: {:?}", link.check_loss().expect("loss"));
    link.check_link(100).expect("an MTU-1500 link");
    exact(&agent, port, &sent);
}
