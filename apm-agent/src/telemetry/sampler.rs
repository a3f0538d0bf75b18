//! Process and host sampling: the USE side of the picture.
//!
//! Every `--sample-interval` the sampler reads, for every monitored service,
//! the CPU and resident memory of all its processes (`<proc>/PID/stat`), and
//! for the host CPU time per mode (`<proc>/stat`), memory (`<proc>/meminfo`)
//! and load (`<proc>/loadavg`), usage of real filesystems
//! (`<proc>/1/mounts` + statvfs through `<proc>/1/root`: the node's, not a
//! container's) and pressure stall information
//! (`<proc>/pressure`). Everything is read under `--proc-root`, through the
//! procfs crate, so the agent works with the host's procfs mounted anywhere. The latest sample is kept for
//! /stats/system, which therefore never waits for a measurement.

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use procfs::{FromRead as _, LoadAverage, Meminfo, process::Process};
use serde::Serialize;

use super::hostfs::{CpuTicks, Pressure, parse_mounts, parse_pressure, parse_proc_stat, statvfs};
use crate::{services::directory::ServiceInfo, telemetry::metrics::Metrics};

/// A process, across pid reuse: its pid and its start time (clock ticks
/// after boot).
type ProcessKey = (u32, u64);
/// Clock ticks per second of /proc/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

