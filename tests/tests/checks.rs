//! `--check postgres://` end to end: a real PostgreSQL (Debian's, started
//! here on loopback with SCRAM passwords) is healthy with its response
//! time, a wrong password shows the server's own error, and stopping the
//! server turns the check degraded within one check interval, with the
//! connection's error. The password never appears anywhere the agent
//! writes.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apm_e2e::{Agent, free_port, get, require_root, wait_for};

const PASSWORD: &str = "pg-Secret-7dQx";

/// A throwaway PostgreSQL cluster on 127.0.0.1:`port`, owned by the
/// `postgres` user (the server refuses to run as root).
struct Postgres {
    child: Option<Child>,
    dir: PathBuf,
}

impl Postgres {
    fn start(port: u16) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL (installed by cargo xtask test)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql");
        let dir = std::env::temp_dir().join(format!("apm-e2e-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(chown.success());
        let data = dir.join("data");
        let initdb = as_postgres(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "apm",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(initdb.success(), "initdb failed");
        let child = as_postgres(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let up = wait_for(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "postgres did not start");
        Self {
            child: Some(child),
            dir,
        }
    }

    /// Fast shutdown (SIGINT), waited for.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with the pid of a child we have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` run as the postgres user (setpriv execs, so the child is the
/// server itself).
fn as_postgres(program: PathBuf) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

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

#[test]
fn postgres_check_runs_a_query_and_turns_degraded_when_the_server_stops() {
    require_root();
    let port = free_port().expect("port");
    let mut pg = Postgres::start(port);
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

    // Healthy, with the query's response time; the wrong password is the
    // server's own refusal.
    let healthy = wait_for(Duration::from_secs(20), || {
        let c = check_of(&agent, &shown)?;
        (c.0 == "healthy").then_some(c)
    })
    .unwrap_or_else(|| panic!("never healthy: {:?}", check_of(&agent, &shown)));
    assert!(healthy.2 > 0.0 && healthy.2 < 5.0, "{healthy:?}");
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value("apm_dependency_up", &[("dependency", &shown)]),
        Some(1.0),
        "{}",
        m.text
    );
    let r = get(agent.addr, "/health/detailed").expect("detailed");
    assert!(
        r.body.contains("password authentication failed"),
        "{}",
        r.body
    );

    // Stopped: degraded within one check interval (plus the check itself).
    pg.stop();
    let stopped = Instant::now();
    let degraded = wait_for(Duration::from_secs(10), || {
        let c = check_of(&agent, &shown)?;
        (c.0 != "healthy").then_some(c)
    })
    .expect("never degraded");
    let after = stopped.elapsed();
    assert!(
        after < Duration::from_millis(1500),
        "degraded after {after:?}"
    );
    assert!(degraded.1.contains("connect"), "{degraded:?}");
    println!("postgres stopped: degraded after {after:?}: {}", degraded.1);

    for text in [
        get(agent.addr, "/health/detailed").expect("detailed").body,
        agent.metrics().expect("metrics").text,
        get(agent.addr, "/logs/recent").expect("logs").body,
        agent.log_text(),
    ] {
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
        assert!(!text.contains("wrong-pw"), "password leaked: {text}");
    }
    std::fs::remove_file(pwfile).ok();
}
