//! Test servers, clients and network namespaces: the traffic the agent
//! is compared against.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::sibling_bin;

/// A server process the tests start (it prints `listening` once ready),
/// killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn start(mut cmd: Command, port: u16) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let server = Self { child, port };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .context("server did not say it was listening")?;
        ensure!(line.trim() == "listening", "server said {line:?}");
        Ok(server)
    }

    /// The Rust test server (src/bin/apm-httpd.rs) on 127.0.0.1:`port`.
    pub fn rust(port: u16) -> Result<Self> {
        let mut cmd = Command::new(sibling_bin("apm-httpd")?);
        cmd.arg(port.to_string());
        Self::start(cmd, port)
    }

    /// The Rust test server on 127.0.0.1:`port` inside `ns`.
    pub fn rust_in(ns: &NetNs, port: u16) -> Result<Self> {
        let bin = sibling_bin("apm-httpd")?;
        let mut cmd = ns.command(bin.to_str().context("non-UTF-8 path")?);
        cmd.arg(port.to_string());
        Self::start(cmd, port)
    }

    /// The Python test server (servers/httpd.py) on 127.0.0.1:`port`.
    pub fn python(port: u16) -> Result<Self> {
        Self::python_at(Command::new("python3"), "127.0.0.1", port)
    }

    /// The Python test server run by `python3` (a command, e.g. inside a
    /// namespace) on `address`:`port`.
    pub fn python_at(mut python3: Command, address: &str, port: u16) -> Result<Self> {
        python3
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/servers/httpd.py"))
            .arg(port.to_string())
            .arg(address);
        Self::start(python3, port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 keep-alive client that knows exactly what it sent
/// and what came back.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// One request; returns the response status.
    pub fn get(&mut self, path: &str) -> Result<u16> {
        Ok(self.pipeline(&[path])?[0])
    }

    /// One request of `method` with an empty body; returns the status.
    pub fn send(&mut self, method: &str, path: &str) -> Result<u16> {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        self.read_response()
    }

    /// Several requests in a single write, then their responses in order.
    pub fn pipeline(&mut self, paths: &[&str]) -> Result<Vec<u16>> {
        let mut batch = String::new();
        for path in paths {
            batch.push_str(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"));
        }
        self.stream.write_all(batch.as_bytes())?;
        paths.iter().map(|_| self.read_response()).collect()
    }

    fn read_response(&mut self) -> Result<u16> {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?.to_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .context("bad status line")?;
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .context("response without Content-Length")?;
        while self.buf.len() < head_end + length {
            self.fill()?;
        }
        self.buf.drain(..head_end + length);
        Ok(status)
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        ensure!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Opens `n` client connections to 127.0.0.1:`port` and returns them open.
pub fn connect_many(port: u16, n: usize) -> Result<Vec<TcpStream>> {
    (0..n)
        .map(|_| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(5),
            )
            .context("connecting to the test listener")
        })
        .collect()
}

/// A network namespace of the test's own (like a container's or a pod's),
/// with its loopback up, deleted on drop.
pub struct NetNs(String);

impl NetNs {
    pub fn create(tag: &str) -> Self {
        let name = format!("apm-e2e-{tag}-{}", std::process::id());
        let run = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        run(&["netns", "add", &name]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Runs `f` on a thread of this process that has joined the namespace
    /// (a network namespace is per thread), so sockets `f` opens are the
    /// namespace's; a panic in `f` is passed on.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                self.enter();
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Moves the calling thread into the namespace; panics if it cannot.
    pub fn enter(&self) {
        use std::os::fd::AsRawFd as _;
        let path = format!("/run/netns/{}", self.0);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a namespace file we hold open; it only changes
        // the calling thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Python's http.client (which reads chunked bodies) on one keep-alive
/// connection to `host`:`port`, inside `ns` when given: one GET per path,
/// bodies read to the end. Returns (path without query, status) → count.
pub fn python_client(
    ns: Option<&NetNs>,
    host: &str,
    port: u16,
    paths: &[&str],
) -> Result<BTreeMap<(String, u16), u64>> {
    let script = "import http.client, sys\n\
                  host, port = sys.argv[1], int(sys.argv[2])\n\
                  c = http.client.HTTPConnection(host, port, timeout=20)\n\
                  for path in sys.argv[3:]:\n\
                  \x20   c.request('GET', path)\n\
                  \x20   r = c.getresponse(); r.read()\n\
                  \x20   print(path.split('?')[0], r.status)\n";
    let mut cmd = match ns {
        Some(ns) => ns.command("python3"),
        None => Command::new("python3"),
    };
    let out = cmd
        .args(["-c", script, host, &port.to_string()])
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .context("running the python client")?;
    ensure!(out.status.success(), "python client failed: {out:?}");
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (path, status) = line.rsplit_once(' ').context("client output")?;
        *counts
            .entry((path.to_owned(), status.parse().context("status")?))
            .or_default() += 1;
    }
    Ok(counts)
}

/// Two servers on `port`, `apm-httpd` in namespace `a` and `python3` in
/// `b`: waits until the agent names both, sends 30 requests to the first
/// and 25 (5 of them 404s) to the second, and asserts each one's route
/// counts are exactly its own client's.
pub fn assert_two_namespaces_apart(agent: &crate::Agent, a: &NetNs, b: &NetNs, port: u16) {
    let wait = Duration::from_secs(20);
    let names = crate::wait_for(wait, || {
        let m = agent.metrics().ok()?;
        let named =
            |service| m.value("apm_service_info", &[("service_name", service)]) == Some(1.0);
        (named("apm-httpd") && named("python3")).then_some(())
    });
    assert!(names.is_some(), "{}", agent.log_text());
    let in_a = python_client(Some(a), "127.0.0.1", port, &["/ok"; 30]).expect("client a");
    let mut paths = vec!["/ok"; 20];
    paths.extend(["/missing"; 5]);
    let in_b = python_client(Some(b), "127.0.0.1", port, &paths).expect("client b");
    let m = agent.wait_for_paired("apm-httpd", 30, wait);
    let m2 = agent.wait_for_paired("python3", 25, wait);
    assert_eq!(m.route_counts("apm-httpd"), in_a, "{}", m.text);
    assert_eq!(m2.route_counts("python3"), in_b, "{}", m2.text);
}

/// Closes `stream` abortively (SO_LINGER 0): the kernel sends a reset
/// instead of a FIN.
pub fn close_with_reset(stream: std::net::TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads size_of::<linger>() bytes from a live local
    // value; the descriptor is the stream's own, open until it drops.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}
