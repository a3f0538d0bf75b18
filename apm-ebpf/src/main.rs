//! apm's kernel side: tracepoint programs that count server-side TCP
//! connections per local port and track the descriptors that monitored
//! processes accept.
//!
//! Built for `bpfel-unknown-none` by the agent's build script; it also
//! compiles for the host (as an empty program) so clippy and rustfmt cover it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod ctx;
mod emit;
mod maps;
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never run.
    loop {}
}

/// The kernel only lets GPL-compatible programs call bpf_probe_read_kernel.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds exist only for linting; the real object is bpfel-unknown-none.
    let _ = (&maps::PORTS, &probes::tcp_state::inet_sock_set_state);
}
