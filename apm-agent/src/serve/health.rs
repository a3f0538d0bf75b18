//! /health/detailed: one entry per check, and an overall status.
//!
//! `healthy` when everything passes; `degraded` when the agent works but
//! sees less than it should (a probe skipped, records lost, memory or disk
//! above 90%, a dependency failing); `unhealthy` when its own sampling has
//! stopped. /health (liveness) depends on none of this.

use std::time::Duration;

use serde::Serialize;

use super::checks::DependencyStatus;
use crate::{
    capture::kernel::{Check, ProbeReport},
    tasks::TaskState,
    telemetry::sampler::SystemSample,
};

/// Memory or disk use above this is `degraded`.
pub const USAGE_LIMIT: f64 = 0.90;

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
    /// The agent's own tasks: one stopped makes the report unhealthy.
    pub tasks: &'a [TaskState],
    pub probes: &'a ProbeReport,
    /// The TLS libraries probed, or skipped and why.
    pub tls_libraries: &'a [Check],
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
    for t in i.tasks {
        checks.push(entry(
            format!("task {}", t.name),
            t.alive,
            Status::Unhealthy,
            t.reason.clone().unwrap_or_else(|| "running".into()),
        ));
    }
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
    // A probe attached on demand is listed with the libraries, as it is now.
    let at_start = i.probes.probes.iter();
    let at_start = at_start.filter(|p| i.tls_libraries.iter().all(|t| t.name != p.name));
    for p in at_start.chain(i.tls_libraries) {
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
            tasks: &[],
            probes,
            tls_libraries: &[],
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
}
