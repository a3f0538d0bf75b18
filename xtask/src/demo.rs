//! `cargo xtask run --demo`: a small HTTP service on loopback (the Python
//! test server of tests/servers) and bounded synthetic traffic against it,
//! with some errors and slow requests, so that every panel of the
//! dashboard moves within seconds. Both stop with the agent.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

/// Requests per second the demo traffic sends at most.
const RATE: u64 = 25;

/// The demo service and its traffic; dropping it stops both.
pub struct Demo {
    server: Child,
    stop: Arc<AtomicBool>,
    traffic: Option<JoinHandle<()>>,
    pub port: u16,
}

impl Demo {
    pub fn start(root: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut server = Command::new("python3")
            .arg(root.join("tests/servers/httpd.py"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the demo service (python3)")?;
        let mut line = String::new();
        if let Some(out) = server.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        ensure!(
            line.trim() == "listening",
            "the demo service did not start: {line:?}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let stop = stop.clone();
            std::thread::spawn(move || traffic(port, &stop))
        };
        Ok(Self {
            server,
            stop,
            traffic: Some(traffic),
            port,
        })
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.traffic.take() {
            let _ = t.join();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A mix: mostly fast pages and user lookups, some slow requests, a few
/// 404s and 500s; one keep-alive connection, reopened when it breaks.
fn traffic(port: u16, stop: &AtomicBool) {
    let mut n: u64 = 0;
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let path = match n % 20 {
            0 => "/error".to_owned(),
            1 | 2 => format!("/sleep/{}", 100 + (n * 37) % 500),
            3 => "/missing".to_owned(),
            4..=9 => format!("/users/{}", (n * 7919) % 1000),
            _ => "/ok".to_owned(),
        };
        if conn.is_none() {
            conn = TcpStream::connect(("127.0.0.1", port))
                .and_then(|s| Ok((s.try_clone()?, BufReader::new(s))))
                .ok();
        }
        if let Some((w, r)) = conn.as_mut()
            && request(w, r, &path).is_err()
        {
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(1000 / RATE));
    }
}

fn request(w: &mut TcpStream, r: &mut BufReader<TcpStream>, path: &str) -> Result<()> {
    write!(w, "GET {path} HTTP/1.1\r\nHost: demo\r\n\r\n")?;
    crate::load::read_response(r)
}
