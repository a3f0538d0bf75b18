//! Production-like traffic for the end-to-end tests: a network namespace
//! whose loopback behaves like an Ethernet link (MTU 1500, one MSS per
//! packet, optionally losing packets), real nginx and a FastAPI app under
//! uvicorn inside it, an HTTP/1.1 client that keeps its own ground truth,
//! and the agent's numbers compared with that truth.
//!
//! Ground truth is what the client sent and read back, per (server port,
//! method, route template, status); it is itself checked against the
//! servers' access logs, so a mistake of the harness fails as one.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{Agent, NetNs, get, wait_for};

/// Packets larger than this never leave a socket in a [`LinkNs`].
pub const MTU: u64 = 1500;

/// The nftables table a [`LinkNs`] counts (and drops) packets with.
const TABLE: &str = "apm_prod";

/// Runs `cmd` and fails with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with `input` on its stdin and fails unless it succeeds.
fn run_with_input(cmd: &mut Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} with {input:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A network namespace whose loopback carries traffic the way an Ethernet
/// link does: MTU 1500, segmentation offloads off and at most one segment
/// per packet (`gso_max_segs 1`: TCP always builds GSO packets, which a
/// loopback without offloads would only split after the packet programs
/// saw them), so a request or response of more than 1448 bytes spans
/// several packets in both directions. An nftables table counts the
/// servers' packets and any packet over 1500 bytes, and with
/// `loss_percent` > 0 drops that share of the servers' packets at random
/// in each direction on the input hook: after the sender's stack (and,
/// for the server's segments, after the agent's egress program) saw
/// them, so each drop is a real loss the sender recovers from by
/// retransmitting. The server's ingress capture sees the hole and the
/// late retransmission; its egress capture sees the retransmission again.
pub struct LinkNs {
    pub ns: NetNs,
    pub ports: Vec<u16>,
    pub loss_percent: u32,
}

/// The packet counters of a [`LinkNs`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets over [`MTU`] bytes sent by anyone in the namespace.
    pub oversize: u64,
    /// Packets the servers sent.
    pub server_out: u64,
    /// Packets the clients sent to the servers.
    pub client_out: u64,
    /// Client-to-server packets dropped before the server saw them.
    pub lost_to_server: u64,
    /// Server-to-client packets dropped before the client saw them.
    pub lost_to_client: u64,
    /// TCP segments retransmitted in the namespace (/proc/net/snmp).
    pub retransmitted: u64,
}

impl LinkNs {
    /// The namespace with its link and nftables table set up for the
    /// servers' `ports`; fails (naming what) if any setting did not take.
    pub fn create(tag: &str, ports: &[u16], loss_percent: u32) -> Result<Self> {
        let ns = NetNs::create(tag);
        let name = ns.name().to_owned();
        run_ok(Command::new("ip").args([
            "-n",
            &name,
            "link",
            "set",
            "lo",
            "mtu",
            "1500",
            "gso_max_segs",
            "1",
        ]))?;
        run_ok(
            ns.command("ethtool")
                .args(["-K", "lo", "tso", "off", "gso", "off", "gro", "off"]),
        )?;
        let link = run_ok(Command::new("ip").args(["-n", &name, "-d", "link", "show", "lo"]))?;
        ensure!(
            link.contains("mtu 1500") && link.contains("gso_max_segs 1 "),
            "lo of {name} is not MTU 1500 with one segment per packet: {link}"
        );
        let features = run_ok(ns.command("ethtool").args(["-k", "lo"]))?;
        for feature in [
            "tcp-segmentation-offload: off",
            "generic-segmentation-offload: off",
            "generic-receive-offload: off",
        ] {
            ensure!(features.contains(feature), "lo of {name}: {features}");
        }
        let set = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut rules = format!(
            "table inet {TABLE} {{\n\
             \x20 chain output {{\n\
             \x20   type filter hook output priority 0; policy accept;\n\
             \x20   meta length > {MTU} counter comment \"oversize\"\n\
             \x20   tcp sport {{ {set} }} counter comment \"server_out\"\n\
             \x20   tcp dport {{ {set} }} counter comment \"client_out\"\n\
             \x20 }}\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority 0; policy accept;\n"
        );
        if loss_percent > 0 {
            rules.push_str(&format!(
                "\x20   tcp dport {{ {set} }} numgen random mod 100 < {loss_percent} counter drop comment \"lost_to_server\"\n\
                 \x20   tcp sport {{ {set} }} numgen random mod 100 < {loss_percent} counter drop comment \"lost_to_client\"\n"
            ));
        }
        rules.push_str("  }\n}\n");
        run_with_input(ns.command("nft").args(["-f", "-"]), &rules)?;
        Ok(Self {
            ns,
            ports: ports.to_vec(),
            loss_percent,
        })
    }

