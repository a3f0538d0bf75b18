//! A process's cgroups' saturation files. cgroup v2: `cpu.stat`
//! (periods and throttling), `cpu.max`, `memory.max`, `memory.events` and
//! the `cpu.pressure` and `memory.pressure` stall totals. cgroup v1 (a
//! host whose cpu and memory controllers are on v1 hierarchies): the cpu
//! controller's `cpu.stat` and `cpu.cfs_quota_us`/`cpu.cfs_period_us`,
//! the memory controller's `memory.limit_in_bytes`, `memory.failcnt` and
//! `memory.oom_control` (no stall totals). A file that is missing (a
//! controller not enabled, the root cgroup) reads as absent.

use std::path::{Path, PathBuf};

use super::super::hostfs::parse_pressure;

/// What one cgroup says; counters are cumulative since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgroupStat {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_us: u64,
    /// `cpu.max` as cores (quota / period); `None` when unlimited.
    pub cpu_limit_cores: Option<f64>,
    /// `memory.max` in bytes; `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// `memory.events`: times over `memory.high`, at `memory.max`, and
    /// processes killed by the OOM killer.
    pub memory_high: u64,
    pub memory_max: u64,
    pub oom_kills: u64,
    /// Stall totals in microseconds: some task waiting for a CPU, some
    /// and all tasks waiting for memory.
    pub cpu_some_us: u64,
    pub memory_some_us: u64,
    pub memory_full_us: u64,
    /// Which files were there: `cpu.stat` with periods (the cpu
    /// controller), `memory.events`.
    pub has_cpu: bool,
    pub has_memory: bool,
    /// Stall totals were there (cgroup v2 with PSI).
    pub has_pressure: bool,
}

/// Where the hierarchies are mounted: cgroup v2's root, and the v1
/// hierarchies of the cpu and memory controllers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Roots {
    pub v2: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
    pub memory: Option<PathBuf>,
}

impl Roots {
    /// From the host's mount table (`<proc>/1/mountinfo`, under
    /// `<proc>/1/root`), else (that root unreadable: no CAP_SYS_PTRACE
    /// over pid 1) the agent's own.
    pub fn find(proc_root: &Path) -> Self {
        for (mountinfo, root) in [
            (proc_root.join("1/mountinfo"), proc_root.join("1/root")),
            (proc_root.join("self/mountinfo"), PathBuf::from("/")),
        ] {
            let Ok(text) = std::fs::read_to_string(mountinfo) else {
                continue;
            };
            let roots = Self::parse(&text, &root);
            if [&roots.v2, &roots.cpu, &roots.memory]
                .iter()
                .any(|r| r.as_ref().is_some_and(|p| p.is_dir()))
            {
                return roots;
            }
        }
        Self::default()
    }

    fn parse(mountinfo: &str, root: &Path) -> Self {
        let mut roots = Self::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut fields = left.split_whitespace();
            let (Some("/"), Some(point)) = (fields.nth(3), fields.next()) else {
                continue;
            };
            let mut right = right.split_whitespace();
            let (fstype, options) = (right.next(), right.nth(1).unwrap_or(""));
            let path = root.join(point.trim_start_matches('/'));
            match fstype {
                Some("cgroup2") => roots.v2 = roots.v2.take().or(Some(path)),
                Some("cgroup") => {
                    for controller in options.split(',') {
                        let slot = match controller {
                            "cpu" => &mut roots.cpu,
                            "memory" => &mut roots.memory,
                            _ => continue,
                        };
                        *slot = slot.take().or(Some(path.clone()));
                    }
                }
                _ => {}
            }
        }
        roots
    }

    /// The cgroups of a process whose /proc/PID/cgroup is `text`: a key
    /// naming them, and what they say; `None` when all are roots.
    pub fn read(&self, text: &str) -> Option<(String, CgroupStat)> {
        let (mut v2, mut cpu, mut memory) = (None, None, None);
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = path.trim_start_matches('/');
            if path.is_empty() {
                continue;
            }
            if controllers.is_empty() {
                v2 = Some(path);
            }
            for c in controllers.split(',') {
                match c {
                    "cpu" => cpu = Some(path),
                    "memory" => memory = Some(path),
                    _ => {}
                }
            }
        }
        if v2.is_none() && cpu.is_none() && memory.is_none() {
            return None;
        }
        let mut stat = match (&self.v2, v2) {
            (Some(root), Some(path)) => read(&root.join(path)),
            _ => CgroupStat::default(),
        };
        if let (false, Some(root), Some(path)) = (stat.has_cpu, &self.cpu, cpu) {
            read_v1_cpu(&root.join(path), &mut stat);
        }
        if let (false, Some(root), Some(path)) = (stat.has_memory, &self.memory, memory) {
            read_v1_memory(&root.join(path), &mut stat);
        }
        let key = [v2, cpu, memory].map(|p| p.unwrap_or("")).join("|");
        Some((key, stat))
    }
}

/// A v1 cpu controller's cgroup at `dir`: periods and throttling (its
/// `throttled_time` is in ns), and its CFS quota.
fn read_v1_cpu(dir: &Path, s: &mut CgroupStat) {
    let Ok(t) = std::fs::read_to_string(dir.join("cpu.stat")) else {
        return;
    };
    cpu_stat(&t, ("throttled_time", 1000), s);
    let number = |name: &str| -> Option<f64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    s.cpu_limit_cores = match (number("cpu.cfs_quota_us"), number("cpu.cfs_period_us")) {
        (Some(quota), Some(period)) if quota > 0.0 && period > 0.0 => Some(quota / period),
        _ => None,
    };
}

