//! /health/detailed: one entry per check, and an overall status.
//!
//! `healthy` when everything passes; `degraded` when the agent works but
//! sees less than it should (a probe skipped, records lost, memory or disk
//! above 90%, a dependency failing); `unhealthy` when its own sampling has
//! stopped. /health (liveness) depends on none of this.

use std::{
    str::FromStr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::watch;

use crate::{
    capture::kernel::ProbeReport, telemetry::metrics::Metrics, telemetry::sampler::SystemSample,
};

/// Memory or disk use above this is `degraded`.
pub const USAGE_LIMIT: f64 = 0.90;

/// A dependency given with `--check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// `redis://host:port[/db]`: PING through the redis crate.
    Redis { url: String },
    /// `tcp://host:port`: TCP connect time.
    Tcp { url: String, addr: String },
}

impl Dependency {
    pub fn name(&self) -> &str {
        match self {
            Self::Redis { url } => url,
            Self::Tcp { url, .. } => url,
        }
    }
}

impl FromStr for Dependency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            if rest
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("expected tcp://host:port, got {s:?}"));
            }
            return Ok(Self::Tcp {
                url: s.to_owned(),
                addr: rest.to_owned(),
            });
        }
        if s.starts_with("redis://") {
            redis::Client::open(s).map_err(|e| format!("invalid redis URL {s:?}: {e}"))?;
            return Ok(Self::Redis { url: s.to_owned() });
        }
        Err(format!(
            "unsupported check {s:?}: use redis://host:port or tcp://host:port"
        ))
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DependencyStatus {
    pub name: String,
    pub ok: bool,
    /// "PONG", "connected", or the error.
    pub detail: String,
    pub response_time_seconds: f64,
}

/// Checks one dependency, bounded by `timeout`.
pub async fn check(dep: &Dependency, timeout: Duration) -> DependencyStatus {
    let start = Instant::now();
    let result: Result<String, String> = match dep {
        Dependency::Tcp { addr, .. } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await
            {
                Ok(Ok(_)) => Ok("connected".into()),
                Ok(Err(e)) => Err(format!("connect: {e}")),
                Err(_) => Err(format!("connect: timed out after {timeout:?}")),
            }
        }
        Dependency::Redis { url } => {
            let ping = async {
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                let mut con = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .map_err(|e| format!("PING: {e}"))
            };
            match tokio::time::timeout(timeout, ping).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {timeout:?}")),
            }
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    match result {
        Ok(detail) => DependencyStatus {
            name: dep.name().to_owned(),
            ok: true,
            detail,
            response_time_seconds: elapsed,
        },
        Err(detail) => DependencyStatus {
            name: dep.name().to_owned(),
            ok: false,
            detail,
            response_time_seconds: elapsed,
        },
    }
}

