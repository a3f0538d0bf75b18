//! MySQL's client/server protocol (MariaDB's too) framing, one direction
//! at a time, and the few fields the pairing reads.
//!
//! Every packet is a 3-byte little-endian payload length, a sequence
//! number and the payload. A [`Framer`] is fed a direction's bytes in
//! order, one captured piece at a time (`data` of a piece of `total`
//! bytes), and hands out each complete packet as a [`Packet`]: its
//! sequence number, length and the first bytes of its payload (a client's
//! command with its statement text, up to [`KEEP_FRONT`]; a server's
//! first [`KEEP_BACK`], enough for an OK, ERR or EOF). A payload of
//! 16 MiB - 1 continues in the next packet: the framer hands out the
//! whole as one. Rows are skipped by their length, so a long result costs
//! nothing; a header the capture did not see is a desync (the pairing
//! resumes at a piece that starts like a packet).

#[cfg(test)]
pub mod tests;

/// Payload bytes kept of a client's packet (a statement's text).
pub const KEEP_FRONT: usize = 4096;
/// Payload bytes kept of a server's packet.
pub const KEEP_BACK: usize = 32;
/// Payload bytes kept of a server's greeting (its version string).
pub const KEEP_GREETING: usize = 128;
/// A payload of this length continues in the next packet.
const SPLIT: u32 = 0xff_ffff;

/// Commands (the first payload byte of a client's packet of sequence 0).
pub const COM_QUIT: u8 = 0x01;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_STATISTICS: u8 = 0x09;
pub const COM_CHANGE_USER: u8 = 0x11;
pub const COM_BINLOG_DUMP: u8 = 0x12;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_FETCH: u8 = 0x1c;
pub const COM_BINLOG_DUMP_GTID: u8 = 0x1e;

/// Capability flags the pairing reads.
pub const CLIENT_COMPRESS: u32 = 0x20;
pub const CLIENT_PROTOCOL_41: u32 = 0x200;
pub const CLIENT_SSL: u32 = 0x800;
pub const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
/// zstd compression (MySQL 8.0.18 and later).
pub const CLIENT_ZSTD: u32 = 1 << 26;
/// COM_QUERY carries query attributes (MySQL 8.0.23 and later).
pub const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;
/// A server status flag: another result of the same command follows.
pub const MORE_RESULTS: u16 = 0x0008;
/// A server status flag: an Execute opened a cursor (rows come by Fetch).
pub const CURSOR_EXISTS: u16 = 0x0040;

/// One complete packet, as far as the pairing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub seq: u8,
    /// The payload's length (of all its continuation packets).
    pub len: u64,
    /// The payload's first bytes as kept.
    pub body: &'a [u8],
    /// The payload was longer than kept, or not all of it was captured.
    pub cut: bool,
}

impl Packet<'_> {
    /// The payload's first byte (a command, or OK 0x00, ERR 0xff, EOF 0xfe).
    pub fn first(&self) -> Option<u8> {
        self.body.first().copied()
    }

    /// An EOF packet (the 4.1 one: five bytes), or one ending a result
    /// set: 0xfe and shorter than a row that starts so could be.
    pub fn is_eof(&self) -> bool {
        self.first() == Some(0xfe) && self.len < u64::from(SPLIT)
    }

    /// The server status of an OK, or of an EOF (`is_eof`: five bytes).
    pub fn status(&self) -> u16 {
        let b = self.body;
        if self.len == 5 {
            let byte = |i: usize| b.get(i).copied().unwrap_or(0);
            return u16::from_le_bytes([byte(3), byte(4)]);
        }
        // OK: header, affected rows and last insert id (both length-
        // encoded), then the status.
        let mut at = 1;
        for _ in 0..2 {
            at += lenenc_size(b.get(at).copied().unwrap_or(0));
        }
        match (b.get(at), b.get(at + 1)) {
            (Some(&lo), Some(&hi)) => u16::from_le_bytes([lo, hi]),
            _ => 0,
        }
    }

    /// MariaDB's progress report: an ERR of number 0xffff that ends
    /// nothing.
    pub fn is_progress(&self) -> bool {
        self.first() == Some(0xff) && self.body.get(1..3) == Some(&[0xff, 0xff][..])
    }

    /// An ERR packet's error number, as its decimal digits (`1064`).
    pub fn error_code(&self) -> Option<[u8; 5]> {
        let (&lo, &hi) = (self.body.get(1)?, self.body.get(2)?);
        let code = u16::from_le_bytes([lo, hi]);
        let mut out = [0u8; 5];
        let digits = code.to_string();
        out[..digits.len()].copy_from_slice(digits.as_bytes());
        Some(out)
    }
}