    /// The counters now.
    pub fn counters(&self) -> Result<LinkCounters> {
        let json = run_ok(
            self.ns
                .command("nft")
                .args(["-j", "list", "table", "inet", TABLE]),
        )?;
        let v: serde_json::Value = serde_json::from_str(&json).context("nft -j")?;
        let mut c = LinkCounters::default();
        for item in v["nftables"].as_array().context("nftables")? {
            let rule = &item["rule"];
            let Some(comment) = rule["comment"].as_str() else {
                continue;
            };
            let packets = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|e| e["counter"]["packets"].as_u64())
                .with_context(|| format!("counter of {comment}"))?;
            match comment {
                "oversize" => c.oversize = packets,
                "server_out" => c.server_out = packets,
                "client_out" => c.client_out = packets,
                "lost_to_server" => c.lost_to_server = packets,
                "lost_to_client" => c.lost_to_client = packets,
                _ => {}
            }
        }
        let snmp = run_ok(self.ns.command("cat").arg("/proc/net/snmp"))?;
        let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
        ensure!(tcp.len() == 2, "no Tcp lines in /proc/net/snmp: {snmp}");
        let names = tcp[0].split_whitespace();
        let values = tcp[1].split_whitespace();
        c.retransmitted = names
            .zip(values)
            .find(|(n, _)| *n == "RetransSegs")
            .and_then(|(_, v)| v.parse().ok())
            .context("RetransSegs")?;
        Ok(c)
    }

    /// Fails unless every packet stayed within the MTU and the servers
    /// sent and received at least `packets` packets each way.
    pub fn check_link(&self, packets: u64) -> Result<LinkCounters> {
        let c = self.counters()?;
        ensure!(
            c.oversize == 0,
            "{} packets over {MTU} bytes: the link is not Ethernet-like ({c:?})",
            c.oversize
        );
        ensure!(
            c.server_out >= packets && c.client_out >= packets,
            "fewer than {packets} packets each way: {c:?}"
        );
        Ok(c)
    }

    /// Fails unless the link really lost packets both ways and TCP
    /// retransmitted them.
    pub fn check_loss(&self) -> Result<LinkCounters> {
        let c = self.counters()?;
        ensure!(
            c.lost_to_server > 0 && c.lost_to_client > 0 && c.retransmitted > 0,
            "the lossy link lost nothing: {c:?}"
        );
        Ok(c)
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port` inside
/// `ns`, or `child` exits, or 30 s pass.
fn wait_listening(ns: &NetNs, port: u16, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "exited ({status}) before listening on {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let up = ns.run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(500),
            )
            .is_ok()
        });
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "not listening on {port} after 30 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `signal` to `child`, waits up to 5 s for it, then kills it.
fn stop(child: &mut Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(pid, signal) };
    }
    let gone = wait_for(Duration::from_secs(5), || {
        child.try_wait().ok().flatten().map(|_| ())
    });
    if gone.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A scratch directory of this test process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str, port: u16) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("apm-e2e-{what}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The static files nginx serves: path and size in bytes.
pub const STATIC_FILES: &[(&str, usize)] = &[
    ("/small.txt", 64),
    ("/index.html", 700),
    ("/static/app.js", 3000),
    ("/favicon.ico", 1150),
    ("/media/intro.mp4", 4 * 1024 * 1024),
];

/// The size of the static file at `path`, if nginx serves one there.
pub fn static_size(path: &str) -> Option<usize> {
    STATIC_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, n)| *n)
}

/// Deterministic bytes of a static file: printable text that never holds
/// a line break pair or anything that reads like HTTP.
fn static_content(size: usize) -> Vec<u8> {
    let mut rng = Rng(size as u64 + 1);
    (0..size)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (rng.next_u64() % 26) as u8
            }
        })
        .collect()
}

/// nginx (one worker) on 127.0.0.1:`port` inside a namespace, with its own
/// prefix, configuration (servers/nginx.conf.in) and [`STATIC_FILES`];
/// stopped when dropped.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: Scratch,
}

impl Nginx {
    pub fn start(ns: &NetNs, port: u16) -> Result<Self> {
        let dir = Scratch::new("nginx", port)?;
        let root = dir.0.join("root");
        for (path, size) in STATIC_FILES {
            let file = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().context("parent")?)?;
            std::fs::write(&file, static_content(*size))?;
        }
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/servers/nginx.conf.in"
        ))?;
        let conf = template
            .replace("@PREFIX@", dir.0.to_str().context("non-UTF-8 temp dir")?)
            .replace("@ROOT@", root.to_str().context("non-UTF-8 temp dir")?)
            .replace("@PORT@", &port.to_string());
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = dir.0.join("error.log");
        let out = std::fs::File::create(dir.0.join("stderr.log"))?;
        let mut child = ns
            .command("/usr/sbin/nginx")
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(&log)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning nginx")?;
        if let Err(e) = wait_listening(ns, port, &mut child, &log) {
            stop(&mut child, libc::SIGTERM);
            return Err(e.context("nginx"));
        }
        Ok(Self { child, port, dir })
    }

    /// (method, path without query, status) → requests, from nginx's
    /// access log.
    pub fn log_counts(&self) -> Result<BTreeMap<(String, String, u16), u64>> {
        let text = std::fs::read_to_string(self.dir.0.join("access.log"))?;
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.split(' ');
            let (Some(method), Some(uri), Some(status)) =
                (words.next(), words.next(), words.next())
            else {
                bail!("access log line {line:?}");
            };
            let path = uri.split('?').next().unwrap_or(uri);
            *counts
                .entry((method.to_owned(), path.to_owned(), status.parse()?))
                .or_default() += 1;
        }
        Ok(counts)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker before it exits.
        stop(&mut self.child, libc::SIGTERM);
    }
}

/// The virtualenv bin directory holding uvicorn and FastAPI:
/// `APM_PY_APP` (set by `cargo xtask test`), else target/pyapp/bin.
pub fn py_app_bin() -> PathBuf {
    std::env::var_os("APM_PY_APP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyapp/bin"))
}

/// The FastAPI application (servers/app.py) under uvicorn, one worker,
/// h11, on 127.0.0.1:`port` inside a namespace; killed when dropped.
pub struct App {
    child: Child,
    pub port: u16,
    dir: Scratch,
}

/// What servers/app.py does, for the client's checks.
pub mod app {
    /// GET /users/{id} sleeps this long.
    pub const SLEEP: std::time::Duration = std::time::Duration::from_millis(20);
    /// Rows of GET /reports/export, after its header row.
    pub const ROWS: usize = 20;
    /// The pause before each row.
    pub const ROW_SLEEP: std::time::Duration = std::time::Duration::from_millis(5);
    /// The body of GET /download.
    pub const DOWNLOAD_BYTES: usize = 3 * 1024 * 1024;
}

impl App {
    pub fn start(ns: &NetNs, port: u16) -> Result<Self> {
        let bin = py_app_bin().join("uvicorn");
        ensure!(
            bin.is_file(),
            "{} missing: run through `cargo xtask test`, or set APM_PY_APP to a virtualenv's bin \
             directory with fastapi and uvicorn",
            bin.display()
        );
        let dir = Scratch::new("uvicorn", port)?;
        let log = dir.0.join("uvicorn.log");
        let out = std::fs::File::create(&log)?;
        let mut child = ns
            .command(bin.to_str().context("non-UTF-8 path")?)
            .args(["--app-dir", concat!(env!("CARGO_MANIFEST_DIR"), "/servers")])
            .arg("app:app")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1", "--http", "h11", "--loop", "asyncio"])
            .args(["--timeout-keep-alive", "60", "--log-level", "info"])
            // No __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning uvicorn")?;
        if let Err(e) = wait_listening(ns, port, &mut child, &log) {
            stop(&mut child, libc::SIGKILL);
            return Err(e.context("uvicorn"));
        }
        Ok(Self { child, port, dir })
    }

    /// (method, path without query, status) → requests, from uvicorn's
    /// access log (`127.0.0.1:PORT - "GET /path HTTP/1.1" 200 OK`).
    pub fn log_counts(&self) -> Result<BTreeMap<(String, String, u16), u64>> {
        let text = std::fs::read_to_string(self.dir.0.join("uvicorn.log"))?;
        let mut counts = BTreeMap::new();
        for line in text.lines().filter(|l| l.contains(" HTTP/1.1\" ")) {
            let mut quoted = line.split('"');
            let (Some(_), Some(request), Some(after)) =
                (quoted.next(), quoted.next(), quoted.next())
            else {
                bail!("access log line {line:?}");
            };
            let mut words = request.split(' ');
            let (Some(method), Some(target)) = (words.next(), words.next()) else {
                bail!("access log line {line:?}");
            };
            let status = after.split_whitespace().next().context("status")?.parse()?;
            let path = target.split('?').next().unwrap_or(target);
            *counts
                .entry((method.to_owned(), path.to_owned(), status))
                .or_default() += 1;
        }
        Ok(counts)
    }
}

impl App {
    /// Seconds each request took as the server timed it (servers/app.py's
    /// `apm-timing` lines): (method, path, status, seconds).
    pub fn timings(&self) -> Result<Vec<(String, String, u16, f64)>> {
        let text = std::fs::read_to_string(self.dir.0.join("uvicorn.log"))?;
        text.lines()
            .filter_map(|l| l.strip_prefix("apm-timing "))
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                ensure!(w.len() == 4, "timing line {l:?}");
                Ok((
                    w[0].to_owned(),
                    w[1].to_owned(),
                    w[2].parse()?,
                    w[3].parse::<f64>()? / 1e3,
                ))
            })
            .collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGKILL);
    }
}

/// xorshift64: deterministic filler for cookies, tokens and bodies.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `n` characters of the base64url alphabet.
    pub fn token(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..n)
            .map(|_| ALPHABET[(self.next_u64() % 64) as usize] as char)
            .collect()
    }
}

/// A browser's Cookie value of about `len` bytes: an analytics id, a
/// session and a preferences blob.
pub fn cookie(rng: &mut Rng, len: usize) -> String {
    let mut c = format!(
        "_ga=GA1.2.{}.{}; session={}",
        rng.next_u64() % 1_000_000_000,
        1_700_000_000 + rng.next_u64() % 100_000_000,
        rng.token(43)
    );
    let rest = len.saturating_sub(c.len() + 8);
    c.push_str("; prefs=");
    c.push_str(&rng.token(rest));
    c
}

/// An `Authorization` value: a JWT-like bearer token of about `len` bytes.
pub fn bearer(rng: &mut Rng, len: usize) -> String {
    let header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
    let payload = rng.token(len.saturating_sub(header.len() + 43 + 9).max(16));
    format!("Bearer {header}.{payload}.{}", rng.token(43))
}

/// The headers a browser sends besides its cookie.
pub fn browser_headers() -> Vec<(String, String)> {
    [
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36",
        ),
        (
            "Accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        ("Accept-Language", "en-GB,en;q=0.9,de;q=0.8"),
        ("Accept-Encoding", "identity"),
        ("Referer", "http://127.0.0.1/index.html"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// How a request's bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
    /// Head and body in one write.
    Whole,
    /// The head, then the body in a second write (as most HTTP client
    /// libraries do).
    HeadThenBody,
    /// The head with `Expect: 100-continue`, the body once the server
    /// said 100 Continue (or after 1 s), as curl does for large bodies.
    ExpectContinue,
}

/// One request and the route template the agent should file it under.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    /// The raw target, query string included.
    pub path: String,
    pub route: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub sending: Sending,
}

impl Request {
    pub fn get(path: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            route: route.into(),
            headers: Vec::new(),
            body: Vec::new(),
            sending: Sending::Whole,
        }
    }

    /// A HEAD request (a bodyless response that declares a length).
    pub fn head_request(path: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            method: "HEAD",
            ..Self::get(path, route)
        }
    }

    pub fn post_json(
        path: impl Into<String>,
        route: impl Into<String>,
        body: Vec<u8>,
        sending: Sending,
    ) -> Self {
        Self::post(path, route, body, "application/json", sending)
    }

    pub fn post(
        path: impl Into<String>,
        route: impl Into<String>,
        body: Vec<u8>,
        content_type: &str,
        sending: Sending,
    ) -> Self {
        Self {
            method: "POST",
            body,
            sending,
            ..Self::get(path, route)
        }
        .with("Content-Type", content_type)
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn with_all(mut self, headers: &[(String, String)]) -> Self {
        self.headers.extend_from_slice(headers);
        self
    }

    /// The path without its query string.
    pub fn raw_path(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }

    fn head(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if self.method == "POST" || !self.body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if self.sending == Sending::ExpectContinue {
            head.push_str("Expect: 100-continue\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.head();
        b.extend_from_slice(&self.body);
        b
    }
}

/// (server port, method, route template or raw path, status).
pub type Key = (u16, String, String, u16);

/// What the clients sent and got back.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    /// Requests per (port, method, route template, status).
    pub counts: BTreeMap<Key, u64>,
    /// Requests per (port, method, raw path without query, status), for
    /// the servers' access logs.
    pub raw: BTreeMap<Key, u64>,
    /// Seconds from the request's first write to its response's last
    /// byte, per (port, method, route), for requests sent one at a time.
    pub durations: BTreeMap<(u16, String, String), Vec<f64>>,
    /// The route template of each raw path, per port.
    pub routes: BTreeMap<(u16, String), String>,
}

impl Truth {
    fn record(&mut self, port: u16, req: &Request, status: u16, elapsed: Option<Duration>) {
        let method = req.method.to_owned();
        *self
            .counts
            .entry((port, method.clone(), req.route.clone(), status))
            .or_default() += 1;
        *self
            .raw
            .entry((port, method.clone(), req.raw_path().to_owned(), status))
            .or_default() += 1;
        self.routes
            .insert((port, req.raw_path().to_owned()), req.route.clone());
        if let Some(elapsed) = elapsed {
            self.durations
                .entry((port, method, req.route.clone()))
                .or_default()
                .push(elapsed.as_secs_f64());
        }
    }

    pub fn merge(&mut self, other: Self) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        for (k, v) in other.raw {
            *self.raw.entry(k).or_default() += v;
        }
        for (k, mut v) in other.durations {
            self.durations.entry(k).or_default().append(&mut v);
        }
        self.routes.extend(other.routes);
    }

    /// Requests to `port`.
    pub fn total(&self, port: u16) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|(_, v)| v)
            .sum()
    }

    /// The median duration of `method` `route` on `port` as the client
    /// measured it.
    pub fn median(&self, port: u16, method: &str, route: &str) -> Option<f64> {
        median(
            self.durations
                .get(&(port, method.to_owned(), route.to_owned()))?
                .clone(),
        )
    }

    /// Fails unless the client's counts equal the server's access log
    /// (`log`: (method, raw path, status) → count) for `port`: the ground
    /// truth is right.
    pub fn check_server_log(
        &self,
        port: u16,
        server: &str,
        log: &BTreeMap<(String, String, u16), u64>,
    ) -> Result<()> {
        let mine: BTreeMap<(String, String, u16), u64> = self
            .raw
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|((_, m, p, s), v)| ((m.clone(), p.clone(), *s), *v))
            .collect();
        ensure!(
            &mine == log,
            "harness error: the client's counts for {server} differ from its access log\n\
             client: {mine:?}\n{server}: {log:?}"
        );
        Ok(())
    }
}

/// A response as the client read it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body_len: usize,
    /// The first [`BODY_KEPT`] bytes of the body.
    pub body: Vec<u8>,
}

/// Body bytes a [`Reply`] keeps.
pub const BODY_KEPT: usize = 64 * 1024;

/// A blocking HTTP/1.1 keep-alive connection that reads every response to
/// its end (Content-Length, chunked, or close) and records each exchange
/// in a [`Truth`]. Every read and write times out after 20 s.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pub port: u16,
}

const IO_TIMEOUT: Duration = Duration::from_secs(20);

impl Conn {
    /// Connects to 127.0.0.1:`port` of the calling thread's namespace.
    pub fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )
        .with_context(|| format!("connecting to {port}"))?;
        Self::from_stream(stream, port)
    }

    /// Like [`Conn::open`], with a receive buffer of `rcvbuf` bytes set
    /// before connecting (so the window it advertises stays small: a slow
    /// reader, whose responses queue up at the server).
    pub fn open_slow_reader(port: u16, rcvbuf: u32) -> Result<Self> {
        // SAFETY: plain socket calls on a descriptor this function owns;
        // it is handed to TcpStream (which closes it) before returning.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let size = libc::c_int::try_from(rcvbuf)?;
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            ensure!(rc == 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                },
                sin_zero: [0; 8],
            };
            let rc = libc::connect(
                fd,
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            ensure!(rc == 0, "connect: {}", std::io::Error::last_os_error());
            stream
        };
        Self::from_stream(stream, port)
    }

    fn from_stream(stream: TcpStream, port: u16) -> Result<Self> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            port,
        })
    }

    /// One request, its response read to the end; recorded in `truth`
    /// with its duration.
    pub fn send(&mut self, req: &Request, truth: &mut Truth) -> Result<Reply> {
        let start = Instant::now();
        match req.sending {
            Sending::Whole => self.stream.write_all(&req.bytes())?,
            Sending::HeadThenBody => {
                self.stream.write_all(&req.head())?;
                self.stream.write_all(&req.body)?;
            }
            Sending::ExpectContinue => {
                self.stream.write_all(&req.head())?;
                self.await_continue()?;
                self.stream.write_all(&req.body)?;
            }
        }
        let reply = self
            .read_response(req.method)
            .with_context(|| format!("{} {} on {}", req.method, req.path, self.port))?;
        truth.record(self.port, req, reply.status, Some(start.elapsed()));
        Ok(reply)
    }

    /// `reqs` written at once, then (after `pause`) their responses read
    /// in order; recorded in `truth` without durations.
    pub fn pipeline(
        &mut self,
        reqs: &[Request],
        pause: Duration,
        truth: &mut Truth,
    ) -> Result<Vec<Reply>> {
        ensure!(
            reqs.iter().all(|r| r.sending == Sending::Whole),
            "a pipelined request must be written whole"
        );
        let batch: Vec<u8> = reqs.iter().flat_map(Request::bytes).collect();
        self.stream.write_all(&batch)?;
        std::thread::sleep(pause);
        let mut replies = Vec::with_capacity(reqs.len());
        for req in reqs {
            let reply = self
                .read_response(req.method)
                .with_context(|| format!("pipelined {} {}", req.method, req.path))?;
            truth.record(self.port, req, reply.status, None);
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Waits up to 1 s for `100 Continue` and consumes it.
    fn await_continue(&mut self) -> Result<()> {
        self.stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let result = self.head_end();
        self.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        match result {
            Ok(end) => {
                let status = status_of(&self.buf[..end])?;
                ensure!(status == 100, "expected 100 Continue, got {status}");
                self.buf.drain(..end);
                Ok(())
            }
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The end of the next head in the buffer, reading as needed.
    fn head_end(&mut self) -> Result<usize> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                return Ok(pos + 4);
            }
            ensure!(self.buf.len() < 64 * 1024, "response head over 64 KiB");
            self.fill()?;
        }
    }

    fn read_response(&mut self, method: &str) -> Result<Reply> {
        let (status, head) = loop {
            let end = self.head_end()?;
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end);
            let status = status_of(head.as_bytes())?;
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            break (status, head);
        };
        let header = |name: &str| {
            head.split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
        };
        let mut reply = Reply {
            status,
            body_len: 0,
            body: Vec::new(),
        };
        if method == "HEAD" || status == 204 || status == 304 {
            return Ok(reply);
        }
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line = self.line()?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .with_context(|| format!("chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line()?.is_empty() {}
                    return Ok(reply);
                }
                self.body(size, &mut reply)?;
                ensure!(self.line()?.is_empty(), "chunk without CRLF");
            }
        }
        if let Some(length) = header("content-length") {
            let length: usize = length.parse().context("Content-Length")?;
            self.body(length, &mut reply)?;
            return Ok(reply);
        }
        // Delimited by the close.
        loop {
            let take = self.buf.len();
            self.keep(take, &mut reply);
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(reply);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Consumes `n` body bytes into `reply`.
    fn body(&mut self, mut n: usize, reply: &mut Reply) -> Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill()?;
            }
            let take = n.min(self.buf.len());
            self.keep(take, reply);
            n -= take;
        }
        Ok(())
    }

    fn keep(&mut self, take: usize, reply: &mut Reply) {
        let room = BODY_KEPT.saturating_sub(reply.body.len()).min(take);
        reply.body.extend_from_slice(&self.buf[..room]);
        reply.body_len += take;
        self.buf.drain(..take);
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self) -> Result<String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            ensure!(self.buf.len() < 4096, "line over 4 KiB");
            self.fill()?;
        }
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        ensure!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn status_of(head: &[u8]) -> Result<u16> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(head);
    std::str::from_utf8(line)?
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {:?}", String::from_utf8_lossy(line)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Fails unless the agent times HTTP from packets: eBPF up and both
/// cgroup_skb programs attached (a procfs-only agent would fail every
/// later check for a reason that has nothing to do with streams).
pub fn check_packet_capture(agent: &Agent) -> Result<()> {
    let attached = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics().ok()?;
        let up = m.value("apm_ebpf_up", &[]) == Some(1.0);
        let probes = ["cgroup_skb:ingress", "cgroup_skb:egress"]
            .iter()
            .all(|p| m.value("apm_ebpf_probe_attached", &[("probe", p)]) == Some(1.0));
        (up && probes).then_some(())
    });
    ensure!(
        attached.is_some(),
        "the agent does not capture packets: {}",
        agent.log_text()
    );
    Ok(())
}

/// The agent's view of one service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceView {
    pub seen: u64,
    pub paired: u64,
    pub unpaired: BTreeMap<String, u64>,
    /// Where the agent lost a stream's framing, by reason
    /// (`apm_http_stream_resyncs_total`; reported, not asserted).
    pub resyncs: BTreeMap<String, u64>,
    pub in_flight: u64,
    /// Median latency in seconds per (method, route), from /stats/requests.
    pub p50: BTreeMap<(String, String), f64>,
}

impl ServiceView {
    pub fn unpaired_total(&self) -> u64 {
        self.unpaired.values().sum()
    }
}

/// What the agent reports for the test's servers.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Duration-histogram counts per (port, method, route, status).
    pub counts: BTreeMap<Key, u64>,
    /// By service name.
    pub services: BTreeMap<String, ServiceView>,
    /// Ring-buffer records the kernel could not deliver.
    pub ringbuf_full: u64,
    pub metrics_text: String,
}

impl Observed {
    /// The agent's numbers now for `services` (name, port).
    pub fn scrape(agent: &Agent, services: &[(&str, u16)]) -> Result<Self> {
        let m = agent.metrics()?;
        let stats = get(agent.addr, "/stats/requests")?;
        ensure!(stats.status == 200, "/stats/requests: {}", stats.status);
        let stats: serde_json::Value = serde_json::from_str(&stats.body)?;
        let mut o = Self {
            ringbuf_full: m
                .value("apm_ebpf_drops_total", &[("reason", "ringbuf_full")])
                .unwrap_or(0.0) as u64,
            metrics_text: m.text.clone(),
            ..Self::default()
        };
        for &(service, port) in services {
            let p = port.to_string();
            for s in m.matching(
                "http_server_request_duration_seconds_count",
                &[("service_name", service), ("server_port", &p)],
            ) {
                let key = (
                    port,
                    s.labels["http_request_method"].clone(),
                    s.labels["http_route"].clone(),
                    s.labels["http_response_status_code"].parse()?,
                );
                *o.counts.entry(key).or_default() += s.value as u64;
            }
            let mut view = ServiceView {
                seen: m.sum("apm_http_requests_seen_total", service) as u64,
                paired: m.sum("apm_http_requests_paired_total", service) as u64,
                ..ServiceView::default()
            };
            for s in m.matching(
                "apm_http_requests_unpaired_total",
                &[("service_name", service)],
            ) {
                if s.value > 0.0 {
                    view.unpaired
                        .insert(s.labels["reason"].clone(), s.value as u64);
                }
            }
            for s in m.matching(
                "apm_http_stream_resyncs_total",
                &[("service_name", service)],
            ) {
                if s.value > 0.0 {
                    view.resyncs
                        .insert(s.labels["reason"].clone(), s.value as u64);
                }
            }
            let summary = &stats["services"][service];
            view.in_flight = summary["in_flight"].as_u64().unwrap_or(0);
            for r in summary["routes"].as_array().into_iter().flatten() {
                if let (Some(method), Some(route), Some(p50)) = (
                    r["method"].as_str(),
                    r["route"].as_str(),
                    r["p50_seconds"].as_f64(),
                ) {
                    view.p50.insert((method.to_owned(), route.to_owned()), p50);
                }
            }
            o.services.insert(service.to_owned(), view);
        }
        Ok(o)
    }

    /// The numbers that settle once the agent has processed everything.
    fn settled_part(&self) -> (BTreeMap<Key, u64>, Vec<[u64; 4]>) {
        (
            self.counts.clone(),
            self.services
                .values()
                .map(|s| [s.seen, s.paired, s.unpaired_total(), s.in_flight])
                .collect(),
        )
    }

    /// Scrapes until the agent's counts equal `truth` with nothing in
    /// flight, or until its numbers stopped changing for 3 s (it will not
    /// get there), or 60 s pass.
    pub fn settle(agent: &Agent, services: &[(&str, u16)], truth: &Truth) -> Result<Self> {
        let want: BTreeMap<Key, u64> = truth
            .counts
            .iter()
            .filter(|(k, _)| services.iter().any(|(_, p)| *p == k.0))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Self::scrape(agent, services)?;
        let mut stable_since = Instant::now();
        loop {
            let done = last.counts == want && last.services.values().all(|s| s.in_flight == 0);
            if done
                || stable_since.elapsed() >= Duration::from_secs(3)
                || Instant::now() >= deadline
            {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(250));
            let now = Self::scrape(agent, services)?;
            if now.settled_part() != last.settled_part() {
                stable_since = Instant::now();
            }
            last = now;
        }
    }
}

/// A side-by-side table of the client's and the agent's counts, with
/// each service's request accounting.
pub fn report(truth: &Truth, obs: &Observed, services: &[(&str, u16)]) -> String {
    let mut out = String::from("port  method  route  status: client agent\n");
    let keys: BTreeSet<&Key> = truth.counts.keys().chain(obs.counts.keys()).collect();
    for k in keys {
        if !services.iter().any(|(_, p)| *p == k.0) {
            continue;
        }
        let c = truth.counts.get(k).copied().unwrap_or(0);
        let a = obs.counts.get(k).copied().unwrap_or(0);
        let mark = if c == a { "" } else { "   <-- differs" };
        out.push_str(&format!("{} {} {} {}: {c} {a}{mark}\n", k.0, k.1, k.2, k.3));
    }
    for &(service, port) in services {
        let v = obs.services.get(service).cloned().unwrap_or_default();
        out.push_str(&format!(
            "{service} (port {port}): client sent {}, agent seen {}, paired {}, unpaired {:?}, in flight {}, resyncs {:?}\n",
            truth.total(port),
            v.seen,
            v.paired,
            v.unpaired,
            v.in_flight,
            v.resyncs
        ));
    }
    out.push_str(&format!("ring buffer records lost: {}\n", obs.ringbuf_full));
    out
}

/// Everything that must hold when the agent is exact: per key counts
/// equal, every request seen and paired, nothing unpaired or in flight,
/// no ring-buffer loss. Returns the failures, one line each.
pub fn exactness_failures(truth: &Truth, obs: &Observed, services: &[(&str, u16)]) -> Vec<String> {
    let mut failures = Vec::new();
    if obs.ringbuf_full > 0 {
        failures.push(format!(
            "the ring buffer lost {} records (the agent fell behind)",
            obs.ringbuf_full
        ));
    }
    for &(service, port) in services {
        let want: BTreeMap<&Key, u64> = truth
            .counts
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|(k, v)| (k, *v))
            .collect();
        let got: BTreeMap<&Key, u64> = obs
            .counts
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|(k, v)| (k, *v))
            .collect();
        for k in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
            let (c, a) = (
                want.get(k).copied().unwrap_or(0),
                got.get(k).copied().unwrap_or(0),
            );
            if c != a {
                failures.push(format!(
                    "{service}: {} {} {}: client {c}, agent {a}",
                    k.1, k.2, k.3
                ));
            }
        }
        let v = obs.services.get(service).cloned().unwrap_or_default();
        let sent = truth.total(port);
        if v.seen != sent {
            failures.push(format!(
                "{service}: agent saw {} requests, client sent {sent}",
                v.seen
            ));
        }
        if v.paired != sent {
            failures.push(format!(
                "{service}: agent paired {} requests, client sent {sent}",
                v.paired
            ));
        }
        if v.unpaired_total() != 0 {
            failures.push(format!("{service}: unpaired {:?}", v.unpaired));
        }
        if v.in_flight != 0 {
            failures.push(format!(
                "{service}: {} requests still in flight",
                v.in_flight
            ));
        }
        if v.seen != v.paired + v.unpaired_total() + v.in_flight {
            failures.push(format!(
                "{service}: seen {} != paired {} + unpaired {} + in flight {}",
                v.seen,
                v.paired,
                v.unpaired_total(),
                v.in_flight
            ));
        }
    }
    failures
}

/// The median of `v` at the rank the agent's sketch reports it
/// (sketches-ddsketch: the value of rank floor(0.5 (n - 1)), the lower
/// one of an even count), so that order statistics of the same requests
/// are compared.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
}

/// The agent's median latency for `method` `route` of `service` checked
/// against what is known of those requests. Each request's interval as
/// the agent measures it (first request byte in, last response byte out)
/// contains the server's own timing of it (`server`: from the parsed head
/// to just before the last body write) and lies within the client's
/// (first byte written to last byte read; under loss the client also
/// waits for retransmissions of segments the server sent before). So the
/// agent's median (1 % relative accuracy) is at least the server's and
/// at most the client's, within 10 % of the server's (the gap is the
/// head's parsing and a scheduling delay), and at least `floor`, what the
/// route is known to take. Returns the failure, if any.
pub fn median_failure(
    truth: &Truth,
    obs: &Observed,
    (service, port): (&str, u16),
    (method, route): (&str, &str),
    server: &[f64],
    floor: Duration,
) -> Option<String> {
    let Some(client) = truth.median(port, method, route) else {
        return Some(format!("{service}: the client timed no {method} {route}"));
    };
    let Some(server) = median(server.to_vec()) else {
        return Some(format!("{service}: the server timed no {method} {route}"));
    };
    let agent = obs
        .services
        .get(service)
        .and_then(|v| v.p50.get(&(method.to_owned(), route.to_owned())))
        .copied();
    let Some(agent) = agent else {
        return Some(format!(
            "{service}: no {method} {route} in /stats/requests (client median {:.1} ms)",
            client * 1e3
        ));
    };
    let floor = floor.as_secs_f64();
    let medians = format!(
        "{service} {method} {route}: median {:.2} ms by the agent, {:.2} ms by the server, \
         {:.2} ms by the client (the route takes at least {:.1} ms)",
        agent * 1e3,
        server * 1e3,
        client * 1e3,
        floor * 1e3
    );
    eprintln!("{medians}");
    let (lo, hi) = (0.99, 1.01);
    let wrong = agent < server * lo
        || agent > server * 1.10 * hi
        || agent > client * hi
        || agent < floor * lo;
    wrong.then_some(medians)
}

/// Panics with every failure and the report, if there are failures.
pub fn assert_none(what: &str, failures: &[String], report: &str) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures\n- {}\n\n{report}",
        failures.len(),
        failures.join("\n- ")
    );
}
