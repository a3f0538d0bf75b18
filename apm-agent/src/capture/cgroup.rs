//! The cgroup-v2 root that the packet programs attach to: found in
//! mountinfo (`/sys/fs/cgroup` on modern nodes, `/sys/fs/cgroup/unified`
//! on hybrid hosts), or mounted by the agent when it may.

use std::path::{Path, PathBuf};

/// Where the agent mounts cgroup2 itself when no mount exists.
pub const OWN_MOUNT: &str = "/run/apm/cgroup2";

/// Mount points of the cgroup-v2 hierarchy's root in a mountinfo file's
/// text, in file order. Mounts of a sub-cgroup (root field other than
/// `/`) are left out: programs attached there would not see the host.
pub fn cgroup2_roots(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup-v2 root, mounting it on [`OWN_MOUNT`] when nothing has.
///
/// The host's mount table comes first (`<proc>/1/mountinfo`, the root
/// reached through `<proc>/1/root`), so an agent in a container with the
/// host's PID namespace attaches to the host's root, not to its own
/// cgroup; then the agent's own mount table. The error says why there is
/// none, in one sentence.
pub fn find_or_mount(proc_root: &Path) -> Result<PathBuf, String> {
    let views = [
        (proc_root.join("1/mountinfo"), proc_root.join("1/root")),
        (proc_root.join("self/mountinfo"), PathBuf::from("/")),
    ];
    let mut seen = Vec::new();
    for (mountinfo, root) in &views {
        let Ok(text) = std::fs::read_to_string(mountinfo) else {
            continue;
        };
        seen.push(mountinfo.display().to_string());
        for mount_point in cgroup2_roots(&text) {
            let path = root.join(mount_point.strip_prefix("/").unwrap_or(&mount_point));
            if path.is_dir() {
                return Ok(path);
            }
        }
    }
    let target = Path::new(OWN_MOUNT);
    let none = if seen.is_empty() {
        "no readable mountinfo".to_owned()
    } else {
        format!("no cgroup2 mount in {}", seen.join(" or "))
    };
    std::fs::create_dir_all(target)
        .map_err(|e| format!("{none}, and creating {OWN_MOUNT} failed: {e}"))?;
    super::preflight::mount("cgroup2", OWN_MOUNT, "cgroup2")
        .map_err(|e| format!("{none}, and mounting cgroup2 on {OWN_MOUNT} failed: {e}"))?;
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_mount_is_reached_through_pid_1s_root() {
        let proc = std::env::temp_dir().join(format!("apm-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        std::fs::create_dir_all(proc.join("1/root/sys/fs/cgroup")).expect("mkdir");
        std::fs::create_dir_all(proc.join("self")).expect("mkdir");
        std::fs::write(
            proc.join("1/mountinfo"),
            "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        )
        .expect("write");
        // The agent's own view (a container) has only its own cgroup.
        std::fs::write(
            proc.join("self/mountinfo"),
            "40 30 0:30 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n",
        )
        .expect("write");
        assert_eq!(find_or_mount(&proc), Ok(proc.join("1/root/sys/fs/cgroup")));
        std::fs::remove_dir_all(&proc).expect("cleanup");
    }

    #[test]
    fn hybrid_and_unified_hosts_and_sub_cgroup_mounts() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            cgroup2_roots(hybrid),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_roots(unified), [PathBuf::from("/sys/fs/cgroup")]);
        // A container's view of its own cgroup, and a name with a space.
        let nested = "40 30 0:30 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw
41 30 0:30 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_roots(nested), [PathBuf::from("/mnt/my cg")]);
        assert!(cgroup2_roots("garbage\n\n - \n").is_empty());
    }
}
