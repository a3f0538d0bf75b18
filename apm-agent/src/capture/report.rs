//! What the eBPF side could and could not do, for /health/detailed and
//! the logs.

use apm_common::maps::PROBES;
use serde::Serialize;

use super::attach::probe_name;

/// The outcome of one preflight check or probe.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What the eBPF side could and could not do, for /health/detailed and logs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeReport {
    /// Privileges, tracefs, BTF.
    pub preflight: Vec<Check>,
    /// One entry per program in `apm_common::maps::PROBES`.
    pub probes: Vec<Check>,
    /// Why eBPF is off altogether, when it is.
    pub disabled_reason: Option<String>,
    /// Probes left out on purpose (`--no-http`, the other capture):
    /// healthy, not attached.
    pub off: Vec<String>,
    /// Where HTTP bytes come from: "packets", "syscalls", or "off".
    pub capture: &'static str,
    /// Why the packet capture was not used although asked for.
    pub capture_fallback: Option<String>,
}

impl ProbeReport {
    pub fn ebpf_up(&self) -> bool {
        self.disabled_reason.is_none()
    }
}

/// The report of an agent whose eBPF side is off for `reason`: every
/// probe not yet reported is marked not attempted.
pub(super) fn disable(mut report: ProbeReport, reason: String) -> ProbeReport {
    for probe in PROBES.iter().skip(report.probes.len()) {
        report.probes.push(Check {
            name: probe_name(probe),
            ok: false,
            detail: "not attempted: eBPF is disabled".into(),
        });
    }
    report.capture = "off";
    report.disabled_reason = Some(reason);
    report
}
