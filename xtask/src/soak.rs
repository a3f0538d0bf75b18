//! `cargo xtask soak --minutes N`: steady mixed load against nginx with the
//! agent watching it, the agent's RSS and CPU sampled every minute. After
//! warm-up (the first fifth of the run, at least one minute) RSS must grow
//! by less than 5 %; `--record` writes the run into docs/benchmarks.md.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::bench::tools::{Nginx, free_port};

/// Allowed RSS growth after warm-up.
const MAX_GROWTH: f64 = 0.05;

/// Paths of the mix: pages, 404s, templated ids, query strings.
const LUA: &str = r#"
local paths = {"/index.html", "/", "/missing", "/api/v1/users/42",
               "/api/v1/users/77/orders", "/static/app.js?v=3", "/search?q=x"}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1])
end
-- About 400 requests/s per connection: steady, not saturating.
function delay() return 2 end
"#;

/// One minute's sample.
struct Sample {
    minute: u64,
    rss_kib: u64,
    cpu_seconds: f64,
    paired: f64,
}

pub fn soak(root: &Path, agent: &Path, minutes: u64, record: bool) -> Result<()> {
    ensure!(minutes >= 2, "a soak needs at least 2 minutes");
    let work = std::env::temp_dir().join("apm-soak");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www"))?;
    std::fs::write(work.join("www/index.html"), "<html>apm soak</html>\n")?;
    std::fs::write(work.join("mix.lua"), LUA)?;
    let port = free_port()?;
    let _nginx = Nginx::start(&work, port)?;
    let admin = free_port()?;
    let agent = crate::load::spawn_agent(agent, admin, &["--port", &port.to_string()])?;
    let pid = agent.0.id();
    wait_for_metrics(admin)?;
    let mut samples = Vec::new();
    let start = Instant::now();
    for minute in 1..=minutes {
        // A minute of load on 8 new connections.
        let out = Command::new("wrk")
            .args(["-t1", "-c8", "-d60s", "-s"])
            .arg(work.join("mix.lua"))
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .output()
            .context("running wrk")?;
        ensure!(
            out.status.success(),
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sample = Sample {
            minute,
            rss_kib: crate::load::rss_kib(pid)?,
            cpu_seconds: crate::load::cpu_seconds(pid)?,
            paired: crate::load::metric_sum(admin, "apm_http_requests_paired_total{")?,
        };
        eprintln!(
            "xtask soak: minute {minute}/{minutes}: RSS {:.1} MiB, CPU {:.1} s, {} requests paired",
            sample.rss_kib as f64 / 1024.0,
            sample.cpu_seconds,
            sample.paired
        );
        samples.push(sample);
    }
    let warm = ((minutes / 5).max(1) as usize).min(samples.len() - 1);
    let base = samples[warm - 1].rss_kib as f64;
    let last = samples.last().map_or(0, |s| s.rss_kib) as f64;
    let peak = samples[warm..].iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64;
    let growth = (last - base) / base.max(1.0);
    let elapsed = start.elapsed();
    let section = render(&samples, warm, growth, peak / base.max(1.0) - 1.0, elapsed);
    println!("{section}");
    if record {
        crate::docs::write_section(root, "soak", &section)?;
    }
    if growth >= MAX_GROWTH {
        bail!(
            "RSS grew {:.1} % after warm-up (limit {:.0} %)",
            growth * 100.0,
            MAX_GROWTH * 100.0
        );
    }
    Ok(())
}

fn wait_for_metrics(admin: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if crate::load::metric_sum(admin, "apm_build_info{").is_ok_and(|v| v > 0.0) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the agent did not answer /metrics within 30 s")
}

fn render(
    samples: &[Sample],
    warm: usize,
    growth: f64,
    peak_growth: f64,
    took: Duration,
) -> String {
    let date = crate::load::utc_now();
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let minutes = samples.len();
    let requests = samples.last().map_or(0.0, |s| s.paired);
    let cpu = samples.last().map_or(0.0, |s| s.cpu_seconds);
    let mut s = format!(
        "## Soak\n\n`cargo xtask soak --minutes {minutes} --record` on {date} ({:.0} min, agent built from {commit}): nginx on loopback, wrk with 8 connections (new ones every minute) and a 2 ms think time, a mix of pages, 404s, templated ids and query strings; the agent selects nginx (packet capture). {requests:.0} requests paired, {:.0} per second; agent CPU {cpu:.1} s in all ({:.3} cores).\n\n\
         **RSS after warm-up (minute {warm}) to the end: {:+.2} %** (peak {:+.2} %; limit +5 %).\n\n| minute | RSS (MiB) | agent CPU (s, cumulative) | requests paired |\n|---|---|---|---|\n",
        took.as_secs_f64() / 60.0,
        requests / took.as_secs_f64().max(1.0),
        cpu / took.as_secs_f64().max(1.0),
        growth * 100.0,
        peak_growth * 100.0,
    );
    let step = (minutes / 10).max(1);
    for (i, sample) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == minutes || i + 1 == warm {
            s.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.0} |\n",
                sample.minute,
                sample.rss_kib as f64 / 1024.0,
                sample.cpu_seconds,
                sample.paired
            ));
        }
    }
    s
}