/// A v1 memory controller's cgroup at `dir`: its limit (a page-rounded
/// 2^63 is none), the times it was hit, and OOM kills.
fn read_v1_memory(dir: &Path, s: &mut CgroupStat) {
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let Some(limit) = text("memory.limit_in_bytes") else {
        return;
    };
    s.has_memory = true;
    s.memory_limit_bytes = limit.trim().parse().ok().filter(|&b: &u64| b < 1 << 62);
    s.memory_max = text("memory.failcnt")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    if let Some(t) = text("memory.oom_control") {
        s.oom_kills = pairs(&t)
            .find(|(k, _)| *k == "oom_kill")
            .map_or(0, |(_, v)| v);
    }
}

/// Reads the v2 cgroup at `dir`.
pub fn read(dir: &Path) -> CgroupStat {
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut s = CgroupStat::default();
    if let Some(t) = text("cpu.stat") {
        cpu_stat(&t, ("throttled_usec", 1), &mut s);
    }
    s.cpu_limit_cores = text("cpu.max").and_then(|t| cpu_max(&t));
    s.memory_limit_bytes = text("memory.max").and_then(|t| t.trim().parse().ok());
    if let Some(t) = text("memory.events") {
        s.has_memory = true;
        for (k, v) in pairs(&t) {
            match k {
                "high" => s.memory_high = v,
                "max" => s.memory_max = v,
                "oom_kill" => s.oom_kills = v,
                _ => {}
            }
        }
    }
    if let Some(t) = text("cpu.pressure") {
        s.has_pressure = true;
        s.cpu_some_us = parse_pressure(&t).some.map_or(0, |l| l.total_us);
    }
    if let Some(t) = text("memory.pressure") {
        let p = parse_pressure(&t);
        s.memory_some_us = p.some.map_or(0, |l| l.total_us);
        s.memory_full_us = p.full.map_or(0, |l| l.total_us);
    }
    s
}

/// A `cpu.stat`'s periods and throttling into `s`: the throttled time
/// is under key `time.0`, `time.1` of its units a microsecond (v2's µs:
/// 1, v1's ns: 1000).
fn cpu_stat(text: &str, time: (&str, u64), s: &mut CgroupStat) {
    for (k, v) in pairs(text) {
        match k {
            "nr_periods" => {
                s.periods = v;
                s.has_cpu = true;
            }
            "nr_throttled" => s.throttled_periods = v,
            _ if k == time.0 => s.throttled_us = v / time.1,
            _ => {}
        }
    }
}

/// `key value` lines of a flat-keyed cgroup file.
fn pairs(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (k, v) = line.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}

/// `cpu.max`: `$QUOTA $PERIOD` (microseconds) or `max $PERIOD`.
fn cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota: f64 = words.next()?.parse().ok()?;
    let period: f64 = words.next()?.parse().ok()?;
    (period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_cgroup_reads_whole() {
        let dir = std::env::temp_dir().join(format!("apm-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in [
            (
                "cpu.stat",
                "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 50\nnr_throttled 20\nthrottled_usec 150000\n",
            ),
            ("cpu.max", "20000 100000\n"),
            ("memory.max", "max\n"),
            ("memory.events", "low 0\nhigh 3\nmax 2\noom 1\noom_kill 1\n"),
            (
                "memory.pressure",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
            ),
        ] {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let s = read(&dir);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            (s.periods, s.throttled_periods, s.throttled_us),
            (50, 20, 150_000)
        );
        assert_eq!(s.cpu_limit_cores, Some(0.2));
        assert_eq!(s.memory_limit_bytes, None);
        assert_eq!((s.memory_high, s.memory_max, s.oom_kills), (3, 2, 1));
        assert_eq!(
            (s.memory_some_us, s.memory_full_us, s.cpu_some_us),
            (42, 7, 0)
        );
        assert!(s.has_cpu && s.has_memory);
        assert_eq!(cpu_max("max 100000"), None);
    }

    #[test]
    fn v1_hierarchies_are_found_and_read() {
        let base = std::env::temp_dir().join(format!("apm-cg1-{}", std::process::id()));
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let roots = Roots::parse(mountinfo, &base);
        assert_eq!(roots.cpu, Some(base.join("sys/fs/cgroup/cpu")));
        assert_eq!(roots.v2, Some(base.join("sys/fs/cgroup/unified")));
        let cpu = base.join("sys/fs/cgroup/cpu/app");
        let memory = base.join("sys/fs/cgroup/memory/app");
        std::fs::create_dir_all(&cpu).expect("dir");
        std::fs::create_dir_all(&memory).expect("dir");
        for (dir, name, text) in [
            (
                &cpu,
                "cpu.stat",
                "nr_periods 40\nnr_throttled 30\nthrottled_time 2500000000\n",
            ),
            (&cpu, "cpu.cfs_quota_us", "20000\n"),
            (&cpu, "cpu.cfs_period_us", "100000\n"),
            (&memory, "memory.limit_in_bytes", "9223372036854771712\n"),
            (&memory, "memory.failcnt", "4\n"),
            (
                &memory,
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
        ] {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let read = roots.read("4:memory:/app\n1:cpu:/app\n0::/\n");
        std::fs::remove_dir_all(&base).ok();
        let (key, s) = read.expect("cgroups");
        assert_eq!(key, "|app|app");
        assert_eq!(
            (
                s.periods,
                s.throttled_periods,
                s.throttled_us,
                s.cpu_limit_cores
            ),
            (40, 30, 2_500_000, Some(0.2))
        );
        assert_eq!(
            (s.memory_limit_bytes, s.memory_max, s.oom_kills),
            (None, 4, 2)
        );
        assert!(roots.read("1:cpu:/\n0::/\n").is_none());
    }
}
