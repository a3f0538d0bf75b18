//! Getting bytes out of the kernel: checking what the host allows
//! (`preflight`), loading the eBPF programs and owning their maps
//! (`kernel`), attaching them to their static hooks (`attach`, with the
//! tracepoint records checked against what the programs read in
//! `formats`), finding
//! the cgroup-v2 root the packet programs attach to (`cgroup`), probing
//! the TLS libraries of monitored processes (`tls`, with what a file
//! offers them in `tls_library` and `tls_go`), the syscall programs'
//! process filter (`traced`), the
//! outbound-connection maps (`outbound`) and reading the ring buffer
//! (`reader`).

pub mod attach;
pub mod cgroup;
pub mod formats;
pub mod kernel;
pub mod kernel_layout;
pub mod outbound;
pub mod preflight;
pub mod reader;
pub mod report;
pub mod tls;
pub mod tls_go;
pub mod tls_library;
pub mod traced;

/// Where HTTP request and response bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Capture {
    /// cgroup_skb programs on the cgroup-v2 root read the TCP segments of
    /// monitored ports: no syscall is slowed.
    Packets,
    /// Tracepoints on the read/write syscall families: for hosts without
    /// cgroup v2 (every syscall on the host pays for them).
    Syscalls,
}

impl Capture {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::Syscalls => "syscalls",
        }
    }
}