/// The size of a length-encoded integer starting with `first`.
fn lenenc_size(first: u8) -> usize {
    match first {
        0xfc => 3,
        0xfd => 4,
        0xfe => 9,
        _ => 1,
    }
}

/// A length-encoded integer at the start of `b`, and its size.
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let n = lenenc_size(first);
    if n == 1 {
        return (first < 0xfb).then_some((u64::from(first), 1));
    }
    let bytes = b.get(1..n)?;
    let mut v = [0u8; 8];
    v[..bytes.len()].copy_from_slice(bytes);
    Some((u64::from_le_bytes(v), n))
}

/// Why a piece could not be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desync {
    /// A header fell in bytes the capture did not see.
    Truncated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Waiting for a header: `have` bytes of it seen.
    Header,
    /// In a payload: `left` bytes to go.
    Body { left: u32 },
    /// Lost: the pairing resumes it ([`Framer::resume`]).
    Lost,
}

/// One direction's framing state.
#[derive(Clone, Debug)]
pub struct Framer {
    keep: usize,
    at: At,
    header: [u8; 4],
    have: usize,
    seq: u8,
    len: u64,
    /// The packet being read continues a split payload.
    continued: bool,
    body: Vec<u8>,
    cut: bool,
}

impl Framer {
    /// A framer keeping up to `keep` payload bytes of each packet.
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            at: At::Header,
            header: [0; 4],
            have: 0,
            seq: 0,
            len: 0,
            continued: false,
            body: Vec::new(),
            cut: false,
        }
    }

    /// A framer that waits to be resumed at a piece's start.
    pub fn lost(keep: usize) -> Self {
        Self {
            at: At::Lost,
            ..Self::new(keep)
        }
    }

    /// Keeps up to `keep` payload bytes of the packets from the next on.
    pub fn set_keep(&mut self, keep: usize) {
        self.keep = keep;
    }

    pub fn is_lost(&self) -> bool {
        self.at == At::Lost
    }

    /// Loses the place: nothing is framed until [`Framer::resume`].
    pub fn lose(&mut self) {
        self.at = At::Lost;
        self.have = 0;
        self.continued = false;
    }

    /// Frames from the start of the next piece on.
    pub fn resume(&mut self) {
        self.at = At::Header;
        self.have = 0;
        self.continued = false;
    }

    /// Frames a piece of `total` bytes of which `data` was captured,
    /// handing each complete packet to `out`. A lost framer frames
    /// nothing.
    pub fn feed(
        &mut self,
        data: &[u8],
        total: usize,
        mut out: impl FnMut(Packet<'_>),
    ) -> Result<(), Desync> {
        let total = total.max(data.len());
        let mut i = 0;
        while i < total {
            match self.at {
                At::Lost => return Ok(()),
                At::Header => {
                    while self.have < 4 && i < total {
                        let Some(&b) = data.get(i) else {
                            self.lose();
                            return Err(Desync::Truncated);
                        };
                        self.header[self.have] = b;
                        self.have += 1;
                        i += 1;
                    }
                    if self.have < 4 {
                        return Ok(());
                    }
                    self.start();
                    if self.at == (At::Body { left: 0 }) {
                        self.end(&mut out);
                    }
                }
                At::Body { left } => {
                    let n = (total - i).min(left as usize);
                    if !self.continued {
                        let seen = data.get(i..(i + n).min(data.len())).unwrap_or(&[]);
                        let room = self.keep.saturating_sub(self.body.len());
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

    fn start(&mut self) {
        let len = u32::from_le_bytes([self.header[0], self.header[1], self.header[2], 0]);
        self.have = 0;
        if self.continued {
            self.len += u64::from(len);
        } else {
            self.seq = self.header[3];
            self.len = u64::from(len);
            self.body.clear();
            self.cut = false;
        }
        self.at = At::Body { left: len };
    }

    /// A packet's last byte: it goes out unless its payload continues.
    fn end(&mut self, out: &mut impl FnMut(Packet<'_>)) {
        self.at = At::Header;
        let len = u32::from_le_bytes([self.header[0], self.header[1], self.header[2], 0]);
        if len == SPLIT {
            self.continued = true;
            return;
        }
        self.continued = false;
        out(Packet {
            seq: self.seq,
            len: self.len,
            body: &self.body,
            cut: self.cut,
        });
    }
}

/// Whether a client's piece starts with a whole command packet (sequence
/// 0, a known command) that the piece holds.
pub fn starts_like_command(data: &[u8], total: usize) -> bool {
    let Some(head) = data.first_chunk::<5>() else {
        return false;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let known = matches!(head[4], 0x01..=0x1f) && head[4] != 0x04 && head[4] != 0x0f;
    head[3] == 0 && known && len >= 1 && len + 4 <= total
}

/// Whether a server's piece starts like the first packet of an answer
/// (sequence 1): an OK, an ERR, a prepare's answer, a LOCAL INFILE
/// request or a result set's column count.
pub fn starts_like_answer(data: &[u8], total: usize) -> bool {
    let Some(head) = data.first_chunk::<5>() else {
        return false;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let fits = len + 4 <= total;
    let shape = match head[4] {
        0x00 => len >= 7,
        0xff => len >= 3,
        0xfb => len >= 1,
        // A column count (with MariaDB's metadata flag, maybe).
        1..=0xfa => len <= 2,
        _ => false,
    };
    head[3] == 1 && fits && shape
}

/// Whether a client's piece on a connection first seen in its middle (one
/// older than the capture) is one whole query, prepare, execute,
/// statement reset or close, or ping ([`apm_common::mysql_command`]).
pub fn starts_like_joined(data: &[u8], total: usize) -> bool {
    let Some(head) = data.first_chunk::<5>() else {
        return false;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    apm_common::mysql_command(head) && len + 4 == total
}

/// The statement text of a COM_QUERY's payload (after the command byte):
/// MySQL 8's query attributes, when the client sends them, come first
/// (a count, a set count of 1, then the attributes' null bitmap, types,
/// names and values) and are skipped, values unread. SQL never starts
/// with a byte under a tab, which tells the prefix without the
/// capabilities of a connection joined mid-way (`attributes`: whether
/// the handshake agreed on them, None when not seen). None when the
/// prefix does not parse (or was cut).
pub fn query_text(body: &[u8], attributes: Option<bool>) -> Option<&[u8]> {
    let prefixed = attributes.unwrap_or_else(|| body.first().is_some_and(|&b| b < 0x09));
    if !prefixed {
        return Some(body);
    }
    let (count, n) = lenenc(body)?;
    let mut at = n;
    let (sets, n) = lenenc(body.get(at..)?)?;
    at += n;
    if sets != 1 {
        return None;
    }
    if count == 0 {
        return body.get(at..);
    }
    let count = usize::try_from(count).ok().filter(|&c| c <= 1024)?;
    let nulls = body.get(at..at + count.div_ceil(8))?;
    at += count.div_ceil(8);
    // The new-parameters flag: types and names follow.
    if body.get(at) != Some(&1) {
        return None;
    }
    at += 1;
    let mut types = Vec::with_capacity(count);
    for _ in 0..count {
        types.push(*body.get(at)?);
        at += 2;
        let (name, n) = lenenc(body.get(at..)?)?;
        // A hostile length must not wrap the offset.
        at = at
            .checked_add(n)?
            .checked_add(usize::try_from(name).ok()?)?;
    }
    for (i, ty) in types.into_iter().enumerate() {
        if nulls[i / 8] & (1 << (i % 8)) != 0 {
            continue;
        }
        let size = match ty {
            0x06 => 0,
            0x01 => 1,
            0x02 | 0x0d => 2,
            0x03 | 0x04 | 0x09 => 4,
            0x05 | 0x08 => 8,
            0x07 | 0x0a | 0x0b | 0x0c => 1 + usize::from(*body.get(at)?),
            _ => {
                let (len, n) = lenenc(body.get(at..)?)?;
                n.checked_add(usize::try_from(len).ok()?)?
            }
        };
        at = at.checked_add(size)?;
    }
    body.get(at..)
}

/// Whether a server's first bytes are a greeting ([`apm_common::mysql_greeting`]).
pub fn starts_like_greeting(data: &[u8]) -> bool {
    data.first_chunk::<8>()
        .is_some_and(apm_common::mysql_greeting)
}

/// What a greeting says: MariaDB or not, and the server's capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Greeting {
    pub mariadb: bool,
    pub capabilities: u32,
}

/// Reads a HandshakeV10 payload (kept bytes): protocol 10, the version
/// (NUL-terminated), the connection id, 8 bytes of scramble and a filler,
/// then the capabilities' low half, charset, status and high half.
pub fn greeting(body: &[u8]) -> Option<Greeting> {
    let (&10, rest) = body.split_first()? else {
        return None;
    };
    let nul = rest.iter().position(|&b| b == 0)?;
    let version = &rest[..nul];
    let caps = rest.get(nul + 1 + 4 + 8 + 1..)?;
    let low = u16::from_le_bytes([*caps.first()?, *caps.get(1)?]);
    let high = match (caps.get(5), caps.get(6)) {
        (Some(&lo), Some(&hi)) => u16::from_le_bytes([lo, hi]),
        _ => 0,
    };
    Some(Greeting {
        mariadb: version.windows(7).any(|w| w == b"MariaDB"),
        capabilities: u32::from(low) | u32::from(high) << 16,
    })
}
