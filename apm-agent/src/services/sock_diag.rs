//! The kernel's socket diagnostics (NETLINK_SOCK_DIAG) of the agent's own
//! network namespace: each TCP socket's inode and cookie (`idiag_cookie`,
//! what `bpf_get_socket_cookie()` reports), and each listener's accept
//! queue (`idiag_rqueue`), its limit (`idiag_wqueue`, the backlog) and
//! the connection attempts it dropped (`INET_DIAG_SKMEMINFO`'s drops).
//! Dumping one's own namespace needs no privilege, unlike borrowing the
//! socket from its process.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `SOCK_DIAG_BY_FAMILY` from linux/sock_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// LISTEN (bit 10) in an `idiag_states` mask, and every state but it.
const LISTEN: u32 = 1 << 10;
const ALL_BUT_LISTEN: u32 = !LISTEN;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// Offsets in `struct inet_diag_msg`: the socket id's cookie (two u32 in
/// host order, low word first) and the inode.
const MSG_COOKIE: usize = 4 + 40;
const MSG_INODE: usize = 68;
/// The local port (network order), the receive and send queues (a
/// listener's accept queue and backlog).
const MSG_SPORT: usize = 4;
const MSG_RQUEUE: usize = 56;
const MSG_WQUEUE: usize = 60;
const MSG_LEN: usize = 72;
/// `INET_DIAG_SKMEMINFO`: an attribute of `SK_MEMINFO_VARS` u32, asked
/// for with its bit in the request's `idiag_ext`; the drops are the
/// ninth (`SK_MEMINFO_DROPS`): a listener's are every attempt the kernel
/// dropped on it (`tcp_listendrop`: accept queue full, among others).
const INET_DIAG_SKMEMINFO: u16 = 7;
const SK_MEMINFO_DROPS: usize = 8;

/// The cookies of the wanted socket inodes that are TCP sockets (not
/// listening) of the agent's network namespace; inodes of other
/// namespaces are not found.
pub fn socket_cookies(wanted: &HashSet<u64>) -> io::Result<HashMap<u64, u64>> {
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    let sock = open()?;
    for family in [libc::AF_INET, libc::AF_INET6] {
        dump(&sock, family as u8, ALL_BUT_LISTEN, 0, |msg| {
            let inode = u64::from(u32_at(msg, MSG_INODE));
            if wanted.contains(&inode) {
                let cookie = u64::from(u32_at(msg, MSG_COOKIE))
                    | (u64::from(u32_at(msg, MSG_COOKIE + 4)) << 32);
                found.insert(inode, cookie);
            }
        })?;
    }
    Ok(found)
}

/// A port's listeners' accept queues: connections waiting for accept(),
/// the most they may hold (the backlog) and the attempts they dropped
/// (since each listener opened), summed over its listening sockets (IPv4
/// and IPv6, SO_REUSEPORT groups).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptQueue {
    pub queued: u64,
    pub limit: u64,
    pub drops: u64,
    /// Each listening socket's (inode, drops): a count is per socket, so
    /// one that closes takes its own with it.
    pub listeners: Vec<(u64, u64)>,
}

/// The accept queue of every listening port of the agent's namespace.
pub fn accept_queues() -> io::Result<HashMap<u16, AcceptQueue>> {
    accept_queues_with(&open()?)
}

/// A sock_diag socket of the network namespace `inode`, opened at
/// `netns` (a `/proc/PID/ns/net`, checked to still be that namespace: a
/// pid may have been reused): made on a thread that joined it (a socket
/// stays in the namespace it was made in). Needs CAP_SYS_ADMIN.
pub fn socket_in(netns: &std::path::Path, inode: u64) -> io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt as _;
    let netns = std::fs::File::open(netns)?;
    if netns.metadata()?.ino() != inode {
        return Err(io::Error::other("the process left that namespace"));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd as _;
                // SAFETY: setns takes a namespace descriptor we own and
                // moves only this short-lived thread.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                open()
            })
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    })
}

/// The accept queue of every listening port of `sock`'s namespace.
pub fn accept_queues_with(sock: &OwnedFd) -> io::Result<HashMap<u16, AcceptQueue>> {
    let mut queues: HashMap<u16, AcceptQueue> = HashMap::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let ext = 1 << (INET_DIAG_SKMEMINFO - 1);
        dump(sock, family as u8, LISTEN, ext, |msg| {
            let port = u16::from_be_bytes([msg[MSG_SPORT], msg[MSG_SPORT + 1]]);
            let q = queues.entry(port).or_default();
            q.queued += u64::from(u32_at(msg, MSG_RQUEUE));
            q.limit += u64::from(u32_at(msg, MSG_WQUEUE));
            if let Some(mem) = attribute(&msg[MSG_LEN..], INET_DIAG_SKMEMINFO) {
                let drops = u64::from(u32_at(mem, SK_MEMINFO_DROPS * 4));
                q.drops += drops;
                q.listeners.push((u64::from(u32_at(msg, MSG_INODE)), drops));
            }
        })?;
    }
    Ok(queues)
}

