//! What the TLS tests share: certificates in scratch directories, the
//! probes' breakpoints as a process's memory shows them, and the agent's
//! counts per route and status.

use std::{
    collections::BTreeMap,
    io::{Read as _, Seek as _, SeekFrom},
    path::Path,
    time::Duration,
};

use crate::{Agent, https, process::Scratch, wait_for};

/// (port, route, status) → requests.
pub type Counts = BTreeMap<(u16, String, u16), u64>;

/// A scratch directory named after `what` and `port` holding a new
/// certificate and its key: the directory and the two files' paths.
pub fn certified(what: &str, port: u16) -> (Scratch, String, String) {
    let dir = Scratch::new(what, port).expect("scratch");
    let (_, cert, key) = https::certificate().expect("certificate");
    let (cert_file, key_file) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    let path = |p: &Path| p.to_str().expect("UTF-8 temp dir").to_owned();
    (dir, path(&cert_file), path(&key_file))
}

/// Breakpoints (int3 bytes that are not in the file) in the code process
/// `pid` maps from files whose path contains `file`.
pub fn breakpoints(pid: u32, file: &str) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut found = 0;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let [range, "r-xp", offset, _, _, path] = f[..] else {
            continue;
        };
        if !path.contains(file) {
            continue;
        }
        let (start, end) = range.split_once('-').expect("range");
        let start = u64::from_str_radix(start, 16).expect("start");
        let len = (u64::from_str_radix(end, 16).expect("end") - start) as usize;
        let offset = u64::from_str_radix(offset, 16).expect("offset");
        let mut on_disk = Vec::with_capacity(len);
        let mut mapped = std::fs::File::open(format!("/proc/{pid}/root{path}")).expect(path);
        mapped.seek(SeekFrom::Start(offset)).expect("seek");
        mapped
            .take(len as u64)
            .read_to_end(&mut on_disk)
            .expect("read the file");
        let mut in_memory = vec![0u8; on_disk.len()];
        mem.seek(SeekFrom::Start(start)).expect("seek");
        mem.read_exact(&mut in_memory).expect("read memory");
        found += on_disk
            .iter()
            .zip(&in_memory)
            .filter(|(d, m)| **m == 0xcc && **d != 0xcc)
            .count();
    }
    found
}

/// Waits until the agent has probed a TLS library whose path contains
/// `file`.
pub fn wait_probed(agent: &Agent, file: &str) {
    let probed = wait_for(Duration::from_secs(25), || {
        let m = agent.metrics().ok()?;
        m.matching("apm_ebpf_probe_attached", &[])
            .any(|s| s.labels["probe"].contains(file) && s.value == 1.0)
            .then_some(())
    });
    assert!(probed.is_some(), "{file} not probed: {}", agent.log_text());
}

/// The probes the agent reports attached whose name starts with `prefix`.
pub fn attached(agent: &Agent, prefix: &str) -> Vec<String> {
    let m = agent.metrics().expect("metrics");
    m.matching("apm_ebpf_probe_attached", &[])
        .filter(|s| s.labels["probe"].starts_with(prefix) && s.value == 1.0)
        .map(|s| s.labels["probe"].clone())
        .collect()
}

/// The agent's counts of `port`'s requests, per (port, route, status).
/// Each route has one method in these tests: a second one (`_OTHER`, a
/// request line read wrong) fails the test.
pub fn counted(agent: &Agent, port: u16) -> Counts {
    let m = agent.metrics().expect("metrics");
    let p = port.to_string();
    let mut counts = Counts::new();
    for s in m.matching(
        "http_server_request_duration_seconds_count",
        &[("server_port", p.as_str())],
    ) {
        let key = (
            port,
            s.labels["http_route"].clone(),
            s.labels["http_response_status_code"]
                .parse()
                .expect("status"),
        );
        let method = &s.labels["http_request_method"];
        assert!(
            counts.insert(key.clone(), s.value as u64).is_none(),
            "{key:?} counted under a second method, {method}: {}",
            m.text
        );
    }
    counts
}

/// The kernel side's drops for `reason`.
pub fn drops(agent: &Agent, reason: &str) -> Option<f64> {
    let m = agent.metrics().expect("metrics");
    m.value("apm_ebpf_drops_total", &[("reason", reason)])
}

/// `apm_agent_drops_total{reason}`.
pub fn agent_drops(agent: &Agent, reason: &str) -> Option<f64> {
    let m = agent.metrics().expect("metrics");
    m.value("apm_agent_drops_total", &[("reason", reason)])
}
