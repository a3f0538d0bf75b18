//! Saturation per service, the fourth golden signal, from procfs and the
//! services' cgroups (no probe): how long its threads waited for a CPU
//! (`/proc/PID/task/*/schedstat` run delay), its descriptors against
//! their limit, and what its cgroups say (CPU throttling against
//! `cpu.max`, memory events against `memory.max`, CPU and memory stall
//! time). Counters move by what changed since the previous sample: what
//! happened before the agent saw a process or cgroup is not counted.

mod cgroup;
mod listen;
pub mod tcp;

pub use listen::PortQueue;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::BuildHasher,
    path::{Path, PathBuf},
    sync::Arc,
};

use procfs::process::{LimitValue, Process};
use prometheus::{CounterVec, GaugeVec, Opts, Registry};
use serde::Serialize;

use self::cgroup::CgroupStat;
use super::metrics::{MetricsError, SERVICE};
use crate::services::directory::ServiceInfo;

/// Threads of one process whose run delay is read each sample; the rest
/// are not (a process of thousands of threads costs that many reads).
const MAX_THREADS: usize = 1024;

/// One service's saturation, as /stats/system shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceSaturation {
    /// Seconds its threads waited, runnable, for a CPU, per second.
    pub cpu_wait_ratio: f64,
    pub cpu_wait_seconds_total: f64,
    pub open_fds: u64,
    /// The largest share of its limit any of its processes uses.
    pub fd_usage_ratio: f64,
    /// Its cgroups' `cpu.max`, summed; absent when one is unlimited.
    pub cpu_limit_cores: Option<f64>,
    /// Share of the last interval's CFS periods that were throttled.
    pub cpu_throttled_ratio: f64,
    pub cpu_throttled_seconds_total: f64,
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills_total: u64,
    /// Its monitored ports' accept queues.
    pub accept_queues: Vec<listen::PortQueue>,
}

/// The saturation families, registered with the agent's registry.
pub struct SaturationMetrics {
    cpu_wait: CounterVec,
    open_fds: GaugeVec,
    fd_usage: GaugeVec,
    periods: CounterVec,
    throttled_periods: CounterVec,
    throttled_seconds: CounterVec,
    cpu_limit: GaugeVec,
    memory_limit: GaugeVec,
    memory_events: CounterVec,
    cpu_waiting: CounterVec,
    memory_waiting: CounterVec,
    memory_stalled: CounterVec,
    listen: listen::ListenMetrics,
    pub tcp: tcp::TcpHealthMetrics,
}

