//! Redis from the wire, end to end: a real redis-server driven by
//! redis-benchmark (with and without pipelining), whose own
//! `INFO commandstats` is the ground truth for the agent's per-command
//! counts.

use std::{collections::BTreeMap, process::Command, time::Duration};

use apm_e2e::{Agent, Metrics, Redis, free_port, require_root, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// `INFO commandstats` as command → calls, with names as the agent labels
/// them (`cmdstat_config|get` → `CONFIG GET`).
fn commandstats(port: u16) -> BTreeMap<String, u64> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_uppercase().replace('|', " "), calls.parse().ok()?))
        })
        .collect()
}

/// Server-side operations per command, from the duration histogram.
fn server_counts(m: &Metrics, service: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in m.matching(
        "apm_db_server_operation_duration_seconds_count",
        &[("service_name", service), ("db_system_name", "redis")],
    ) {
        *out.entry(s.labels["db_operation_name"].clone())
            .or_default() += s.value as u64;
    }
    out
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[test]
fn server_side_counts_equal_redis_commandstats_with_and_without_pipelining() {
    require_root();
    let port = free_port().expect("port");
    let _redis = Redis::start(port);
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "redis-server");
    let before = commandstats(port);
    for pipeline in ["1", "16"] {
        // A fixed number of requests per test: bounded in count; the
        // LRANGE tests' replies are longer than the capture.
        let out = Command::new("timeout")
            .args(["120", "redis-benchmark", "-p", &port.to_string()])
            .args(["-n", "2000", "-c", "4", "-P", pipeline, "-q"])
            .args([
                "-t",
                "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange,mset",
            ])
            .output()
            .expect("redis-benchmark");
        assert!(out.status.success(), "redis-benchmark: {out:?}");
    }
    let after = commandstats(port);
    let mut expected = delta(&after, &before);
    // The agent also saw the INFO that read `after` (not in its own count).
    *expected.entry("INFO".into()).or_default() += 1;
    assert!(expected["SET"] >= 4000, "{expected:?}");

    let got = wait_for(WAIT, || {
        let m = agent.metrics().ok()?;
        let got = server_counts(&m, "redis-server");
        (got == expected).then_some(m)
    });
    let m = match got {
        Some(m) => m,
        None => {
            let m = agent.metrics().expect("metrics");
            panic!(
                "agent {:?}\nredis {expected:?}\n{}",
                server_counts(&m, "redis-server"),
                m.text
            );
        }
    };
    assert_eq!(
        m.sum("apm_db_operations_unpaired_total", "redis-server"),
        0.0,
        "{}",
        m.text
    );
    // Every GET found its key (redis-benchmark SETs it first).
    let gets = expected["GET"] as f64;
    let hits = m
        .value(
            "apm_cache_operations_total",
            &[
                ("service_name", "redis-server"),
                ("operation", "GET"),
                ("result", "hit"),
            ],
        )
        .unwrap_or(0.0);
    assert_eq!(hits, gets, "{}", m.text);
}
