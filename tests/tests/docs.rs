//! docs/metrics.md and a live /metrics list the same metric families.

use std::collections::BTreeSet;

use apm_e2e::{Agent, Listener, connect_many, free_port, require_root, wait_for};

fn documented() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_owned()))
        .collect()
}

#[test]
fn every_exported_metric_is_documented_and_every_documented_one_exported() {
    require_root();
    let agent = Agent::start(&[]).expect("agent");
    // Some traffic so that every family has at least one series.
    let port = free_port().expect("port");
    let mut listener = Listener::start(port, 3, 1).expect("listener");
    let p = port.to_string();
    wait_for(std::time::Duration::from_secs(15), || {
        let m = agent.metrics().ok()?;
        m.value(
            "apm_tcp_connections_accepted_total",
            &[("server_port", p.as_str())],
        )
        .map(|_| ())
    })
    .expect("listener discovered");
    let clients = connect_many(port, 3).expect("connect");
    listener.go().expect("accept");

    let m = agent.metrics().expect("metrics");
    let exported: BTreeSet<String> = m
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let documented = documented();
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
    drop(clients);
}
