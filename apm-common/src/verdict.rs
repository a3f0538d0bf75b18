//! What the packet programs decide a connection carries from its first
//! payload bytes, and the recognisers of each database protocol's first
//! message, shared by the kernel and the agent.

/// What the packet programs decided a server connection carries, from
/// its first payload bytes: indexes into [`crate::maps::VERDICTS`]. Only the
/// connections of a protocol a parser reads are copied into the ring; the
/// others cost one socket-storage lookup per segment after the first.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No in-order first byte seen yet (or the connection predates the
    /// programs, or its socket has no storage): copied as before.
    Undecided = 0,
    /// The client spoke first with an HTTP/1.x method token and a space.
    Http = 1,
    /// A RESP array (`*` and a digit), an inline command line (a word
    /// ended by the line, or one with lower case and a space), or any
    /// bytes on a Redis port.
    Resp = 2,
    /// The HTTP/2 client preface (`PRI * HTTP/2.0`): its frames are
    /// followed in the kernel, every frame header and header block
    /// copied, DATA payloads not.
    Http2 = 3,
    /// A TLS handshake record (0x16 0x03): not decoded from packets.
    Tls = 4,
    /// The server spoke first (SSH, MySQL, SMTP banners).
    ServerFirst = 5,
    /// Anything else the client sent first (etcd, …).
    Other = 6,
    /// A PostgreSQL startup message (or an SSLRequest, GSSENCRequest or
    /// CancelRequest): a length of 8 to 10 000 and a protocol 3.x or
    /// request code.
    Postgres = 7,
    /// The server spoke first with a MySQL/MariaDB greeting
    /// ([`mysql_greeting`]).
    Mysql = 8,
}

impl Verdict {
    pub const ALL: [Verdict; 9] = [
        Verdict::Undecided,
        Verdict::Http,
        Verdict::Resp,
        Verdict::Http2,
        Verdict::Tls,
        Verdict::ServerFirst,
        Verdict::Other,
        Verdict::Postgres,
        Verdict::Mysql,
    ];
    /// Counters per verdict in [`crate::maps::VERDICTS`]: connections decided at
    /// `v`, payload segments not copied at `SLOTS + v`.
    pub const SLOTS: u32 = 9;

    /// Whether a parser reads this connection's bytes.
    pub const fn captured(self) -> bool {
        Self::captured_raw(self as u32)
    }

    /// [`Self::captured`] of a verdict as the socket storage holds it.
    pub const fn captured_raw(verdict: u32) -> bool {
        verdict == Verdict::Undecided as u32
            || verdict == Verdict::Http as u32
            || verdict == Verdict::Resp as u32
            || verdict == Verdict::Http2 as u32
            || verdict == Verdict::Postgres as u32
            || verdict == Verdict::Mysql as u32
    }

    /// The `verdict` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Undecided => "undecided",
            Verdict::Http => "http",
            Verdict::Resp => "resp",
            Verdict::Http2 => "http2",
            Verdict::Tls => "tls",
            Verdict::ServerFirst => "server_first",
            Verdict::Other => "other",
            Verdict::Postgres => "postgres",
            Verdict::Mysql => "mysql",
        }
    }

    /// The verdict on the first bytes a client sent on a server
    /// connection, `first[..n]` (n ≤ 16), on a port known to be Redis or
    /// not; `Undecided` when those bytes do not settle it (a method token
    /// cut short).
    pub fn of_request(first: &[u8; 16], n: usize, redis_port: bool) -> Verdict {
        let n = if n < first.len() { n } else { first.len() };
        if n >= 2 && first[0] == 0x16 && first[1] == 0x03 {
            return Verdict::Tls;
        }
        if redis_port || (n >= 2 && first[0] == b'*' && first[1].is_ascii_digit()) {
            return Verdict::Resp;
        }
        // A big-endian length under 16 MiB starts with a zero byte, which
        // no text protocol sends first.
        if n >= 1 && first[0] == 0 {
            if n < 8 {
                return Verdict::Undecided;
            }
            let head = [
                first[0], first[1], first[2], first[3], first[4], first[5], first[6], first[7],
            ];
            return if postgres_startup(&head) {
                Verdict::Postgres
            } else {
                Verdict::Other
            };
        }
        if n < 2 && (n == 0 || first[0] == b'*' || first[0] == 0x16) {
            return Verdict::Undecided;
        }
        if n == first.len() && first.starts_with(b"PRI * HTTP/2.0") {
            return Verdict::Http2;
        }
        // A word: a method token (upper case, '-', '_' as the agent's
        // parser takes it) and a space is HTTP; a word ended by the line
        // (or with lower case and a space) is a Redis inline command
        // ("PING\r\n", a load balancer's health check), which the agent
        // checks against Redis's command table.
        let mut i = 0;
        let mut method = true;
        while i < n {
            let b = first[i];
            if i > 0 && (b == b' ' || b == b'\r' || b == b'\n') {
                return if b == b' ' && method {
                    Verdict::Http
                } else {
                    Verdict::Resp
                };
            }
            if b.is_ascii_lowercase() {
                method = false;
            } else if !(b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                return Verdict::Other;
            }
            i += 1;
        }
        if n < first.len() {
            Verdict::Undecided
        } else {
            Verdict::Other
        }
    }
}

