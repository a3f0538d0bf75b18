//! A pod's workload from its name alone, by the suffixes the controllers
//! generate (for when the Kubernetes API is not available):
//!
//! - a ReplicaSet's pods are `<replicaset>-<5 random>` and a Deployment's
//!   ReplicaSet is `<deployment>-<pod-template-hash>`: two generated
//!   suffixes make a Deployment;
//! - a CronJob's Jobs are `<cronjob>-<scheduled minute>` (8 digits and
//!   more), their pods `<job>-<5 random>`;
//! - a StatefulSet's pods are `<statefulset>-<ordinal>`;
//! - one generated suffix alone is a DaemonSet's, a Job's or a bare
//!   ReplicaSet's pod, which names cannot tell apart ([`WorkloadKind::Generated`]);
//! - anything else is a pod of its own (a static or bare pod; a static
//!   pod is `<name>-<node>`, and on a node named like `node-1` it reads
//!   as a StatefulSet's).
//!
//! Generated suffixes are drawn from `bcdfghjklmnpqrstvwxz2456789`, which
//! has no vowel: a word of a name is hardly ever mistaken for one. A
//! Deployment named like `api-v2` is read right; one whose last word is
//! itself vowel-free and 6 to 10 characters long (`web-xkcdlm`) is not.

/// What kind of controller owns a pod, as far as its name tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    CronJob,
    /// A DaemonSet, a Job or a ReplicaSet of its own.
    Generated,
    /// No controller: the pod itself.
    Pod,
}

impl WorkloadKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::CronJob => "CronJob",
            Self::Generated => "DaemonSet|Job|ReplicaSet",
            Self::Pod => "Pod",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

/// The characters of Kubernetes' generated name suffixes
/// (`k8s.io/apimachinery/pkg/util/rand`).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated(s: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&s.len()) && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// The workload of the pod named `pod`.
pub fn from_pod_name(pod: &str) -> Workload {
    let workload = |kind, name: &str| Workload {
        kind,
        name: name.to_owned(),
    };
    let Some((owner, suffix)) = pod.rsplit_once('-') else {
        return workload(WorkloadKind::Pod, pod);
    };
    if !owner.is_empty() && suffix.len() == 5 && generated(suffix, 5..=5) {
        if let Some((cronjob, minute)) = owner.rsplit_once('-')
            && !cronjob.is_empty()
            && minute.len() >= 8
            && minute.bytes().all(|b| b.is_ascii_digit())
        {
            return workload(WorkloadKind::CronJob, cronjob);
        }
        if let Some((deployment, hash)) = owner.rsplit_once('-')
            && !deployment.is_empty()
            && generated(hash, 6..=10)
        {
            return workload(WorkloadKind::Deployment, deployment);
        }
        return workload(WorkloadKind::Generated, owner);
    }
    if !owner.is_empty()
        && !suffix.is_empty()
        && suffix.len() < 8
        && suffix.bytes().all(|b| b.is_ascii_digit())
    {
        return workload(WorkloadKind::StatefulSet, owner);
    }
    workload(WorkloadKind::Pod, pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkloadKind::*;

    #[test]
    fn controllers_suffixes_name_the_workload() {
        for (pod, kind, name) in [
            ("checkout-7d4b9c8f6d-x2x9z", Deployment, "checkout"),
            ("api-v2-5c9d8b7f4-kq2wz", Deployment, "api-v2"),
            ("coredns-76f75df574-9hxw4", Deployment, "coredns"),
            ("postgres-0", StatefulSet, "postgres"),
            ("kafka-broker-12", StatefulSet, "kafka-broker"),
            ("report-28912345-b7x2q", CronJob, "report"),
            ("node-exporter-x2x9z", Generated, "node-exporter"),
            ("migrate-db-4kq7m", Generated, "migrate-db"),
            (
                "kube-apiserver-control-plane",
                Pod,
                "kube-apiserver-control-plane",
            ),
            ("etcd-control-plane", Pod, "etcd-control-plane"),
            ("standalone", Pod, "standalone"),
            // A word with a vowel is never a generated suffix.
            ("web-hello", Pod, "web-hello"),
        ] {
            assert_eq!(
                from_pod_name(pod),
                Workload {
                    kind,
                    name: name.into()
                },
                "{pod}"
            );
        }
    }
}
