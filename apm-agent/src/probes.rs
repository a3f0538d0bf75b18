//! Preflight, loading and attaching the eBPF programs, and typed access to
//! their maps.
//!
//! Nothing here is fatal: a missing privilege, tracefs or tracepoint leaves
//! the agent in a degraded mode that [`ProbeReport`] describes, and the rest
//! of the agent keeps serving procfs-based data.

use std::{collections::HashMap, path::Path};

use apm_common::{
    Config as KernelConfig, ConnInfo, ConnKey, PidCounters, PortCounters,
    maps::{self as names, PROBES},
};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        RingBuf,
    },
    programs::TracePoint,
};
use serde::Serialize;

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apm"));

/// `BPF_NOEXIST` from linux/bpf.h: create only, fail if the key exists.
const BPF_NOEXIST: u64 = 1;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// CAP_SYS_ADMIN, CAP_PERFMON and CAP_BPF bit numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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
    /// Probes left out on purpose (`--no-http`): healthy, not attached.
    pub off: Vec<String>,
}

impl ProbeReport {
    pub fn ebpf_up(&self) -> bool {
        self.disabled_reason.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

/// The loaded programs and the maps the agent reads and writes. Dropping it
/// detaches every program and frees every map.
pub struct Kernel {
    ports: PerCpuHashMap<MapData, u16, PortCounters>,
    pids: PerCpuHashMap<MapData, u32, PidCounters>,
    drops: PerCpuArray<MapData, u64>,
    conns: BpfHashMap<MapData, ConnKey, ConnInfo>,
    events: Option<RingBuf<MapData>>,
    nr_cpus: usize,
    // Last so that the maps above are released after the programs using them.
    _ebpf: Ebpf,
}

/// Preflight, load and attach (without the HTTP probes when `no_http`).
/// Returns the kernel handle when at least the essential probe is
/// attached, and a report either way.
pub fn start(all_ports: bool, no_http: bool) -> (Option<Kernel>, ProbeReport) {
    let mut report = ProbeReport {
        preflight: preflight(),
        ..Default::default()
    };
    let blocking = report
        .preflight
        .iter()
        .find(|c| !c.ok && c.name != "btf")
        .map(|c| format!("{}: {}", c.name, c.detail));
    if let Some(reason) = blocking {
        return (None, disable(report, reason));
    }
    if OBJECT.is_empty() {
        return (
            None,
            disable(
                report,
                "this build has no eBPF object (AYA_BUILD_SKIP)".into(),
            ),
        );
    }
    let mut ebpf = match Ebpf::load(OBJECT) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            return (
                None,
                disable(report, format!("loading the eBPF object: {e}")),
            );
        }
    };
    for probe in PROBES {
        let name = format!("{}:{}", probe.category, probe.tracepoint);
        if no_http && probe.http {
            report.probes.push(Check {
                name: name.clone(),
                ok: true,
                detail: "off (--no-http)".into(),
            });
            report.off.push(name);
            continue;
        }
        let result = attach(&mut ebpf, probe.program, probe.category, probe.tracepoint);
        report.probes.push(Check {
            name,
            ok: result.is_ok(),
            detail: match result {
                Ok(()) => "attached".into(),
                Err(reason) => reason,
            },
        });
    }
    let essential_missing = PROBES
        .iter()
        .zip(&report.probes)
        .find(|(p, c)| p.essential && !c.ok)
        .map(|(_, c)| format!("{} not attached: {}", c.name, c.detail));
    if let Some(reason) = essential_missing {
        return (None, disable(report, reason));
    }
    match Kernel::new(ebpf, all_ports) {
        Ok(kernel) => (Some(kernel), report),
        Err(e) => (None, disable(report, e.to_string())),
    }
}

fn disable(mut report: ProbeReport, reason: String) -> ProbeReport {
    for probe in PROBES.iter().skip(report.probes.len()) {
        report.probes.push(Check {
            name: format!("{}:{}", probe.category, probe.tracepoint),
            ok: false,
            detail: "not attempted: eBPF is disabled".into(),
        });
    }
    report.disabled_reason = Some(reason);
    report
}

