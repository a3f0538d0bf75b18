//! A real redis-server for the tests, and what they read about the
//! monitored client "shop" (this test process) from the agent.

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Agent, Metrics, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// A real redis-server on 127.0.0.1:`port` (or another loopback address;
/// no persistence), killed when dropped.
pub struct Redis(Child);

impl Redis {
    pub fn start(port: u16) -> Self {
        Self::start_with("127.0.0.1", port, &[])
    }

    /// On another loopback address (e.g. 127.0.0.2), same port or not.
    pub fn start_at(addr: &str, port: u16) -> Self {
        Self::start_with(addr, port, &[])
    }

    /// With `requirepass`: PING without the password fails (NOAUTH).
    pub fn with_password(port: u16, password: &str) -> Self {
        Self::start_with("127.0.0.1", port, &["--requirepass", password])
    }

    /// Serving TLS only, on `port`, with the PEM files `cert` and `key`
    /// (clients need no certificate).
    pub fn with_tls(port: u16, cert: &str, key: &str) -> Self {
        let tls_port = port.to_string();
        // The later --port 0 overrides the plaintext port spawn gives.
        Self::start_with(
            "127.0.0.1",
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &tls_port,
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-auth-clients",
                "no",
            ],
        )
    }

    /// A copy of redis-server running under another name (`name`), so
    /// that nothing knows it for Redis by its process name.
    pub fn start_renamed(port: u16, name: &str) -> Self {
        let original = std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("redis-server"))
                    .find(|p| p.is_file())
            })
            .expect("redis-server on PATH (installed by cargo xtask test)");
        let dir = std::env::temp_dir().join(format!("apm-e2e-renamed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let copy = dir.join(name);
        std::fs::copy(&original, &copy).expect("copy of redis-server");
        Self::spawn(Command::new(copy), "127.0.0.1", port, &[])
    }

    fn start_with(addr: &str, port: u16, extra: &[&str]) -> Self {
        Self::spawn(Command::new("redis-server"), addr, port, extra)
    }

    fn spawn(mut cmd: Command, addr: &str, port: u16, extra: &[&str]) -> Self {
        let child = cmd
            .args(["--port", &port.to_string(), "--bind", addr])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by cargo xtask test)");
        let up = wait_for(Duration::from_secs(10), || {
            TcpStream::connect((addr, port)).ok()
        });
        assert!(up.is_some(), "redis-server did not start on {addr}:{port}");
        Self(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `INFO commandstats` of the redis-server on `port` (over TLS with `tls`)
/// as command → calls, with names as the agent labels them
/// (`cmdstat_config|get` → `CONFIG GET`).
pub fn commandstats(port: u16, tls: bool) -> BTreeMap<String, u64> {
    let mut cli = Command::new("redis-cli");
    if tls {
        cli.args(["--tls", "--insecure"]);
    }
    let out = cli
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli (installed by cargo xtask test)");
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

/// What `after` counted past `before` (both from [`commandstats`]), per
/// command that grew.
pub fn commandstats_delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Server-side operations per command of `service`, from the duration
/// histogram.
pub fn server_counts(m: &Metrics, service: &str) -> BTreeMap<String, u64> {
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

/// Client-side operations per command of `service` to the server at
/// 127.0.0.1:`port`, from the duration histogram.
pub fn client_counts(m: &Metrics, service: &str, addr: &str, port: u16) -> BTreeMap<String, u64> {
    let port = port.to_string();
    let mut out = BTreeMap::new();
    for s in m.matching(
        "db_client_operation_duration_seconds_count",
        &[
            ("service_name", service),
            ("db_system_name", "redis"),
            ("server_address", addr),
            ("server_port", &port),
        ],
    ) {
        *out.entry(s.labels["db_operation_name"].clone())
            .or_default() += s.value as u64;
    }
    out
}

/// This test process as the monitored service "shop" (it listens), with
/// the agent's Redis destination arguments `redis`.
pub fn shop(redis: &[&str]) -> (TcpListener, Agent) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let lport = listener.local_addr().expect("addr").port();
    let port = lport.to_string();
    let mut args = shop_args(&port);
    args.extend(redis.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args).expect("agent");
    agent.wait_for_service(lport, "shop");
    agent.wait_for_process("shop");
    (listener, agent)
}

/// The agent's arguments that monitor port `port` as the service "shop".
pub fn shop_args(port: &str) -> Vec<String> {
    ["--port", port, "--service-name", &format!("{port}=shop")]
        .map(str::to_owned)
        .to_vec()
}

/// Waits until shop's client-side counts to `addr:port` are `expected`;
/// panics with what the agent has otherwise.
pub fn wait_for_client_counts(
    agent: &Agent,
    addr: &str,
    port: u16,
    expected: &BTreeMap<String, u64>,
) -> Metrics {
    agent
        .wait_for_metrics(WAIT, |m| client_counts(m, "shop", addr, port) == *expected)
        .unwrap_or_else(|| {
            let m = agent.metrics().expect("metrics");
            panic!(
                "agent {:?}\nclient {expected:?}\n{}",
                client_counts(&m, "shop", addr, port),
                m.text
            )
        })
}

/// shop's active outbound connections to `addr:port`.
pub fn pool(agent: &Agent, addr: &str, port: u16) -> Option<f64> {
    agent.metrics().ok()?.value(
        "apm_outbound_connections_active",
        &[
            ("service_name", "shop"),
            ("server_address", addr),
            ("server_port", &port.to_string()),
        ],
    )
}

pub fn cache(m: &Metrics, service: &str, op: &str, result: &str) -> f64 {
    m.value(
        "apm_cache_operations_total",
        &[
            ("service_name", service),
            ("operation", op),
            ("result", result),
        ],
    )
    .unwrap_or(0.0)
}
