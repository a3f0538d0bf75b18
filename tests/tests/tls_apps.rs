//! TLS on memory BIOs (`--capture-tls`): servers whose TLS library never
//! touches the socket, because the program reads the ciphertext itself and
//! hands it over: FastAPI under uvicorn with `--ssl-keyfile` (Python's
//! asyncio `SSLObject`, Debian's libssl) and Node's `https` module (the
//! OpenSSL node carries). The agent ties each library object to the socket
//! its thread read last; the requests are counted per route and status
//! against the client's own counts (httpx), in both captures, with nothing
//! lost and nothing guessed. And a Go HTTPS server built here with
//! Debian's Go (crypto/tls, probed at the functions' RET instructions).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use apm_e2e::{
    Agent, free_port,
    process::{Scratch, stop},
    prod::py_app_bin,
    require_root,
    tls::{Counts, agent_drops, attached, breakpoints, certified, counted, drops, wait_probed},
    wait_for,
};

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers");

/// A server process and its scratch directory (certificate, log).
struct Tls {
    child: Child,
    port: u16,
    // Last: removed after the server has stopped.
    _dir: Scratch,
}

impl Drop for Tls {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGTERM);
    }
}

impl Tls {
    /// servers/app.py under uvicorn over TLS, one worker.
    fn uvicorn() -> Self {
        let port = free_port().expect("port");
        let (dir, cert, key) = certified("tls-uvicorn", port);
        let log = std::fs::File::create(dir.0.join("uvicorn.log")).expect("log");
        let child = Command::new(py_app_bin().join("uvicorn"))
            .args(["--app-dir", SERVERS, "app:app"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1", "--http", "h11", "--loop", "asyncio"])
            .args(["--ssl-certfile", &cert, "--ssl-keyfile", &key])
            .args(["--log-level", "warning"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("uvicorn (installed by cargo xtask test)");
        Self::listening(child, port, dir)
    }

    /// servers/https_server.js under node.
    fn node() -> Self {
        Self::node_as(None)
    }

    /// The same under a copy of node named `name`: a program nobody
    /// expects to use memory BIOs.
    fn node_as(name: Option<&str>) -> Self {
        let port = free_port().expect("port");
        let (dir, cert, key) = certified("tls-node", port);
        let program = match name {
            None => "node".into(),
            Some(name) => {
                let node = which("node").expect("node on PATH");
                let copy = dir.0.join(name);
                std::fs::copy(node, &copy).expect("a copy of node");
                copy
            }
        };
        let mut child = Command::new(program)
            .arg(Path::new(SERVERS).join("https_server.js"))
            .args([port.to_string(), cert, key])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (installed by cargo xtask test)");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "listening", "node did not start");
        Self::listening(child, port, dir)
    }

    /// servers/https_server.go, built with Debian's Go (its build cache
    /// kept under target/ between runs).
    fn go() -> Self {
        let port = free_port().expect("port");
        let (dir, cert, key) = certified("tls-go", port);
        let bin = dir.0.join("https_server");
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/gocache");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(Path::new(SERVERS).join("https_server.go"))
            .env("GOCACHE", &cache)
            .env("GOPATH", dir.0.join("gopath"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .output()
            .expect("go (installed by cargo xtask test)");
        assert!(built.status.success(), "go build: {built:?}");
        let child = Command::new(&bin)
            .args([port.to_string(), cert, key])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the Go server");
        Self::listening(child, port, dir)
    }

    fn listening(child: Child, port: u16, dir: Scratch) -> Self {
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        assert!(up.is_some(), "the server on {port} did not listen");
        server
    }

    /// Drives the server with servers/https_client.py: `rounds` rounds of
    /// `specs` ("METHOD PATH ROUTE"). Returns the client's counts.
    fn drive(&self, rounds: usize, specs: &[&str]) -> Counts {
        let out = Command::new(py_app_bin().join("python"))
            .arg(Path::new(SERVERS).join("https_client.py"))
            .arg(format!("https://127.0.0.1:{}", self.port))
            .arg(rounds.to_string())
            .args(specs)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("python with httpx (installed by cargo xtask test)");
        assert!(out.status.success(), "https_client.py: {out:?}");
        let got: std::collections::BTreeMap<String, u64> =
            serde_json::from_slice(&out.stdout).expect("the client's JSON");
        got.into_iter()
            .map(|(key, n)| {
                let (route, status) = key.rsplit_once(' ').expect("ROUTE STATUS");
                let status = status.parse().expect("status");
                ((self.port, route.to_owned(), status), n)
            })
            .collect()
    }
}

/// The agent with `--capture capture` and TLS reading on `server`'s port,
/// once the server's TLS library is probed.
fn agent_on(server: &Tls, capture: &str, service: &str) -> Agent {
    let port = server.port.to_string();
    let agent =
        Agent::start(&["--capture-tls", "--capture", capture, "--port", &port]).expect("agent");
    agent.wait_for_service(server.port, service);
    // A probed file, not the programs' own check.
    wait_probed(&agent, "uprobe:/");
    if capture == "packets" {
        // Really the packet capture, keyed by socket: no fallback, and
        // nothing on the host's read path, memory BIOs or not.
        assert_eq!(attached(&agent, "syscalls:"), Vec::<String>::new());
    }
    agent
}

/// The agent's counts settle on the client's; nothing was dropped.
fn assert_exact(agent: &Agent, server: &Tls, sent: &Counts, how: &str) {
    let total: u64 = sent.values().sum();
    assert!(total >= 60, "too few requests: {sent:?}");
    let settled = wait_for(Duration::from_secs(20), || {
        (counted(agent, server.port) == *sent).then_some(())
    });
    assert!(
        settled.is_some(),
        "{how}: the agent counted {:?}\nthe client got {sent:?}\n{}",
        counted(agent, server.port),
        agent.log_text()
    );
    for reason in [
        "tls_unlinked",
        "tls_links_map_full",
        "tls_calls_map_full",
        "ringbuf_full",
    ] {
        assert_eq!(drops(agent, reason), Some(0.0), "{how}: {reason}");
    }
    // Memory-BIO objects' first calls wait for their tie: none was lost.
    assert_eq!(agent_drops(agent, "tls_untied"), Some(0.0), "{how}");
}

const APP: [&str; 6] = [
    "GET /users/{n} /users/{id}",
    "GET /health /health",
    "GET /fail /fail",
    "GET /nowhere /nowhere",
    "POST /orders /orders",
    "GET /reports/export /reports/export",
];

#[test]
fn uvicorn_over_https_is_counted_exactly_with_packets() {
    uvicorn_over_https("packets");
}

#[test]
fn uvicorn_over_https_is_counted_exactly_with_syscalls() {
    uvicorn_over_https("syscalls");
}

fn uvicorn_over_https(capture: &str) {
    require_root();
    let server = Tls::uvicorn();
    let agent = agent_on(&server, capture, "uvicorn");
    let sent = server.drive(12, &APP);
    assert_exact(&agent, &server, &sent, &format!("uvicorn ({capture})"));
}

/// Node's and Go's routes.
const NODE: [&str; 4] = [
    "GET /items/{n} /items/{id}",
    "GET /big /big",
    "POST /echo /echo",
    "GET /missing /missing",
];

#[test]
fn a_go_https_server_is_counted_exactly() {
    require_root();
    let server = Tls::go();
    let agent = agent_on(&server, "packets", "https_server");
    // Entries and a probe at each RET of crypto/tls.(*Conn).Read and
    // Write, in this process only.
    assert!(breakpoints(server.child.id(), "https_server") > 4);
    let sent = server.drive(15, &NODE);
    assert_exact(&agent, &server, &sent, "go");
}

#[test]
fn node_https_is_counted_exactly() {
    require_root();
    let server = Tls::node();
    let pid = server.child.id();
    let agent = agent_on(&server, "packets", "node");
    // OpenSSL linked into node (NodeSource) or Debian's libssl: the
    // probes are in this process's copy of it, and in no other node's.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let file = if maps.contains("libssl.so") {
        "libssl.so"
    } else {
        "/node"
    };
    assert_eq!(breakpoints(pid, file), 5, "the monitored node ({file})");
    let mut bystander = Command::new("node")
        .args(["-e", "require('tls'); process.stdin.resume()"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("node");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(breakpoints(bystander.id(), file), 0, "a node not monitored");
    drop(bystander.stdin.take());
    stop(&mut bystander, libc::SIGTERM);

    let sent = server.drive(15, &NODE);
    assert_exact(&agent, &server, &sent, "node");
}

/// The full path of `program` on PATH.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[test]
fn a_memory_bio_program_is_exact_from_its_first_call_whatever_its_name() {
    require_root();
    // Node under another name: nothing about the program says it does
    // its TLS on memory BIOs; its objects are tied as they first send.
    let server = Tls::node_as(Some("jsrt"));
    let agent = agent_on(&server, "packets", "jsrt");
    let sent = server.drive(15, &NODE);
    assert_exact(&agent, &server, &sent, "node as jsrt");
}