/// Whether the first 8 bytes a client sent are a PostgreSQL startup
/// message, SSLRequest, GSSENCRequest or CancelRequest: a big-endian length
/// of 8 to 10 000 (PostgreSQL's MAX_STARTUP_PACKET_LENGTH) and a protocol
/// 3.x or request code.
#[inline(always)]
pub fn postgres_startup(first: &[u8; 8]) -> bool {
    let len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let code = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
    let request = code == 80_877_103 || code == 80_877_104 || code == 80_877_102;
    (8..=10_000).contains(&len) && (code >> 16 == 3 || request)
}

/// Whether a client's first 8 bytes start the HTTP/2 connection preface.
#[inline(always)]
pub fn http2_preface(first: &[u8; 8]) -> bool {
    first == b"PRI * HT"
}

/// Whether a server's first 8 bytes start an HTTP/2 SETTINGS frame (a
/// length of whole 6-byte settings, up to 16 of them, type 4, no flags,
/// stream 0): an HTTP/2 server (gRPC's) may send its own before the
/// client's preface arrives, which then decides the connection.
#[inline(always)]
pub fn http2_settings(first: &[u8; 8]) -> bool {
    let len = u32::from_be_bytes([0, first[0], first[1], first[2]]);
    len.is_multiple_of(6)
        && len <= 96
        && first[3] == 4
        && first[4] == 0
        && first[5] == 0
        && first[6] == 0
        && first[7] == 0
}

/// Whether the first 5 bytes a client sent on a connection already open are
/// a PostgreSQL request: a Query, Parse or Bind and a length under 16 MiB
/// (a zero byte after the type, which no text protocol sends there).
#[inline(always)]
pub fn postgres_request(first: &[u8; 5]) -> bool {
    let len = u32::from_be_bytes([first[1], first[2], first[3], first[4]]);
    (first[0] == b'Q' || first[0] == b'P' || first[0] == b'B') && (4..1 << 24).contains(&len)
}

/// Whether the first 8 bytes a server sent are a MySQL/MariaDB greeting
/// (HandshakeV10): a little-endian payload length of 40 to 1 KiB, sequence
/// 0, protocol 10, and a server version starting with a digit.
#[inline(always)]
pub fn mysql_greeting(first: &[u8; 8]) -> bool {
    let len = u32::from_le_bytes([first[0], first[1], first[2], 0]);
    (40..=1024).contains(&len) && first[3] == 0 && first[4] == 10 && first[5].is_ascii_digit()
}

/// Whether the first 5 bytes a client sent on a connection already open are
/// a MySQL command: a packet of sequence 0 and a length under 16 MiB
/// holding a COM_QUERY, COM_STMT_PREPARE or COM_STMT_EXECUTE, a
/// COM_STMT_RESET or COM_STMT_CLOSE (a statement id), or a COM_PING
/// alone.
#[inline(always)]
pub fn mysql_command(first: &[u8; 5]) -> bool {
    let len = u32::from_le_bytes([first[0], first[1], first[2], 0]);
    let query = matches!(first[4], 0x03 | 0x16) && len >= 2;
    let execute = first[4] == 0x17 && len >= 10;
    let statement = matches!(first[4], 0x19 | 0x1a) && len == 5;
    let ping = first[4] == 0x0e && len == 1;
    first[3] == 0 && (query || execute || statement || ping)
}

