//! The OpenSSL libraries of monitored processes: found in their
//! /proc/PID/maps and probed in those processes only (`SSL_read`,
//! `SSL_write` and their `_ex` forms, entry and return), and detached
//! when the process goes. A uprobe scoped to one process puts its
//! breakpoint in that process's memory alone: a process that is not
//! monitored pays nothing for its TLS calls, where a probe on the file
//! would make each of them trap into the kernel. The kernel side
//! (`apm-ebpf/src/probes/tls.rs`) reads the plaintext of the calls made
//! on descriptors the process accepted.
//!
//! A library's structure layout is chosen from the symbol versions it
//! defines (`OPENSSL_1_1_1`, `OPENSSL_3.0.0`, …): 1.1.1 and 3.0/3.1 are
//! known; a later series is skipped and reported, never guessed.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use apm_common::tls_layout;
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};

use super::kernel::Check;

use apm_common::maps::{TLS_ENTRIES as ENTRIES, TLS_RETURN as RETURN};

/// A library file, by device and inode as /proc/PID/maps shows them.
type FileId = (String, u64);

/// A library file as the processes mapping it show it.
struct Library {
    /// Its path inside the first process's mount namespace.
    path: String,
    /// Its layout cookie and name, or why it is skipped.
    layout: Result<(u64, String), String>,
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
    proc_root: PathBuf,
    libraries: HashMap<FileId, Library>,
    /// Each traced process's attachments, from its maps.
    attached: HashMap<u32, Vec<Attachment>>,
    /// When the maps of processes already probed were last read again.
    rechecked: Instant,
}

/// How often the maps of processes already probed are read again, for a
/// libssl loaded after the process was first seen (a lazy `import ssl`).
const RECHECK: Duration = Duration::from_secs(10);

