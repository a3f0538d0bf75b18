//! TCP health per service, end to end: resets sent and received by a
//! monitored server's port and a monitored client's connections, the
//! client's refused connects, and the segments each side retransmits on a
//! lossy MTU-1500 link, against the counts the programs and the kernel's
//! own sockets keep (`tests/servers/tcp_peer.py`, `ss -ti`).

use std::{process::Command, time::Duration};

use apm_e2e::{Agent, Metrics, NetNs, Scripted, free_port, prod::LinkNs, require_root, wait_for};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers/tcp_peer.py");

/// `tcp_peer.py` started with `args`, inside `ns` if given, once listening.
fn peer(ns: Option<&NetNs>, args: &[&str]) -> Scripted {
    let mut cmd = match ns {
        Some(ns) => ns.command("python3"),
        None => Command::new("python3"),
    };
    cmd.arg(PEER).args(args);
    let p = Scripted::spawn(cmd).expect("tcp_peer.py");
    p.expect_line("listening").expect("listening");
    p
}

/// The agent monitoring the server `backend` on `port` and the client
/// `caller` listening on `lport`, once both are known.
fn agent(port: u16, lport: u16) -> Agent {
    let (p, l) = (port.to_string(), lport.to_string());
    let names = format!("{p}=backend,{l}=caller");
    let agent =
        Agent::start(&["--port", &p, "--port", &l, "--service-name", &names]).expect("agent");
    agent.wait_for_service(port, "backend");
    agent.wait_for_service(lport, "caller");
    agent.wait_for_process("caller");
    for probe in [
        "tcp_retransmit_skb",
        "tcp_retransmit_synack",
        "tcp_send_reset",
        "tcp_receive_reset",
    ] {
        let name = format!("probe tcp:{probe}");
        assert_eq!(agent.check_detail(&name).expect("health"), "attached");
    }
    agent
}

/// The number at the end of the peer's answer `word N`.
fn count(answer: &str) -> u64 {
    answer
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("peer said {answer:?}"))
}

/// One value, 0 when the series does not exist.
fn get(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    m.value(name, labels).unwrap_or(0.0) as u64
}

/// The caller's `family` towards 127.0.0.1:`port` (and `direction`).
fn outbound(m: &Metrics, port: &str, family: &str, direction: Option<&str>) -> u64 {
    let mut labels = vec![
        ("service_name", "caller"),
        ("server_address", "127.0.0.1"),
        ("server_port", port),
    ];
    labels.extend(direction.map(|d| ("direction", d)));
    get(m, family, &labels)
}