#[derive(Clone, Debug, Serialize)]
pub struct SystemSample {
    /// Seconds since the Unix epoch when the sample was taken.
    pub timestamp: f64,
    pub host: HostSample,
    pub services: BTreeMap<String, ServiceSample>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HostSample {
    pub cpu_count: usize,
    /// Share of CPU time not idle or waiting for I/O since the last sample.
    pub cpu_busy_ratio: f64,
    pub load_average: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_used_ratio: f64,
    pub filesystems: Vec<Filesystem>,
    /// Absent where the kernel has no /proc/pressure.
    pub pressure: Option<BTreeMap<String, Pressure>>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ServiceSample {
    pub processes: usize,
    pub cpu_cores: f64,
    pub cpu_seconds_total: f64,
    pub resident_memory_bytes: u64,
    pub saturation: super::saturation::ServiceSaturation,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Filesystem {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub size_bytes: u64,
    pub avail_bytes: u64,
    pub free_bytes: u64,
    pub used_ratio: f64,
}

pub struct Sampler {
    proc_root: PathBuf,
    ticks_per_second: f64,
    page_size: u64,
    last_cpu_ms: HashMap<ProcessKey, u64>,
    last_stat: Option<Vec<CpuTicks>>,
    last_pressure_us: HashMap<(String, &'static str), u64>,
    last_sample_at: Option<Instant>,
    service_cpu_total: HashMap<String, f64>,
    saturation: super::saturation::Saturation,
}

impl Sampler {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        let proc_root = proc_root.into();
        Self {
            saturation: super::saturation::Saturation::new(&proc_root),
            proc_root,
            ticks_per_second: procfs::ticks_per_second().max(1) as f64,
            page_size: procfs::page_size(),
            last_cpu_ms: HashMap::new(),
            last_stat: None,
            last_pressure_us: HashMap::new(),
            last_sample_at: None,
            service_cpu_total: HashMap::new(),
        }
    }

    /// Takes one sample of `services` (tgid → service) and the host, and
    /// updates the metrics.
    pub fn sample<S: BuildHasher>(
        &mut self,
        services: &HashMap<u32, ServiceInfo, S>,
        metrics: &Metrics,
    ) -> SystemSample {
        let now = Instant::now();
        let elapsed = self
            .last_sample_at
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        self.last_sample_at = Some(now);
        let services = self.sample_services(services, elapsed, metrics);
        let host = self.sample_host(metrics);
        SystemSample {
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            host,
            services,
        }
    }

    fn sample_services<S: BuildHasher>(
        &mut self,
        services: &HashMap<u32, ServiceInfo, S>,
        elapsed: f64,
        metrics: &Metrics,
    ) -> BTreeMap<String, ServiceSample> {
        let mut out: BTreeMap<String, ServiceSample> = BTreeMap::new();
        let mut seen_cpu: HashMap<ProcessKey, u64> = HashMap::new();
        for (&pid, info) in services {
            let entry = out.entry(info.name.to_string()).or_default();
            // A process that exited since discovery simply is not counted.
            let Ok(stat) =
                Process::new_with_root(self.proc_root.join(pid.to_string())).and_then(|p| p.stat())
            else {
                continue;
            };
            entry.processes += 1;
            entry.resident_memory_bytes += stat.rss * self.page_size;
            // CPU in milliseconds, from clock ticks.
            let cpu_ms = ((stat.utime + stat.stime) as f64 * 1000.0 / self.ticks_per_second) as u64;
            // Keyed by start time too: a reused pid is another process,
            // whose CPU since its start is not this interval's.
            let key = (pid, stat.starttime);
            let delta = match self.last_cpu_ms.get(&key) {
                Some(&last) if cpu_ms >= last => cpu_ms - last,
                // First sight of this process: its history is not ours to
                // attribute to this interval.
                _ => 0,
            };
            seen_cpu.insert(key, cpu_ms);
            entry.cpu_seconds_total += delta as f64 / 1000.0;
        }
        self.last_cpu_ms = seen_cpu;
        // The processes just read, by start time: saturation reads no
        // stat of its own.
        let started: HashMap<u32, u64> = self.last_cpu_ms.keys().copied().collect();
        for (name, s) in self
            .saturation
            .sample(services, &started, elapsed, &metrics.saturation)
        {
            if let Some(entry) = out.get_mut(&*name) {
                entry.saturation = s;
            }
        }
        // Services that are gone: drop their gauges (a stale value would
        // read as a live one) and their CPU total.
        let gone: Vec<String> = self
            .service_cpu_total
            .keys()
            .filter(|name| !out.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.service_cpu_total.remove(&name);
            let _ = metrics.process_cpu_cores.remove_label_values(&[&name]);
            let _ = metrics.process_rss.remove_label_values(&[&name]);
            let _ = metrics.process_count.remove_label_values(&[&name]);
        }
        for (name, s) in out.iter_mut() {
            let delta = s.cpu_seconds_total;
            s.cpu_cores = if elapsed > 0.0 { delta / elapsed } else { 0.0 };
            let total = self.service_cpu_total.entry(name.clone()).or_default();
            *total += delta;
            s.cpu_seconds_total = *total;
            metrics
                .process_cpu_seconds
                .with_label_values(&[name])
                .inc_by(delta);
            metrics
                .process_cpu_cores
                .with_label_values(&[name])
                .set(s.cpu_cores);
            metrics
                .process_rss
                .with_label_values(&[name])
                .set(s.resident_memory_bytes as f64);
            metrics
                .process_count
                .with_label_values(&[name])
                .set(i64::try_from(s.processes).unwrap_or(i64::MAX));
        }
        out
    }

    /// The host's mount table and the directory its mountpoints are under:
    /// pid 1's (`<proc>/1/mounts`, reached through `<proc>/1/root`), which
    /// under a DaemonSet with hostPID are the node's and not the
    /// container's; else our own (`<proc>/self/mounts`, from `/`).
    fn host_mounts(&self) -> (String, PathBuf) {
        let init_root = self.proc_root.join("1/root");
        if init_root.join(".").metadata().is_ok()
            && let Ok(text) = std::fs::read_to_string(self.proc_root.join("1/mounts"))
        {
            return (text, init_root);
        }
        let own = std::fs::read_to_string(self.proc_root.join("self/mounts")).unwrap_or_default();
        (own, PathBuf::from("/"))
    }

    fn sample_host(&mut self, metrics: &Metrics) -> HostSample {
        let mut host = HostSample::default();
        // CPU per mode, and busy share since the last sample.
        if let Ok(text) = std::fs::read_to_string(self.proc_root.join("stat")) {
            let stat = parse_proc_stat(&text);
            host.cpu_count = stat.iter().filter(|(c, _)| c != "all").count();
            // Counters since boot, as node_exporter: the first sample adds
            // everything so far, later ones the difference.
            let zero = Vec::new();
            let previous = self.last_stat.as_ref().unwrap_or(&zero);
            for (cpu, ticks) in &stat {
                let before = previous
                    .iter()
                    .find(|(c, _)| c == cpu)
                    .map_or([0; 8], |(_, b)| *b);
                if cpu == "all" {
                    if !previous.is_empty() {
                        let total: u64 = ticks
                            .iter()
                            .sum::<u64>()
                            .saturating_sub(before.iter().sum());
                        let idle = (ticks[3] + ticks[4]).saturating_sub(before[3] + before[4]);
                        if total > 0 {
                            host.cpu_busy_ratio = 1.0 - idle as f64 / total as f64;
                        }
                    }
                    continue;
                }
                for (i, mode) in CPU_MODES.iter().enumerate() {
                    let delta = ticks[i].saturating_sub(before[i]) as f64 / USER_HZ;
                    metrics
                        .node_cpu_seconds
                        .with_label_values(&[cpu.as_str(), mode])
                        .inc_by(delta);
                }
            }
            self.last_stat = Some(stat);
        }
        metrics.host_cpu_busy.set(host.cpu_busy_ratio);

        if let Ok(mem) = Meminfo::from_file(self.proc_root.join("meminfo")) {
            host.memory_total_bytes = mem.mem_total;
            // Kernels before 3.14 lack MemAvailable: free is the closest.
            host.memory_available_bytes = mem.mem_available.unwrap_or(mem.mem_free);
        }
        host.memory_used_bytes = host
            .memory_total_bytes
            .saturating_sub(host.memory_available_bytes);
        host.memory_used_ratio = if host.memory_total_bytes > 0 {
            host.memory_used_bytes as f64 / host.memory_total_bytes as f64
        } else {
            0.0
        };
        metrics
            .host_memory_total
            .set(host.memory_total_bytes as f64);
        metrics
            .host_memory_available
            .set(host.memory_available_bytes as f64);
        metrics.host_memory_used.set(host.memory_used_bytes as f64);

        if let Ok(load) = LoadAverage::from_file(self.proc_root.join("loadavg")) {
            host.load_average = [
                f64::from(load.one),
                f64::from(load.five),
                f64::from(load.fifteen),
            ];
        }
        for (gauge, v) in [
            (&metrics.node_load1, host.load_average[0]),
            (&metrics.node_load5, host.load_average[1]),
            (&metrics.node_load15, host.load_average[2]),
        ] {
            gauge.set(v);
        }

        let (mounts, root) = self.host_mounts();
        for m in parse_mounts(&mounts) {
            let Some((size, avail, free)) = statvfs(&root, &m.mountpoint) else {
                continue;
            };
            if size == 0 {
                continue;
            }
            let labels = [m.device.as_str(), m.fstype.as_str(), m.mountpoint.as_str()];
            metrics
                .node_fs_size
                .with_label_values(&labels)
                .set(size as f64);
            metrics
                .node_fs_avail
                .with_label_values(&labels)
                .set(avail as f64);
            metrics
                .node_fs_free
                .with_label_values(&labels)
                .set(free as f64);
            host.filesystems.push(Filesystem {
                used_ratio: 1.0 - avail as f64 / size as f64,
                device: m.device,
                mountpoint: m.mountpoint,
                fstype: m.fstype,
                size_bytes: size,
                avail_bytes: avail,
                free_bytes: free,
            });
        }

        let mut pressure = BTreeMap::new();
        for resource in ["cpu", "memory", "io"] {
            let Ok(text) = std::fs::read_to_string(self.proc_root.join("pressure").join(resource))
            else {
                continue;
            };
            let p = parse_pressure(&text);
            for (kind, line) in [("some", p.some), ("full", p.full)] {
                let Some(line) = line else { continue };
                metrics
                    .host_pressure_avg10
                    .with_label_values(&[resource, kind])
                    .set(line.avg10 / 100.0);
                let key = (resource.to_owned(), kind);
                let last = self.last_pressure_us.insert(key, line.total_us);
                let delta = line.total_us.saturating_sub(last.unwrap_or(0));
                metrics
                    .host_pressure_seconds
                    .with_label_values(&[resource, kind])
                    .inc_by(delta as f64 / 1e6);
            }
            pressure.insert(resource.to_owned(), p);
        }
        host.pressure = (!pressure.is_empty()).then_some(pressure);
        host
    }
}

/// Whether a sample taken at `at` is recent enough for an interval `every`.
pub fn fresh(at: Instant, every: std::time::Duration) -> bool {
    at.elapsed() <= every * 3 + std::time::Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A procfs mounted somewhere else (--proc-root): one process using
    /// 3 s of CPU and 2560 pages, 2 GiB of 4 GiB memory available.
    #[test]
    fn everything_is_read_under_the_proc_root() {
        let root = std::env::temp_dir().join(format!("apm-sampler-{}", std::process::id()));
        std::fs::create_dir_all(root.join("4242")).expect("dir");
        let mut stat = String::from(
            "4242 (apm-fake) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1000 104857600 2560",
        );
        for _ in 0..29 {
            stat.push_str(" 0");
        }
        std::fs::write(root.join("4242/stat"), stat + "\n").expect("stat");
        // A real meminfo (procfs wants all its fields), with our values.
        let meminfo: String = std::fs::read_to_string("/proc/meminfo")
            .expect("meminfo")
            .lines()
            .map(|l| match l.split(':').next() {
                Some("MemTotal") => "MemTotal:        4194304 kB".to_owned(),
                Some("MemAvailable") => "MemAvailable:    2097152 kB".to_owned(),
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(root.join("meminfo"), meminfo + "\n").expect("meminfo");
        std::fs::write(root.join("loadavg"), "0.50 0.25 0.10 1/100 4242\n").expect("loadavg");
        std::fs::write(
            root.join("stat"),
            "cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 10 0 5 100 0 0 0 0 0 0\n",
        )
        .expect("stat");
        let metrics = Metrics::new().expect("metrics");
        let mut sampler = Sampler::new(&root);
        let services: HashMap<u32, ServiceInfo> = [(
            4242,
            ServiceInfo {
                name: "fake".into(),
                ports: vec![],
            },
        )]
        .into();
        let s = sampler.sample(&services, &metrics);
        let fake = &s.services["fake"];
        assert_eq!(fake.processes, 1);
        assert_eq!(fake.resident_memory_bytes, 2560 * procfs::page_size());
        assert_eq!(s.host.memory_total_bytes, 4 << 30);
        assert_eq!(s.host.memory_available_bytes, 2 << 30);
        assert!((s.host.memory_used_ratio - 0.5).abs() < 1e-9);
        assert!((s.host.load_average[0] - 0.5).abs() < 1e-6);
        assert_eq!(s.host.cpu_count, 1);
        // 300 more ticks of CPU by the next sample.
        let stat = std::fs::read_to_string(root.join("4242/stat")).expect("stat");
        std::fs::write(
            root.join("4242/stat"),
            stat.replacen(" 250 50 ", " 450 150 ", 1),
        )
        .expect("stat");
        let s = sampler.sample(&services, &metrics);
        let expected = 300.0 / procfs::ticks_per_second() as f64;
        assert!(
            (s.services["fake"].cpu_seconds_total - expected).abs() < 0.01,
            "{:?}",
            s.services
        );
        // The pid is reused by another process (a later start time) that
        // has already used more CPU: none of it is this interval's.
        let stat = std::fs::read_to_string(root.join("4242/stat")).expect("stat");
        std::fs::write(
            root.join("4242/stat"),
            stat.replacen(" 450 150 ", " 900 300 ", 1)
                .replacen(" 1 0 1000 ", " 1 0 5000 ", 1),
        )
        .expect("stat");
        let s = sampler.sample(&services, &metrics);
        assert!(
            (s.services["fake"].cpu_seconds_total - expected).abs() < 0.01,
            "{:?}",
            s.services
        );
        assert_eq!(s.services["fake"].cpu_cores, 0.0, "{:?}", s.services);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn gauges_of_services_that_are_gone_are_removed() {
        let metrics = Metrics::new().expect("metrics");
        let mut sampler = Sampler::new("/proc");
        let me: HashMap<u32, ServiceInfo> = [(
            std::process::id(),
            ServiceInfo {
                name: "self".into(),
                ports: vec![],
            },
        )]
        .into();
        sampler.sample(&me, &metrics);
        assert!(
            metrics
                .encode()
                .expect("encode")
                .contains("apm_service_processes{service_name=\"self\"} 1")
        );
        sampler.sample(&HashMap::new(), &metrics);
        let text = metrics.encode().expect("encode");
        assert!(
            !text.contains("apm_service_processes{service_name=\"self\"}"),
            "{text}"
        );
        assert!(!text.contains("apm_process_resident_memory_bytes{service_name=\"self\"}"));
    }

    #[test]
    fn a_sample_of_this_host_is_plausible() {
        let metrics = Metrics::new().expect("metrics");
        let mut sampler = Sampler::new("/proc");
        let me = std::process::id();
        let services: HashMap<u32, ServiceInfo> = [(
            me,
            ServiceInfo {
                name: "self".into(),
                ports: vec![],
            },
        )]
        .into();
        sampler.sample(&services, &metrics);
        let s = sampler.sample(&services, &metrics);
        assert!(s.host.memory_total_bytes > 0);
        assert!(s.host.cpu_count >= 1);
        assert!(
            s.host.filesystems.iter().any(|f| f.mountpoint == "/"),
            "{:?}",
            s.host.filesystems
        );
        let own = &s.services["self"];
        assert_eq!(own.processes, 1);
        assert!(own.resident_memory_bytes > 1_000_000);
    }
}