impl TlsProbes {
    /// Loads the programs (before the agent takes the maps they use out
    /// of the object); they are attached per process later.
    pub fn load(ebpf: &mut Ebpf, proc_root: &Path) -> Result<Self, String> {
        for program in ENTRIES.iter().map(|(p, _)| *p).chain([RETURN]) {
            uprobe(ebpf, program)?
                .load()
                .map_err(|e| format!("loading {program}: {e}"))?;
        }
        Ok(Self {
            proc_root: proc_root.to_owned(),
            libraries: HashMap::new(),
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
            for (file, path) in ssl_libraries(&self.proc_root, pid) {
                if seen.contains(&file) {
                    continue;
                }
                changed = true;
                let target = self
                    .proc_root
                    .join(pid.to_string())
                    .join("root")
                    .join(path.strip_prefix("/").unwrap_or(&path));
                let lib = self
                    .libraries
                    .entry(file.clone())
                    .or_insert_with(|| Library {
                        layout: std::fs::read(&target)
                            .map_err(|e| format!("reading {}: {e}", target.display()))
                            .and_then(|bytes| layout_of(&bytes)),
                        path,
                        error: None,
                    });
                // A skipped or failed library stays listed while mapped.
                let links = match &lib.layout {
                    Err(_) => Vec::new(),
                    Ok((layout, name)) => probe(ebpf, &target, *layout, pid).unwrap_or_else(|e| {
                        lib.error = Some(format!("{name}: {e}"));
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
                    (Ok((_, name)), None) => (
                        true,
                        format!("attached in {processes} monitored processes ({name})"),
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

/// The OpenSSL libraries (`libssl.so*`) process `pid` maps: file id and
/// path inside the process's mount namespace.
fn ssl_libraries(proc_root: &Path, pid: u32) -> Vec<(FileId, String)> {
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
        let name = path.rsplit('/').next().unwrap_or(path);
        if !name.starts_with("libssl.so") {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        let id = (dev.to_owned(), inode);
        if !found.iter().any(|(f, _)| *f == id) {
            found.push((id, path.to_owned()));
        }
    }
    found
}

/// The structure layout of a libssl file (its bytes), from the newest
/// symbol version it defines, and the library's name for reports.
pub fn layout_of(bytes: &[u8]) -> Result<(u64, String), String> {
    let mut newest: Option<(Vec<u32>, String)> = None;
    let marker = b"OPENSSL_";
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], marker) {
        let start = at + i;
        let rest = &bytes[start + marker.len()..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.' || *b == b'_'))
            .unwrap_or(rest.len());
        let version = String::from_utf8_lossy(&rest[..end]).into_owned();
        let parts: Vec<u32> = version
            .split(['.', '_'])
            .filter_map(|p| p.parse::<u32>().ok())
            .collect();
        if parts.len() >= 2
            && rest.get(end) == Some(&0)
            && newest.as_ref().is_none_or(|(newer, _)| parts > *newer)
        {
            newest = Some((parts, version));
        }
        at = start + marker.len();
    }
    let Some((parts, version)) = newest else {
        return Err("no OpenSSL symbol versions: not an OpenSSL libssl".into());
    };
    let name = format!("OpenSSL {}", version.replace('_', "."));
    match parts[..2] {
        [1, 1] => Ok((tls_layout::OPENSSL_1_1, name)),
        [3, 0 | 1] => Ok((tls_layout::OPENSSL_3_0, name)),
        _ => Err(format!(
            "{name}: its structure layout is not known to this agent"
        )),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Attaches every program to the library at `target`, for process `pid`
/// only: the kernel puts the breakpoints in that process's memory alone,
/// so other processes' TLS calls cost nothing at all.
fn probe(
    ebpf: &mut Ebpf,
    target: &Path,
    layout: u64,
    pid: u32,
) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let pid = NonZeroU32::new(pid).ok_or("pid 0")?;
    let programs = ENTRIES
        .iter()
        .copied()
        .chain(ENTRIES.iter().map(|&(_, symbol)| (RETURN, symbol)));
    let mut links = Vec::new();
    for (program, symbol) in programs {
        match attach(ebpf, program, symbol, target, layout, pid) {
            Ok(link) => links.push((program, link)),
            Err(e) => {
                detach(ebpf, links);
                return Err(format!("{symbol}: {e}"));
            }
        }
    }
    Ok(links)
}

fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    symbol: &str,
    target: &Path,
    layout: u64,
    pid: NonZeroU32,
) -> Result<UProbeLinkId, String> {
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::Symbol(symbol),
        cookie: Some(layout),
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

/// The object's uprobe program `program`.
fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut UProbe, String> {
    ebpf.program_mut(program)
        .ok_or_else(|| format!("program {program} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_follows_the_newest_symbol_version() {
        let three = b"\0OPENSSL_3.0.0\0SSL_read\0OPENSSL_3.0.3\0";
        assert_eq!(layout_of(three).map(|l| l.0), Ok(tls_layout::OPENSSL_3_0));
        let one = b"\0OPENSSL_1_1_0\0OPENSSL_1_1_1\0";
        assert_eq!(layout_of(one).map(|l| l.0), Ok(tls_layout::OPENSSL_1_1));
        let later = b"\0OPENSSL_3.0.0\0OPENSSL_3.2.0\0";
        assert!(
            layout_of(later).is_err_and(|e| e.contains("OpenSSL 3.2.0")),
            "{:?}",
            layout_of(later)
        );
        assert_eq!(layout_of(three).map(|l| l.1), Ok("OpenSSL 3.0.3".into()));
        // A version named in running text is not a symbol version.
        assert!(layout_of(b"OPENSSL_3.4.0 is nice").is_err());
    }

    #[test]
    fn the_system_libssl_has_a_known_layout_when_present() {
        let Ok(bytes) = std::fs::read("/usr/lib/x86_64-linux-gnu/libssl.so.3") else {
            return;
        };
        assert!(layout_of(&bytes).is_ok(), "{:?}", layout_of(&bytes));
    }
}
