//! Process and host sampling, /stats/system, /health/detailed with a real
//! redis-server, and /logs/recent, against the real agent.

use std::time::Duration;

use apm_e2e::{Agent, Redis, Worker, free_port, get, require_root, rss_bytes, wait_for};
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

fn json(agent: &Agent, path: &str) -> (u16, Value) {
    let r = get(agent.addr, path).expect(path);
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body));
    (r.status, v)
}

/// The service's sample in /stats/system, once it has `processes` processes.
fn service_sample(agent: &Agent, service: &str, processes: u64) -> Value {
    wait_for(Duration::from_secs(15), || {
        let (_, v) = json(agent, "/stats/system");
        let s = v["sample"]["services"][service].clone();
        (s["processes"] == processes).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "{service} never sampled with {processes} processes: {}",
            agent.log_text()
        )
    })
}

#[test]
fn a_busy_service_is_reported_at_one_core_and_its_memory_growth_seen() {
    require_root();
    let agent = Agent::start(&["--comm", "apm-busy"]).expect("agent");
    let port = free_port().expect("port");
    let mut worker = Worker::start(port, "apm-busy", 0).expect("worker");
    let before = service_sample(&agent, "apm-busy", 1);
    let rss_before = before["resident_memory_bytes"].as_f64().expect("rss");

    worker.command("burn 6").expect("burn");
    let busy = wait_for(Duration::from_secs(5), || {
        let (_, v) = json(&agent, "/stats/system");
        let cores = v["sample"]["services"]["apm-busy"]["cpu_cores"].as_f64()?;
        (cores >= 0.8).then_some(cores)
    });
    assert!(
        busy.is_some(),
        "never reported >= 0.8 cores within 5 s: {}",
        json(&agent, "/stats/system").1
    );
    let m = agent.metrics().expect("metrics");
    assert!(
        m.value(
            "apm_process_cpu_seconds_total",
            &[("service_name", "apm-busy")]
        )
        .expect("cpu")
            > 0.5
    );

    worker.command("alloc 200").expect("alloc");
    let grown = wait_for(Duration::from_secs(5), || {
        let (_, v) = json(&agent, "/stats/system");
        let rss = v["sample"]["services"]["apm-busy"]["resident_memory_bytes"].as_f64()?;
        (rss - rss_before >= 190.0 * MIB).then_some(rss)
    });
    assert!(
        grown.is_some(),
        "RSS did not grow by 190 MiB: {}",
        json(&agent, "/stats/system").1
    );
    let m = agent.metrics().expect("metrics");
    let rss = m
        .value(
            "apm_process_resident_memory_bytes",
            &[("service_name", "apm-busy")],
        )
        .expect("rss metric");
    assert!(rss - rss_before >= 190.0 * MIB);
}

#[test]
fn a_master_and_two_workers_are_one_service_summed() {
    require_root();
    let agent = Agent::start(&["--comm", "apm-prefork"]).expect("agent");
    let port = free_port().expect("port");
    let mut worker = Worker::start(port, "apm-prefork", 2).expect("prefork service");
    assert_eq!(worker.pids.len(), 3);
    service_sample(&agent, "apm-prefork", 3);
    // Different amounts per process, so a sum of fewer could not match.
    worker.command("hold 30 0").expect("master");
    worker.command("hold 60 1").expect("worker 1");
    worker.command("hold 90 2").expect("worker 2");
    let matched = wait_for(Duration::from_secs(10), || {
        let truth: u64 = worker.pids.iter().map(|&p| rss_bytes(p).unwrap_or(0)).sum();
        let (_, v) = json(&agent, "/stats/system");
        let s = &v["sample"]["services"]["apm-prefork"];
        let reported = s["resident_memory_bytes"].as_f64()?;
        let close = (reported - truth as f64).abs() <= 0.02 * truth as f64;
        (close && truth as f64 >= 180.0 * MIB && s["processes"] == 3).then_some(reported)
    });
    assert!(
        matched.is_some(),
        "RSS is not the sum of the three: {}",
        json(&agent, "/stats/system").1
    );
    // Three single-threaded processes burning at once: only a sum can
    // exceed one core.
    worker.command("burn 5").expect("burn");
    let cores = wait_for(Duration::from_secs(5), || {
        let (_, v) = json(&agent, "/stats/system");
        let c = v["sample"]["services"]["apm-prefork"]["cpu_cores"].as_f64()?;
        (c >= 1.5).then_some(c)
    });
    assert!(
        cores.is_some(),
        "CPU is not summed: {}",
        json(&agent, "/stats/system").1
    );
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value("apm_service_processes", &[("service_name", "apm-prefork")]),
        Some(3.0)
    );
}

