//! HTTP/2 end to end: Debian's nginx with `listen … http2`, driven by
//! h2load (Debian's nghttp2-client) with a fixed request count and many
//! concurrent streams per connection: cleartext with prior knowledge (h2c)
//! over an Ethernet-like link (MTU 1500, one segment per packet, with and
//! without loss) and over a namespace's loopback (64 KiB segments), and
//! over TLS (ALPN h2, read at the TLS library). nginx's access log is the
//! ground truth: the agent's counts per route and status must equal it.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, NetNs, free_port,
    prod::{LinkNs, Nginx},
    require_root,
    tls::{certified, wait_probed},
    wait_for,
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

/// Where the test runs: an Ethernet-like link with `loss` percent of the
/// server's packets dropped each way, or a plain namespace's loopback,
/// whose segments (GSO, MTU 64 KiB) carry up to 64 KiB of frames each.
enum Net {
    Link {
        loss: u32,
    },
    Loopback,
    /// Loopback, nginx serving HTTP/2 over TLS (ALPN h2), read at its
    /// TLS library.
    Tls,
}

/// `big`: one request in four is for a 200 KiB file, so segments carry
/// DATA frames of several streams with other streams' HEADERS between
/// and past them.
fn nginx_h2c(tag: &str, net: Net, requests: u32, big: bool) {
    require_root();
    let port = free_port().expect("port");
    let tls = matches!(net, Net::Tls);
    let (link, plain) = match net {
        Net::Link { loss } => (
            Some(LinkNs::create(tag, &[port], loss).expect("link")),
            None,
        ),
        Net::Loopback | Net::Tls => (None, Some(NetNs::create(tag))),
    };
    let Some(ns) = link.as_ref().map(|l| &l.ns).or(plain.as_ref()) else {
        unreachable!("one of the two")
    };
    let (_certs, cert, key) = certified(tag, port);
    let nginx = if tls {
        Nginx::start_h2_tls(ns, port, &cert, &key)
    } else {
        Nginx::start_with(ns, port, true)
    }
    .expect("nginx");
    let p = port.to_string();
    let args: &[&str] = if tls {
        &["--capture-tls", "--port", &p]
    } else {
        &["--port", &p]
    };
    let agent = Agent::start(args).expect("agent");
    agent.wait_for_service(port, "nginx");
    if tls {
        wait_probed(&agent, "libssl");
    }
    // Frames followed in the kernel, not the fallback that copies
    // HTTP/2 segments whole (a program the verifier refused).
    for probe in ["probe cgroup_skb:ingress", "probe cgroup_skb:egress"] {
        assert_eq!(agent.check_detail(probe).expect("health"), "attached");
    }

    let base = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
    let uris: Vec<String> = [
        "/index.html",
        "/small.txt",
        "/no-such-page",
        if big {
            "/media/poster.jpg"
        } else {
            "/static/app.js"
        },
    ]
    .iter()
    .map(|p| format!("{base}{p}"))
    .collect();
    let count = requests.to_string();
    let out = ns
        .command("h2load")
        .args(["-n", &count, "-c", "4", "-m", "32", "-t", "1"])
        .args(&uris)
        .output()
        .expect("h2load (installed by cargo xtask test)");
    let text = String::from_utf8_lossy(&out.stdout);
    // h2load counts the 404s as failed: what matters is that all were
    // done, with no stream errored.
    assert!(
        out.status.success()
            && text.contains(&format!("{requests} done"))
            && text.contains(" 0 errored"),
        "h2load: {text}"
    );
    if let Some(link) = &link {
        if link.loss_percent > 0 {
            eprintln!("lossy link: {:?}", link.check_loss().expect("loss"));
        }
        link.check_link(500).expect("an MTU-1500 link");
    }
    let served = nginx.log_counts().expect("access log");
    assert_eq!(
        served.values().sum::<u64>(),
        u64::from(requests),
        "harness: {served:?}"
    );
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
    nginx_h2c("h2c", Net::Link { loss: 0 }, 4000, false);
}

/// HTTP/2 over TLS: h2load negotiates h2 by ALPN, nginx writes up to
/// 16 KiB of frames per SSL_write, headers among 200 KiB bodies' DATA.
#[test]
fn nginx_h2_over_tls_is_counted_exactly_at_its_tls_library() {
    nginx_h2c("h2tls", Net::Tls, 4000, true);
}

/// 2 % of the server's packets dropped each way: retransmissions going
/// out, holes and late fillers coming in, every request still counted.
#[test]
fn nginx_h2c_with_2_percent_loss_is_counted_exactly() {
    nginx_h2c("h2loss", Net::Link { loss: 2 }, 4000, true);
}

/// Loopback's 64 KiB segments hold frames of many responses, headers
/// anywhere among 200 KiB bodies' DATA: every one is followed, none
/// lost, and the bodies stay out of the ring.
#[test]
fn nginx_h2c_over_loopback_segments_of_64_kib_is_counted_exactly() {
    nginx_h2c("h2lo", Net::Loopback, 8000, true);
}
