//! The OpenSSL libraries of monitored processes: found in their
//! /proc/PID/maps (a `libssl.so*`, or the program itself when it exports
//! OpenSSL's functions, as Node.js does) and probed in those processes
//! only (`SSL_read`, `SSL_write` and their `_ex` forms, entry and return;
//! `SSL_free`), and detached when the process goes. A uprobe scoped to one process puts its
//! breakpoint in that process's memory alone: a process that is not
//! monitored pays nothing for its TLS calls, where a probe on the file
//! would make each of them trap into the kernel. The kernel side
//! (`apm-ebpf/src/probes/tls.rs`) reads the plaintext of the calls made
//! on descriptors the process accepted.
//!
//! A library's structure layout is chosen from its OpenSSL version
//! (`tls_library`): 1.1.1 and 3.0/3.1 are known; a later series is
//! skipped and reported, never guessed.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};

use super::{
    attach::whole_variant,
    kernel::Check,
    tls_library::{self, Inspection, TlsLibrary},
};

use apm_common::maps::TLS_PROGRAMS;

/// A library file, by device and inode as /proc/PID/maps shows them.
type FileId = (String, u64);

/// A library file as the processes mapping it show it.
struct Library {
    /// Its path inside the first process's mount namespace.
    path: String,
    /// What the probes need of it, or why it is skipped.
    layout: Result<TlsLibrary, String>,
    /// The last attach error, if any.
    error: Option<String>,
}

/// One process's probes on one library (none when it is skipped).
struct Attachment {
    file: FileId,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// The probed libraries and the processes probed in each.
pub struct TlsProbes {
    /// Why the return probes are the variants that do not follow HTTP/2
    /// frames, when they are.
    whole: Option<String>,
    proc_root: PathBuf,
    libraries: HashMap<FileId, Library>,
    /// Programs of monitored processes that export no OpenSSL, looked at
    /// once each (at most [`PLAIN_MAX`]).
    plain: HashSet<FileId>,
    /// Each traced process's attachments, from its maps.
    attached: HashMap<u32, Vec<Attachment>>,
    /// When the maps of processes already probed were last read again.
    rechecked: Instant,
}

/// At most this many programs are remembered as holding no OpenSSL;
/// past it the memory starts again (and programs are looked at again).
const PLAIN_MAX: usize = 1024;

/// How often the maps of processes already probed are read again, for a
/// libssl loaded after the process was first seen (a lazy `import ssl`).
const RECHECK: Duration = Duration::from_secs(10);

impl TlsProbes {
    /// Loads the programs (before the agent takes the maps they use out
    /// of the object); they are attached per process later.
    pub fn load(ebpf: &mut Ebpf, proc_root: &Path) -> Result<Self, String> {
        let mut whole = None;
        for program in TLS_PROGRAMS {
            let Err(e) = named(ebpf, program)?.load() else {
                continue;
            };
            // A kernel without `bpf_loop` (before 5.17): the variant that
            // does not follow HTTP/2 frames, if the program has one.
            let variant = whole_variant(program);
            let loaded = match ebpf.program_mut(&variant) {
                Some(_) => named(ebpf, &variant)?.load().is_ok(),
                None => false,
            };
            if !loaded {
                return Err(format!("loading {program}: {e}"));
            }
            let first = e.to_string();
            tracing::warn!(
                program,
                error = %first.lines().next().unwrap_or_default(),
                "HTTP/2 frames not followed over TLS: calls copied whole"
            );
            whole = Some(format!("{program}: {first}"));
        }
        Ok(Self {
            whole,
            proc_root: proc_root.to_owned(),
            libraries: HashMap::new(),
            plain: HashSet::new(),
            attached: HashMap::new(),
            rechecked: Instant::now(),
        })
    }

    /// Probes the libraries of the processes in `pids` not seen before,
    /// in those processes only, and takes the probes of processes gone
    /// from `pids` away. Returns whether anything changed.
    pub fn update(&mut self, ebpf: &mut Ebpf, pids: &HashSet<u32>) -> bool {
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|p| !pids.contains(p))
            .copied()
            .collect();
        let mut changed = !gone.is_empty();
        for pid in gone {
            for attachment in self.attached.remove(&pid).unwrap_or_default() {
                detach(ebpf, attachment.links);
            }
        }
        let mapped: HashSet<&FileId> = self.attached.values().flatten().map(|a| &a.file).collect();
        let unused: Vec<FileId> = self
            .libraries
            .keys()
            .filter(|f| !mapped.contains(f))
            .cloned()
            .collect();
        for file in unused {
            self.libraries.remove(&file);
        }
        let recheck = self.rechecked.elapsed() >= RECHECK;
        if recheck {
            self.rechecked = Instant::now();
        }
        for &pid in pids {
            let known = self.attached.get(&pid);
            if known.is_some() && !recheck {
                continue;
            }
            let seen: Vec<FileId> = known
                .map(|a| a.iter().map(|a| a.file.clone()).collect())
                .unwrap_or_default();
            let mut attachments = Vec::new();
            let files = candidates(&self.proc_root, pid);
            for (file, path) in files {
                if seen.contains(&file) || self.plain.contains(&file) {
                    continue;
                }
                let target = self
                    .proc_root
                    .join(pid.to_string())
                    .join("root")
                    .join(path.strip_prefix("/").unwrap_or(&path));
                if !self.libraries.contains_key(&file) {
                    let layout = match tls_library::inspect(&target) {
                        Ok(Inspection::NotTls) => {
                            if self.plain.len() >= PLAIN_MAX {
                                self.plain.clear();
                            }
                            self.plain.insert(file);
                            continue;
                        }
                        Ok(Inspection::Probe(lib)) => Ok(lib),
                        Ok(Inspection::Skipped(why)) | Err(why) => Err(why),
                    };
                    let lib = Library {
                        layout,
                        path,
                        error: None,
                    };
                    self.libraries.insert(file.clone(), lib);
                }
                changed = true;
                let Some(lib) = self.libraries.get_mut(&file) else {
                    continue;
                };
                // A skipped or failed library stays listed while mapped.
                let links = match &lib.layout {
                    Err(_) => Vec::new(),
                    Ok(found) => probe(ebpf, &target, found, pid).unwrap_or_else(|e| {
                        lib.error = Some(format!("{}: {e}", found.name));
                        Vec::new()
                    }),
                };
                attachments.push(Attachment { file, links });
            }
            self.attached.entry(pid).or_default().extend(attachments);
        }
        changed
    }

