//! A real Prometheus for the deployment tests.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{free_port, get, wait_for};

/// A real Prometheus on loopback, scraping the agent every second with the
/// shipped deploy/prometheus/prometheus.yml; stopped and removed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// The shipped prometheus.yml with its target pointed at `agent`.
    pub fn start(agent: std::net::SocketAddr) -> Self {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let shipped = std::fs::read_to_string(repo.join("deploy/prometheus/prometheus.yml"))
            .expect("prometheus.yml");
        assert!(shipped.contains("127.0.0.1:9464"));
        let config = shipped
            .replace("127.0.0.1:9464", &agent.to_string())
            .replace("scrape_interval: 15s", "scrape_interval: 1s");
        let port = free_port().expect("port");
        let dir = std::env::temp_dir().join(format!("apm-prometheus-{port}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("prometheus.yml");
        std::fs::File::create(&file)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .expect("config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by cargo xtask test)");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let ready = wait_for(Duration::from_secs(30), || {
            get(addr, "/-/ready").ok().filter(|r| r.status == 200)
        });
        assert!(ready.is_some(), "prometheus did not become ready");
        Self { child, port, dir }
    }

    /// An instant query's JSON answer.
    pub fn query(&self, promql: &str) -> serde_json::Value {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let r = get(addr, &format!("/api/v1/query?query={encoded}")).expect("query");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("json")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
