//! The agent's own syscall filter, stacked on whatever the container
//! runtime applied: the agent needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
//! only to read /proc, and the runtime's default profile lets holders of
//! those capabilities ptrace, read other processes' memory, take their
//! descriptors and open files by handle. This filter makes those calls
//! fail with EPERM for the agent's life, so a bug in the parsing of
//! untrusted traffic cannot reach them. It is installed before any other
//! thread starts and cannot be removed; it also denies syscalls of any
//! other ABI (i386, x32), through which the same calls have other numbers.

use std::io;

/// The syscalls denied, by name and number.
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("process_madvise", libc::SYS_process_madvise),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
];

/// `AUDIT_ARCH_*` of the agent's own ABI (linux/audit.h).
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xc000_00b7;
/// x32 syscalls are x86_64 ones with this bit set in their number.
const X32_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `seccomp(2)` operation and flag (linux/seccomp.h).
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
/// Offsets of `nr` and `arch` in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The classic-BPF program: other ABIs and the denied syscalls get EPERM,
/// everything else passes on to the runtime's filter.
pub fn program() -> Vec<libc::sock_filter> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let deny = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let n = DENIED.len();
    let mut p = vec![
        stmt(load, ARCH),
        // Native: go on; else deny (the last instruction).
        jump_eq(NATIVE_ARCH, 0, (n + 3) as u8),
        stmt(load, NR),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: (n + 1) as u8,
            jf: 0,
            k: X32_BIT,
        },
    ];
    for (i, &(_, nr)) in DENIED.iter().enumerate() {
        // Equal: jump over the rest of the list and the allow.
        p.push(jump_eq(nr as u32, (n - i) as u8, 0));
    }
    p.push(stmt(ret, SECCOMP_RET_ALLOW));
    p.push(stmt(ret, deny));
    p
}

/// Installs the filter on every thread of the process. Sets
/// no_new_privs, which the filter needs without CAP_SYS_ADMIN (a
/// DaemonSet with `allowPrivilegeEscalation: false` has it set already).
pub fn install() -> io::Result<()> {
    install_program(&program())
}

fn install_program(filter: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, which outlives the call; the
    // kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`install`], with one log line either way.
pub fn install_logged() {
    let names: Vec<&str> = DENIED.iter().map(|&(name, _)| name).collect();
    match install() {
        Ok(()) => tracing::info!(denied = ?names, "syscall filter installed"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the agent's syscall filter; only the runtime's applies")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one `seccomp_data` (nr, arch) as the kernel
    /// would: a tiny interpreter of the instructions it uses.
    fn run(p: &[libc::sock_filter], nr: u32, arch: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            let code = u32::from(i.code);
            if code == (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) {
                acc = if i.k == NR { nr } else { arch };
                pc += 1;
            } else if code == (libc::BPF_RET | libc::BPF_K) {
                return i.k;
            } else {
                let taken = if code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) {
                    acc == i.k
                } else {
                    acc >= i.k
                };
                pc += 1 + usize::from(if taken { i.jt } else { i.jf });
            }
        }
    }

    #[test]
    fn the_kernel_takes_the_filter_and_ptrace_fails_under_it() {
        let filter = program();
        // SAFETY: the child makes only raw syscalls on memory built before
        // the fork, then exits without returning into the test harness.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", io::Error::last_os_error());
        if child == 0 {
            let code = match install_program(&filter) {
                Err(_) => 2,
                // SAFETY: PTRACE_TRACEME takes no pointers.
                Ok(()) => match unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) } {
                    0 => 3,
                    _ if io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) => 0,
                    _ => 4,
                },
            };
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "2: not installed, 3/4: ptrace not denied"
        );
    }

    #[test]
    fn denied_calls_and_other_abis_get_eperm_and_the_rest_passes() {
        let p = program();
        let deny = SECCOMP_RET_ERRNO | libc::EPERM as u32;
        for &(name, nr) in DENIED {
            assert_eq!(run(&p, nr as u32, NATIVE_ARCH), deny, "{name}");
            // The same number in another ABI, and the x32 alias.
            assert_eq!(run(&p, nr as u32, 0x4000_0003), deny, "{name} i386");
            assert_eq!(
                run(&p, nr as u32 | X32_BIT, NATIVE_ARCH),
                deny,
                "{name} x32"
            );
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_openat,
        ] {
            assert_eq!(run(&p, nr as u32, NATIVE_ARCH), SECCOMP_RET_ALLOW, "{nr}");
        }
    }
}
