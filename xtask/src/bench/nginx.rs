//! The nginx the benches drive: one worker pinned to CPU 0, the same
//! files on every port, plain, TLS or h2c.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::tools::pinned;

/// How a bench nginx speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Plain,
    Tls,
    /// HTTP/2 with prior knowledge.
    H2c,
}

pub struct Nginx {
    child: Child,
}

impl Nginx {
    pub fn start(work: &Path, port: u16) -> Result<Self> {
        Self::start_ports(work, &[port], None, Flavor::Plain)
    }

    /// One nginx process (one worker) serving the same files on `ports`
    /// (over TLS with [`Flavor::Tls`]: `cert.pem` and `key.pem` in
    /// `work`), and its stub_status on `status` if given.
    pub fn start_ports(
        work: &Path,
        ports: &[u16],
        status: Option<u16>,
        flavor: Flavor,
    ) -> Result<Self> {
        let suffix = match flavor {
            Flavor::Plain => "",
            Flavor::Tls => " ssl",
            // No connection is closed after 1000 streams.
            Flavor::H2c => " http2; http2_max_requests 100000000",
        };
        let mut listen: String = ports
            .iter()
            .map(|p| format!("listen 127.0.0.1:{p}{suffix}; "))
            .collect();
        if flavor == Flavor::Tls {
            let w = work.display();
            listen.push_str(&format!(
                "ssl_certificate {w}/cert.pem; ssl_certificate_key {w}/key.pem; "
            ));
        }
        let status_server = status.map_or(String::new(), |p| {
            format!("server {{ listen 127.0.0.1:{p}; location / {{ stub_status; }} }}\n")
        });
        let conf: PathBuf = work.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {w};\n  proxy_temp_path {w};\n  fastcgi_temp_path {w};\n  uwsgi_temp_path {w};\n  scgi_temp_path {w};\n\
                 server {{ {listen}root {w}/www; }}\n{status_server}}}\n",
                w = work.display()
            ),
        )?;
        let child = pinned(0, "nginx")
            .args(["-c", &conf.to_string_lossy(), "-p", &work.to_string_lossy()])
            .stdin(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                ensure!(Instant::now() < deadline, "nginx did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Self { child })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}