impl SaturationMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<CounterVec, MetricsError> {
                let c = CounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, MetricsError> {
            let g = GaugeVec::new(Opts::new(name, help), &[SERVICE])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            cpu_wait: counter(
                "apm_service_cpu_wait_seconds_total",
                "Seconds the service's threads were runnable but waiting for a CPU (schedstat run delay), summed.",
                &[SERVICE],
            )?,
            open_fds: gauge(
                "apm_service_open_fds",
                "Open file descriptors of the service's processes, summed.",
            )?,
            fd_usage: gauge(
                "apm_service_fd_usage_ratio",
                "The largest share of its RLIMIT_NOFILE soft limit any process of the service has open.",
            )?,
            periods: counter(
                "container_cpu_cfs_periods_total",
                "CFS enforcement periods of the service's cgroups that had runnable tasks (cpu.stat nr_periods).",
                &[SERVICE],
            )?,
            throttled_periods: counter(
                "container_cpu_cfs_throttled_periods_total",
                "Of those, periods in which the cgroup hit its cpu.max quota (cpu.stat nr_throttled).",
                &[SERVICE],
            )?,
            throttled_seconds: counter(
                "container_cpu_cfs_throttled_seconds_total",
                "Time the service's cgroups were throttled (cpu.stat throttled_usec), in seconds.",
                &[SERVICE],
            )?,
            cpu_limit: gauge(
                "apm_service_cpu_limit_cores",
                "The cpu.max quota of the service's cgroups in cores, summed; absent when unlimited.",
            )?,
            memory_limit: gauge(
                "container_spec_memory_limit_bytes",
                "The memory.max of the service's cgroups, summed; absent when unlimited.",
            )?,
            memory_events: counter(
                "apm_service_memory_events_total",
                "memory.events of the service's cgroups: high (over memory.high, reclaimed), max (at memory.max), oom_kill (processes killed).",
                &[SERVICE, "event"],
            )?,
            cpu_waiting: counter(
                "container_pressure_cpu_waiting_seconds_total",
                "Time some task of the service's cgroups waited for a CPU (cpu.pressure some), in seconds.",
                &[SERVICE],
            )?,
            memory_waiting: counter(
                "container_pressure_memory_waiting_seconds_total",
                "Time some task of the service's cgroups stalled on memory (memory.pressure some), in seconds.",
                &[SERVICE],
            )?,
            memory_stalled: counter(
                "container_pressure_memory_stalled_seconds_total",
                "Time all tasks of the service's cgroups stalled on memory (memory.pressure full), in seconds.",
                &[SERVICE],
            )?,
            listen: listen::ListenMetrics::register(registry)?,
            tcp: tcp::TcpHealthMetrics::register(registry)?,
        })
    }

    /// TCP health and listen drops per server port and destination, by
    /// service (`service`'s only, if given): the troubled first, at most
    /// [`NETWORK_ROWS`] a service.
    pub fn network(&self, service: Option<&str>) -> BTreeMap<String, Vec<tcp::NetworkRow>> {
        let mut rows = self.tcp.rows(service);
        for (labels, v) in tcp::series(&self.listen.dropped, service) {
            *tcp::row(&mut rows, &labels).listen_drops.get_or_insert(0) += v as u64;
        }
        let trouble = |r: &tcp::NetworkRow| {
            r.retransmitted
                + r.resets_sent
                + r.resets_received
                + r.connect_failures.unwrap_or(0)
                + r.listen_drops.unwrap_or(0)
        };
        rows.into_iter()
            .map(|(service, rows)| {
                let mut rows: Vec<tcp::NetworkRow> = rows.into_values().collect();
                rows.sort_by(|a, b| trouble(b).cmp(&trouble(a)).then(a.target.cmp(&b.target)));
                rows.truncate(NETWORK_ROWS);
                (service, rows)
            })
            .collect()
    }

    /// Drops a service's series (it is gone).
    fn forget(&self, service: &str) {
        for g in [
            &self.open_fds,
            &self.fd_usage,
            &self.cpu_limit,
            &self.memory_limit,
        ] {
            let _ = g.remove_label_values(&[service]);
        }
        for c in [
            &self.cpu_wait,
            &self.periods,
            &self.throttled_periods,
            &self.throttled_seconds,
            &self.cpu_waiting,
            &self.memory_waiting,
            &self.memory_stalled,
        ] {
            let _ = c.remove_label_values(&[service]);
        }
        for event in EVENTS {
            let _ = self.memory_events.remove_label_values(&[service, event]);
        }
    }
}

const EVENTS: [&str; 3] = ["high", "max", "oom_kill"];

/// Ports and destinations [`SaturationMetrics::network`] lists a service.
pub const NETWORK_ROWS: usize = 20;

/// Per-process and per-cgroup values of the previous sample.
pub struct Saturation {
    proc_root: PathBuf,
    /// Where the cgroup hierarchies are mounted.
    roots: cgroup::Roots,
    /// (pid, start time) → run delay of its threads, ns.
    last_wait_ns: HashMap<(u32, u64), u64>,
    /// cgroup path → its last reading.
    last_cgroup: HashMap<String, CgroupStat>,
    services: BTreeSet<Arc<str>>,
    listen: listen::Listen,
}

