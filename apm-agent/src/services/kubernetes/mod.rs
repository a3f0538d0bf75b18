//! Kubernetes identity without the network: what every kubelet node
//! writes for its pods' logs (the CRI log layout), read-only.
//!
//! - `/var/log/pods/<namespace>_<pod>_<uid>/<container>/N.log`: a pod's
//!   namespace and name by its UID (the cgroup path gives the UID);
//! - `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`: a
//!   container's name by its id (the cgroup path gives the id).
//!
//! Namespaces, pod and container names are DNS labels or subdomains, so
//! `_` only ever separates the parts. The workload comes from the pod's
//! name (`workload`).

pub mod workload;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use workload::{Workload, WorkloadKind};

/// The kubelet's log directories, as the DaemonSet mounts them.
pub const PODS_DIR: &str = "/var/log/pods";
pub const CONTAINERS_DIR: &str = "/var/log/containers";

/// Pods and containers read at most this often: a lookup of something
/// not known rereads the directories then, never on every call.
const REFRESH: Duration = Duration::from_secs(5);
/// Entries kept at most (a node runs at most a few hundred pods).
const MAX_ENTRIES: usize = 16_384;

/// A pod, as its log directory names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What a process's container is, as far as the node's files say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub pod: Pod,
    /// The container's name (empty when its log file was not found).
    pub container: String,
    pub workload: Workload,
}

/// The kubelet's log layout under `root` (the host's `/`, or a test's
/// directory), read lazily and refreshed at most every [`REFRESH`].
pub struct LogLayout {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    pods: HashMap<String, Pod>,
    /// Container id → its name.
    containers: HashMap<String, String>,
    read_at: Option<Instant>,
}

impl LogLayout {
    pub fn new(root: &Path) -> Self {
        let under = |dir: &str| root.join(dir.trim_start_matches('/'));
        Self {
            pods_dir: under(PODS_DIR),
            containers_dir: under(CONTAINERS_DIR),
            pods: HashMap::new(),
            containers: HashMap::new(),
            read_at: None,
        }
    }

    /// Whether this looks like a kubelet node (its pods' log directory
    /// exists), for /health/detailed.
    pub fn present(&self) -> bool {
        self.pods_dir.is_dir()
    }

    /// The identity of the pod `uid` and container `container_id` (from
    /// the process's cgroup path); None when the node's files do not
    /// know the pod.
    pub fn identify(&mut self, uid: &str, container_id: Option<&str>) -> Option<PodIdentity> {
        let known = self.pods.contains_key(uid)
            && container_id.is_none_or(|id| self.containers.contains_key(id));
        if !known && self.read_at.is_none_or(|at| at.elapsed() >= REFRESH) {
            self.read();
        }
        let pod = self.pods.get(uid)?.clone();
        let container = container_id
            .and_then(|id| self.containers.get(id))
            .cloned()
            .unwrap_or_default();
        let workload = workload::from_pod_name(&pod.name);
        Some(PodIdentity {
            pod,
            container,
            workload,
        })
    }

    fn read(&mut self) {
        self.read_at = Some(Instant::now());
        self.pods = names(&self.pods_dir)
            .filter_map(|n| pod_dir(&n))
            .map(|p| (p.uid.clone(), p))
            .take(MAX_ENTRIES)
            .collect();
        self.containers = names(&self.containers_dir)
            .filter_map(|n| container_log(&n))
            .take(MAX_ENTRIES)
            .collect();
    }
}

/// The entry names of `dir` (none when unreadable).
fn names(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
}

/// `<namespace>_<pod>_<uid>`.
fn pod_dir(name: &str) -> Option<Pod> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some(Pod {
        namespace: namespace.to_owned(),
        name: pod.to_owned(),
        uid: uid.to_owned(),
    })
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log` → (id, container).
fn container_log(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.split('_');
    let (_pod, _namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || container.is_empty() {
        return None;
    }
    Some((id.to_ascii_lowercase(), container.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    const CID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";

    #[test]
    fn names_split_on_underscores_only() {
        assert_eq!(
            pod_dir(&format!("shop_checkout-7d4b9c8f6d-x2x9z_{UID}")),
            Some(Pod {
                namespace: "shop".into(),
                name: "checkout-7d4b9c8f6d-x2x9z".into(),
                uid: UID.into(),
            })
        );
        assert_eq!(pod_dir("shop_checkout"), None);
        assert_eq!(
            container_log(&format!("checkout-7d4b9c8f6d-x2x9z_shop_app-{CID}.log")),
            Some((CID.into(), "app".into()))
        );
        assert_eq!(container_log("checkout_shop_app-123.log"), None);
        assert_eq!(container_log(&format!("a_b_c-{CID}.txt")), None);
    }

    #[test]
    fn a_nodes_log_layout_names_the_pod_and_container() {
        let root = std::env::temp_dir().join(format!("apm-k8s-layout-{}", std::process::id()));
        let pod = root.join(format!(
            "var/log/pods/shop_checkout-7d4b9c8f6d-x2x9z_{UID}/app"
        ));
        std::fs::create_dir_all(&pod).expect("pods");
        std::fs::write(pod.join("0.log"), "").expect("log");
        let containers = root.join("var/log/containers");
        std::fs::create_dir_all(&containers).expect("containers");
        std::fs::write(
            containers.join(format!("checkout-7d4b9c8f6d-x2x9z_shop_app-{CID}.log")),
            "",
        )
        .expect("link");
        let mut layout = LogLayout::new(&root);
        assert!(layout.present());
        let id = layout.identify(UID, Some(CID)).expect("known");
        assert_eq!(
            (id.pod.namespace.as_str(), id.container.as_str()),
            ("shop", "app")
        );
        assert_eq!(id.workload.name, "checkout");
        assert_eq!(id.workload.kind, WorkloadKind::Deployment);
        assert_eq!(layout.identify("other-uid", None), None);
        std::fs::remove_dir_all(root).ok();
    }
}