/// The payload of the first netlink attribute of `kind` in `attrs`
/// (`struct rtattr`s: length, type, payload, aligned to 4 bytes).
fn attribute(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let found = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if found == kind {
            return attrs.get(4..len);
        }
        attrs = attrs.get((len + 3) & !3..)?;
    }
    None
}

/// A native-endian u32 at `at` in `b` (0 past its end).
fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// Calls `each` with every `inet_diag_msg` (at least [`MSG_LEN`] bytes)
/// of the TCP sockets of `family` in `states` of `sock`'s namespace, with
/// the attributes `ext` asks for after it.
fn dump(
    sock: &OwnedFd,
    family: u8,
    states: u32,
    ext: u8,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    send_request(sock, family, states, ext)?;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf, which we own.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = usize::try_from(n).map_err(io::Error::other)?;
        if n == 0 {
            return Ok(());
        }
        if parse(&buf[..n], &mut each)? {
            return Ok(());
        }
    }
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers and returns a new descriptor.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `SOCK_DIAG_BY_FAMILY` dump request for TCP sockets of `family`
/// in `states`, with the attributes `ext` asks for.
fn request(family: u8, states: u32, ext: u8) -> [u8; NLMSG_HDR + REQ_LEN] {
    let mut msg = [0u8; NLMSG_HDR + REQ_LEN];
    let len = (NLMSG_HDR + REQ_LEN) as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed
    // socket id (no filter) with INET_DIAG_NOCOOKIE.
    let req = &mut msg[NLMSG_HDR..];
    req[0] = family;
    req[1] = libc::IPPROTO_TCP as u8;
    req[2] = ext;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    req[8 + 40..8 + 48].copy_from_slice(&[0xff; 8]);
    msg
}

fn send_request(sock: &OwnedFd, family: u8, states: u32, ext: u8) -> io::Result<()> {
    let msg = request(family, states, ext);
    // SAFETY: a zeroed sockaddr_nl is valid; nl_family names the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msg and kernel are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Parses one datagram of netlink messages; returns whether the dump is
/// done.
fn parse(mut data: &[u8], each: &mut impl FnMut(&[u8])) -> io::Result<bool> {
    while data.len() >= NLMSG_HDR {
        let len = u32_at(data, 0) as usize;
        if len < NLMSG_HDR || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated sock_diag message",
            ));
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let body = &data[NLMSG_HDR..len];
        match i32::from(kind) {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let errno = u32_at(body, 0) as i32;
                return if errno == 0 {
                    Ok(true)
                } else {
                    Err(io::Error::from_raw_os_error(-errno))
                };
            }
            _ if kind == SOCK_DIAG_BY_FAMILY && body.len() >= MSG_LEN => each(body),
            _ => {}
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    /// SO_COOKIE of one of our own sockets, to compare with.
    fn own_cookie(fd: &impl std::os::fd::AsRawFd) -> u64 {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        cookie
    }

    fn inode(fd: &impl std::os::fd::AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("fd")
            .ino()
    }

    #[test]
    fn a_dump_finds_our_connected_sockets_with_their_cookies() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let wanted: HashSet<u64> = [inode(&client), inode(&server), inode(&listener)].into();
        let found = socket_cookies(&wanted).expect("sock_diag dump");
        assert_eq!(found.get(&inode(&client)), Some(&own_cookie(&client)));
        assert_eq!(found.get(&inode(&server)), Some(&own_cookie(&server)));
        // Listeners are left out.
        assert_eq!(found.get(&inode(&listener)), None);
        assert!(socket_cookies(&HashSet::new()).expect("empty").is_empty());
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_panic() {
        let mut bad = [0u8; 20];
        bad[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse(&bad, &mut |_| {}).is_err());
        assert!(!parse(&[0u8; 3], &mut |_| {}).expect("short"));
    }

    #[test]
    fn a_listener_that_does_not_accept_has_its_queue_read() {
        // SAFETY: plain socket calls on a descriptor this test owns.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        // SAFETY: fd was just returned by socket().
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_in of `len` bytes.
        let rc = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) };
        assert_eq!(rc, 0);
        // SAFETY: a bound socket of ours.
        assert_eq!(unsafe { libc::listen(fd, 3) }, 0);
        let mut bound: libc::sockaddr_in = addr;
        let mut blen = len;
        // SAFETY: getsockname writes at most `blen` bytes into `bound`.
        unsafe { libc::getsockname(fd, (&mut bound as *mut libc::sockaddr_in).cast(), &mut blen) };
        let port = u16::from_be(bound.sin_port);
        let clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let q = accept_queues().expect("dump")[&port].clone();
        assert_eq!((q.queued, q.limit, q.drops), (2, 3, 0));
        assert_eq!(q.listeners, vec![(inode(&listener), 0)]);
        // The queue takes one past its limit; the SYNs after that are
        // dropped on the listener as they arrive.
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let more: Vec<_> = (0..4)
            .map(|_| {
                std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(50))
            })
            .collect();
        let q = accept_queues().expect("dump")[&port].clone();
        assert_eq!((q.queued, q.limit), (4, 3));
        assert!(q.drops >= 2, "{q:?}");
        drop((clients, more, listener));
    }
}
