//! What a mapped file offers the TLS probes: whether it defines OpenSSL's
//! SSL functions (libssl, or a program with OpenSSL linked in that exports
//! them, as Node.js does) or is a Go program with `crypto/tls`
//! (`tls_go`), where each probe goes in the file, and which structure
//! layout its version has. Read once per file through a cache of the
//! parts looked at (headers, symbol tables, a few code bytes), never the
//! whole of it (node is 100 MB).

use std::{fs::File, path::Path};

use apm_common::{
    maps::{TLS_ENTRIES, TLS_FREE, TLS_RETURN},
    tls_layout,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ReadCache, ReadRef as _};

use super::tls_go;

/// A TLS library (or Go program) the probes can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    /// The attach cookie: the OpenSSL layout (`apm_common::tls_layout`),
    /// or the address of Go's `*net.TCPConn` itab.
    pub cookie: u64,
    /// "OpenSSL 3.0.19", "Go 1.19.8 crypto/tls": for reports.
    pub name: String,
    /// Each probe: its program and the file offset it goes at.
    pub probes: Vec<(&'static str, u64)>,
}

/// What a file is to the TLS probes.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspection {
    /// It does not define `SSL_read`: nothing to probe, nothing to say.
    NotTls,
    /// An OpenSSL this agent cannot read, and why.
    Skipped(String),
    Probe(TlsLibrary),
}

/// Every symbol probed.
fn probed_symbols() -> impl Iterator<Item = &'static str> {
    TLS_ENTRIES.iter().map(|&(_, s)| s).chain([TLS_FREE.1])
}

/// Inspects the file at `path`.
pub fn inspect(path: &Path) -> Result<Inspection, String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(go) = tls_go::inspect(&elf, &cache) {
        return Ok(go);
    }
    let mut offsets = Vec::new();
    let mut version_num_at = None;
    // What a library or program exports: a full symbol table is large
    // (node's), and names what others cannot call anyway.
    for symbol in elf.dynamic_symbols() {
        let Ok(name) = symbol.name() else { continue };
        let wanted = probed_symbols().find(|s| *s == name);
        let version_num = name == "OpenSSL_version_num";
        if (wanted.is_none() && !version_num) || !symbol.is_definition() {
            continue;
        }
        let Some(offset) = file_offset(&elf, &symbol) else {
            continue;
        };
        match wanted {
            Some(s) if !offsets.iter().any(|&(o, _)| o == s) => offsets.push((s, offset)),
            Some(_) => {}
            None => version_num_at = version_num_at.or(Some(offset)),
        }
    }
    if !offsets.iter().any(|&(s, _)| s == "SSL_read") {
        return Ok(Inspection::NotTls);
    }
    let missing: Vec<&str> = probed_symbols()
        .filter(|s| !offsets.iter().any(|(o, _)| o == s))
        .collect();
    if !missing.is_empty() {
        return Ok(Inspection::Skipped(format!(
            "{} not defined",
            missing.join(", ")
        )));
    }
    let dynstr = elf
        .section_by_name(".dynstr")
        .and_then(|s| s.data().ok())
        .unwrap_or_default();
    let version = match (version_of_names(dynstr), version_num_at) {
        (Some(v), _) => v,
        (None, Some(at)) => {
            let code = cache.read_bytes_at(at, 16).unwrap_or_default();
            match version_of_code(code) {
                Some(v) => v,
                None => {
                    return Ok(Inspection::Skipped(
                        "OpenSSL_version_num is not a constant".into(),
                    ));
                }
            }
        }
        (None, None) => {
            return Ok(Inspection::Skipped(
                "no OpenSSL version: neither symbol versions nor OpenSSL_version_num".into(),
            ));
        }
    };
    let offset = |symbol: &str| {
        offsets
            .iter()
            .find(|(s, _)| *s == symbol)
            .map_or(0, |&(_, o)| o)
    };
    let probes = TLS_ENTRIES
        .iter()
        .flat_map(|&(program, symbol)| [(program, offset(symbol)), (TLS_RETURN, offset(symbol))])
        .chain([(TLS_FREE.0, offset(TLS_FREE.1))])
        .collect();
    Ok(match layout_of(&version) {
        Ok((cookie, name)) => Inspection::Probe(TlsLibrary {
            cookie,
            name,
            probes,
        }),
        Err(why) => Inspection::Skipped(why),
    })
}

/// Where `symbol`'s code is in the file.
pub fn file_offset<'a, R: object::ReadRef<'a>>(
    elf: &object::File<'a, R>,
    symbol: &object::Symbol<'a, '_, R>,
) -> Option<u64> {
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    let (section_offset, _) = section.file_range()?;
    symbol
        .address()
        .checked_sub(section.address())?
        .checked_add(section_offset)
}

