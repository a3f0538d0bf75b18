//! Loading and attaching the eBPF programs, and typed access to their maps.
//!
//! Nothing here is fatal: a missing privilege, tracefs, cgroup2 mount or
//! tracepoint leaves the agent in a degraded mode that [`ProbeReport`]
//! describes (the packet capture falls back to the syscall capture), and
//! the rest of the agent keeps serving procfs-based data.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
};

use apm_common::{
    Config as KernelConfig, ConnInfo, ConnKey, PidCounters, PortCounters,
    maps::{self as names, PROBES, Role},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        RingBuf,
    },
    programs::CgroupSkb,
};

pub use super::report::{Check, ProbeReport};
use super::{
    Capture,
    attach::{attach, probe_name, whole_variant},
    cgroup, kernel_layout,
    outbound::Outbound,
    preflight::preflight,
    report::disable,
    tls::TlsProbes,
    traced::Traced,
};

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apm"));

/// `BPF_NOEXIST` from linux/bpf.h: create only, fail if the key exists.
const BPF_NOEXIST: u64 = 1;

/// What to load and attach.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Count every listening port (the kernel adds ports itself).
    pub all_ports: bool,
    /// Time HTTP requests (false: `--no-http`, connection counts only).
    pub http: bool,
    pub capture: Capture,
    /// Size of the EVENTS ring buffer.
    pub ring_bytes: u32,
    /// Recognise Redis clients on any port (false: `--no-redis-detect`).
    pub detect_resp: bool,
    /// Read TLS plaintext at the OpenSSL libraries of monitored processes
    /// (with `http` only).
    pub tls: bool,
    /// The cgroup-v2 root to attach to; None: find it under `proc_root`.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// The kernel's BTF (`kernel_layout`).
    pub kernel_btf: std::path::PathBuf,
    /// Where procfs is (the host's, in a container).
    pub proc_root: std::path::PathBuf,
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

pub(super) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

/// Takes map `name` out of the loaded object as the typed map `M`.
pub(super) fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// The loaded programs and the maps the agent reads and writes. Dropping it
/// detaches every program and frees every map.
pub struct Kernel {
    ports: PerCpuHashMap<MapData, u16, PortCounters>,
    pids: PerCpuHashMap<MapData, u32, PidCounters>,
    traced: Traced,
    drops: PerCpuArray<MapData, u64>,
    verdicts: PerCpuArray<MapData, u64>,
    listen_changes: PerCpuArray<MapData, u64>,
    conns: BpfHashMap<MapData, ConnKey, ConnInfo>,
    capture_ports: Array<MapData, u32>,
    outbound: Outbound,
    events: Option<RingBuf<MapData>>,
    nr_cpus: usize,
    capture: Capture,
    /// Whether accept and close are traced (descriptor state): the
    /// per-process counts exist only then.
    counts_accepts: bool,
    /// The TLS libraries probed (None without `--capture-tls`).
    tls: Option<TlsProbes>,
    // Last so that the maps above are released after the programs using them.
    ebpf: Ebpf,
    /// The cgroup-v2 root the packet programs are linked to.
    _cgroup_root: Option<File>,
}

/// The name the TLS library probes are reported under.
const TLS_PROBES: &str = "uprobe:openssl";

