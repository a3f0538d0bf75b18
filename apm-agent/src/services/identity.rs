//! Which container (and Kubernetes pod) a process runs in, from the paths
//! in /proc/PID/cgroup. Handles the layouts of Docker, containerd and
//! CRI-O, with the systemd and the cgroupfs cgroup drivers, on cgroup v1
//! and v2.

use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The 64-hex-digit container id, when the process is in a container.
    pub container_id: Option<String>,
    /// The pod's UID, when the cgroup path is a kubelet's.
    pub pod_uid: Option<String>,
}

/// Reads and parses `<proc_root>/<pid>/cgroup`; an unreadable file means
/// no known identity.
pub fn of_process(proc_root: &Path, pid: u32) -> Identity {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
        .map(|text| parse_cgroup(&text))
        .unwrap_or_default()
}

/// Parses the contents of /proc/PID/cgroup: lines `id:controllers:path`.
/// The first line whose path names a container wins.
pub fn parse_cgroup(text: &str) -> Identity {
    let mut found = Identity::default();
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let id = Identity {
            container_id: path.rsplit('/').find_map(container_id),
            pod_uid: path.split('/').find_map(pod_uid),
        };
        if id.container_id.is_some() {
            return id;
        }
        if found.pod_uid.is_none() {
            found.pod_uid = id.pod_uid;
        }
    }
    found
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`, or a bare `<id>` (cgroupfs driver, Docker on v1).
fn container_id(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    let s = s.rsplit('-').next().unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// (systemd driver).
fn pod_uid(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = &s[s.rfind("pod")? + 3..];
    let uid = uid.replace('_', "-");
    let valid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    valid.then(|| uid.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

    fn id(cid: Option<&str>, uid: Option<&str>) -> Identity {
        Identity {
            container_id: cid.map(str::to_owned),
            pod_uid: uid.map(str::to_owned),
        }
    }

    #[test]
    fn containerd_with_systemd_driver() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup(&text), id(Some(CID), Some(UID)));
    }

    #[test]
    fn containerd_with_cgroupfs_driver() {
        let text = format!("0::/kubepods/besteffort/pod{UID}/{CID}\n");
        assert_eq!(parse_cgroup(&text), id(Some(CID), Some(UID)));
    }

    #[test]
    fn cri_o() {
        let text = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{CID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup(&text), id(Some(CID), Some(UID)));
    }

    #[test]
    fn docker_on_cgroup_v2_and_v1() {
        assert_eq!(
            parse_cgroup(&format!("0::/system.slice/docker-{CID}.scope\n")),
            id(Some(CID), None)
        );
        let v1 = format!(
            "12:pids:/docker/{CID}\n11:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n"
        );
        assert_eq!(parse_cgroup(&v1), id(Some(CID), None));
    }

    #[test]
    fn host_processes_have_no_identity() {
        assert_eq!(
            parse_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            id(None, None)
        );
        assert_eq!(parse_cgroup("0::/init.scope\n"), Identity::default());
        assert_eq!(parse_cgroup("garbage"), Identity::default());
        // 64 characters that are not all hex is not an id.
        assert_eq!(
            parse_cgroup(&format!(
                "0::/system.slice/docker-{}.scope\n",
                "z".repeat(64)
            )),
            Identity::default()
        );
    }
}
