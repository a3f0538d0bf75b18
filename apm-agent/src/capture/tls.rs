//! The OpenSSL libraries of monitored processes: found in their
//! /proc/PID/maps, probed once per library file (`SSL_read`, `SSL_write`
//! and their `_ex` forms, entry and return), and detached when no
//! monitored process maps them any more. The kernel side
//! (`apm-ebpf/src/probes/tls.rs`) reads the plaintext of the calls made
//! on descriptors the process accepted.
//!
//! A library's structure layout is chosen from the symbol versions it
//! defines (`OPENSSL_1_1_1`, `OPENSSL_3.0.0`, …): 1.1.1 and 3.0/3.1 are
//! known; a later series is skipped and reported, never guessed.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
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

/// Entry programs and the functions they probe; the return program
/// (`RETURN`) is attached to every one of them.
const ENTRIES: [(&str, &str); 4] = [
    ("ssl_read", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
];
const RETURN: &str = "ssl_return";

/// A library file, by device and inode as /proc/PID/maps shows them.
type FileId = (String, u64);

struct Library {
    check: Check,
    links: Vec<(&'static str, UProbeLinkId)>,
    users: HashSet<u32>,
}

/// The probed libraries and which monitored processes map them.
pub struct TlsProbes {
    proc_root: PathBuf,
    libraries: HashMap<FileId, Library>,
    /// Each monitored process's libraries, as read from its maps.
    mapped: HashMap<u32, Vec<FileId>>,
}

impl TlsProbes {
    /// Loads the programs (before the agent takes the maps they use out
    /// of the object); they are attached per library later.
    pub fn load(ebpf: &mut Ebpf, proc_root: &Path) -> Result<Self, String> {
        for program in ENTRIES.iter().map(|(p, _)| *p).chain([RETURN]) {
            let p: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or_else(|| format!("program {program} is missing from the object"))?
                .try_into()
                .map_err(|e| format!("{program}: {e}"))?;
            p.load().map_err(|e| format!("loading {program}: {e}"))?;
        }
        Ok(Self {
            proc_root: proc_root.to_owned(),
            libraries: HashMap::new(),
            mapped: HashMap::new(),
        })
    }

    /// Probes the libraries of processes in `pids` not seen before and
    /// detaches those no process in `pids` maps any more. Returns whether
    /// the list of libraries changed.
    pub fn update(&mut self, ebpf: &mut Ebpf, pids: &HashSet<u32>) -> bool {
        let mut changed = false;
        let gone: Vec<u32> = self
            .mapped
            .keys()
            .filter(|p| !pids.contains(p))
            .copied()
            .collect();
        for pid in gone {
            for file in self.mapped.remove(&pid).unwrap_or_default() {
                let Some(lib) = self.libraries.get_mut(&file) else {
                    continue;
                };
                lib.users.remove(&pid);
                if lib.users.is_empty()
                    && let Some(lib) = self.libraries.remove(&file)
                {
                    detach(ebpf, lib.links);
                    changed = true;
                }
            }
        }
        for &pid in pids {
            if self.mapped.contains_key(&pid) {
                continue;
            }
            let files = ssl_libraries(&self.proc_root, pid);
            for (file, path) in &files {
                let lib = self.libraries.entry(file.clone()).or_insert_with(|| {
                    changed = true;
                    let target = self
                        .proc_root
                        .join(pid.to_string())
                        .join("root")
                        .join(path.strip_prefix("/").unwrap_or(path));
                    probe(ebpf, &target, path)
                });
                lib.users.insert(pid);
            }
            self.mapped
                .insert(pid, files.into_iter().map(|(f, _)| f).collect());
        }
        changed
    }

    /// One check per library: attached, or why not.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks: Vec<Check> = self.libraries.values().map(|l| l.check.clone()).collect();
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

/// Attaches every program to the library at `target` (shown as `path`).
fn probe(ebpf: &mut Ebpf, target: &Path, path: &str) -> Library {
    let name = format!("uprobe:{path}");
    let mut lib = Library {
        check: Check {
            name,
            ok: false,
            detail: String::new(),
        },
        links: Vec::new(),
        users: HashSet::new(),
    };
    let layout = match std::fs::read(target)
        .map_err(|e| format!("reading {}: {e}", target.display()))
        .and_then(|bytes| layout_of(&bytes))
    {
        Ok(layout) => layout,
        Err(why) => {
            lib.check.detail = format!("skipped: {why}");
            return lib;
        }
    };
    let programs = ENTRIES
        .iter()
        .map(|&(program, symbol)| (program, symbol))
        .chain(ENTRIES.iter().map(|&(_, symbol)| (RETURN, symbol)));
    for (program, symbol) in programs {
        match attach(ebpf, program, symbol, target, layout.0) {
            Ok(link) => lib.links.push((program, link)),
            Err(e) => {
                detach(ebpf, std::mem::take(&mut lib.links));
                lib.check.detail = format!("{} {symbol}: {e}", layout.1);
                return lib;
            }
        }
    }
    lib.check.ok = true;
    lib.check.detail = format!("attached ({})", layout.1);
    lib
}

fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    symbol: &str,
    target: &Path,
    layout: u64,
) -> Result<UProbeLinkId, String> {
    let p: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::Symbol(symbol),
        cookie: Some(layout),
    };
    p.attach(point, target, UProbeScope::AllProcesses)
        .map_err(|e| format!("{e}"))
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (program, link) in links {
        let p: Option<&mut UProbe> = ebpf.program_mut(program).and_then(|p| p.try_into().ok());
        if let Some(p) = p {
            let _ = p.detach(link);
        }
    }
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