/// Waits until `seen(metrics) == expected`; panics with both otherwise.
fn wait_equal<T: PartialEq + std::fmt::Debug>(
    agent: &Agent,
    expected: &T,
    seen: impl Fn(&Metrics) -> T,
) {
    if agent
        .wait_for_metrics(Duration::from_secs(15), |m| seen(m) == *expected)
        .is_none()
    {
        let m = agent.metrics().expect("metrics");
        panic!(
            "agent {:?}\nexpected {expected:?}\n{}",
            seen(&m),
            m.text
                .lines()
                .filter(|l| l.starts_with("apm_tcp_") || l.starts_with("apm_outbound_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn resets_and_refused_connects_count_for_the_service_whose_connection_it_was() {
    require_root();
    let (port, lport, closed) = (
        free_port().expect("port"),
        free_port().expect("port"),
        free_port().expect("port"),
    );
    let _server = peer(None, &["serve", &port.to_string()]);
    let mut client = peer(None, &["client", &lport.to_string()]);
    let agent = agent(port, lport);

    let (p, c) = (port.to_string(), closed.to_string());
    let refused = count(
        &client
            .command(&format!("refuse {c} 20"), "refused")
            .expect("refuse"),
    );
    let reset = count(
        &client
            .command(&format!("reset {p} 15"), "reset")
            .expect("reset"),
    );
    let aborted = count(
        &client
            .command(&format!("abort {p} 10"), "aborted")
            .expect("abort"),
    );
    assert_eq!((refused, reset, aborted), (20, 15, 10));

    let expected = [refused, refused, reset, aborted, reset, aborted, 0, 0];
    wait_equal(&agent, &expected, |m| {
        let served = |direction| {
            get(
                m,
                "apm_tcp_resets_total",
                &[
                    ("service_name", "backend"),
                    ("server_port", &p),
                    ("direction", direction),
                ],
            )
        };
        [
            outbound(m, &c, "apm_outbound_connect_failures_total", None),
            outbound(m, &c, "apm_outbound_resets_total", Some("received")),
            outbound(m, &p, "apm_outbound_resets_total", Some("received")),
            outbound(m, &p, "apm_outbound_resets_total", Some("sent")),
            served("sent"),
            served("received"),
            // Connections that did connect are no connect failures, and the
            // caller's own port reset nothing.
            outbound(m, &p, "apm_outbound_connect_failures_total", None),
            m.sum("apm_tcp_resets_total", "caller") as u64,
        ]
    });
    // /stats/system lists them per service, port and destination.
    let stats = agent.stats_system().expect("stats");
    let row = |service: &str, target: &str| {
        stats["network"][service]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["target"] == target).cloned())
            .unwrap_or_else(|| panic!("no {target} of {service}: {stats}"))
    };
    let refused_row = row("caller", &format!("127.0.0.1:{c}"));
    assert_eq!(refused_row["connect_failures"], refused, "{refused_row}");
    let served = row("backend", &format!("port {p}"));
    assert_eq!(
        (&served["resets_sent"], &served["resets_received"]),
        (&reset.into(), &aborted.into()),
        "{served}"
    );
}

/// The sum of `total_retrans` over the namespace's sockets `ss` selects
/// with `filter`, and whether any still has segments unacknowledged.
fn ss_retransmitted(ns: &NetNs, filter: &str) -> (u64, bool) {
    let out = ns
        .command("ss")
        .args(["-tinH", filter])
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("retrans:"))
        .filter_map(|r| r.split('/').nth(1)?.parse::<u64>().ok())
        .sum();
    (total, text.contains("unacked:"))
}

#[test]
fn retransmissions_on_a_lossy_link_count_for_the_side_that_sent_them() {
    require_root();
    let port = free_port().expect("port");
    let link = LinkNs::create("tcph", &[port], 5).expect("link");
    retransmissions(&link, port);
}

/// The same with the loopback's offloads back on: a retransmitted buffer
/// then often carries several segments, and each counts.
#[test]
fn retransmitted_buffers_of_several_segments_count_each_segment() {
    require_root();
    let port = free_port().expect("port");
    let link = LinkNs::create("tcpo", &[port], 5).expect("link");
    let name = link.ns.name().to_owned();
    let ok = Command::new("ip")
        .args(["-n", &name, "link", "set", "lo", "gso_max_segs", "65535"])
        .status()
        .expect("ip")
        .success()
        && link
            .ns
            .command("ethtool")
            .args(["-K", "lo", "tso", "on", "gso", "on"])
            .status()
            .expect("ethtool")
            .success();
    assert!(ok, "offloads back on {name}");
    retransmissions(&link, port);
}

/// Bulk exchanges on `link`'s lossy loopback between a monitored server
/// on `port` and a monitored client: each side's retransmissions as the
/// agent counts them equal its sockets' own `total_retrans`.
fn retransmissions(link: &LinkNs, port: u16) {
    let lport = free_port().expect("port");
    let _server = peer(Some(&link.ns), &["serve", &port.to_string()]);
    let mut client = peer(Some(&link.ns), &["client", &lport.to_string()]);
    let agent = agent(port, lport);
    let p = port.to_string();

    // 8 connections of 12 exchanges: 16 KiB up, 64 KiB down, each
    // direction losing 5 % of its segments.
    let started = std::time::Instant::now();
    client
        .command(&format!("load {p} 8 12 65536 16384"), "loaded")
        .expect("load");
    let loss = link.check_loss().expect("loss");
    link.stop_loss().expect("stop loss");
    // Retransmissions still due go out on the now lossless link.
    let settled = wait_for(Duration::from_secs(10), || {
        let (_, server_busy) = ss_retransmitted(&link.ns, &format!("sport = :{p}"));
        let (_, client_busy) = ss_retransmitted(&link.ns, &format!("dport = :{p}"));
        (!server_busy && !client_busy).then_some(())
    });
    assert!(settled.is_some(), "segments still unacknowledged");
    let (server, _) = ss_retransmitted(&link.ns, &format!("sport = :{p}"));
    let (client_side, _) = ss_retransmitted(&link.ns, &format!("dport = :{p}"));
    let in_ns = link.counters().expect("counters").retransmitted;
    eprintln!(
        "load took {:?}; lost {} to the server and {} to the client; \
         retransmitted: server {server}, client {client_side}, namespace {in_ns}",
        started.elapsed(),
        loss.lost_to_server,
        loss.lost_to_client
    );
    assert!(server > 0 && client_side > 0, "nothing retransmitted");
    // Every retransmission of the namespace is one of the two sides'.
    assert_eq!(server + client_side, in_ns);
    wait_equal(&agent, &[server, client_side], |m| {
        [
            get(
                m,
                "apm_tcp_retransmitted_segments_total",
                &[("service_name", "backend"), ("server_port", &p)],
            ),
            get(
                m,
                "apm_outbound_retransmitted_segments_total",
                &[
                    ("service_name", "caller"),
                    ("server_address", "127.0.0.1"),
                    ("server_port", &p),
                ],
            ),
        ]
    });
    client.command("close", "closed").expect("close");
}