impl Saturation {
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            roots: cgroup::Roots::find(proc_root),
            last_wait_ns: HashMap::new(),
            last_cgroup: HashMap::new(),
            services: BTreeSet::new(),
            listen: listen::Listen::new(),
        }
    }

    /// Samples `services` (tgid → service) whose processes are alive with
    /// the start times in `started` (the sampler's own reading),
    /// `elapsed` seconds after the previous sample, into `metrics`.
    pub fn sample<S: BuildHasher>(
        &mut self,
        services: &HashMap<u32, ServiceInfo, S>,
        started: &HashMap<u32, u64>,
        elapsed: f64,
        metrics: &SaturationMetrics,
    ) -> BTreeMap<Arc<str>, ServiceSaturation> {
        let mut out: BTreeMap<Arc<str>, ServiceSaturation> = BTreeMap::new();
        let mut cgroups: BTreeMap<Arc<str>, BTreeMap<String, CgroupStat>> = BTreeMap::new();
        let mut waits = HashMap::new();
        let mut namespaces: BTreeMap<u64, listen::Namespace> = BTreeMap::new();
        for (&pid, info) in services {
            if !info.ports.is_empty() {
                // 0 (unreadable): the agent's own, as sock_diag sees it.
                let ns = std::fs::metadata(self.proc_root.join(format!("{pid}/ns/net")))
                    .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m));
                let wanted = namespaces.entry(ns).or_default();
                wanted.pid = pid;
                wanted
                    .ports
                    .entry(info.name.clone())
                    .or_default()
                    .extend(info.ports.iter().copied());
            }
            let Some(&start) = started.get(&pid) else {
                continue;
            };
            let Ok(process) = Process::new_with_root(self.proc_root.join(pid.to_string())) else {
                continue;
            };
            let s = out.entry(info.name.clone()).or_default();
            let wait_ns = run_delay_ns(&self.proc_root, pid);
            let key = (pid, start);
            if let Some(&last) = self.last_wait_ns.get(&key) {
                s.cpu_wait_seconds_total += wait_ns.saturating_sub(last) as f64 / 1e9;
            }
            waits.insert(key, wait_ns);
            let fds = open_fds(&self.proc_root, pid)
                .unwrap_or_else(|| process.fd_count().unwrap_or(0) as u64);
            s.open_fds += fds;
            if let Ok(limits) = process.limits()
                && let LimitValue::Value(max) = limits.max_open_files.soft_limit
                && max > 0
            {
                s.fd_usage_ratio = s.fd_usage_ratio.max(fds as f64 / max as f64);
            }
            let read = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
                .ok()
                .and_then(|t| self.roots.read(&t));
            if let Some((key, stat)) = read {
                cgroups
                    .entry(info.name.clone())
                    .or_default()
                    .insert(key, stat);
            }
        }
        self.last_wait_ns = waits;
        let mut seen = HashMap::new();
        for (name, s) in &mut out {
            let delta_wait = s.cpu_wait_seconds_total;
            s.cpu_wait_ratio = if elapsed > 0.0 {
                delta_wait / elapsed
            } else {
                0.0
            };
            metrics
                .cpu_wait
                .with_label_values(&[name])
                .inc_by(delta_wait);
            s.cpu_wait_seconds_total = metrics.cpu_wait.with_label_values(&[name]).get();
            metrics
                .open_fds
                .with_label_values(&[name])
                .set(s.open_fds as f64);
            metrics
                .fd_usage
                .with_label_values(&[name])
                .set(s.fd_usage_ratio);
            let paths = cgroups.remove(name).unwrap_or_default();
            self.cgroups(name, &paths, s, metrics, &mut seen);
        }
        self.last_cgroup = seen;
        for (name, queues) in self
            .listen
            .sample(&self.proc_root, &namespaces, &metrics.listen)
        {
            if let Some(s) = out.get_mut(&name) {
                s.accept_queues = queues;
            }
        }
        let gone: Vec<Arc<str>> = self
            .services
            .iter()
            .filter(|n| !out.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            metrics.forget(&name);
        }
        self.services = out.keys().cloned().collect();
        out
    }

    /// Adds what the cgroups at `paths` say to service `name`'s sample
    /// and series; `seen` collects this sample's readings.
    fn cgroups(
        &self,
        name: &str,
        paths: &BTreeMap<String, CgroupStat>,
        s: &mut ServiceSaturation,
        m: &SaturationMetrics,
        seen: &mut HashMap<String, CgroupStat>,
    ) {
        let (mut cpu, mut memory) = (false, false);
        let (mut cpu_limit, mut memory_limit) = (Some(0.0), Some(0u64));
        let (mut periods, mut throttled) = (0u64, 0u64);
        for (path, &now) in paths {
            let last = self.last_cgroup.get(path).copied().unwrap_or(now);
            seen.insert(path.clone(), now);
            let d = |f: fn(&CgroupStat) -> u64| f(&now).saturating_sub(f(&last));
            if now.has_cpu {
                cpu = true;
                periods += d(|c| c.periods);
                throttled += d(|c| c.throttled_periods);
                m.periods
                    .with_label_values(&[name])
                    .inc_by(d(|c| c.periods) as f64);
                m.throttled_periods
                    .with_label_values(&[name])
                    .inc_by(d(|c| c.throttled_periods) as f64);
                m.throttled_seconds
                    .with_label_values(&[name])
                    .inc_by(d(|c| c.throttled_us) as f64 / 1e6);
            }
            cpu_limit = cpu_limit.zip(now.cpu_limit_cores).map(|(a, b)| a + b);
            if now.has_memory {
                memory = true;
                for (event, n) in EVENTS.iter().zip([
                    d(|c| c.memory_high),
                    d(|c| c.memory_max),
                    d(|c| c.oom_kills),
                ]) {
                    m.memory_events
                        .with_label_values(&[name, event])
                        .inc_by(n as f64);
                }
            }
            memory_limit = memory_limit.zip(now.memory_limit_bytes).map(|(a, b)| a + b);
            if now.has_pressure {
                for (family, us) in [
                    (&m.cpu_waiting, d(|c| c.cpu_some_us)),
                    (&m.memory_waiting, d(|c| c.memory_some_us)),
                    (&m.memory_stalled, d(|c| c.memory_full_us)),
                ] {
                    family.with_label_values(&[name]).inc_by(us as f64 / 1e6);
                }
            }
        }
        let limits = !paths.is_empty();
        match cpu_limit.filter(|_| limits && cpu) {
            Some(cores) => m.cpu_limit.with_label_values(&[name]).set(cores),
            None => {
                let _ = m.cpu_limit.remove_label_values(&[name]);
            }
        }
        match memory_limit.filter(|_| limits && memory) {
            Some(bytes) => m.memory_limit.with_label_values(&[name]).set(bytes as f64),
            None => {
                let _ = m.memory_limit.remove_label_values(&[name]);
            }
        }
        s.cpu_limit_cores = cpu_limit.filter(|_| limits && cpu);
        s.memory_limit_bytes = memory_limit.filter(|_| limits && memory);
        s.cpu_throttled_ratio = if periods > 0 {
            throttled as f64 / periods as f64
        } else {
            0.0
        };
        if cpu {
            s.cpu_throttled_seconds_total = m.throttled_seconds.with_label_values(&[name]).get();
        }
        if memory {
            s.oom_kills_total = m.memory_events.with_label_values(&[name, "oom_kill"]).get() as u64;
        }
    }
}

/// The run delay (ns runnable, waiting for a CPU) of `pid`'s threads,
/// summed over its first [`MAX_THREADS`].
/// The descriptors `pid` holds, from the size of its `fd` directory
/// (Linux 6.2+): microseconds where listing the directory takes
/// milliseconds per ten thousand descriptors. None where the kernel
/// reports no size (older kernels, or none open).
fn open_fds(proc_root: &Path, pid: u32) -> Option<u64> {
    let size = std::fs::metadata(proc_root.join(format!("{pid}/fd")))
        .ok()?
        .len();
    (size > 0).then_some(size)
}

fn run_delay_ns(proc_root: &Path, pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return 0;
    };
    tasks
        .flatten()
        .take(MAX_THREADS)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_directorys_size_is_the_descriptor_count() {
        let proc_root = Path::new("/proc");
        let pid = std::process::id();
        let listed = Process::new_with_root(proc_root.join(pid.to_string()))
            .and_then(|p| p.fd_count())
            .expect("listed") as u64;
        // Kernels before 6.2 report no size: the listing is used there.
        if let Some(n) = open_fds(proc_root, pid) {
            // Other test threads may open or close some meanwhile.
            assert!(n.abs_diff(listed) <= 16, "{n} against {listed}");
        }
    }
}
