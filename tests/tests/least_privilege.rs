//! The agent with exactly what the DaemonSet grants: its capabilities and
//! nothing more, no_new_privs, and a syscall filter denying ptrace,
//! process_vm_*, pidfd_getfd and open_by_handle_at, against servers in
//! two network namespaces on one port (one of them another user's): each
//! is found, named after itself and timed exactly.

use std::path::PathBuf;

use apm_e2e::{
    Agent, NetNs, Server, free_port, get, require_root,
    seccomp::{self, capability_bit, confined, manifest_capabilities, status_field},
};
use serde_json::Value;

fn daemonset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml")
}

#[test]
fn the_agent_works_with_only_the_manifests_capabilities_under_a_syscall_filter() {
    require_root();
    let manifest = std::fs::read_to_string(daemonset()).expect("daemonset");
    for needed in [
        "seccompProfile:\n          type: RuntimeDefault",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
    ] {
        assert!(manifest.contains(needed), "daemonset.yaml lacks {needed:?}");
    }
    let caps = manifest_capabilities(&daemonset());
    assert!(caps.contains(&"BPF".to_owned()), "{caps:?}");
    let mask: u64 = caps.iter().map(|c| 1u64 << capability_bit(c)).sum();

    // Two servers on one port, started before the agent: one in namespace
    // a (root), one in namespace b run by another user (nobody), whose
    // /proc/PID/fd only DAC_READ_SEARCH and SYS_PTRACE open.
    let (a, b) = (NetNs::create("pa"), NetNs::create("pb"));
    let port = free_port().expect("port");
    let rust = Server::rust_in(&a, port).expect("apm-httpd in namespace a");
    let mut nobody = b.command("setpriv");
    nobody.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        // Debian's, which any user may run (not a per-user shim on PATH).
        "/usr/bin/python3",
    ]);
    let python = Server::python_at(nobody, "127.0.0.1", port).expect("python3 in b");
    assert_eq!(
        status_field(python.pid(), "Uid")
            .and_then(|u| u.split_whitespace().next().map(str::to_owned))
            .as_deref(),
        Some("65534")
    );

    let agent = Agent::start_with(confined(&caps), &["--port", &port.to_string()]).expect("agent");
    let pid = agent.pid().expect("pid");
    // What the kernel says the agent runs with.
    let eff = status_field(pid, "CapEff").expect("CapEff");
    assert_eq!(
        u64::from_str_radix(&eff, 16).expect("hex"),
        mask,
        "CapEff {eff} is not {caps:?}"
    );
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
    // The test's filter and the agent's own.
    assert_eq!(status_field(pid, "Seccomp_filters").as_deref(), Some("2"));

    apm_e2e::assert_two_namespaces_apart(&agent, &a, &b, port);

    // Packets, not the syscall fallback; nothing degraded for want of a
    // privilege.
    let health: Value =
        serde_json::from_str(&get(agent.addr, "/health/detailed").expect("health").body)
            .expect("json");
    let check = |name: &str| {
        health["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {health}"))
    };
    assert_eq!(check("ebpf")["status"], "healthy", "{health}");
    assert_eq!(check("capture")["status"], "healthy", "{health}");
    let log = agent.log_text();
    assert!(log.contains("syscall filter installed"), "{log}");
    for bad in [
        "cannot read a network namespace's cookie",
        "\"level\":\"ERROR\"",
    ] {
        assert!(!log.contains(bad), "{bad}: {log}");
    }
    drop((rust, python));
}

#[test]
fn the_agents_own_filter_is_on_without_any_from_the_runtime() {
    require_root();
    let agent = Agent::start(&["--no-ebpf"]).expect("agent");
    let pid = agent.pid().expect("pid");
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status_field(pid, "Seccomp_filters").as_deref(), Some("1"));
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert!(!seccomp::DENIED.is_empty());
    // Still serving.
    assert_eq!(get(agent.addr, "/health").expect("health").status, 200);
}
