//! Attaching the programs of `apm_common::maps::PROBES` to their static
//! hooks (tracepoints, and cgroup programs on the cgroup-v2 root), and the
//! names they are reported under.

use std::{fs::File, path::Path};

use apm_common::maps::{Hook, Probe};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, TracePoint},
};

use super::{
    formats,
    preflight::{DEBUGFS_TRACING, TRACEFS},
};

/// The name a probe is reported under.
pub fn probe_name(probe: &Probe) -> String {
    match probe.hook {
        Hook::Tracepoint { category, name } if probe.program == name => {
            format!("{category}:{name}")
        }
        Hook::Tracepoint { category, name } => format!("{category}:{name} ({})", probe.program),
        Hook::CgroupSkbIngress => "cgroup_skb:ingress".into(),
        Hook::CgroupSkbEgress => "cgroup_skb:egress".into(),
        Hook::CgroupConnect4 => "cgroup_sock_addr:connect4".into(),
        Hook::CgroupConnect6 => "cgroup_sock_addr:connect6".into(),
    }
}

/// The packet program's variant that copies HTTP/2 segments whole, for
/// kernels without `bpf_loop` (before 5.17): `capture_ingress_whole` for
/// `capture_ingress`.
pub(super) fn whole_variant(program: &str) -> String {
    format!("{program}_whole")
}

/// Loads the cgroup_skb program `program`.
fn load_skb<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut CgroupSkb, String> {
    let skb: &mut CgroupSkb = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {program} is not cgroup_skb: {e}"))?;
    skb.load().map_err(|e| format!("verifier/load: {e}"))?;
    Ok(skb)
}

/// Loads `probe`'s program and attaches it to its hook; says how.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    probe: &Probe,
    cgroup: Option<&File>,
) -> Result<String, String> {
    let program = probe.program;
    if ebpf.program(program).is_none() {
        return Err(format!("program {program} missing from the object"));
    }
    let (category, name) = match probe.hook {
        Hook::Tracepoint { category, name } => (category, name),
        Hook::CgroupSkbIngress | Hook::CgroupSkbEgress => {
            let cgroup = cgroup.ok_or("no cgroup-v2 root to attach to")?;
            let (loaded, detail) = match load_skb(ebpf, program) {
                Ok(_) => (program.to_owned(), "attached".to_owned()),
                Err(first) => {
                    // Without HTTP/2 frame following (`bpf_loop`), then.
                    let whole = whole_variant(program);
                    load_skb(ebpf, &whole).map_err(|e| format!("{first}; {whole}: {e}"))?;
                    let detail = format!(
                        "attached, HTTP/2 segments copied whole (frames not followed: {first})"
                    );
                    tracing::warn!(
                        program,
                        error = %first.lines().next().unwrap_or_default(),
                        "HTTP/2 frames not followed: segments copied whole"
                    );
                    (whole, detail)
                }
            };
            let skb: &mut CgroupSkb = ebpf
                .program_mut(&loaded)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| format!("program {loaded} vanished"))?;
            let direction = if probe.hook == Hook::CgroupSkbIngress {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            // A bpf_link (kernel >= 5.7): coexists with other programs on
            // the root and goes away with us.
            return skb
                .attach(cgroup, direction, CgroupAttachMode::Single)
                .map(|_link| detail)
                .map_err(|e| format!("attach: {e}"));
        }
        Hook::CgroupConnect4 | Hook::CgroupConnect6 => {
            let cgroup = cgroup.ok_or("no cgroup-v2 root to attach to")?;
            let hook: &mut CgroupSockAddr = ebpf
                .program_mut(program)
                .ok_or_else(|| format!("program {program} missing from the object"))?
                .try_into()
                .map_err(|e| format!("program {program} is not cgroup_sock_addr: {e}"))?;
            hook.load().map_err(|e| format!("verifier/load: {e}"))?;
            return hook
                .attach(cgroup, CgroupAttachMode::Single)
                .map(|_link| "attached".to_owned())
                .map_err(|e| format!("attach: {e}"));
        }
    };
    let dir = [TRACEFS, DEBUGFS_TRACING]
        .iter()
        .map(|root| Path::new(root).join("events").join(category).join(name))
        .find(|dir| dir.exists())
        .ok_or_else(|| format!("this kernel has no tracepoint {category}:{name}"))?;
    if let Some(fields) = apm_common::tracepoints::fields_of(name) {
        formats::check(&dir.join("format"), fields).map_err(|e| format!("not attached: {e}"))?;
    }
    let tp: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {program} is not a tracepoint: {e}"))?;
    tp.load().map_err(|e| format!("verifier/load: {e}"))?;
    tp.attach(category, name)
        .map(|_link| "attached".to_owned())
        .map_err(|e| format!("attach: {e}"))
}
