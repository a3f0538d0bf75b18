//! What a container runtime applies to the agent, reproduced for a test:
//! the capabilities the DaemonSet grants (setpriv), no_new_privs
//! (`allowPrivilegeEscalation: false`) and a syscall filter that denies
//! what a hardened profile denies to the agent (ptrace, process_vm_*,
//! pidfd_getfd, open_by_handle_at: EPERM). Docker's and containerd's
//! RuntimeDefault allow these to holders of CAP_SYS_PTRACE and
//! CAP_DAC_READ_SEARCH, so denying them here checks that the agent never
//! needs them.

use std::{os::unix::process::CommandExt as _, path::Path, process::Command};

/// Syscalls the test's filter denies.
pub const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_open_by_handle_at,
];

/// The capabilities `capabilities.add` of a manifest lists, as written
/// (`BPF`, `NET_ADMIN`, ...).
pub fn manifest_capabilities(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let mut caps = Vec::new();
    let mut in_add = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "add:" {
            in_add = true;
        } else if in_add && trimmed.starts_with("- ") {
            caps.push(trimmed.trim_start_matches("- ").to_owned());
        } else if in_add && !trimmed.starts_with('#') {
            in_add = false;
        }
    }
    caps
}

/// The bit of capability `name` (as a manifest writes it) in CapEff.
pub fn capability_bit(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} unknown to the test"),
    }
}

/// `setpriv`, leaving the program it runs exactly `caps`, with
/// no_new_privs and the filter of [`DENIED`] installed before it runs.
pub fn confined(caps: &[String]) -> Command {
    let bounding: String = caps
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--inh-caps=-all",
        "--ambient-caps=-all",
        &format!("--bounding-set=-all{bounding}"),
        "--",
    ]);
    let filter = program();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes two prctl calls on memory built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Denied syscalls get EPERM; anything else is allowed (on x86_64; other
/// ABIs pass, as the runtime's filter is not what is under test).
fn program() -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let n = DENIED.len();
    let mut p = vec![op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0)];
    for (i, &nr) in DENIED.iter().enumerate() {
        p.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            (n - i) as u8,
            0,
            nr as u32,
        ));
    }
    p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, 0x7fff_0000));
    p.push(op(
        libc::BPF_RET | libc::BPF_K,
        0,
        0,
        0x0005_0000 | libc::EPERM as u32,
    ));
    p
}

/// A line of `/proc/<pid>/status`, such as `CapEff` or `Seccomp`.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}
