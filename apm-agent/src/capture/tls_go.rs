//! Go programs with `crypto/tls`: the version from `.go.buildinfo`, the
//! two functions from the symbol table, the `RET` instructions the return
//! probe goes at (a decoder, iced-x86, tells them from bytes that merely
//! look like one), and the address of the `*net.TCPConn` itab the kernel
//! side compares a connection's interface with.
//!
//! Probed: Go 1.17 and later (the register ABI), built as a plain
//! executable (not PIE: the itab address is then the one in memory), with
//! its symbol table. Such a program that is older or PIE is skipped and
//! reported; a stripped one cannot be told from a Go program without TLS,
//! and is not probed.

use apm_common::maps::{GO_TLS_ENTRIES, GO_TLS_RETURN};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object as _, ObjectKind, ObjectSection as _, ObjectSymbol as _, ReadRef};

use super::tls_library::{Inspection, TlsLibrary, file_offset};

/// The itab of `*net.TCPConn` as `net.Conn` (Go 1.20 renamed the
/// symbol's prefix).
const TCP_ITABS: [&str; 2] = [
    "go:itab.*net.TCPConn,net.Conn",
    "go.itab.*net.TCPConn,net.Conn",
];

/// What the Go program in `elf` offers, or `None` when it is not a Go
/// program.
pub fn inspect<'a, R: ReadRef<'a>>(elf: &object::File<'a, R>, data: R) -> Option<Inspection> {
    let buildinfo = elf.section_by_name(".go.buildinfo")?.data().ok()?;
    let Some(version) = version(buildinfo) else {
        return Some(skipped("Go before 1.18: its build information is not read"));
    };
    let name = format!("Go {} crypto/tls", version.text);
    let mut functions: Vec<(&'static str, u64, u64, u64)> = Vec::new();
    let mut itab = None;
    for symbol in elf.symbols() {
        let Ok(symbol_name) = symbol.name() else {
            continue;
        };
        if TCP_ITABS.contains(&symbol_name) {
            itab = Some(symbol.address());
        } else if let Some(&(program, _)) = GO_TLS_ENTRIES.iter().find(|(_, f)| *f == symbol_name)
            && let Some(offset) = file_offset(elf, &symbol)
        {
            functions.push((program, symbol.address(), offset, symbol.size()));
        }
    }
    if functions.is_empty() {
        return Some(Inspection::NotTls);
    }
    if version.minor < 17 {
        return Some(skipped(&format!(
            "{name}: before Go 1.17 arguments are on the stack"
        )));
    }
    if elf.kind() != ObjectKind::Executable {
        return Some(skipped(&format!(
            "{name}: a position-independent executable (its itab address is not known)"
        )));
    }
    let (Some(itab), true) = (itab, functions.len() == GO_TLS_ENTRIES.len()) else {
        return Some(skipped(&format!(
            "{name}: crypto/tls.(*Conn) or the *net.TCPConn itab not found"
        )));
    };
    let mut probes = Vec::new();
    for (program, address, offset, size) in functions {
        let code = data.read_bytes_at(offset, size).ok()?;
        let rets = returns(code, address);
        if rets.is_empty() {
            return Some(skipped(&format!("{name}: no RET in {program}")));
        }
        probes.push((program, offset));
        probes.extend(rets.iter().map(|&at| (GO_TLS_RETURN, offset + at)));
    }
    Some(Inspection::Probe(TlsLibrary {
        cookie: itab,
        name,
        probes,
    }))
}

fn skipped(why: &str) -> Inspection {
    Inspection::Skipped(why.to_owned())
}

/// A Go version, from the build information.
#[derive(Debug, PartialEq, Eq)]
pub struct Version {
    pub text: String,
    pub minor: u32,
}

/// The Go version of a `.go.buildinfo` section: Go 1.18 and later write
/// it inline after the 32-byte header (flag 2), as a varint length and
/// the text "go1.19.8".
pub fn version(buildinfo: &[u8]) -> Option<Version> {
    let header = buildinfo.get(..32)?;
    if !header.starts_with(b"\xff Go buildinf:") || header[15] & 2 == 0 {
        return None;
    }
    let rest = &buildinfo[32..];
    let (len, used) = varint(rest)?;
    let text = rest.get(used..used + usize::try_from(len).ok()?)?;
    let text = std::str::from_utf8(text).ok()?.strip_prefix("go")?;
    let mut parts = text.split(['.', 'r', 'b']);
    let (major, minor) = (parts.next()?, parts.next()?);
    if major != "1" {
        return None;
    }
    Some(Version {
        text: text.to_owned(),
        minor: minor.parse().ok()?,
    })
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The offsets, from the function's start, of the `RET` instructions in
/// `code` (a function at `address`).
pub fn returns(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut found = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.mnemonic() == Mnemonic::Ret {
            found.push(instruction.ip() - address);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_build_information() {
        let mut info = b"\xff Go buildinf:\x08\x02".to_vec();
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.19.8");
        assert_eq!(
            version(&info),
            Some(Version {
                text: "1.19.8".into(),
                minor: 19
            })
        );
        // Before 1.18: pointers, not inline strings.
        info[15] = 0;
        assert_eq!(version(&info), None);
    }

    #[test]
    fn a_ret_is_an_instruction_not_a_byte() {
        // mov eax, 0xc3c3c3c3; ret; int3; xor eax, eax; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xcc, 0x31, 0xc0, 0xc3];
        assert_eq!(returns(&code, 0x40_0000), vec![5, 9]);
    }
}
