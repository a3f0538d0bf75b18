//! The cookie of a network namespace, as `bpf_get_netns_cookie()` reports
//! it in packet records, read from userspace: borrow one socket of a
//! process in that namespace (pidfd_getfd, which needs CAP_SYS_PTRACE over
//! the process) and ask it (SO_NETNS_COOKIE, Linux 5.14).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `SO_NETNS_COOKIE` from asm-generic/socket.h.
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

/// The network-namespace cookie of socket `fd` of process `pid`.
pub fn cookie_of(pid: u32, fd: u32) -> io::Result<u64> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: pidfd_getfd takes our pidfd, the target's fd number and flags,
    // and returns a new descriptor in this process.
    let sock = owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    cookie_of_socket(&sock)
}

/// The network-namespace cookie of one of our own sockets.
pub fn cookie_of_socket(sock: &OwnedFd) -> io::Result<u64> {
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
    fn a_borrowed_socket_has_the_cookie_of_our_own_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let own = cookie_of_socket(&OwnedFd::from(listener.try_clone().expect("clone")))
            .expect("own cookie");
        assert_ne!(own, 0);
        let fd = u32::try_from(listener.as_raw_fd()).expect("fd");
        // Borrowing from ourselves needs no privilege.
        assert_eq!(cookie_of(std::process::id(), fd).expect("borrowed"), own);
        assert!(cookie_of(std::process::id(), 999_999).is_err());
    }
}