/// Whether the first 8 bytes a client sent are an HTTP/1.x request line's
/// start: a standard method a client library sends (not CONNECT, which
/// tunnels) and a space.
#[inline(always)]
pub fn http_request(first: &[u8; 8]) -> bool {
    let word = |w: &[u8]| {
        let mut i = 0;
        while i < w.len() {
            if first[i] != w[i] {
                return false;
            }
            i += 1;
        }
        first[w.len()] == b' '
    };
    match first[0] {
        b'G' => word(b"GET"),
        b'P' => word(b"POST") || word(b"PUT") || word(b"PATCH"),
        b'H' => word(b"HEAD"),
        b'D' => word(b"DELETE"),
        b'O' => word(b"OPTIONS"),
        _ => false,
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::{Verdict, http2_settings};

    fn of(bytes: &[u8], redis: bool) -> Verdict {
        let mut first = [0u8; 16];
        let n = bytes.len().min(16);
        first[..n].copy_from_slice(&bytes[..n]);
        Verdict::of_request(&first, n, redis)
    }

    #[test]
    fn first_bytes_decide_the_protocol() {
        assert_eq!(of(b"GET / HTTP/1.1\r\nHost: x\r\n", false), Verdict::Http);
        assert_eq!(of(b"M-SEARCH * HTTP/1.1\r\n", false), Verdict::Http);
        assert_eq!(of(b"*3\r\n$3\r\nSET\r\n", false), Verdict::Resp);
        assert_eq!(of(b"PING\r\n", true), Verdict::Resp);
        assert_eq!(
            of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
            Verdict::Http2
        );
        assert_eq!(of(&[0x16, 0x03, 0x01, 0x02, 0x00], false), Verdict::Tls);
        assert_eq!(of(&[0x16, 0x03, 0x01], true), Verdict::Tls);
        assert_eq!(of(b"SSH-2.0-OpenSSH_9.2\r\n", false), Verdict::Other);
        // A PostgreSQL SSLRequest.
        assert_eq!(
            of(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f], false),
            Verdict::Postgres
        );
        assert_eq!(of(b" GET / HTTP/1.1\r\n", false), Verdict::Other);
        // Redis inline commands: the agent looks the word up.
        assert_eq!(of(b"PING\r\n", false), Verdict::Resp);
        assert_eq!(of(b"get key\r\n", false), Verdict::Resp);
        assert_eq!(of(b"ping\n", false), Verdict::Resp);
        assert_eq!(of(b"SSH-2.0-x\r\n", false), Verdict::Other);
        assert_eq!(of(b"ABCDEFGHIJKLMNOPQRS", false), Verdict::Other);
        // PostgreSQL: a startup message, an SSLRequest.
        assert_eq!(
            of(b"\0\0\0\x29\0\x03\0\0user\0bench\0", false),
            Verdict::Postgres
        );
        assert_eq!(of(b"\0\0\0\x08\0\0\0\0", false), Verdict::Other);
        assert_eq!(of(b"\0\0\0", false), Verdict::Undecided);
    }

    #[test]
    fn a_client_request_line_is_known() {
        for yes in [
            &b"GET /a HT"[..8],
            b"POST /x ",
            b"PUT /p H",
            b"PATCH /q",
            b"HEAD / H",
            b"DELETE /",
            b"OPTIONS ",
        ] {
            assert!(
                super::http_request(yes.try_into().expect("8 bytes")),
                "{yes:?}"
            );
        }
        for no in [
            b"GETX / H",
            b"CONNECT ",
            b"get / HT",
            b"POSTING ",
            b"*1\r\n$4\r\n",
            b"\0\0\0\x08\x04\xd2\x16/",
        ] {
            assert!(!super::http_request(no), "{no:?}");
        }
    }

    #[test]
    fn a_mysql_greeting_and_command_are_known() {
        use super::{mysql_command, mysql_greeting};
        // MariaDB 10.11's greeting: 0x5b bytes, sequence 0, protocol 10.
        assert!(mysql_greeting(b"\x5b\0\0\0\x0a5.5"));
        assert!(mysql_greeting(b"\x4a\0\0\0\x0a8.0"));
        assert!(!mysql_greeting(b"\x4a\0\0\x01\x0a8.0"));
        assert!(!mysql_greeting(b"SSH-2.0-"));
        // An ERR greeting (host not allowed) is no greeting.
        assert!(!mysql_greeting(b"\x45\0\0\0\xff\x6a\x04H"));
        assert!(mysql_command(b"\x09\0\0\0\x03"));
        assert!(mysql_command(b"\x01\0\0\0\x0e"));
        assert!(mysql_command(b"\x05\0\0\0\x1a"));
        assert!(!mysql_command(b"\x01\0\0\0\x03"));
        assert!(!mysql_command(b"\x09\0\0\x01\x03"));
        assert!(!mysql_command(b"GET /"));
    }

    #[test]
    fn a_method_cut_short_stays_undecided() {
        assert_eq!(of(b"GE", false), Verdict::Undecided);
        assert_eq!(of(b"POST", false), Verdict::Undecided);
        assert_eq!(of(b"GET ", false), Verdict::Http);
        assert_eq!(of(b"*", false), Verdict::Undecided);
        assert_eq!(of(b"", false), Verdict::Undecided);
    }

    #[test]
    fn an_http2_servers_settings_first_leave_the_verdict_to_the_preface() {
        // gRPC's server: SETTINGS with one setting (6 bytes).
        assert!(http2_settings(&[0, 0, 6, 4, 0, 0, 0, 0]));
        assert!(http2_settings(&[0, 0, 0, 4, 0, 0, 0, 0]));
        assert!(!http2_settings(&[0, 0, 6, 4, 1, 0, 0, 0]), "an ACK");
        assert!(!http2_settings(&[0, 0, 7, 4, 0, 0, 0, 0]));
        assert!(!http2_settings(b"SSH-2.0-"));
        assert!(!http2_settings(&[74, 0, 0, 0, 10, b'8', b'.', b'0']));
    }

    #[test]
    fn only_protocols_a_parser_reads_are_copied() {
        let copied = Verdict::ALL.map(Verdict::captured);
        assert_eq!(
            copied,
            [true, true, true, true, false, false, false, true, true]
        );
    }
}
