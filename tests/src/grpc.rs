//! gRPC ground truth: tests/servers/grpc_server.py (grpcio, unary and
//! server-streaming methods) and grpc_client.py's known mix, whose own
//! counts per method and status (and timing of the 50 ms method) the
//! agent is checked against.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
};

use crate::{
    NetNs, https,
    process::{Scratch, stop},
    prod::py_app_bin,
};

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers");

/// grpc_server.py on 127.0.0.1:`port`, stopped when dropped.
pub struct GrpcServer(Child);

impl GrpcServer {
    pub fn start(port: u16) -> Self {
        Self::start_in(None, port)
    }

    /// The same inside `ns` (the root namespace without one).
    pub fn start_in(ns: Option<&NetNs>, port: u16) -> Self {
        let mut python = python_in(ns);
        python
            .arg(Path::new(SERVERS).join("grpc_server.py"))
            .arg(port.to_string());
        Self(listening(
            python,
            "python with grpcio (installed by cargo xtask test)",
        ))
    }
}

/// `cmd` started, once it printed "listening" (`what` names it).
fn listening(mut cmd: Command, what: &str) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    assert_eq!(line.trim(), "listening", "{what} did not start");
    child
}

/// servers/grpc_server.js (@grpc/grpc-js on Node) on 127.0.0.1:`port`
/// over TLS, stopped when dropped; with the CA its certificate is
/// signed by (a PEM file).
pub struct GrpcTlsServer {
    server: GrpcServer,
    pub ca: String,
    _dir: Scratch,
}

