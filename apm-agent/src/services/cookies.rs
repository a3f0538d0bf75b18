//! The cookies packet records carry, read from userspace for a socket of
//! another process: borrow the socket (pidfd_getfd, which needs
//! CAP_SYS_PTRACE over the process) and ask it for its own cookie
//! (SO_COOKIE, what `bpf_get_socket_cookie()` reports) or its network
//! namespace's (SO_NETNS_COOKIE, Linux 5.14; `bpf_get_netns_cookie()`).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `SO_COOKIE` and `SO_NETNS_COOKIE` from asm-generic/socket.h.
const SO_COOKIE: libc::c_int = 57;
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A new descriptor from a raw syscall return value.
fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Descriptor `fd` of process `pid`, duplicated into this process (closing
/// it leaves the process's own open).
fn borrow(pid: u32, fd: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: pidfd_getfd takes our pidfd, the target's fd number and flags,
    // and returns a new descriptor in this process.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// The network-namespace cookie of socket `fd` of process `pid`.
pub fn netns_cookie_of(pid: u32, fd: u32) -> io::Result<u64> {
    netns_cookie(&borrow(pid, fd)?)
}

/// The cookie of socket `fd` of process `pid`.
pub fn socket_cookie_of(pid: u32, fd: u32) -> io::Result<u64> {
    cookie(&borrow(pid, fd)?, SO_COOKIE)
}

/// The network-namespace cookie of one of our own sockets.
pub fn netns_cookie(sock: &OwnedFd) -> io::Result<u64> {
    cookie(sock, SO_NETNS_COOKIE)
}

fn cookie(sock: &OwnedFd, option: libc::c_int) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which we
    // own and which is exactly that large.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
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
    fn a_borrowed_socket_has_the_cookies_of_our_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = OwnedFd::from(listener.try_clone().expect("clone"));
        let ns = netns_cookie(&ours).expect("own namespace cookie");
        let sock = cookie(&ours, SO_COOKIE).expect("own socket cookie");
        assert_ne!(ns, 0);
        assert_ne!(sock, 0);
        let fd = u32::try_from(listener.as_raw_fd()).expect("fd");
        // Borrowing from ourselves needs no privilege.
        assert_eq!(
            netns_cookie_of(std::process::id(), fd).expect("borrowed"),
            ns
        );
        assert_eq!(
            socket_cookie_of(std::process::id(), fd).expect("borrowed"),
            sock
        );
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other_fd = u32::try_from(other.as_raw_fd()).expect("fd");
        assert_ne!(
            socket_cookie_of(std::process::id(), other_fd).expect("other"),
            sock
        );
        assert!(netns_cookie_of(std::process::id(), 999_999).is_err());
    }
}
