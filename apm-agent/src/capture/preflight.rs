//! Before loading anything: privileges, tracefs (mounted here when missing
//! and allowed), BTF, and the memlock limit of older kernels.

use std::path::Path;

use super::kernel::Check;

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// CAP_SYS_ADMIN, CAP_PERFMON and CAP_BPF bit numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Privileges, tracefs (mounted here when missing and allowed), BTF.
pub fn preflight() -> Vec<Check> {
    let mut checks = Vec::new();
    let caps = effective_caps();
    let has = |cap: u32| caps.is_some_and(|c| c & (1u64 << cap) != 0);
    let privileged = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    checks.push(Check {
        name: "privileges".into(),
        ok: privileged,
        detail: match caps {
            None => "cannot read CapEff from /proc/self/status".into(),
            Some(c) if privileged => format!("CapEff={c:#x}"),
            Some(c) => format!(
                "CapEff={c:#x} lacks CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): run as root or grant them"
            ),
        },
    });
    checks.push(tracefs_check(has(CAP_SYS_ADMIN)));
    let btf = Path::new(BTF).exists();
    checks.push(Check {
        name: "btf".into(),
        ok: btf,
        detail: if btf {
            format!("{BTF} present")
        } else {
            format!("{BTF} missing; tracepoint programs do not need it")
        },
    });
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it where
    // we may. Newer kernels ignore it.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    checks
}

fn tracefs_check(may_mount: bool) -> Check {
    let has_events = |p: &str| Path::new(p).join("events").is_dir();
    let (ok, detail) = if has_events(TRACEFS) {
        (true, format!("{TRACEFS} mounted"))
    } else if has_events(DEBUGFS_TRACING) {
        (true, format!("{DEBUGFS_TRACING} mounted"))
    } else if !may_mount {
        (
            false,
            format!(
                "not mounted and no CAP_SYS_ADMIN to mount it: mount -t tracefs nodev {TRACEFS}"
            ),
        )
    } else {
        match mount("nodev", TRACEFS, "tracefs") {
            Ok(()) if has_events(TRACEFS) => (true, format!("mounted tracefs on {TRACEFS}")),
            Ok(()) => (false, format!("mounted {TRACEFS} but it has no events/")),
            Err(e) => (false, format!("mounting tracefs on {TRACEFS}: {e}")),
        }
    };
    Check {
        name: "tracefs".into(),
        ok,
        detail,
    }
}

/// mount(2) of a pseudo filesystem (`fstype`, from `source`) on `target`,
/// without options.
pub fn mount(source: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    let cstr = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let (src, target, fstype) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; data may be null for the pseudo filesystems mounted here.
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

/// CapEff of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_parsed_from_status() {
        let status = "Name:\tapm\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name:\tapm\n"), None);
    }
}
