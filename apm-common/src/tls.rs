//! The TLS probes' state: a library call in flight, a socket whose
//! plaintext the library hands over, the object-to-socket ties and the
//! reads they are made from, and where OpenSSL keeps a BIO's descriptor.

/// A TLS library call in flight on one thread, between its entry and
/// return probes (value of [`crate::maps::TLS_CALLS`], keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    /// The caller's plaintext buffer.
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the library stores the byte
    /// count (the return value is 1 or 0); 0 for `SSL_read`/`SSL_write`.
    pub count_at: u64,
    /// The `SSL *` to tie to `target` if the call moves bytes (a memory
    /// BIO's first read, see [`crate::maps::TLS_LINKS`]); 0 when there is none.
    pub link: u64,
    /// The connection behind the call: its descriptor, or with
    /// [`crate::Config::tls_sockets`] its kernel socket's address;
    /// [`TlsCall::UNLINKED`] when it is not known.
    pub target: u64,
    /// The socket's cookie, the key of the call's record, with
    /// [`crate::Config::tls_sockets`]; 0 when records are keyed by descriptor.
    pub cookie: u64,
    /// The connection's port ([`crate::ConnInfo::port`]).
    pub port: u16,
    /// [`crate::events::EventKind::Read`] or [`crate::events::EventKind::Write`].
    pub kind: u8,
    pub _pad: [u8; 5],
    /// The library's object of the connection (`SSL *`, Go's
    /// `*tls.Conn`): what its HTTP/2 framing is kept under.
    pub object: u64,
}
const _: () = assert!(core::mem::size_of::<TlsCall>() == 56);

impl TlsCall {
    /// [`TlsCall::target`] of a call whose connection is unknown.
    pub const UNLINKED: u64 = u64::MAX;
    /// [`TlsCall::target`] of a call on a connection apm does not follow
    /// (not monitored): neither read nor counted.
    pub const OTHER: u64 = u64::MAX - 1;
    /// [`TlsCall::target`] of a call on a memory BIO not yet tied to its
    /// socket ([`TlsCall::link`] is the object): recorded under the
    /// object, for the agent to hold until the tie.
    pub const OBJECT: u64 = u64::MAX - 2;
}

/// A socket whose plaintext a TLS library hands over, with
/// [`crate::Config::tls_sockets`] (value of [`crate::maps::TLS_SOCKS`], keyed by the
/// kernel socket's address until its connection ends).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSock {
    /// The socket's cookie: its records' key, as its packets'.
    pub cookie: u64,
    /// The TLS library object tied to it through a memory BIO; 0 when
    /// none is.
    pub ssl: u64,
    /// Local port, or a client's remote port (host byte order).
    pub port: u16,
    /// [`crate::conn_flags::CLIENT`] for a monitored client's connection.
    pub flags: u8,
    pub _pad: u8,
    /// The process whose library call first tied it: its close record
    /// names that process, not whoever ran when the state changed.
    pub tgid: u32,
}
const _: () = assert!(core::mem::size_of::<TlsSock>() == 24);

/// A TLS library object (`SSL *`), or a goroutine (`g`), of one process
/// (key of [`crate::maps::TLS_LINKS`] and [`crate::maps::GO_CALLS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SslKey>() == 16);

/// What a thread of a monitored process last wrote through a memory-BIO
/// object not yet tied to its socket (value of [`crate::maps::TLS_PENDING`],
/// keyed by pid_tgid): the next segment the thread sends on a TLS socket
/// not yet tracked ties them, if it starts a record of one of these sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingTie {
    /// The `SSL *`.
    pub ssl: u64,
    /// `bpf_ktime_get_ns()` at the first write.
    pub at_ns: u64,
    /// Plaintext bytes of the first write since the last send, and of the
    /// latest one (each capped at a record's [`TLS_RECORD_MAX`]).
    pub first: u32,
    pub last: u32,
}
const _: () = assert!(core::mem::size_of::<PendingTie>() == 24);

/// The most plaintext one TLS record carries.
pub const TLS_RECORD_MAX: u32 = 16_384;

/// Whether a TLS application-data record of `record` bytes (its header's
/// length) can carry `plain` bytes of plaintext: AEAD adds 16 to 24 bytes
/// (TLS 1.3: tag and content type; 1.2: tag and explicit nonce), CBC up
/// to about 80 (IV, MAC, padding).
#[inline(always)]
pub const fn tls_record_fits(plain: u32, record: u32) -> bool {
    record >= plain + 16 && record <= plain + 80
}

/// The last read a thread of a traced process made on a connection
/// (value of [`crate::maps::LAST_READS`], keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastRead {
    /// `bpf_ktime_get_ns()` at the read.
    pub at_ns: u64,
    /// The tracked descriptor read, or with [`crate::Config::tls_sockets`] the
    /// kernel socket's address.
    pub target: u64,
}
const _: () = assert!(core::mem::size_of::<LastRead>() == 16);

/// How to find a TLS call's descriptor in a TLS library's structures: the
/// uprobe's attach cookie. The offsets are those of OpenSSL's `ssl_st`
/// (`rbio`, `wbio`) and `bio_st` (`method`, `num`), stable within a
/// release series and checked against the library's version string.
pub mod tls_layout {
    /// `ssl_st.rbio` in OpenSSL 1.1.1 and 3.0/3.1 (`wbio` follows it).
    pub const SSL_RBIO: u64 = 16;
    /// OpenSSL 1.1.1: `bio_st.method` at 0, `bio_st.num` at 48.
    pub const OPENSSL_1_1: u64 = 1;
    /// OpenSSL 3.0 and 3.1: `bio_st.method` at 8 (after `libctx`), `num` at 56.
    pub const OPENSSL_3_0: u64 = 3;
    /// `BIO_TYPE_DESCRIPTOR`: the BIO's `num` is a file descriptor
    /// (socket, fd and connect BIOs).
    pub const BIO_TYPE_DESCRIPTOR: u32 = 0x0100;

    /// `(method offset, num offset)` in `bio_st` for a layout cookie.
    pub const fn bio_offsets(layout: u64) -> Option<(u64, u64)> {
        match layout {
            OPENSSL_1_1 => Some((0, 48)),
            OPENSSL_3_0 => Some((8, 56)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_fits_its_write_in_every_cipher_and_nothing_far_from_it() {
        // TLS 1.3 AEAD (+17), TLS 1.2 GCM (+24) and ChaCha20 (+16), CBC
        // with SHA-256 and a full pad (+16 + 32 + 16).
        for overhead in [17, 24, 16, 64] {
            assert!(tls_record_fits(1000, 1000 + overhead));
        }
        assert!(!tls_record_fits(1000, 1000));
        assert!(!tls_record_fits(1000, 1100));
        assert!(!tls_record_fits(53, 36 + 17), "a TLS 1.3 Finished");
    }
}