#[test]
fn host_sample_and_stats_system_answer_without_waiting() {
    require_root();
    let agent = Agent::start(&[]).expect("agent");
    let v = wait_for(Duration::from_secs(10), || {
        let (status, v) = json(&agent, "/stats/system");
        (status == 200).then_some(v)
    })
    .expect("a sample");
    let host = &v["sample"]["host"];
    assert!(host["memory_total_bytes"].as_f64().expect("mem") > 0.0);
    assert!(host["cpu_count"].as_u64().expect("cpus") >= 1);
    let fs = host["filesystems"].as_array().expect("filesystems");
    assert!(fs.iter().any(|f| f["mountpoint"] == "/"), "{fs:?}");
    assert!(
        fs.iter()
            .all(|f| f["fstype"] != "proc" && f["fstype"] != "sysfs")
    );
    assert!(v["age_seconds"].as_f64().expect("age") < 3.0);
    let m = agent.metrics().expect("metrics");
    assert!(m.value("apm_host_memory_total_bytes", &[]).expect("mem") > 0.0);
    assert!(
        m.matching("node_cpu_seconds_total", &[("mode", "idle")])
            .count()
            >= 1
    );
    if std::path::Path::new("/proc/pressure/cpu").exists() {
        assert!(
            host["pressure"]["cpu"]["some"]["avg10"].is_number(),
            "{host}"
        );
    }
    // Many requests back to back: each answers from the last sample.
    let start = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(get(agent.addr, "/stats/system").expect("stats").status, 200);
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

fn dependency(v: &Value, name: &str) -> Option<Value> {
    v["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == format!("dependency {name}"))
        .cloned()
}

#[test]
fn redis_dependency_health_follows_the_real_server() {
    require_root();
    let port = free_port().expect("port");
    let redis = Redis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let agent = Agent::start(&["--check", &url, "--check-interval", "1s"]).expect("agent");

    let healthy = wait_for(Duration::from_secs(10), || {
        let (_, v) = json(&agent, "/health/detailed");
        let d = dependency(&v, &url)?;
        let sampled = v["checks"]
            .as_array()?
            .iter()
            .any(|c| c["name"] == "sampler" && c["status"] == "healthy");
        (d["status"] == "healthy" && sampled).then_some((v, d))
    });
    let (v, d) = healthy.unwrap_or_else(|| panic!("{}", json(&agent, "/health/detailed").1));
    assert_eq!(d["detail"], "PONG");
    let rt = d["response_time_seconds"].as_f64().expect("response time");
    assert!(rt > 0.0 && rt < 1.0, "{rt}");
    // The overall status is the worst check (this machine's own disks and
    // memory decide whether that is healthy or degraded).
    let rank = |s: &Value| match s.as_str() {
        Some("healthy") => 0,
        Some("degraded") => 1,
        _ => 2,
    };
    let worst = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| rank(&c["status"]))
        .max();
    assert_eq!(Some(rank(&v["status"])), worst, "{v}");
    assert_ne!(v["status"], "unhealthy", "{v}");
    assert_eq!(get(agent.addr, "/health").expect("health").status, 200);

    drop(redis);
    // One check interval (1 s), plus the time the check itself may take.
    let degraded = wait_for(Duration::from_millis(2500), || {
        let (status, v) = json(&agent, "/health/detailed");
        let d = dependency(&v, &url)?;
        (d["status"] == "degraded" && v["status"] == "degraded" && status == 200).then_some(d)
    });
    let d = degraded.unwrap_or_else(|| panic!("{}", json(&agent, "/health/detailed").1));
    assert!(
        d["detail"].as_str().expect("detail").contains("refused"),
        "{d}"
    );
    assert_eq!(get(agent.addr, "/health").expect("health").status, 200);
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value("apm_dependency_up", &[("dependency", url.as_str())]),
        Some(0.0)
    );

    // The failure was logged once, and /logs/recent serves it.
    let (status, logs) = json(&agent, "/logs/recent?level=warn&limit=5");
    assert_eq!(status, 200);
    let records = logs.as_array().expect("array");
    assert!(!records.is_empty() && records.len() <= 5);
    assert!(
        records
            .iter()
            .all(|r| r["level"] == "WARN" || r["level"] == "ERROR")
    );
    let failed: Vec<&Value> = records
        .iter()
        .filter(|r| r["message"] == "dependency check failed")
        .collect();
    assert_eq!(failed.len(), 1, "{logs}");
    assert_eq!(failed[0]["fields"]["dependency"], url.as_str());
    let (_, all) = json(&agent, "/logs/recent?limit=2");
    assert_eq!(all.as_array().expect("array").len(), 2);
    let (status, _) = json(&agent, "/logs/recent?level=loud");
    assert_eq!(status, 400);
}
