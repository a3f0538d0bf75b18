//! docs/metrics.md and a live /metrics list the same metric families.

use std::{collections::BTreeSet, time::Duration};

use apm_e2e::{Agent, Client, Server, free_port, require_root, wait_for};

/// Metric names in docs/metrics.md, and those documented as existing only
/// under `--capture syscalls`.
fn documented() -> (BTreeSet<String>, BTreeSet<String>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    let mut all = BTreeSet::new();
    let mut syscalls_only = BTreeSet::new();
    for line in text.lines() {
        let Some((name, rest)) = line.strip_prefix("| `").and_then(|l| l.split_once('`')) else {
            continue;
        };
        all.insert(name.to_owned());
        if rest.contains("`--capture syscalls` only") {
            syscalls_only.insert(name.to_owned());
        }
    }
    (all, syscalls_only)
}

/// The metric families a live agent with `--capture CAPTURE` exports once
/// it has seen HTTP traffic, sampled, checked a dependency, and fired an
/// alert at a receiver that is down.
fn exported(capture: &str) -> BTreeSet<String> {
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    let check = format!("tcp://127.0.0.1:{port}");
    let dead = free_port().expect("port");
    let config = apm_e2e::always_firing_config(
        &format!("DocsAlways_{capture}"),
        &format!("[[alerts.receivers]]\nwebhook = \"http://127.0.0.1:{dead}/\"\n"),
    );
    let agent = Agent::start(&[
        "--capture",
        capture,
        "--check",
        &check,
        "--check-interval",
        "1s",
        "--config",
        config.to_str().expect("path"),
    ])
    .expect("agent");
    agent.wait_for_service(port, "apm-httpd");
    let mut client = Client::connect(port).expect("connect");
    for _ in 0..3 {
        assert_eq!(client.get("/ok").expect("request"), 200);
    }
    let m = wait_for(Duration::from_secs(15), || {
        let m = agent.metrics().ok()?;
        let paired = m.value(
            "apm_http_requests_paired_total",
            &[("service_name", "apm-httpd")],
        ) == Some(3.0);
        // Sampled and checked at least once too, so every family is there.
        let sampled =
            m.value("apm_service_processes", &[("service_name", "apm-httpd")]) == Some(1.0);
        let checked = m.value("apm_dependency_up", &[("dependency", check.as_str())]) == Some(1.0);
        let alerted = m.text.contains("apm_alert_notifications_total{");
        (paired && sampled && checked && alerted).then_some(m)
    })
    .expect("requests paired, the service sampled, the dependency checked, an alert sent");
    std::fs::remove_file(config).ok();
    drop(server);
    m.text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn every_exported_metric_is_documented_and_every_documented_one_exported() {
    require_root();
    let packets = exported("packets");
    let syscalls = exported("syscalls");
    let (mut documented, syscalls_only) = documented();
    if !std::path::Path::new("/proc/pressure").exists() {
        // Kernels without PSI have no pressure series.
        documented.retain(|n| !n.starts_with("apm_host_pressure"));
    }
    let exported: BTreeSet<String> = packets.union(&syscalls).cloned().collect();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}"
    );
    // The default capture exports everything but what the docs mark as
    // syscall-only, and those really are syscall-only.
    let not_in_packets: BTreeSet<String> = documented.difference(&packets).cloned().collect();
    assert_eq!(not_in_packets, syscalls_only);
    assert!(!syscalls_only.is_empty());
}