impl GrpcTlsServer {
    pub fn start(port: u16) -> Self {
        let dir = Scratch::new("grpc-tls", port).expect("scratch");
        let (ca, cert, key) = https::certificate().expect("certificate");
        let file = |name: &str, pem: &str| {
            let path = dir.0.join(name);
            std::fs::write(&path, pem).expect("PEM file");
            path.to_str().expect("UTF-8 temp dir").to_owned()
        };
        let (ca, cert, key) = (
            file("ca.pem", &ca),
            file("cert.pem", &cert),
            file("key.pem", &key),
        );
        let modules = node_modules();
        let mut node = Command::new("node");
        node.arg(Path::new(SERVERS).join("grpc_server.js"))
            .args([port.to_string(), cert, key])
            .env("NODE_PATH", modules);
        Self {
            server: GrpcServer(listening(
                node,
                "node with @grpc/grpc-js (installed by cargo xtask test)",
            )),
            ca,
            _dir: dir,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.0.id()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        stop(&mut self.0, libc::SIGTERM);
    }
}

/// `rounds` rounds of grpc_client.py's mix against `port`: its counts
/// ("METHOD STATUS" → n) and its own durations of /shop.Cart/Slow.
pub fn drive(port: u16, rounds: usize) -> (BTreeMap<String, u64>, Vec<f64>) {
    drive_with(port, rounds, &[])
}

/// [`drive`] over TLS, trusting the PEM file `ca`.
pub fn drive_tls(port: u16, rounds: usize, ca: &str) -> (BTreeMap<String, u64>, Vec<f64>) {
    drive_with(port, rounds, &["--tls", ca])
}

fn drive_with(port: u16, rounds: usize, extra: &[&str]) -> (BTreeMap<String, u64>, Vec<f64>) {
    let out = Command::new(py_app_bin().join("python"))
        .arg(Path::new(SERVERS).join("grpc_client.py"))
        .args([port.to_string(), rounds.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("grpc_client.py");
    assert!(out.status.success(), "grpc_client.py: {out:?}");
    parse(&out.stdout)
}

/// grpc_client.py --hold: `rounds` rounds over one channel, then
/// `between` with the channel open and idle, then `rounds` more and a
/// call to a method not called before. What it got after `between`.
pub fn drive_across(
    port: u16,
    rounds: usize,
    between: impl FnOnce(),
) -> (BTreeMap<String, u64>, Vec<f64>) {
    drive_paused(None, port, rounds, &["--hold"], between)
}

/// grpc_client.py --listen `lport`: the client listens there, then
/// `before` runs (an agent that takes it for a service), then its
/// `rounds` rounds against `port` are that service's outbound calls.
pub fn drive_as_service(
    port: u16,
    rounds: usize,
    lport: u16,
    before: impl FnOnce(),
) -> (BTreeMap<String, u64>, Vec<f64>) {
    drive_as_service_in(None, port, rounds, lport, before)
}

/// [`drive_as_service`] inside `ns`.
pub fn drive_as_service_in(
    ns: Option<&NetNs>,
    port: u16,
    rounds: usize,
    lport: u16,
    before: impl FnOnce(),
) -> (BTreeMap<String, u64>, Vec<f64>) {
    drive_paused(ns, port, rounds, &["--listen", &lport.to_string()], before)
}

/// The test venv's python, run inside `ns` if given.
fn python_in(ns: Option<&NetNs>) -> Command {
    let python = py_app_bin().join("python");
    match ns {
        Some(ns) => ns.command(python.to_str().expect("UTF-8 path")),
        None => Command::new(python),
    }
}

/// grpc_client.py with `extra`, which make it print "ready" and wait for
/// a line: `between` runs then. What it printed after.
fn drive_paused(
    ns: Option<&NetNs>,
    port: u16,
    rounds: usize,
    extra: &[&str],
    between: impl FnOnce(),
) -> (BTreeMap<String, u64>, Vec<f64>) {
    let mut child = python_in(ns)
        .arg(Path::new(SERVERS).join("grpc_client.py"))
        .args([port.to_string(), rounds.to_string()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("grpc_client.py");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    assert_eq!(line.trim(), "ready", "grpc_client.py {extra:?}");
    between();
    let _ = child.stdin.take().expect("stdin").write_all(b"go\n");
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let status = child.wait().expect("grpc_client.py");
    assert!(status.success(), "grpc_client.py {extra:?}: {status}");
    parse(&rest)
}

/// servers/grpc_client.js: a Node service listening on 127.0.0.1:`lport`
/// whose gRPC calls and HTTP/2 GETs go to a TLS server; stopped when
/// dropped.
pub struct NodeClient {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl NodeClient {
    pub fn start(lport: u16, port: u16, ca: &str) -> Self {
        let mut child = Command::new("node")
            .arg(Path::new(SERVERS).join("grpc_client.js"))
            .args([lport.to_string(), port.to_string(), ca.to_owned()])
            .env("NODE_PATH", node_modules())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node with @grpc/grpc-js (installed by cargo xtask test)");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        assert_eq!(line.trim(), "ready", "grpc_client.js");
        Self { child, out }
    }

    /// `rounds` rounds; what the client got ("METHOD STATUS" or "GET
    /// PATH STATUS" → n).
    pub fn drive(&mut self, rounds: usize) -> BTreeMap<String, u64> {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go {rounds}").expect("go");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("the client's output");
        serde_json::from_str(&line).expect("the client's JSON")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        stop(&mut self.child, libc::SIGTERM);
    }
}

/// Where the bootstrap installed the npm packages.
fn node_modules() -> std::path::PathBuf {
    std::env::var_os("APM_NODE_TOOLS")
        .map(|d| Path::new(&d).join("node_modules"))
        .expect("APM_NODE_TOOLS (set by cargo xtask test)")
}

fn parse(stdout: &[u8]) -> (BTreeMap<String, u64>, Vec<f64>) {
    let v: serde_json::Value = serde_json::from_slice(stdout).expect("the client's JSON");
    let counts = serde_json::from_value(v["counts"].clone()).expect("counts");
    let slow = serde_json::from_value(v["slow"].clone()).expect("slow");
    (counts, slow)
}
