//! `--check postgres://` and `--check mysql://` end to end: a real
//! PostgreSQL (Debian's, with SCRAM passwords) and a real MariaDB
//! (Debian's, speaking the MySQL protocol), each started here on loopback,
//! are healthy with their response times, a wrong password shows the
//! server's own error, and stopping the server turns the check degraded
//! within one check interval, with the connection's error. The password
//! never appears anywhere the agent writes.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apm_e2e::{Agent, free_port, get, require_root, wait_for};

const PASSWORD: &str = "pg-Secret-7dQx";

/// A database server started here: listening on 127.0.0.1:`port`, stopped
/// with `signal` (its fast, clean shutdown), its directory removed after.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    signal: i32,
}

impl Server {
    /// Spawns `cmd` and waits for the port to accept connections.
    fn spawn(mut cmd: Command, port: u16, dir: PathBuf, signal: i32) -> Self {
        let name = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let up = wait_for(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "{name} did not start");
        Self {
            child: Some(child),
            dir,
            signal,
        }
    }

    /// Shuts the server down and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with the pid of a child we have not reaped.
            unsafe { libc::kill(child.id() as i32, self.signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway PostgreSQL cluster on 127.0.0.1:`port`, owned by the
/// `postgres` user (the server refuses to run as root).
fn start_postgres(port: u16) -> Server {
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
    let mut cmd = as_postgres(bin.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
    // Fast shutdown.
    Server::spawn(cmd, port, dir, libc::SIGINT)
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
    let mut pg = start_postgres(port);
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

/// A throwaway MariaDB on 127.0.0.1:`port`, with a user `apm` identified
/// by [`PASSWORD`] and a database `shop`. It runs as root (`--user=root`),
/// so the test needs no `mysql` account, which only the full
/// mariadb-server package creates.
fn start_mariadb(port: u16) -> Server {
    let dir = std::env::temp_dir().join(format!("apm-e2e-mariadb-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        format!(
            "CREATE USER IF NOT EXISTS 'apm'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n\
             CREATE DATABASE IF NOT EXISTS shop;\n\
             GRANT ALL ON shop.* TO 'apm'@'127.0.0.1';\n"
        ),
    )
    .expect("init.sql");
    let data = dir.join("data");
    let install = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--user=root",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mariadb-install-db (installed by cargo xtask test)");
    assert!(install.success(), "mariadb-install-db failed");
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--init-file={}", init.display()))
        .args([
            "--user=root",
            &format!("--port={port}"),
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
        ]);
    // Normal shutdown.
    Server::spawn(cmd, port, dir, libc::SIGTERM)
}

#[test]
fn mysql_check_runs_a_query_and_turns_degraded_when_the_server_stops() {
    require_root();
    let port = free_port().expect("port");
    let mut db = start_mariadb(port);
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