/// The newest OpenSSL symbol version (`OPENSSL_3.0.0`, `OPENSSL_1_1_1`)
/// named in a dynamic string table, as its numbers.
pub fn version_of_names(strings: &[u8]) -> Option<Vec<u32>> {
    strings
        .split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(b"OPENSSL_"))
        .filter(|v| {
            v.iter()
                .all(|b| b.is_ascii_digit() || *b == b'.' || *b == b'_')
        })
        .map(|v| {
            v.split(|&b| b == b'.' || b == b'_')
                .filter_map(|p| std::str::from_utf8(p).ok()?.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|parts| parts.len() >= 2)
        .max()
}

/// The version `OpenSSL_version_num` returns, from its code: `mov eax,
/// imm32; ret`, after an `endbr64` where the build has one.
pub fn version_of_code(code: &[u8]) -> Option<Vec<u32>> {
    let code = code.strip_prefix(&[0xf3, 0x0f, 0x1e, 0xfa]).unwrap_or(code);
    let [0xb8, a, b, c, d, 0xc3, ..] = *code else {
        return None;
    };
    let v = u32::from_le_bytes([a, b, c, d]);
    let (major, minor) = (v >> 28, (v >> 20) & 0xff);
    let patch = if major >= 3 {
        (v >> 4) & 0xff
    } else {
        (v >> 12) & 0xff
    };
    Some(vec![major, minor, patch])
}

/// The structure layout of an OpenSSL version, and its name for reports.
pub fn layout_of(version: &[u32]) -> Result<(u64, String), String> {
    let text: Vec<String> = version.iter().map(u32::to_string).collect();
    let name = format!("OpenSSL {}", text.join("."));
    match version {
        [1, 1, ..] => Ok((tls_layout::OPENSSL_1_1, name)),
        [3, 0 | 1, ..] => Ok((tls_layout::OPENSSL_3_0, name)),
        _ => Err(format!(
            "{name}: its structure layout is not known to this agent"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_newest_symbol_version() {
        let three = b"\0OPENSSL_3.0.0\0SSL_read\0OPENSSL_3.0.3\0OPENSSL_init_ssl\0";
        assert_eq!(version_of_names(three), Some(vec![3, 0, 3]));
        let one = b"\0OPENSSL_1_1_0\0OPENSSL_1_1_1\0";
        assert_eq!(version_of_names(one), Some(vec![1, 1, 1]));
        // A version in running text is not a symbol version.
        assert_eq!(version_of_names(b"OPENSSL_3.4.0 is nice"), None);
        assert_eq!(version_of_names(b"\0OPENSSL_init_crypto\0"), None);
    }

    #[test]
    fn the_version_of_a_static_openssl_is_read_from_its_code() {
        // node 20's OpenSSL 3.0.19, with and without endbr64.
        let code = [0xb8, 0x30, 0x01, 0x00, 0x30, 0xc3, 0x66];
        assert_eq!(version_of_code(&code), Some(vec![3, 0, 19]));
        let cet = [0xf3, 0x0f, 0x1e, 0xfa, 0xb8, 0x7f, 0x11, 0x10, 0x10, 0xc3];
        assert_eq!(version_of_code(&cet), Some(vec![1, 1, 1]));
        assert_eq!(version_of_code(&[0x55, 0x48, 0x89, 0xe5]), None);
    }

    #[test]
    fn only_known_series_have_a_layout() {
        assert_eq!(
            layout_of(&[3, 0, 19]).map(|l| l.0),
            Ok(tls_layout::OPENSSL_3_0)
        );
        assert_eq!(
            layout_of(&[1, 1, 1]).map(|l| l.0),
            Ok(tls_layout::OPENSSL_1_1)
        );
        assert_eq!(
            layout_of(&[3, 0, 19]).map(|l| l.1),
            Ok("OpenSSL 3.0.19".into())
        );
        assert!(layout_of(&[3, 2, 0]).is_err_and(|e| e.contains("OpenSSL 3.2.0")));
    }

    /// Debian's libssl and, where installed, a node with OpenSSL linked
    /// in: both probed at the offsets `nm` would give.
    #[test]
    fn installed_openssl_files_are_probed() {
        for path in ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/bin/node"] {
            let Ok(found) = inspect(Path::new(path)) else {
                continue;
            };
            let Inspection::Probe(lib) = found else {
                // Debian's own node links libssl instead.
                assert!(path.ends_with("node"), "{path}: {found:?}");
                assert_eq!(found, Inspection::NotTls, "{path}");
                continue;
            };
            // Four entries, their returns, SSL_free: at distinct
            // offsets but for the returns.
            assert_eq!(lib.probes.len(), 9, "{lib:?}");
            assert!(lib.probes.iter().all(|&(_, o)| o > 0), "{lib:?}");
        }
        assert_eq!(inspect(Path::new("/bin/sh")).ok(), Some(Inspection::NotTls));
    }
}
