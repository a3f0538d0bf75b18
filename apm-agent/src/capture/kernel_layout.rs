//! The offsets of the kernel fields between a task and a descriptor's
//! socket ([`KernelLayout`]), read from the running kernel's BTF, so the
//! TLS probes can find a descriptor's socket without any syscall
//! tracepoint (see `apm-ebpf/src/probes/sockets.rs`).

use std::path::Path;

use apm_common::KernelLayout;
use btf_rs::{Btf, Type};

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's types, from the BTF file at `path`.
pub fn load(path: &Path) -> Result<Btf, String> {
    Btf::from_file(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The offset in `struct sk_buff` of `TCP_SKB_CB(skb)->tcp_gso_segs`: the
/// segments a buffer of a socket's write queue carries.
pub fn gso_segs(btf: &Btf) -> Result<u32, String> {
    Ok(offset(btf, "sk_buff", "cb")? + offset(btf, "tcp_skb_cb", "tcp_gso_segs")?)
}

/// The layout of the kernel `btf` describes.
pub fn read(btf: &Btf) -> Result<KernelLayout, String> {
    let at = |ty: &str, member: &str| offset(btf, ty, member);
    Ok(KernelLayout {
        task_files: at("task_struct", "files")?,
        files_fdt: at("files_struct", "fdt")?,
        fdt_max_fds: at("fdtable", "max_fds")?,
        fdt_fd: at("fdtable", "fd")?,
        file_inode: at("file", "f_inode")?,
        file_private: at("file", "private_data")?,
        inode_mode: at("inode", "i_mode")?,
        socket_sk: at("socket", "sk")?,
        sk_cookie: at("sock_common", "skc_cookie")?,
        sk_protocol: at("sock", "sk_protocol")?,
    })
}

/// The byte offset of `member` in struct `ty`, looking into anonymous
/// unions and structs.
fn offset(btf: &Btf, ty: &str, member: &str) -> Result<u32, String> {
    let missing = || format!("the kernel's BTF has no {ty}.{member}");
    let found = btf
        .resolve_types_by_name(ty)
        .map_err(|_| missing())?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(missing)?;
    let bits = bit_offset(btf, &found, member, 0).ok_or_else(missing)?;
    if bits % 8 != 0 {
        return Err(format!("{ty}.{member} is a bit field"));
    }
    Ok(bits / 8)
}

/// Depth bound for nested anonymous members.
const MAX_DEPTH: u32 = 8;

fn bit_offset(btf: &Btf, ty: &Type, member: &str, depth: u32) -> Option<u32> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return None;
    };
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Some(m.bit_offset());
        }
        if name.is_empty() && depth < MAX_DEPTH {
            let inner = skip_qualifiers(btf, btf.resolve_chained_type(m).ok()?)?;
            if let Some(bits) = bit_offset(btf, &inner, member, depth + 1) {
                return Some(m.bit_offset() + bits);
            }
        }
    }
    None
}

/// `ty` without typedefs and qualifiers.
fn skip_qualifiers(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..MAX_DEPTH {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t).ok()?,
            Type::Volatile(t) => btf.resolve_chained_type(t).ok()?,
            Type::Const(t) => btf.resolve_chained_type(t).ok()?,
            _ => return Some(ty),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kernel has BTF (see ../shared/TOOLCHAIN.md); the
    /// offsets that have not moved in years are checked as such.
    #[test]
    fn reads_this_kernels_layout() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("no {VMLINUX_BTF}: skipped");
            return;
        }
        let btf = load(path).expect("btf");
        let layout = read(&btf).expect("layout");
        assert_eq!(layout.inode_mode, 0);
        assert_eq!(layout.fdt_max_fds, 0);
        assert!(layout.task_files > 0 && layout.sk_cookie > 14, "{layout:?}");
        // sk_buff.cb has been at 40 on 64-bit kernels for years, and
        // tcp_gso_segs follows seq and end_seq.
        assert_eq!(gso_segs(&btf), Ok(48));
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let Err(err) = load(Path::new("/nonexistent/btf")) else {
            panic!("no file, no error")
        };
        assert!(err.contains("/nonexistent/btf"), "{err}");
    }
}