/// Preflight, load and attach. Returns the kernel handle when at least the
/// connection-counting probe is attached, and a report either way.
pub fn start(options: &StartOptions) -> (Option<Kernel>, ProbeReport) {
    let mut report = ProbeReport {
        preflight: preflight(),
        capture: "off",
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
    let loaded = EbpfLoader::new()
        .map_max_entries(names::EVENTS, options.ring_bytes)
        .load(OBJECT);
    let mut ebpf = match loaded {
        Ok(ebpf) => ebpf,
        Err(e) => {
            return (
                None,
                disable(report, format!("loading the eBPF object: {e}")),
            );
        }
    };
    let mut results: Vec<Option<Result<String, String>>> = vec![None; PROBES.len()];
    let mut attach_role = |ebpf: &mut Ebpf, role: Role, cgroup: Option<&File>| {
        let mut all = true;
        for (i, probe) in PROBES.iter().enumerate().filter(|(_, p)| p.role == role) {
            let result = attach(ebpf, probe, cgroup);
            all &= result.is_ok();
            results[i] = Some(result);
        }
        all
    };
    attach_role(&mut ebpf, Role::Connections, None);
    if !attach_role(&mut ebpf, Role::TcpHealth, None) {
        tracing::warn!("TCP health tracepoints not attached: no retransmit or reset counts");
    }
    let mut capture = options.capture;
    let mut cgroup_root = None;
    if options.http && capture == Capture::Packets {
        let root = match &options.cgroup_root {
            Some(root) => Ok(root.clone()),
            None => cgroup::find_or_mount(&options.proc_root),
        };
        match root {
            Err(reason) => report.capture_fallback = Some(reason),
            Ok(root) => match File::open(&root) {
                Err(e) => {
                    report.capture_fallback = Some(format!("opening {}: {e}", root.display()))
                }
                Ok(dir) => {
                    if attach_role(&mut ebpf, Role::PacketData, Some(&dir)) {
                        // Client connections (Redis) need the connect
                        // hooks too; without them only servers are timed.
                        attach_role(&mut ebpf, Role::Outbound, Some(&dir));
                        cgroup_root = Some(dir);
                    } else {
                        // Half attached is no use: take both back.
                        for probe in PROBES.iter().filter(|p| p.role == Role::PacketData) {
                            for name in [probe.program.to_owned(), whole_variant(probe.program)] {
                                let skb: Option<&mut CgroupSkb> =
                                    ebpf.program_mut(&name).and_then(|p| p.try_into().ok());
                                if let Some(skb) = skb {
                                    let _ = skb.unload();
                                }
                            }
                        }
                        report.capture_fallback =
                            Some("the cgroup_skb programs did not attach".into());
                    }
                }
            },
        }
        if report.capture_fallback.is_some() {
            capture = Capture::Syscalls;
        }
    }
    // Syscall tracepoints slow every syscall on the host: only for the
    // syscall capture (descriptor state always, data when timing HTTP).
    // With packets, TLS plaintext is keyed by socket (the kernel's BTF
    // says how to find a descriptor's socket) or else by descriptor,
    // which needs the descriptor state (accept, close and connect).
    let tls = options.tls && options.http;
    let btf = kernel_layout::load(&options.kernel_btf);
    let sockets = (tls && capture == Capture::Packets).then(|| {
        btf.as_ref()
            .map_err(Clone::clone)
            .and_then(kernel_layout::read)
    });
    // Without it each retransmission counts one segment, however many the
    // buffer carried (only offloaded links send several at once).
    let skb_gso_segs = btf
        .as_ref()
        .map_err(Clone::clone)
        .and_then(kernel_layout::gso_segs)
        .inspect_err(|e| tracing::warn!("retransmissions counted per buffer: {e}"))
        .unwrap_or(0);
    let layout = sockets.clone().and_then(Result::ok);
    if capture == Capture::Syscalls || (tls && layout.is_none()) {
        attach_role(&mut ebpf, Role::SyscallState, None);
    }
    if capture == Capture::Syscalls && options.http {
        attach_role(&mut ebpf, Role::SyscallData, None);
    } else if tls && layout.is_none() {
        // The same by descriptor (the syscall capture's read programs
        // note it themselves).
        attach_role(&mut ebpf, Role::TlsReads, None);
    }
    report.capture = if !options.http {
        "off"
    } else {
        capture.as_str()
    };
    for (probe, result) in PROBES.iter().zip(results) {
        let name = probe_name(probe);
        let check = match result {
            Some(result) => Check {
                name,
                ok: result.is_ok(),
                detail: result.unwrap_or_else(|e| e),
            },
            None => {
                let why = if !options.http && probe.role != Role::SyscallState {
                    "off (--no-http)".to_owned()
                } else if probe.role == Role::TlsReads && !tls {
                    "off (no --capture-tls)".to_owned()
                } else if probe.role == Role::TlsReads && layout.is_some() {
                    "off (TLS keyed by socket)".to_owned()
                } else {
                    format!("off ({} capture)", capture.as_str())
                };
                report.off.push(name.clone());
                Check {
                    name,
                    ok: probe.role != Role::PacketData || report.capture_fallback.is_none(),
                    detail: why,
                }
            }
        };
        report.probes.push(check);
    }
    let essential_missing = PROBES
        .iter()
        .zip(&report.probes)
        .find(|(p, c)| p.role == Role::Connections && !c.ok)
        .map(|(_, c)| format!("{} not attached: {}", c.name, c.detail));
    if let Some(reason) = essential_missing {
        return (None, disable(report, reason));
    }
    let config = KernelConfig {
        all_ports: u32::from(options.all_ports),
        wake_shift: wake_shift(options.ring_bytes),
        detect_resp: u32::from(options.detect_resp),
        descriptor_records: u32::from(capture == Capture::Syscalls),
        client_descriptors: u32::from(tls && layout.is_none()),
        tls_sockets: u32::from(layout.is_some()),
        layout: layout.unwrap_or_default(),
        skb_gso_segs,
        _pad: 0,
    };
    let tls = if tls {
        let loaded = TlsProbes::load(&mut ebpf, &options.proc_root);
        let unkeyed = match &sockets {
            Some(Err(why)) => Some(why.as_str()),
            _ => None,
        };
        report.probes.push(Check {
            name: TLS_PROBES.into(),
            ok: loaded.is_ok(),
            detail: super::tls::load_detail(&loaded, config.tls_sockets != 0, unkeyed),
        });
        loaded.ok()
    } else {
        report.off.push(TLS_PROBES.into());
        None
    };
    match Kernel::new(ebpf, config, capture, cgroup_root, tls) {
        Ok(kernel) => (Some(kernel), report),
        Err(e) => (None, disable(report, e.to_string())),
    }
}

/// log2 of the wake step: WAKE_STEP_BYTES, or a quarter of a smaller ring
/// (a power of two of at least a page). The programs wake the reader each
/// time that much more has been written, so a burst is drained long
/// before the ring is full, however small the ring and short the reader's
/// timer.
fn wake_shift(ring_bytes: u32) -> u32 {
    (ring_bytes / 4)
        .clamp(1, apm_common::events::WAKE_STEP_BYTES)
        .ilog2()
}

impl Kernel {
    fn new(
        mut ebpf: Ebpf,
        kernel_config: KernelConfig,
        capture: Capture,
        cgroup_root: Option<File>,
        tls: Option<TlsProbes>,
    ) -> Result<Self, KernelError> {
        let e = &mut ebpf;
        let ports = take_map(e, names::PORTS)?;
        let pids = take_map(e, names::PIDS)?;
        let traced = Traced::new(take_map(e, names::TRACED)?);
        let drops = take_map(e, names::DROPS)?;
        let verdicts = take_map(e, names::VERDICTS)?;
        let listen_changes = take_map(e, names::LISTEN_CHANGES)?;
        let conns = take_map(e, names::CONNS)?;
        let events = take_map(e, names::EVENTS)?;
        let capture_ports = take_map(e, names::CAPTURE_PORTS)?;
        let mut config: Array<MapData, KernelConfig> = take_map(e, names::CONFIG)?;
        config
            .set(0, kernel_config, 0)
            .map_err(map_err(names::CONFIG))?;
        let outbound = Outbound::new(&mut ebpf)?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| KernelError::Cpus(e))?;
        let counts_accepts =
            kernel_config.descriptor_records != 0 || kernel_config.client_descriptors != 0;
        Ok(Self {
            ports,
            pids,
            traced,
            drops,
            verdicts,
            listen_changes,
            conns,
            capture_ports,
            outbound,
            events: Some(events),
            nr_cpus,
            capture,
            counts_accepts,
            tls,
            ebpf,
            _cgroup_root: cgroup_root,
        })
    }

    /// Where HTTP bytes come from.
    pub fn capture(&self) -> Capture {
        self.capture
    }

    /// Whether monitored processes go in PIDS: their descriptors are
    /// tracked for the syscall capture or for TLS plaintext.
    pub fn traces_pids(&self) -> bool {
        self.capture == Capture::Syscalls || self.reads_tls()
    }

    /// Whether TLS libraries are probed (`--capture-tls`).
    pub fn reads_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Probes the TLS libraries of the traced processes `pids`; the
    /// libraries' checks when the list changed.
    pub fn update_tls(&mut self, pids: &HashSet<u32>) -> Option<Vec<Check>> {
        let tls = self.tls.as_mut()?;
        tls.update(&mut self.ebpf, pids).then(|| tls.checks())
    }

    /// Starts capturing the packets of local `port` (packet capture), each
    /// segment as up to `chunks` records (1 to MAX_CHUNKS).
    pub fn capture_port(&mut self, port: u16, chunks: u32) -> Result<(), KernelError> {
        let chunks = chunks.clamp(1, apm_common::events::MAX_CHUNKS);
        self.capture_ports
            .set(u32::from(port), chunks, 0)
            .map_err(map_err(names::CAPTURE_PORTS))
    }

    /// Stops counting and capturing `port` (its counters are dropped).
    pub fn remove_port(&mut self, port: u16) -> Result<(), KernelError> {
        self.capture_ports
            .set(u32::from(port), 0, 0)
            .map_err(map_err(names::CAPTURE_PORTS))?;
        match self.ports.remove(&port) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(KernelError::Map {
                name: names::PORTS,
                source: e,
            }),
        }
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

    /// Outbound connections: client processes, captured remote ports, pools.
    pub fn outbound(&mut self) -> &mut Outbound {
        &mut self.outbound
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
            ..Default::default()
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
                let sum = per_cpu.iter().fold(PortCounters::default(), |a, c| a + *c);
                (port, sum)
            })
            .collect()
    }

    /// Starts tracing the syscalls of `tgid`.
    pub fn track_pid(&mut self, tgid: u32) -> Result<(), KernelError> {
        let zero = self.zeroes::<PidCounters>()?;
        match self.pids.insert(tgid, zero, BPF_NOEXIST) {
            Ok(()) => self.traced.add(tgid).inspect_err(|_| {
                let _ = self.pids.remove(&tgid);
            }),
            Err(_) if self.pids.get(&tgid, 0).is_ok() => Ok(()),
            Err(e) => Err(map_err(names::PIDS)(e)),
        }
    }

    /// Stops tracing `tgid`, returning its final counters.
    pub fn untrack_pid(&mut self, tgid: u32) -> Option<PidCounters> {
        let last = self.pid_counters_of(tgid);
        if self.pids.remove(&tgid).is_ok() {
            self.traced.remove(tgid);
        }
        last
    }

    fn pid_counters_of(&self, tgid: u32) -> Option<PidCounters> {
        if !self.counts_accepts {
            return None;
        }
        self.pids.get(&tgid, 0).ok().map(|v| sum_pid(&v))
    }

    /// Counters of every tracked process, summed over CPUs (none when
    /// accept and close are not traced).
    pub fn pid_counters(&self) -> HashMap<u32, PidCounters> {
        if !self.counts_accepts {
            return HashMap::new();
        }
        self.pids
            .iter()
            .flatten()
            .map(|(tgid, per_cpu)| (tgid, sum_pid(&per_cpu)))
            .collect()
    }

    /// Kernel-side drop counters indexed like `apm_common::DropReason`.
    pub fn drops(&self, reason: apm_common::DropReason) -> u64 {
        self.drops
            .get(&(reason as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Server connections the packet programs gave `verdict`, and the
    /// payload segments of such connections they did not copy.
    pub fn verdicts(&self, verdict: apm_common::Verdict) -> (u64, u64) {
        let read = |slot: u32| {
            self.verdicts
                .get(&slot, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        let v = verdict as u32;
        (read(v), read(apm_common::Verdict::SLOTS + v))
    }

    /// How many TCP sockets entered or left LISTEN since the programs were
    /// loaded (None if the map cannot be read).
    pub fn listen_changes(&self) -> Option<u64> {
        self.listen_changes.get(&0, 0).ok().map(|v| v.iter().sum())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_is_woken_every_mib_or_quarter_ring() {
        assert_eq!(1 << wake_shift(8 << 20), 1024 * 1024);
        assert_eq!(1 << wake_shift(64 * 1024), 16 * 1024);
        assert_eq!(1 << wake_shift(4096), 1024);
    }

    #[test]
    fn disabling_names_every_probe_and_the_reason() {
        let report = disable(ProbeReport::default(), "no privileges".into());
        assert!(!report.ebpf_up());
        assert_eq!(report.probes.len(), PROBES.len());
        assert!(report.probes.iter().all(|p| !p.ok));
    }
}
