//! The host's own files, parsed: mount tables, /proc/stat, pressure
//! stall information, and statvfs of a mountpoint.

use serde::Serialize;

/// Filesystem types that hold no user data (node_exporter's default
/// exclusion list).
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "erofs",
    "sysfs",
    "tracefs",
    "ramfs",
];
/// Filesystems reported at most (label cardinality).
pub const MAX_FILESYSTEMS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
}

/// One line of a /proc/pressure file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Stall time in microseconds since boot.
    pub total_us: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub some: Option<PressureLine>,
    pub full: Option<PressureLine>,
}

/// Parses /proc/pressure/{cpu,memory,io}.
pub fn parse_pressure(text: &str) -> Pressure {
    let mut p = Pressure::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let mut parsed = PressureLine::default();
        for word in words {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            match k {
                "avg10" => parsed.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => parsed.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => parsed.avg300 = v.parse().unwrap_or(0.0),
                "total" => parsed.total_us = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        match kind {
            Some("some") => p.some = Some(parsed),
            Some("full") => p.full = Some(parsed),
            _ => {}
        }
    }
    p
}

/// Real filesystems from a mounts table (/proc/self/mounts format), first
/// mount of each mountpoint, pseudo filesystems skipped.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (device, mountpoint, fstype) = (f.next()?, f.next()?, f.next()?);
            if PSEUDO_FS.contains(&fstype) || !seen.insert(mountpoint.to_owned()) {
                return None;
            }
            Some(Mount {
                device: unescape_mount(device),
                mountpoint: unescape_mount(mountpoint),
                fstype: fstype.to_owned(),
            })
        })
        .take(MAX_FILESYSTEMS)
        .collect()
}

/// /proc/mounts escapes space, tab, newline and backslash as \ooo.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(char::from(v));
            i += 4;
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

/// A CPU's label and its ticks per mode in [`CPU_MODES`] order.
pub type CpuTicks = (String, [u64; 8]);

/// Per-CPU times from /proc/stat. The aggregate line is labelled "all".
pub fn parse_proc_stat(text: &str) -> Vec<CpuTicks> {
    text.lines()
        .filter(|l| l.starts_with("cpu"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let cpu = match name.strip_prefix("cpu")? {
                "" => "all".to_owned(),
                n => n.to_owned(),
            };
            let mut ticks = [0u64; 8];
            for t in ticks.iter_mut() {
                *t = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            Some((cpu, ticks))
        })
        .collect()
}

/// Size, available and free bytes of the filesystem at `mountpoint`, seen
/// under `root` (the host's root directory, e.g. `/proc/1/root`).
pub fn statvfs(root: &std::path::Path, mountpoint: &str) -> Option<(u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = root.join(mountpoint.trim_start_matches('/'));
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero is a valid statvfs value; statvfs writes into the
    // struct we own and reads the NUL-terminated path, both valid for the
    // call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((
        st.f_blocks as u64 * frsize,
        st.f_bavail as u64 * frsize,
        st.f_bfree as u64 * frsize,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_files_parse() {
        let cpu = "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        let p = parse_pressure(cpu);
        assert_eq!(
            p.some,
            Some(PressureLine {
                avg10: 1.5,
                avg60: 0.75,
                avg300: 0.1,
                total_us: 123_456
            })
        );
        assert_eq!(p.full.map(|f| f.total_us), Some(0));
        // Older kernels: cpu has no "full" line.
        let p = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n");
        assert!(p.full.is_none());
        assert_eq!(parse_pressure("garbage\n"), Pressure::default());
    }

    #[test]
    fn mounts_skip_pseudo_filesystems_and_duplicates() {
        let mounts = "\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
sysfs /sys sysfs rw 0 0
tmpfs /run tmpfs rw,nosuid,nodev 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
/dev/vdb /data\\040disk xfs rw 0 0
/dev/vda / ext4 rw,relatime 0 0
tracefs /sys/kernel/tracing tracefs rw 0 0
";
        let m = parse_mounts(mounts);
        let points: Vec<&str> = m.iter().map(|m| m.mountpoint.as_str()).collect();
        assert_eq!(points, vec!["/", "/run", "/data disk"]);
        assert_eq!(m[2].fstype, "xfs");
    }

    #[test]
    fn proc_stat_per_cpu_ticks() {
        let stat = "cpu  10 1 5 100 2 0 1 0 0 0\ncpu0 6 1 3 50 1 0 1 0 0 0\ncpu1 4 0 2 50 1 0 0 0 0 0\nintr 1 2 3\n";
        let s = parse_proc_stat(stat);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], ("all".to_owned(), [10, 1, 5, 100, 2, 0, 1, 0]));
        assert_eq!(s[2].0, "1");
    }
}
