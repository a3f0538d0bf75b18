//! The servers under test: nginx with its static files and the FastAPI
//! app under uvicorn, each in a scratch directory inside a namespace.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::client::Rng;
use crate::{
    NetNs,
    process::{Scratch, stop},
};

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

/// The static files nginx serves: path and size in bytes.
pub const STATIC_FILES: &[(&str, usize)] = &[
    ("/small.txt", 64),
    ("/index.html", 700),
    ("/static/app.js", 3000),
    ("/favicon.ico", 1150),
    ("/media/intro.mp4", 4 * 1024 * 1024),
    ("/media/poster.jpg", 200 * 1024),
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
        Self::start_with(ns, port, false)
    }

    /// [`Nginx::start`], speaking HTTP/2 with prior knowledge (h2c) when
    /// `http2`.
    pub fn start_with(ns: &NetNs, port: u16, http2: bool) -> Result<Self> {
        Self::start_listening(ns, port, if http2 { " http2" } else { "" }, "")
    }

    /// [`Nginx::start`], speaking HTTP/2 over TLS (ALPN `h2`) with
    /// certificate `cert` and key `key` (PEM files).
    pub fn start_h2_tls(ns: &NetNs, port: u16, cert: &str, key: &str) -> Result<Self> {
        Self::start_listening(
            ns,
            port,
            " ssl http2",
            &format!("ssl_certificate {cert}; ssl_certificate_key {key};"),
        )
    }

    /// `listen`: what follows the address in the `listen` directive;
    /// `tls`: the server's certificate directives.
    fn start_listening(ns: &NetNs, port: u16, listen: &str, tls: &str) -> Result<Self> {
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
            .replace("@PORT@", &port.to_string())
            .replace("@LISTEN@", listen)
            .replace("@TLS@", tls);
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
