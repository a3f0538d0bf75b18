//! The network-namespace cookies packet records carry
//! (`bpf_get_netns_cookie()`), read without touching another process's
//! sockets:
//! - since Linux 6.18 a network namespace's id is its cookie, and
//!   `NS_GET_ID` on `/proc/PID/ns/net` reads it (opening that link needs
//!   what reading `/proc/PID/fd` needs, no more);
//! - the agent's own namespace: `SO_NETNS_COOKIE` on a socket of its own.
//!
//! On older kernels the other namespaces' services are named by port
//! alone (one WARN line per namespace). Socket cookies come from
//! `sock_diag`.

use std::{
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
    sync::OnceLock,
};

/// `SO_NETNS_COOKIE` from asm-generic/socket.h (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// `NS_GET_ID`: `_IOR(NSIO, 0xd, __u64)` from linux/nsfs.h (Linux 6.18).
const NS_GET_ID: libc::c_ulong = (2 << 30) | (8 << 16) | (0xb7 << 8) | 0x0d;

/// The network namespace `<proc_root>/<pid>/ns/net` names, as (inode,
/// cookie), when this kernel's namespace ids are netns cookies (checked
/// once on the agent's own namespace).
pub fn netns_cookie_of(proc_root: &Path, pid: u32) -> io::Result<(u64, u64)> {
    if !ids_are_cookies() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel has no NS_GET_ID equal to the netns cookie (Linux 6.18+)",
        ));
    }
    namespace_id(&proc_root.join(pid.to_string()).join("ns/net"))
}

/// Whether `NS_GET_ID` reports netns cookies here: true when it gives our
/// own namespace's cookie.
pub fn ids_are_cookies() -> bool {
    static SAME: OnceLock<bool> = OnceLock::new();
    *SAME.get_or_init(|| {
        let id = namespace_id(Path::new("/proc/self/ns/net"));
        let cookie = own_netns();
        matches!((id, cookie), (Ok((_, id)), Ok((_, cookie))) if id == cookie && id != 0)
    })
}

/// The agent's own network namespace: (inode, cookie), read once.
pub fn own_netns() -> io::Result<(u64, u64)> {
    static OWN: OnceLock<Result<(u64, u64), String>> = OnceLock::new();
    OWN.get_or_init(|| read_own_netns().map_err(|e| e.to_string()))
        .clone()
        .map_err(io::Error::other)
}

fn read_own_netns() -> io::Result<(u64, u64)> {
    let inode = std::fs::metadata("/proc/self/ns/net")?.ino();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    Ok((inode, netns_cookie(&OwnedFd::from(sock))?))
}

/// The inode and `NS_GET_ID` of the namespace file at `path`, both read
/// from one open file (so both are of one namespace).
fn namespace_id(path: &Path) -> io::Result<(u64, u64)> {
    let ns = std::fs::File::open(path)?;
    let inode = ns.metadata()?.ino();
    let mut id: u64 = 0;
    // SAFETY: NS_GET_ID writes one u64 through the pointer, which points
    // at `id`, ours and that large.
    let rc = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_ID, &mut id as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((inode, id))
}

/// The network-namespace cookie of one of our own sockets.
pub fn netns_cookie(sock: &OwnedFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which we
    // own and which is exactly that large.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_namespace_has_one_cookie_whichever_way_it_is_read() {
        let (inode, cookie) = own_netns().expect("own namespace");
        assert_ne!(inode, 0);
        assert_ne!(cookie, 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert_eq!(
            netns_cookie(&OwnedFd::from(listener)).expect("cookie"),
            cookie
        );
        let me = std::process::id();
        match netns_cookie_of(Path::new("/proc"), me) {
            Ok(found) => assert_eq!(found, (inode, cookie)),
            // A kernel before 6.18.
            Err(e) => assert!(!ids_are_cookies(), "{e}"),
        }
        assert!(netns_cookie_of(Path::new("/nonexistent-proc"), me).is_err());
    }
}
