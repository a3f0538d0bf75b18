//! Cgroups the tests make, the way a container runtime would, to give a
//! process limits: under the cgroup-v2 root when its cpu and memory
//! controllers are there (/sys/fs/cgroup), else in the v1 cpu and memory
//! hierarchies (/sys/fs/cgroup/cpu, /sys/fs/cgroup/memory: a host whose
//! controllers are bound to v1, as this VM's are).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// A cgroup (one directory on v2, one per controller on v1), its
/// processes moved back to the root and it removed when dropped.
pub struct Cgroup {
    /// The directories made, each with the root it is under.
    dirs: Vec<(PathBuf, PathBuf)>,
    v2: bool,
}

impl Cgroup {
    pub fn create(tag: &str) -> Self {
        let name = format!("apm-e2e-{tag}-{}", std::process::id());
        let v2 = std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"));
        let roots: Vec<PathBuf> = if v2 {
            vec![PathBuf::from(ROOT)]
        } else {
            ["cpu", "memory"]
                .iter()
                .map(|c| Path::new(ROOT).join(c))
                .collect()
        };
        let dirs = roots
            .into_iter()
            .map(|root| {
                let dir = root.join(&name);
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("a cgroup at {}: {e}", dir.display()));
                (root, dir)
            })
            .collect();
        Self { dirs, v2 }
    }

    /// The directory holding controller `controller`'s files.
    fn dir(&self, controller: &str) -> &Path {
        let i = usize::from(!self.v2 && controller == "memory");
        &self.dirs[i].1
    }

    fn write(&self, controller: &str, file: &str, value: &str) {
        let path = self.dir(controller).join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// At most `cores` of CPU time (a CFS quota over 100 ms periods).
    pub fn limit_cpu(&self, cores: f64) {
        let quota = ((cores * 100_000.0) as u64).to_string();
        if self.v2 {
            self.write("cpu", "cpu.max", &format!("{quota} 100000"));
        } else {
            self.write("cpu", "cpu.cfs_period_us", "100000");
            self.write("cpu", "cpu.cfs_quota_us", &quota);
        }
    }

    /// At most `bytes` of memory.
    pub fn limit_memory(&self, bytes: u64) {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        self.write("memory", file, &bytes.to_string());
    }

    /// Moves process `pid` (all its threads) into it.
    pub fn adopt(&self, pid: u32) {
        for (_, dir) in &self.dirs {
            let path = dir.join("cgroup.procs");
            std::fs::write(&path, pid.to_string())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for (root, dir) in &self.dirs {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}
