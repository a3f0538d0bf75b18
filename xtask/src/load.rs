//! Helpers the load-driving commands share (bench, soak, flood): the
//! agent's /metrics over a plain socket, and a process's CPU and memory
//! from procfs.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

/// A process killed (SIGTERM) and reaped on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The agent with its admin API on 127.0.0.1:`admin`, quiet JSON logs, and
/// `extra` arguments; stopped when the guard is dropped.
pub fn spawn_agent(agent: &Path, admin: u16, extra: &[&str]) -> Result<Guard> {
    let child = Command::new(agent)
        .args(["--listen", &format!("127.0.0.1:{admin}")])
        .args(["--log-format", "json", "--log-level", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    Ok(Guard(child))
}

pub fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// CPU seconds (user + system) of `pid` so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: utime is the 14th field overall.
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

/// (VmRSS, VmHWM) of `pid`, in KiB.
pub fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((kib("VmRSS:"), kib("VmHWM:")))
}

pub fn rss_kib(pid: u32) -> Result<u64> {
    Ok(memory(pid)?.0)
}

/// Reads one HTTP/1.1 response with a Content-Length body (the bench
/// clients' servers always send one) and discards it.
pub fn read_response(r: &mut std::io::BufReader<std::net::TcpStream>) -> Result<()> {
    use std::io::{BufRead as _, Read as _};
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        anyhow::ensure!(r.read_line(&mut line)? > 0, "connection closed");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(())
}

/// The sum of the samples of /metrics whose line starts with `prefix`
/// (e.g. `apm_http_requests_paired_total{`).
pub fn metric_sum(admin: u16, prefix: &str) -> Result<f64> {
    let body = http_get(admin, "/metrics")?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// Now, as `2026-11-29 10:40 UTC`.
pub fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
