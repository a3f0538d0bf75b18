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
/// The error says why there is none, in one sentence.
pub fn find_or_mount(mountinfo: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(mountinfo)
        .map_err(|e| format!("reading {}: {e}", mountinfo.display()))?;
    if let Some(root) = cgroup2_roots(&text).into_iter().next() {
        return Ok(root);
    }
    let target = Path::new(OWN_MOUNT);
    std::fs::create_dir_all(target)
        .map_err(|e| format!("no cgroup2 mount, and creating {OWN_MOUNT} failed: {e}"))?;
    mount_cgroup2(target).map_err(|e| {
        format!("no cgroup2 mount, and mounting cgroup2 on {OWN_MOUNT} failed: {e}")
    })?;
    Ok(target.to_path_buf())
}

fn mount_cgroup2(target: &Path) -> std::io::Result<()> {
    let cstr = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let target = target
        .to_str()
        .ok_or_else(|| std::io::Error::other("non-UTF-8 path"))?;
    let (src, target, fstype) = (cstr("cgroup2")?, cstr(target)?, cstr("cgroup2")?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; data may be null for cgroup2.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
