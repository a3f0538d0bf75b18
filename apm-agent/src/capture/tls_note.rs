//! The read note (`raw_tracepoint:sock_recv_length`, with plaintext keyed
//! by socket), attached only while it is needed. It ties TLS objects on
//! memory BIOs to the socket their thread read last, and it runs on every
//! socket receive on the host while attached (about 100 ns each on the
//! reference VM, docs/benchmarks.md), so a host whose monitored TLS
//! processes all hold descriptors (nginx, Go, curl, redis) pays nothing.
//!
//! It is needed while a monitored process is expected to use memory BIOs
//! (a program named `node`: Node.js; a Python with its `_ssl` and
//! `_asyncio` modules loaded: asyncio), attached as soon as the
//! process is probed, before its first connection; or while one is seen
//! to (`TLS_BIO_USERS`: the probes flag a call with no descriptor and
//! nothing to tie it to, counted as `tls_unlinked`, until it is attached).

use std::collections::HashSet;

use apm_common::maps::{self as names};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{RawTracePoint, raw_trace_point::RawTracePointLinkId},
};

use super::report::Check;

/// The program and the hook it is reported under.
const PROGRAM: &str = "tls_note_recv";
const HOOK: &str = "sock_recv_length";
pub const NAME: &str = "raw_tracepoint:sock_recv_length";

/// The note's link, and who needs it.
pub struct ReadNote {
    link: Option<RawTracePointLinkId>,
    flagged: BpfHashMap<MapData, u32, u64>,
    /// Processes expected or seen to use memory BIOs, still monitored.
    users: HashSet<u32>,
    error: Option<String>,
}

impl ReadNote {
    /// Takes the flag map. The program was loaded, attached and detached
    /// at start (`kernel::start`), so attaching it again is known to work.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, String> {
        let map = ebpf
            .take_map(names::TLS_BIO_USERS)
            .ok_or("TLS_BIO_USERS missing from the object")?;
        let flagged = BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
        Ok(Self {
            link: None,
            flagged,
            users: HashSet::new(),
            error: None,
        })
    }

    /// Attaches or detaches the note for the monitored processes `pids`,
    /// of which `expected` are expected to use memory BIOs. Returns
    /// whether its state changed.
    pub fn update(
        &mut self,
        ebpf: &mut Ebpf,
        pids: &HashSet<u32>,
        expected: &HashSet<u32>,
    ) -> bool {
        let flagged: Vec<u32> = self.flagged.keys().filter_map(Result::ok).collect();
        for tgid in flagged {
            let _ = self.flagged.remove(&tgid);
            self.users.insert(tgid);
        }
        self.users.extend(expected);
        self.users.retain(|pid| pids.contains(pid));
        let want = !self.users.is_empty();
        if want == self.link.is_some() {
            return false;
        }
        let result = program(ebpf).and_then(|tp| match self.link.take() {
            Some(link) => tp.detach(link).map_err(|e| format!("detach: {e}")),
            None => {
                self.link = Some(tp.attach(HOOK).map_err(|e| format!("attach: {e}"))?);
                Ok(())
            }
        });
        self.error = result.err();
        true
    }

    pub fn attached(&self) -> bool {
        self.link.is_some()
    }

    /// Its state for /health/detailed: healthy whether attached or not.
    pub fn check(&self) -> Check {
        let mut users: Vec<u32> = self.users.iter().copied().collect();
        users.sort_unstable();
        let detail = match (&self.error, self.link.is_some()) {
            (Some(e), _) => e.clone(),
            (None, true) => format!("attached: monitored processes {users:?} use memory BIOs"),
            (None, false) => {
                "not attached: no monitored process uses a memory BIO (attached on demand)".into()
            }
        };
        Check {
            name: NAME.into(),
            ok: self.error.is_none(),
            detail,
        }
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut RawTracePoint, String> {
    ebpf.program_mut(PROGRAM)
        .ok_or_else(|| format!("program {PROGRAM} missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {PROGRAM} is not a raw tracepoint: {e}"))
}

/// Loads the note and proves it attaches (then detaches it).
pub fn prove(ebpf: &mut Ebpf) -> Result<(), String> {
    let tp = program(ebpf)?;
    tp.load().map_err(|e| format!("verifier/load: {e}"))?;
    let link = tp.attach(HOOK).map_err(|e| format!("attach: {e}"))?;
    tp.detach(link).map_err(|e| format!("detach: {e}"))
}
