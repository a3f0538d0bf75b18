//! PostgreSQL's wire protocol (v3) framing, one direction at a time.
//!
//! A [`Framer`] is fed a direction's bytes in order, one captured piece at
//! a time (`data` of a piece of `total` bytes), and hands out each
//! complete message as a [`Message`]: its type and, for the few types the
//! pairing reads (a query's or a Parse's text, the names a Bind and an
//! Execute use, a CommandComplete's tag, an ErrorResponse's SQLSTATE), the
//! first [`KEEP`] bytes of its body. Every other body is skipped by its
//! length, so a row longer than the capture costs nothing; a message
//! header the capture did not see is a desync (the stream resumes at the
//! next piece that starts like a message).
//!
//! The client's first message has no type byte: a StartupMessage, an
//! SSLRequest or GSSENCRequest (answered by one byte, `S`/`G` or `N`), or
//! a CancelRequest.

#[cfg(test)]
pub mod tests;

/// Body bytes kept of a message the pairing reads.
pub const KEEP: usize = 4096;
/// A message longer than this is not one (PostgreSQL's own limit for a
/// client's message is 1 GiB; a length past it is garbage).
const MAX_LEN: u32 = 1 << 30;

/// Version and request codes of the untyped first message.
pub const PROTOCOL_3: u32 = 0x0003_0000;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// One complete message, as far as the pairing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The type byte; 0 for the untyped first message of a client, and
    /// for the server's one-byte answer to an encryption request.
    pub kind: u8,
    /// For the untyped first message: its code (version or request); for
    /// the answer: its byte (`S`, `G` or `N`).
    pub code: u32,
    /// The first [`KEEP`] bytes of the body (read types only).
    pub body: &'a [u8],
    /// The body was longer than kept, or not all of it was captured.
    pub cut: bool,
}

/// Whose bytes a framer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client's (frontend messages).
    Front,
    /// The server's (backend messages).
    Back,
}

/// Where a framer is in its direction's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum At {
    /// Waiting for a header: the bytes of it seen so far.
    Header,
    /// In a body: `left` bytes to go.
    Body { left: u32 },
    /// Lost: waiting for a piece that starts like a message.
    Lost,
}

/// Why a piece could not be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desync {
    /// A header fell in bytes the capture did not see.
    Truncated,
    /// Bytes that are no message of this protocol.
    Garbage,
}

/// One direction's framing state.
#[derive(Clone, Debug)]
pub struct Framer {
    side: Side,
    at: At,
    /// The untyped first message is next (a client's, or a client's after
    /// an encryption request was refused).
    startup: bool,
    /// A one-byte answer to an encryption request is next (server side).
    answer: bool,
    header: [u8; 8],
    have: usize,
    kind: u8,
    code: u32,
    keep: bool,
    body: Vec<u8>,
    cut: bool,
}