    /// One check per library: how many processes are probed in it, or
    /// why it is not.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks: Vec<Check> = self
            .libraries
            .iter()
            .map(|(file, lib)| {
                let processes = self
                    .attached
                    .values()
                    .filter(|a| a.iter().any(|a| a.file == *file && !a.links.is_empty()))
                    .count();
                let (ok, detail) = match (&lib.layout, &lib.error) {
                    (Err(why), _) => (false, format!("skipped: {why}")),
                    (Ok(_), Some(e)) => (false, e.clone()),
                    (Ok(found), None) => (
                        true,
                        format!(
                            "attached in {processes} monitored processes ({})",
                            found.name
                        ),
                    ),
                };
                Check {
                    name: format!("uprobe:{}", lib.path),
                    ok,
                    detail,
                }
            })
            .collect();
        checks.sort_by(|a, b| a.name.cmp(&b.name));
        checks
    }
}

/// The TLS probes' check at start: loaded (plaintext keyed by socket, or
/// by descriptor and why), or why not.
pub fn load_detail(
    loaded: &Result<TlsProbes, String>,
    by_socket: bool,
    why: Option<&str>,
) -> String {
    match loaded {
        Err(e) => e.clone(),
        Ok(probes) => format!(
            "loaded; attached to each TLS library monitored processes map; plaintext keyed by {}{}",
            match (by_socket, why) {
                (true, _) => "socket".to_owned(),
                (false, Some(why)) => format!("descriptor (no socket layout: {why})"),
                (false, None) => "descriptor".to_owned(),
            },
            match &probes.whole {
                Some(why) => format!("; HTTP/2 frames not followed, 1 KiB per call ({why})"),
                None => String::new(),
            }
        ),
    }
}

/// The files of process `pid` that may hold OpenSSL: the `libssl.so*`
/// it maps and its program, as file id and path inside the process's
/// mount namespace.
fn candidates(proc_root: &Path, pid: u32) -> Vec<(FileId, String)> {
    let exe = std::fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok();
    let exe = exe.as_deref().and_then(Path::to_str);
    mapped(proc_root, pid, |path| {
        let name = path.rsplit('/').next().unwrap_or(path);
        name.starts_with("libssl.so") || Some(path) == exe
    })
}

/// The files process `pid` maps whose path `wanted` accepts, once each.
fn mapped(
    proc_root: &Path,
    pid: u32,
    mut wanted: impl FnMut(&str) -> bool,
) -> Vec<(FileId, String)> {
    let maps =
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps")).unwrap_or_default();
    let mut found: Vec<(FileId, String)> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.split_ascii_whitespace();
        let (Some(dev), Some(inode), Some(path)) = (fields.nth(3), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 || !wanted(path) {
            continue;
        }
        let id = (dev.to_owned(), inode);
        if !found.iter().any(|(f, _)| *f == id) {
            found.push((id, path.to_owned()));
        }
    }
    found
}

/// Attaches every program to the library at `target`, for process `pid`
/// only: the kernel puts the breakpoints in that process's memory alone,
/// so other processes' TLS calls cost nothing at all.
fn probe(
    ebpf: &mut Ebpf,
    target: &Path,
    lib: &TlsLibrary,
    pid: u32,
) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let pid = NonZeroU32::new(pid).ok_or("pid 0")?;
    let mut links = Vec::new();
    for &(program, offset) in &lib.probes {
        match attach(ebpf, program, offset, target, lib.cookie, pid) {
            Ok(link) => links.push((program, link)),
            Err(e) => {
                detach(ebpf, links);
                return Err(format!("{program} at {offset:#x}: {e}"));
            }
        }
    }
    Ok(links)
}

fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    offset: u64,
    target: &Path,
    cookie: u64,
    pid: NonZeroU32,
) -> Result<UProbeLinkId, String> {
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(offset),
        cookie: Some(cookie),
    };
    uprobe(ebpf, program)?
        .attach(point, target, UProbeScope::OneProcess(pid))
        .map_err(|e| format!("{e}"))
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (program, link) in links {
        if let Ok(p) = uprobe(ebpf, program) {
            let _ = p.detach(link);
        }
    }
}

/// The object's uprobe program `program`, or its variant loaded in its
/// stead ([`TlsProbes::load`]).
fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut UProbe, String> {
    let variant = whole_variant(program);
    let instead = ebpf.program(program).is_some_and(|p| p.fd().is_err())
        && ebpf.program(&variant).is_some_and(|p| p.fd().is_ok());
    named(ebpf, if instead { &variant } else { program })
}

/// The object's uprobe program called `program`.
fn named<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut UProbe, String> {
    ebpf.program_mut(program)
        .ok_or_else(|| format!("program {program} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))
}
