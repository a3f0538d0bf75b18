//! `--check postgres://` and `--check mysql://` end to end: a real
//! PostgreSQL (Debian's, with SCRAM passwords) and a real MariaDB
//! (Debian's, speaking the MySQL protocol), each started here on loopback,
//! are healthy with their response times, a wrong password shows the
//! server's own error, and stopping the server turns the check degraded
//! within one check interval, with the connection's error. The password
//! never appears anywhere the agent writes.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use apm_e2e::{Agent, databases, free_port, get, require_root, wait_for};

const PASSWORD: &str = "pg-Secret-7dQx";

/// The /health/detailed check of `dependency`: (status, detail, time).
fn check_of(agent: &Agent, dependency: &str) -> Option<(String, String, f64)> {
    let r = get(agent.addr, "/health/detailed").ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let c = v["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == format!("dependency {dependency}"))?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["detail"].as_str().unwrap_or_default().to_owned(),
        c["response_time_seconds"].as_f64().unwrap_or(-1.0),
    ))
}

/// The flow both database tests share: `shown` (the check's name) turns
/// healthy with a response time, the other check's wrong password shows
/// the server's `refusal`; after `stop`, `shown` is degraded within one
/// check interval (1 s) with the connection's error; no `secrets` appear
/// anywhere the agent writes.
fn healthy_then_degraded(
    agent: &Agent,
    shown: &str,
    refusal: &str,
    stop: impl FnOnce(),
    secrets: &[&str],
) {
    let healthy = wait_for(Duration::from_secs(20), || {
        let c = check_of(agent, shown)?;
        (c.0 == "healthy").then_some(c)
    })
    .unwrap_or_else(|| panic!("never healthy: {:?}", check_of(agent, shown)));
    assert!(healthy.2 > 0.0 && healthy.2 < 5.0, "{healthy:?}");
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value("apm_dependency_up", &[("dependency", shown)]),
        Some(1.0),
        "{}",
        m.text
    );
    let r = get(agent.addr, "/health/detailed").expect("detailed");
    assert!(r.body.contains(refusal), "{}", r.body);

    stop();
    let stopped = Instant::now();
    let degraded = wait_for(Duration::from_secs(10), || {
        let c = check_of(agent, shown)?;
        (c.0 != "healthy").then_some(c)
    })
    .expect("never degraded");
    let after = stopped.elapsed();
    assert!(
        after < Duration::from_millis(1500),
        "degraded after {after:?}"
    );
    assert!(degraded.1.contains("connect"), "{degraded:?}");
    println!("{shown} stopped: degraded after {after:?}: {}", degraded.1);

    for text in [
        get(agent.addr, "/health/detailed").expect("detailed").body,
        agent.metrics().expect("metrics").text,
        get(agent.addr, "/logs/recent").expect("logs").body,
        agent.log_text(),
    ] {
        for secret in secrets {
            assert!(!text.contains(secret), "password leaked: {text}");
        }
    }
}

#[test]
fn postgres_check_runs_a_query_and_turns_degraded_when_the_server_stops() {
    require_root();
    let port = free_port().expect("port");
    let mut pg = databases::postgres(port, PASSWORD, "scram-sha-256", &[]);
    let pwfile = std::env::temp_dir().join(format!("apm-e2e-pg-pw-{port}"));
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("pwfile");
    let good = format!(
        "postgres://apm@127.0.0.1:{port}/postgres?password_file={}",
        pwfile.display()
    );
    // Another database: two checks must not show under one name.
    let bad = format!("postgres://apm:wrong-pw@127.0.0.1:{port}/template1");
    let shown = format!("postgres://127.0.0.1:{port}/postgres");
    let agent = Agent::start(&["--check", &good, "--check", &bad, "--check-interval", "1s"])
        .expect("agent");
    healthy_then_degraded(
        &agent,
        &shown,
        "password authentication failed",
        || pg.stop(),
        &[PASSWORD, "wrong-pw"],
    );
    std::fs::remove_file(pwfile).ok();
}

#[test]
fn mysql_check_runs_a_query_and_turns_degraded_when_the_server_stops() {
    require_root();
    let port = free_port().expect("port");
    let mut db = databases::mariadb(port, PASSWORD);
    // The password from the agent's environment this time.
    let good = format!("mysql://apm@127.0.0.1:{port}/shop?password_env=APM_E2E_MYSQL_PW");
    let bad = format!("mysql://apm:wrong-pw@127.0.0.1:{port}/");
    let shown = format!("mysql://127.0.0.1:{port}/shop");
    let mut cmd = Command::new(apm_e2e::agent_bin());
    cmd.env("APM_E2E_MYSQL_PW", PASSWORD);
    let agent = Agent::start_with(
        cmd,
        &["--check", &good, "--check", &bad, "--check-interval", "1s"],
    )
    .expect("agent");
    healthy_then_degraded(
        &agent,
        &shown,
        "Access denied for user",
        || db.stop(),
        &[PASSWORD, "wrong-pw"],
    );
}