fn attach(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<(), String> {
    let format = Path::new(TRACEFS).join("events").join(category).join(name);
    if !format.exists()
        && !Path::new(DEBUGFS_TRACING)
            .join("events")
            .join(category)
            .join(name)
            .exists()
    {
        return Err(format!("this kernel has no tracepoint {category}:{name}"));
    }
    let tp: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {program} is not a tracepoint: {e}"))?;
    tp.load().map_err(|e| format!("verifier/load: {e}"))?;
    tp.attach(category, name)
        .map(|_link| ())
        .map_err(|e| format!("attach: {e}"))
}

impl Kernel {
    fn new(mut ebpf: Ebpf, all_ports: bool) -> Result<Self, KernelError> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(KernelError::MissingMap(name));
        let ports = PerCpuHashMap::try_from(take(names::PORTS)?).map_err(map_err(names::PORTS))?;
        let pids = PerCpuHashMap::try_from(take(names::PIDS)?).map_err(map_err(names::PIDS))?;
        let drops = PerCpuArray::try_from(take(names::DROPS)?).map_err(map_err(names::DROPS))?;
        let conns = BpfHashMap::try_from(take(names::CONNS)?).map_err(map_err(names::CONNS))?;
        let events = RingBuf::try_from(take(names::EVENTS)?).map_err(map_err(names::EVENTS))?;
        let mut config: Array<MapData, KernelConfig> =
            Array::try_from(take(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        config
            .set(
                0,
                KernelConfig {
                    all_ports: u32::from(all_ports),
                    _pad: 0,
                },
                0,
            )
            .map_err(map_err(names::CONFIG))?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| KernelError::Cpus(e))?;
        Ok(Self {
            ports,
            pids,
            drops,
            conns,
            events: Some(events),
            nr_cpus,
            _ebpf: ebpf,
        })
    }

    /// Starts counting `port` (no-op when it is already counted).
    pub fn add_port(&mut self, port: u16) -> Result<(), KernelError> {
        if self.ports.get(&port, 0).is_ok() {
            return Ok(());
        }
        let zero = self.zeroes::<PortCounters>()?;
        // BPF_NOEXIST: the kernel may have created it meanwhile (all-ports mode).
        match self.ports.insert(port, zero, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(_) if self.ports.get(&port, 0).is_ok() => Ok(()),
            Err(e) => Err(KernelError::Map {
                name: names::PORTS,
                source: e,
            }),
        }
    }

    /// The ring buffer of request records, for the reader task (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Tracks a connection that existed before the agent saw its accept
    /// (found in procfs), so its requests are paired too.
    pub fn seed_conn(&mut self, tgid: u32, fd: u32, port: u16) -> Result<(), KernelError> {
        let info = ConnInfo {
            accepted_ns: 0,
            port,
            _pad: [0; 6],
        };
        self.conns
            .insert(ConnKey { tgid, fd }, info, BPF_NOEXIST)
            .or_else(|e| {
                if self.conns.get(&ConnKey { tgid, fd }, 0).is_ok() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(map_err(names::CONNS))
    }

    /// Counters of every counted port, summed over CPUs.
    pub fn port_counters(&self) -> HashMap<u16, PortCounters> {
        self.ports
            .iter()
            .flatten()
            .map(|(port, per_cpu)| {
                let sum = per_cpu
                    .iter()
                    .fold(PortCounters::default(), |a, c| PortCounters {
                        accepted: a.accepted + c.accepted,
                        closed: a.closed + c.closed,
                    });
                (port, sum)
            })
            .collect()
    }

    /// Starts tracing the syscalls of `tgid`.
    pub fn track_pid(&mut self, tgid: u32) -> Result<(), KernelError> {
        let zero = self.zeroes::<PidCounters>()?;
        self.pids
            .insert(tgid, zero, BPF_NOEXIST)
            .or_else(|e| {
                if self.pids.get(&tgid, 0).is_ok() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(map_err(names::PIDS))
    }

    /// Stops tracing `tgid`, returning its final counters.
    pub fn untrack_pid(&mut self, tgid: u32) -> Option<PidCounters> {
        let last = self.pid_counters_of(tgid);
        let _ = self.pids.remove(&tgid);
        last
    }

    fn pid_counters_of(&self, tgid: u32) -> Option<PidCounters> {
        self.pids.get(&tgid, 0).ok().map(|v| sum_pid(&v))
    }

    /// Counters of every tracked process, summed over CPUs.
    pub fn pid_counters(&self) -> HashMap<u32, PidCounters> {
        self.pids
            .iter()
            .flatten()
            .map(|(tgid, per_cpu)| (tgid, sum_pid(&per_cpu)))
            .collect()
    }

    /// Kernel-side drop counters indexed like `apm_common::Drop`.
    pub fn drops(&self, reason: apm_common::Drop) -> u64 {
        self.drops
            .get(&(reason as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn zeroes<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>, KernelError> {
        PerCpuValues::try_from(vec![T::default(); self.nr_cpus]).map_err(KernelError::Cpus)
    }
}

fn sum_pid(per_cpu: &PerCpuValues<PidCounters>) -> PidCounters {
    per_cpu
        .iter()
        .fold(PidCounters::default(), |a, c| PidCounters {
            accepts: a.accepts + c.accepts,
            closes: a.closes + c.closes,
        })
}

/// Privileges, tracefs (mounted here when missing and allowed), BTF.
fn preflight() -> Vec<Check> {
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
        match mount_tracefs() {
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

fn mount_tracefs() -> std::io::Result<()> {
    let cstr = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let (src, target, fstype) = (cstr("nodev")?, cstr(TRACEFS)?, cstr("tracefs")?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; data may be null for tracefs.
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

    #[test]
    fn disabling_names_every_probe_and_the_reason() {
        let report = disable(ProbeReport::default(), "no privileges".into());
        assert!(!report.ebpf_up());
        assert_eq!(report.probes.len(), PROBES.len());
        assert!(report.probes.iter().all(|p| !p.ok));
    }
}
