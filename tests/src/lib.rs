//! Helpers for apm's end-to-end tests: start the real agent binary, start
//! scripted servers, scrape and parse /metrics over real HTTP. Every wait is
//! bounded in time and every loop in count.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

pub mod cgroups;
pub mod databases;
pub mod grpc;
pub mod https;
mod metrics;
mod mysql_client;
mod net;
pub mod process;
pub mod prod;
pub mod prometheus;
mod redis_server;
pub mod seccomp;
pub mod tls;
pub mod traces;
pub use metrics::{Metrics, Sample};
pub use net::{
    Client, NetNs, Server, assert_two_namespaces_apart, close_with_reset, connect_many,
    python_client,
};
pub use redis_server::{
    Redis, cache, client_counts, commandstats, commandstats_delta, pool, server_counts, shop,
    shop_args, wait_for_client_counts,
};

/// Fails the test unless it runs as root: these tests load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests load eBPF programs and must run as root (cargo xtask test)"
    );
}

/// The agent binary: `APM_AGENT_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("APM_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/apm-agent")
        })
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running apm-agent, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Agent {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent with `args` plus a private admin port, a fast
    /// refresh and JSON logs to a file; waits until /health answers.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with(Command::new(agent_bin()), args)
    }

    /// Like [`Agent::start`], but `cmd` is a wrapper (such as setpriv) that
    /// will exec the agent: the agent's path and arguments are appended.
    pub fn start_with(cmd: Command, args: &[&str]) -> Result<Self> {
        Self::start_probed(cmd, args, |addr| {
            get(addr, "/health").ok().map(|r| r.status == 200)
        })
    }

    /// Like [`Agent::start_with`], but up is when `up(admin address)` says
    /// so (an HTTPS probe for a TLS agent).
    pub fn start_probed(
        mut cmd: Command,
        args: &[&str],
        up: impl Fn(SocketAddr) -> Option<bool>,
    ) -> Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::env::temp_dir().join(format!("apm-e2e-agent-{port}.log"));
        let out = std::fs::File::create(&log)?;
        if cmd.get_program() != agent_bin().as_os_str() {
            cmd.arg(agent_bin());
        }
        cmd.args(["--listen", &addr.to_string()])
            .args(["--refresh-interval", "200ms", "--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let mut agent = Self {
            child: Some(child),
            addr,
            log,
        };
        let came_up = wait_for(Duration::from_secs(30), || {
            if agent.exited().is_some() {
                return Some(false);
            }
            up(addr)
        });
        if came_up != Some(true) {
            bail!("agent did not come up: {}", agent.log_text());
        }
        Ok(agent)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, if the agent has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// /stats/requests once the request pipeline has published what it
    /// had processed when this was called (it publishes every 200 ms).
    pub fn stats_requests(&self) -> Result<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(450));
        let r = get(self.addr, "/stats/requests")?;
        ensure!(r.status == 200, "GET /stats/requests: {}", r.status);
        Ok(serde_json::from_str(&r.body)?)
    }

    /// /stats/system: the latest sample of the host and the services.
    pub fn stats_system(&self) -> Result<serde_json::Value> {
        let r = get(self.addr, "/stats/system")?;
        ensure!(r.status == 200, "GET /stats/system: {}", r.status);
        Ok(serde_json::from_str(&r.body)?)
    }

    /// The detail /health/detailed gives for check `name`.
    pub fn check_detail(&self, name: &str) -> Result<String> {
        let r = get(self.addr, "/health/detailed")?;
        let v: serde_json::Value = serde_json::from_str(&r.body)?;
        let check = v["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["name"] == name))
            .ok_or_else(|| anyhow::anyhow!("no check {name} in {}", r.body))?;
        Ok(check["detail"].as_str().unwrap_or_default().to_owned())
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let r = get(self.addr, "/metrics")?;
        ensure!(r.status == 200, "GET /metrics: {}", r.status);
        Ok(Metrics::parse(&r.body))
    }

    /// Polls /metrics until `done` holds, then returns the next scrape.
    /// One scrape is not a snapshot: a family read early in it can lag
    /// one read later by whatever the pipeline recorded in between. The
    /// next scrape starts after everything the satisfying one counted.
    pub fn wait_for_metrics(
        &self,
        within: Duration,
        done: impl Fn(&Metrics) -> bool,
    ) -> Option<Metrics> {
        wait_for(within, || {
            let m = self.metrics().ok()?;
            done(&m).then_some(())
        })?;
        self.metrics().ok()
    }

    /// Waits until the agent has named `port` after `service` (its
    /// connection series exists); panics with the agent's log otherwise.
    pub fn wait_for_service(&self, port: u16, service: &str) {
        let p = port.to_string();
        let named = wait_for(Duration::from_secs(15), || {
            let m = self.metrics().ok()?;
            m.value(
                "apm_tcp_connections_accepted_total",
                &[("server_port", &p), ("service_name", service)],
            )
        });
        assert!(
            named.is_some(),
            "agent never named port {port} {service}: {}",
            self.log_text()
        );
    }

    /// Waits until the agent has found `service`'s process (a configured
    /// name is known before its process is, and only a known process's
    /// connects are followed); panics otherwise.
    pub fn wait_for_process(&self, service: &str) {
        let found = wait_for(Duration::from_secs(20), || {
            let m = self.metrics().ok()?;
            (m.value("apm_service_processes", &[("service_name", service)]) == Some(1.0))
                .then_some(())
        });
        assert!(
            found.is_some(),
            "{service}'s process never found: {}",
            self.log_text()
        );
    }

    /// Waits until the agent has paired `total` requests of `service`, as
    /// both the paired counter and the duration histogram show it (one
    /// scrape is not atomic across families, and the pipeline keeps
    /// running while it is encoded); panics with what it has otherwise.
    pub fn wait_for_paired(&self, service: &str, total: u64, within: Duration) -> Metrics {
        let done = self.wait_for_metrics(within, |m| {
            let paired = m.sum("apm_http_requests_paired_total", service) >= total as f64;
            let timed = m.route_counts(service).values().sum::<u64>() >= total;
            paired && timed
        });
        match done {
            Some(m) => m,
            None => {
                let m = self.metrics().expect("metrics");
                panic!(
                    "{service}: paired {} of {total}:\n{}",
                    m.sum("apm_http_requests_paired_total", service),
                    m.text
                )
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the agent to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.pid().context("agent already reaped")?;
        let pid = i32::try_from(pid)?;
        // SAFETY: kill with a pid we spawned and have not reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        let status = wait_for(timeout, || self.exited()).context("agent ignored SIGTERM")?;
        self.child = None;
        Ok(status)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some()
            && self.terminate(Duration::from_secs(5)).is_err()
            && let Some(mut child) = self.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A binary of this crate that cargo built beside the running test
/// (target/<profile>/, one level above the test binary in deps/).
pub(crate) fn sibling_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary has no target directory")?;
    let bin = dir.join(name);
    ensure!(
        bin.exists(),
        "{} missing: run through cargo test",
        bin.display()
    );
    Ok(bin)
}

/// A child process driven line by line over stdin/stdout, killed when
/// dropped.
pub struct Scripted {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Scripted {
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line, which must start with `prefix` (bounded wait).
    pub fn expect_line(&self, prefix: &str) -> Result<String> {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .with_context(|| format!("child said nothing (waiting for {prefix:?})"))?;
        ensure!(
            line.starts_with(prefix),
            "child said {line:?}, expected {prefix:?}"
        );
        Ok(line)
    }

    /// Sends one command line and waits for the answer starting with `reply`.
    pub fn command(&mut self, line: &str, reply: &str) -> Result<String> {
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        self.expect_line(reply)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scripted `apm-listener` process (see src/bin/apm-listener.rs).
pub struct Listener {
    process: Scripted,
    pub port: u16,
}

impl Listener {
    /// Starts a listener on `port` that accepts `batch` connections per `go`
    /// and closes `close` of each batch.
    pub fn start(port: u16, batch: usize, close: usize) -> Result<Self> {
        let mut cmd = Command::new(sibling_bin("apm-listener")?);
        cmd.args([port.to_string(), batch.to_string(), close.to_string()]);
        let process = Scripted::spawn(cmd)?;
        process.expect_line("listening")?;
        Ok(Self { process, port })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Lets the listener accept (and partly close) one batch; returns once done.
    pub fn go(&mut self) -> Result<()> {
        self.process.command("go", "accepted").map(|_| ())
    }
}

/// A scripted resource-using service (servers/worker.py): a master and
/// `workers` forked children sharing one listener, named `name`.
pub struct Worker {
    pub process: Scripted,
    pub pids: Vec<u32>,
    pub port: u16,
}

impl Worker {
    pub fn start(port: u16, name: &str, workers: usize) -> Result<Self> {
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/servers/worker.py"))
            .args([port.to_string(), name.to_owned(), workers.to_string()]);
        let process = Scripted::spawn(cmd)?;
        let line = process.expect_line("listening")?;
        let pids = line
            .split_whitespace()
            .skip(1)
            .map(|p| p.parse().context("pid"))
            .collect::<Result<Vec<u32>>>()?;
        Ok(Self {
            process,
            pids,
            port,
        })
    }

    pub fn command(&mut self, line: &str) -> Result<()> {
        self.process.command(line, "ok").map(|_| ())
    }
}

/// Resident memory of `pid` in bytes, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib * 1024)
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 GET over a real socket (Connection: close).
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    get_with(addr, path, &[])
}

/// [`get`] with extra request headers.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    get_over(s, addr, path, headers)
}

/// [`get_with`] over a connected stream (such as a TLS session) to `addr`.
pub fn get_over(
    mut s: impl std::io::Read + std::io::Write,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    // The head in one write, as clients send it.
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closed without close_notify, after its response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        ensure!(rest.len() >= size + 2, "short chunk");
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

/// An agent config file whose rule `name` is always firing (host memory
/// used below 200 %), evaluated every 200 ms, with `receivers` (TOML
/// appended as is); for tests that need an active alert.
pub fn always_firing_config(name: &str, receivers: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("apm-e2e-{name}-{}.toml", std::process::id()));
    let text = format!(
        "[alerts]\nevaluation_interval = \"200ms\"\n\n[[alerts.rules]]\nname = \"{name}\"\n\
         signal = \"host_memory_ratio\"\nbelow = 2.0\nwindow = \"5s\"\n\n{receivers}"
    );
    std::fs::write(&path, text).expect("config");
    path
}