/// Checks every dependency each `every`, keeping the latest results.
pub async fn run_checks(
    deps: Vec<Dependency>,
    every: Duration,
    results: Arc<RwLock<Vec<DependencyStatus>>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    if deps.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = every.min(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut statuses = Vec::with_capacity(deps.len());
        let previous: Vec<bool> = results
            .read()
            .map(|r| r.iter().map(|s| s.ok).collect())
            .unwrap_or_default();
        for (i, dep) in deps.iter().enumerate() {
            let status = check(dep, timeout).await;
            metrics
                .dependency_up
                .with_label_values(&[&status.name])
                .set(i64::from(status.ok));
            metrics
                .dependency_seconds
                .with_label_values(&[&status.name])
                .set(status.response_time_seconds);
            // Log changes, not every failing check.
            match (previous.get(i).copied(), status.ok) {
                (Some(true) | None, false) => {
                    tracing::warn!(dependency = %status.name, error = %status.detail, "dependency check failed")
                }
                (Some(false), true) => {
                    tracing::info!(dependency = %status.name, "dependency recovered")
                }
                _ => {}
            }
            statuses.push(status);
        }
        if let Ok(mut slot) = results.write() {
            *slot = statuses;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HealthCheck {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    pub status: Status,
    pub checks: Vec<HealthCheck>,
}

/// What /health/detailed looks at.
pub struct Inputs<'a> {
    pub probes: &'a ProbeReport,
    /// Ring-buffer records lost in the last minute.
    pub lost_last_minute: u64,
    /// Age of the latest sample and the sampling interval.
    pub sample: Option<(Duration, &'a SystemSample)>,
    pub sample_interval: Duration,
    pub dependencies: &'a [DependencyStatus],
    pub configured_dependencies: usize,
}

fn entry(name: impl Into<String>, ok: bool, bad: Status, detail: String) -> HealthCheck {
    HealthCheck {
        name: name.into(),
        status: if ok { Status::Healthy } else { bad },
        detail,
        response_time_seconds: None,
    }
}

pub fn evaluate(i: &Inputs<'_>) -> HealthReport {
    let mut checks = Vec::new();
    match &i.probes.disabled_reason {
        Some(reason) => checks.push(entry(
            "ebpf",
            false,
            Status::Degraded,
            format!("disabled: {reason}; procfs-only"),
        )),
        None => {
            checks.push(entry("ebpf", true, Status::Degraded, "loaded".into()));
            let capture = i.probes.capture;
            checks.push(match &i.probes.capture_fallback {
                None => entry(
                    "capture",
                    true,
                    Status::Degraded,
                    format!("HTTP timed from {capture}"),
                ),
                Some(why) => entry(
                    "capture",
                    false,
                    Status::Degraded,
                    format!(
                        "HTTP timed from {capture}: packet capture unavailable ({why}); \
                         every syscall on the host pays for the tracepoints"
                    ),
                ),
            });
        }
    }
    for p in &i.probes.probes {
        checks.push(entry(
            format!("probe {}", p.name),
            p.ok,
            Status::Degraded,
            p.detail.clone(),
        ));
    }
    checks.push(entry(
        "ring buffer",
        i.lost_last_minute == 0,
        Status::Degraded,
        format!("{} records lost in the last minute", i.lost_last_minute),
    ));
    let stale_after = i.sample_interval * 3 + Duration::from_secs(1);
    match i.sample {
        None => checks.push(entry(
            "sampler",
            false,
            Status::Unhealthy,
            "no sample yet".into(),
        )),
        Some((age, sample)) => {
            checks.push(entry(
                "sampler",
                age <= stale_after,
                Status::Unhealthy,
                format!("last sample {:.1} s ago", age.as_secs_f64()),
            ));
            let mem = sample.host.memory_used_ratio;
            checks.push(entry(
                "host memory",
                mem <= USAGE_LIMIT,
                Status::Degraded,
                format!("{:.1}% used", mem * 100.0),
            ));
            for fs in &sample.host.filesystems {
                checks.push(entry(
                    format!("disk {}", fs.mountpoint),
                    fs.used_ratio <= USAGE_LIMIT,
                    Status::Degraded,
                    format!("{:.1}% used", fs.used_ratio * 100.0),
                ));
            }
        }
    }
    for d in i.dependencies {
        let mut c = entry(
            format!("dependency {}", d.name),
            d.ok,
            Status::Degraded,
            d.detail.clone(),
        );
        c.response_time_seconds = Some(d.response_time_seconds);
        checks.push(c);
    }
    if i.dependencies.len() < i.configured_dependencies {
        checks.push(entry(
            "dependencies",
            false,
            Status::Degraded,
            "first check still running".into(),
        ));
    }
    let status = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Healthy);
    HealthReport { status, checks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sampler::{Filesystem, HostSample};

    fn sample(mem: f64, disk: f64) -> SystemSample {
        SystemSample {
            timestamp: 0.0,
            host: HostSample {
                memory_used_ratio: mem,
                filesystems: vec![Filesystem {
                    device: "/dev/vda".into(),
                    mountpoint: "/".into(),
                    fstype: "ext4".into(),
                    size_bytes: 100,
                    avail_bytes: 10,
                    free_bytes: 10,
                    used_ratio: disk,
                }],
                ..Default::default()
            },
            services: Default::default(),
        }
    }

    fn inputs<'a>(
        probes: &'a ProbeReport,
        s: Option<(Duration, &'a SystemSample)>,
        deps: &'a [DependencyStatus],
    ) -> Inputs<'a> {
        Inputs {
            probes,
            lost_last_minute: 0,
            sample: s,
            sample_interval: Duration::from_secs(1),
            dependencies: deps,
            configured_dependencies: deps.len(),
        }
    }

    #[test]
    fn all_good_is_healthy_and_each_problem_degrades_or_worse() {
        let probes = ProbeReport::default();
        let s = sample(0.5, 0.5);
        let ok = evaluate(&inputs(
            &probes,
            Some((Duration::from_millis(100), &s)),
            &[],
        ));
        assert_eq!(ok.status, Status::Healthy, "{ok:?}");

        let full = sample(0.95, 0.5);
        let r = evaluate(&inputs(&probes, Some((Duration::ZERO, &full)), &[]));
        assert_eq!(r.status, Status::Degraded);
        let disk = sample(0.5, 0.97);
        let r = evaluate(&inputs(&probes, Some((Duration::ZERO, &disk)), &[]));
        assert_eq!(r.status, Status::Degraded);
        assert!(
            r.checks
                .iter()
                .any(|c| c.name == "disk /" && c.status == Status::Degraded)
        );

        let down = [DependencyStatus {
            name: "redis://127.0.0.1:1".into(),
            ok: false,
            detail: "connect: Connection refused".into(),
            response_time_seconds: 0.001,
        }];
        let r = evaluate(&inputs(&probes, Some((Duration::ZERO, &s)), &down));
        assert_eq!(r.status, Status::Degraded);

        let stale = evaluate(&inputs(&probes, Some((Duration::from_secs(60), &s)), &[]));
        assert_eq!(stale.status, Status::Unhealthy);

        let no_ebpf = ProbeReport {
            disabled_reason: Some("no CAP_BPF".into()),
            ..Default::default()
        };
        let r = evaluate(&inputs(&no_ebpf, Some((Duration::ZERO, &s)), &[]));
        assert_eq!(r.status, Status::Degraded);

        // No cgroup v2: the syscall fallback works but is named.
        let fallback = ProbeReport {
            capture: "syscalls",
            capture_fallback: Some("no cgroup2 mount".into()),
            ..Default::default()
        };
        let r = evaluate(&inputs(&fallback, Some((Duration::ZERO, &s)), &[]));
        assert_eq!(r.status, Status::Degraded);
        let capture = r
            .checks
            .iter()
            .find(|c| c.name == "capture")
            .expect("capture check");
        assert!(capture.detail.contains("no cgroup2 mount"), "{capture:?}");
    }

    #[test]
    fn check_targets_parse_or_explain() {
        assert_eq!(
            "tcp://127.0.0.1:5432".parse(),
            Ok(Dependency::Tcp {
                url: "tcp://127.0.0.1:5432".into(),
                addr: "127.0.0.1:5432".into()
            })
        );
        assert!(matches!(
            "redis://127.0.0.1:6379".parse::<Dependency>(),
            Ok(Dependency::Redis { .. })
        ));
        assert!("tcp://nohost".parse::<Dependency>().is_err());
        assert!(
            "http://x"
                .parse::<Dependency>()
                .expect_err("http is not a check")
                .contains("unsupported")
        );
    }

    #[tokio::test]
    async fn a_refused_tcp_dependency_reports_the_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let dep: Dependency = format!("tcp://127.0.0.1:{port}").parse().expect("dep");
        let s = check(&dep, Duration::from_secs(1)).await;
        assert!(!s.ok);
        assert!(s.detail.contains("refused"), "{}", s.detail);
    }
}