impl Framer {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            at: At::Header,
            startup: side == Side::Front,
            answer: false,
            header: [0; 8],
            have: 0,
            kind: 0,
            code: 0,
            keep: false,
            body: Vec::new(),
            cut: false,
        }
    }

    /// A framer joined mid-stream: typed messages from the next piece
    /// that starts like one.
    pub fn joined(side: Side) -> Self {
        Self {
            startup: false,
            at: At::Lost,
            ..Self::new(side)
        }
    }

    /// The next message of the server is the one-byte answer to an
    /// SSLRequest or GSSENCRequest.
    pub fn expect_answer(&mut self) {
        self.answer = true;
    }

    /// The next message of the client is untyped again (a refused
    /// encryption request is followed by the StartupMessage).
    pub fn expect_startup(&mut self) {
        self.startup = true;
    }

    /// Whether the framer lost its place.
    pub fn lost(&self) -> bool {
        self.at == At::Lost
    }

    /// Frames a piece of `total` bytes of which `data` was captured,
    /// handing each complete message to `out`. A desync leaves the framer
    /// lost until a piece starts like a message.
    pub fn feed(
        &mut self,
        data: &[u8],
        total: usize,
        mut out: impl FnMut(Message<'_>),
    ) -> Result<(), Desync> {
        let total = total.max(data.len());
        if self.at == At::Lost {
            if !self.starts_message(data) {
                return Err(Desync::Garbage);
            }
            self.at = At::Header;
            self.have = 0;
        }
        let mut i = 0;
        while i < total {
            match self.at {
                At::Lost => return Err(Desync::Garbage),
                At::Header => {
                    if self.answer && self.have == 0 {
                        let Some(&b) = data.get(i) else {
                            return self.lose(Desync::Truncated);
                        };
                        self.answer = false;
                        i += 1;
                        out(Message {
                            kind: 0,
                            code: u32::from(b),
                            body: &[],
                            cut: false,
                        });
                        continue;
                    }
                    let want = if self.startup { 8 } else { 5 };
                    while self.have < want && i < total {
                        let Some(&b) = data.get(i) else {
                            return self.lose(Desync::Truncated);
                        };
                        self.header[self.have] = b;
                        self.have += 1;
                        i += 1;
                    }
                    if self.have < want {
                        return Ok(());
                    }
                    self.start()?;
                    if self.at == (At::Body { left: 0 }) {
                        self.end(&mut out);
                    }
                }
                At::Body { left } => {
                    let n = (total - i).min(left as usize);
                    if self.keep {
                        let seen = data.get(i..(i + n).min(data.len())).unwrap_or(&[]);
                        let room = KEEP - self.body.len();
                        self.body.extend_from_slice(&seen[..seen.len().min(room)]);
                        self.cut |= seen.len() < n || seen.len() > room;
                    }
                    i += n;
                    let left = left - n as u32;
                    self.at = At::Body { left };
                    if left == 0 {
                        self.end(&mut out);
                    }
                }
            }
        }
        Ok(())
    }

    /// A message's last byte: it goes out, and a header is next.
    fn end(&mut self, out: &mut impl FnMut(Message<'_>)) {
        self.at = At::Header;
        self.have = 0;
        out(Message {
            kind: self.kind,
            code: self.code,
            body: &self.body,
            cut: self.cut,
        });
    }

    /// A complete header: the body's length and whether it is kept.
    fn start(&mut self) -> Result<(), Desync> {
        let (kind, len, code) = if self.startup {
            let len = u32::from_be_bytes([
                self.header[0],
                self.header[1],
                self.header[2],
                self.header[3],
            ]);
            let code = u32::from_be_bytes([
                self.header[4],
                self.header[5],
                self.header[6],
                self.header[7],
            ]);
            if !apm_common::postgres_startup(&self.header) {
                return self.lose(Desync::Garbage);
            }
            self.startup = false;
            (0, len - 8, code)
        } else {
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            let kind = self.header[0];
            if !plausible(self.side, kind, len) {
                return self.lose(Desync::Garbage);
            }
            (kind, len - 4, 0)
        };
        self.kind = kind;
        self.code = code;
        self.keep = self.reads(kind);
        self.body.clear();
        self.cut = false;
        self.at = At::Body { left: len };
        Ok(())
    }

    fn lose(&mut self, why: Desync) -> Result<(), Desync> {
        self.at = At::Lost;
        self.have = 0;
        self.answer = false;
        Err(why)
    }

    /// Whether the pairing reads bodies of type `kind`.
    fn reads(&self, kind: u8) -> bool {
        match self.side {
            Side::Front => matches!(kind, b'Q' | b'P' | b'B' | b'E' | b'C'),
            Side::Back => matches!(kind, b'C' | b'E' | b'Z'),
        }
    }

    /// Whether a piece starts like a message of this side (after a loss).
    fn starts_message(&self, data: &[u8]) -> bool {
        if self.startup {
            return starts_like_startup(data);
        }
        starts_like_message(self.side, data)
    }
}

/// Whether `data` starts like a typed message of `side`, or a client's
/// untyped first message.
pub fn starts_like_message(side: Side, data: &[u8]) -> bool {
    if side == Side::Front && starts_like_startup(data) {
        return true;
    }
    let [kind, a, b, c, d, ..] = *data else {
        return false;
    };
    // Bytes that happen to start with a type byte (a CSV line "d,12,")
    // read as a length in the hundreds of MiB: no message to resume at.
    let len = u32::from_be_bytes([a, b, c, d]);
    len < RESUME_LEN && plausible(side, kind, len)
}

/// The longest message a stream resumes at after a loss.
const RESUME_LEN: u32 = 1 << 24;

/// Whether a message of type `kind` from `side` may have length `len`
/// (its own four bytes included): the fixed sizes, PostgreSQL's limit of
/// 10 000 for a client's small messages, 1 MiB for a server's (an error's
/// text included), and 1 GiB for rows, data and statements.
fn plausible(side: Side, kind: u8, len: u32) -> bool {
    let max = match (side, kind) {
        (Side::Front, b'S' | b'H' | b'c' | b'X') => return len == 4,
        (Side::Front, b'C' | b'D' | b'E') => 10_000,
        (Side::Front, b'Q' | b'P' | b'B' | b'F' | b'd' | b'f' | b'p') => MAX_LEN,
        (Side::Back, b'1' | b'2' | b'3' | b'n' | b's' | b'I' | b'c') => return len == 4,
        (Side::Back, b'Z') => return len == 5,
        (Side::Back, b'K') => return len == 12,
        (Side::Back, b'R' | b'S' | b'C' | b'E' | b'N' | b'A' | b'G' | b'H' | b'W' | b't') => {
            1 << 20
        }
        (Side::Back, b'T' | b'D' | b'd' | b'V' | b'v') => MAX_LEN,
        _ => return false,
    };
    (4..=max).contains(&len)
}

/// Whether a client's bytes on a connection first seen in its middle (one
/// older than the capture) start a Query, Parse or Bind.
pub fn starts_like_request(data: &[u8]) -> bool {
    data.first_chunk::<5>()
        .is_some_and(apm_common::postgres_request)
}

/// Whether a client's first bytes are a StartupMessage, an SSLRequest, a
/// GSSENCRequest or a CancelRequest.
pub fn starts_like_startup(data: &[u8]) -> bool {
    data.first_chunk::<8>()
        .is_some_and(apm_common::postgres_startup)
}

/// The NUL-terminated strings that open `body`, up to `n` of them (the
/// last one may be cut short).
pub fn strings(body: &[u8], n: usize) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == 0).take(n)
}

/// The SQLSTATE field (`C`) of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> Option<[u8; 5]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == b'C' {
            let code: [u8; 5] = tail[..end].try_into().ok()?;
            return code.iter().all(u8::is_ascii_alphanumeric).then_some(code);
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Whether `m` is a whole ReadyForQuery message.
pub fn is_ready(m: &[u8]) -> bool {
    matches!(m, [b'Z', 0, 0, 0, 5, b'I' | b'T' | b'E'])
}
