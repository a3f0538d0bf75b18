//! The distributed-trace tests' processes: an OTLP/HTTP receiver built on
//! the official `opentelemetry-proto` package (servers/otlp_receiver.py)
//! and the two FastAPI services it traces (servers/trace_front.py calling
//! servers/trace_back.py and Redis), each under its own uvicorn.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    free_port, get,
    process::{Scratch, stop},
    prod::py_app_bin,
    wait_for,
};

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers");

/// A Python process of the tests' virtualenv on `port`, stopped (SIGTERM)
/// when dropped; its output goes to a log in its scratch directory.
pub struct Py {
    child: Child,
    pub port: u16,
    dir: Scratch,
}

impl Drop for Py {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGTERM);
    }
}

impl Py {
    fn start(what: &str, mut cmd: Command, port: u16) -> Self {
        let dir = Scratch::new(what, port).expect("scratch");
        let log = std::fs::File::create(dir.0.join("out.log")).expect("log");
        let child = cmd
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("python (installed by cargo xtask test)");
        let py = Self { child, port, dir };
        let up = wait_for(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "{what} did not start: {}", py.log());
        py
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("out.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// uvicorn serving `module:app` from tests/servers, one worker, with
    /// `env`.
    pub fn uvicorn(module: &str, env: &[(&str, String)]) -> Self {
        let port = free_port().expect("port");
        let mut cmd = Command::new(py_app_bin().join("uvicorn"));
        cmd.args(["--app-dir", SERVERS, &format!("{module}:app")])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1", "--log-level", "warning"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(module, cmd, port)
    }

    /// The OTLP receiver in `mode` (ok, hang, fail).
    pub fn receiver(mode: &str) -> Self {
        let port = free_port().expect("port");
        let mut cmd = Command::new(py_app_bin().join("python"));
        cmd.arg(format!("{SERVERS}/otlp_receiver.py"))
            .arg(port.to_string())
            .args(["--mode", mode]);
        Self::start("otlp-receiver", cmd, port)
    }

    /// The receiver's document (`GET /spans`).
    pub fn received(&self) -> Value {
        get(self.addr(), "/spans")
            .ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(Value::Null)
    }

    /// Every byte the receiver was sent, gunzipped (`GET /raw`).
    pub fn raw(&self) -> Vec<u8> {
        // Not text: read the socket directly.
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET /raw HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("response");
        all
    }
}

/// One exported span, as the receiver decoded it.
#[derive(Clone, Debug)]
pub struct ExportedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
    /// 2 server, 3 client.
    pub kind: i64,
    pub start: u64,
    pub end: u64,
    pub error: bool,
    pub service: String,
    /// The resource's `process.pid` and `host.name`.
    pub pid: Option<u64>,
    pub host: String,
    pub attributes: Value,
}

impl ExportedSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> &str {
        self.attr(key).and_then(Value::as_str).unwrap_or_default()
    }
}

/// The spans of the receiver's document, grouped by trace id.
pub fn traces(received: &Value) -> BTreeMap<String, Vec<ExportedSpan>> {
    let mut out: BTreeMap<String, Vec<ExportedSpan>> = BTreeMap::new();
    for s in received["spans"].as_array().into_iter().flatten() {
        let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
        let span = ExportedSpan {
            trace_id: text("trace_id"),
            span_id: text("span_id"),
            parent: text("parent_span_id"),
            name: text("name"),
            kind: s["kind"].as_i64().unwrap_or(0),
            start: s["start_unix_nano"].as_u64().unwrap_or(0),
            end: s["end_unix_nano"].as_u64().unwrap_or(0),
            error: s["status_code"].as_i64() == Some(2),
            service: s["resource"]["service.name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            pid: s["resource"]["process.pid"].as_u64(),
            host: s["resource"]["host.name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            attributes: s["attributes"].clone(),
        };
        out.entry(span.trace_id.clone()).or_default().push(span);
    }
    out
}
