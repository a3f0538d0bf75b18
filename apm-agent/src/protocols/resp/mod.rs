//! RESP2 and RESP3 (Redis) framing, for both directions of a connection.
//!
//! The parser is fed a connection's bytes in order, one captured piece at a
//! time: `data` is what the capture saw of a piece of `total` bytes. It
//! keeps no key or value: a frame comes out as its type, an [`Outcome`]
//! (nil, empty, zero, error or a value), the outcome of each direct child
//! of a top-level aggregate (EXEC's replies), how many direct children it
//! has, the value of its last integer child (a subscription count) and the
//! first bytes of its first two string children (a command's name and
//! subcommand, or a push message's kind). Bulk payloads are skipped by
//! their length, so a value longer than the capture costs nothing; a frame
//! header the capture did not see is a [`Desync::Truncated`].

pub mod commands;
mod names;
#[cfg(test)]
mod tests;

/// Nesting deeper than this is not RESP a client or server sends.
pub const MAX_DEPTH: usize = 16;
/// Bytes kept of a line (a header or a simple string) split across pieces.
const MAX_LINE: usize = 64;
/// Bytes kept of a string child (command names are shorter).
pub const WORD: usize = 32;
/// Direct children of a top-level aggregate whose outcomes are kept.
pub const MAX_CHILDREN: usize = 64;
/// Redis refuses bulk strings over 512 MiB (proto-max-bulk-len).
const MAX_BULK: u64 = 512 * 1024 * 1024;

/// What a frame (or a child of one) says, as far as callers care.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
    /// An aggregate with no element.
    Empty,
    /// The integer 0 (EXISTS and friends: nothing found).
    Zero,
    /// `-ERR …` or RESP3 `!` (bulk error).
    Error,
    #[default]
    Value,
}

/// The first bytes of a string child.
#[derive(Clone, Copy, Debug, Default)]
pub struct Word {
    buf: [u8; WORD],
    len: u8,
    set: bool,
}

impl Word {
    pub fn bytes(&self) -> Option<&[u8]> {
        self.set.then(|| &self.buf[..usize::from(self.len)])
    }

    fn push(&mut self, bytes: &[u8]) {
        self.set = true;
        let at = usize::from(self.len);
        let n = bytes.len().min(WORD - at);
        self.buf[at..at + n].copy_from_slice(&bytes[..n]);
        self.len += n as u8;
    }
}

/// One complete top-level frame.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// The RESP type byte, or `b'i'` for an inline command.
    pub kind: u8,
    pub outcome: Outcome,
    /// The first two string children (or inline words; or a top-level
    /// simple string's first bytes).
    pub words: [Word; 2],
    /// Outcomes of the direct children, up to [`MAX_CHILDREN`].
    pub children: Vec<Outcome>,
    /// The value of the last integer direct child (a subscription
    /// confirmation's count).
    pub int: Option<i64>,
    /// Direct children seen (all of them, not only those kept), or an
    /// inline command's words.
    seen: usize,
}

impl Frame {
    pub fn word(&self, i: usize) -> Option<&[u8]> {
        self.words.get(i).and_then(Word::bytes)
    }

    /// Direct children, all counted: a command's name and arguments.
    pub fn arity(&self) -> usize {
        self.seen
    }

    fn clear(&mut self) {
        self.kind = 0;
        self.outcome = Outcome::Value;
        self.words = [Word::default(); 2];
        self.children.clear();
        self.int = None;
        self.seen = 0;
    }
}

/// Why a stream cannot be followed any further from where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desync {
    /// A frame header fell in bytes the capture did not see.
    Truncated,
    /// Bytes that are not RESP.
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The next byte is a type byte.
    Type,
    /// Reading a line after its type byte (`b'i'`: an inline command).
    Line(u8),
    /// Skipping a bulk payload and its CRLF; its bytes go to a word when
    /// `word` is set (a direct child of the top-level frame).
    Bulk {
        left: u64,
        word: Option<u8>,
        kind: u8,
    },
}

#[derive(Clone, Copy, Debug)]
struct Open {
    left: u64,
    /// RESP3 attributes annotate the value after them and do not count.
    attribute: bool,
}

pub struct Parser {
    inline: bool,
    state: State,
    line: [u8; MAX_LINE],
    line_len: usize,
    stack: [Open; MAX_DEPTH],
    depth: usize,
    /// Open attributes on the stack.
    attributes: usize,
    frame: Frame,
    /// Whether bytes of a frame have been seen.
    started: bool,
}

impl Parser {
    /// A parser of commands (`inline`: lines without a type byte are
    /// inline commands) or of replies.
    pub fn new(inline: bool) -> Self {
        Self {
            inline,
            state: State::Type,
            line: [0; MAX_LINE],
            line_len: 0,
            stack: [Open {
                left: 0,
                attribute: false,
            }; MAX_DEPTH],
            depth: 0,
            attributes: 0,
            frame: Frame::default(),
            started: false,
        }
    }

    /// Whether the parser is between frames.
    pub fn idle(&self) -> bool {
        !self.started
    }

    /// Forgets any partial frame: the next byte fed starts a frame.
    pub fn reset(&mut self) {
        self.state = State::Type;
        self.line_len = 0;
        self.depth = 0;
        self.attributes = 0;
        self.frame.clear();
        self.started = false;
    }

    /// Feeds a piece of `total` bytes of which `data` (a prefix) was
    /// captured. `on_start` runs when a frame's first byte is seen,
    /// `on_frame` when it completes. After an error the parser must be
    /// [`reset`](Self::reset) before it is fed again.
    pub fn feed(
        &mut self,
        data: &[u8],
        total: u64,
        mut on_start: impl FnMut(),
        mut on_frame: impl FnMut(&Frame),
    ) -> Result<(), Desync> {
        let mut off = 0u64;
        while off < total {
            let at = off as usize;
            if at >= data.len() {
                // Only a payload can be skipped without seeing it.
                let State::Bulk { left, kind, .. } = self.state else {
                    return Err(Desync::Truncated);
                };
                let n = left.min(total - off);
                off += n;
                self.bulk_left(left - n, kind, &mut on_frame)?;
                continue;
            }
            match self.state {
                State::Type => {
                    let b = data[at];
                    if !self.started {
                        self.started = true;
                        on_start();
                    }
                    if is_type(b) {
                        if self.depth == 0 && self.frame.kind == 0 {
                            self.frame.kind = b;
                        }
                        self.state = State::Line(b);
                        off += 1;
                    } else if self.inline && self.depth == 0 && b.is_ascii_graphic() {
                        self.frame.kind = b'i';
                        self.state = State::Line(b'i');
                    } else if self.depth == 0 && (b == b'\r' || b == b'\n') && self.inline {
                        // Empty lines between inline commands.
                        self.started = false;
                        off += 1;
                    } else {
                        return Err(Desync::Invalid);
                    }
                }
                State::Line(kind) => {
                    let rest = &data[at..];
                    let newline = rest.iter().position(|&b| b == b'\n');
                    if let (0, Some(p)) = (self.line_len, newline) {
                        // The whole line is here (the usual case): read it
                        // in place, as much of it as the buffer would hold.
                        let line = &rest[..p.min(MAX_LINE)];
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        off += p as u64 + 1;
                        self.on_line(kind, line, &mut on_frame)?;
                        continue;
                    }
                    let (chunk, done) = match newline {
                        Some(p) => (&rest[..p], Some(p + 1)),
                        None => (rest, None),
                    };
                    let n = chunk.len().min(MAX_LINE - self.line_len);
                    self.line[self.line_len..self.line_len + n].copy_from_slice(&chunk[..n]);
                    self.line_len += n;
                    match done {
                        Some(used) => {
                            off += used as u64;
                            let (line, len) = (self.line, self.line_len);
                            self.line_len = 0;
                            let line = &line[..len];
                            let line = line.strip_suffix(b"\r").unwrap_or(line);
                            self.on_line(kind, line, &mut on_frame)?;
                        }
                        None => off += rest.len() as u64,
                    }
                }
                State::Bulk { left, word, kind } => {
                    let rest = &data[at..];
                    let n = left.min(rest.len() as u64);
                    if let Some(w) = word {
                        // The payload, not its CRLF.
                        let payload = (left.saturating_sub(2)).min(n) as usize;
                        self.frame.words[usize::from(w)].push(&rest[..payload]);
                    }
                    off += n;
                    self.bulk_left(left - n, kind, &mut on_frame)?;
                }
            }
        }
        Ok(())
    }

    fn bulk_left(
        &mut self,
        left: u64,
        kind: u8,
        on_frame: &mut impl FnMut(&Frame),
    ) -> Result<(), Desync> {
        if left > 0 {
            if let State::Bulk { left: l, .. } = &mut self.state {
                *l = left;
            }
            return Ok(());
        }
        self.state = State::Type;
        let outcome = if kind == b'!' {
            Outcome::Error
        } else {
            Outcome::Value
        };
        self.value(outcome, on_frame);
        Ok(())
    }

    fn on_line(
        &mut self,
        kind: u8,
        line: &[u8],
        on_frame: &mut impl FnMut(&Frame),
    ) -> Result<(), Desync> {
        self.state = State::Type;
        match kind {
            b'i' => {
                let mut words = line
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty());
                for slot in 0..2 {
                    if let Some(w) = words.next() {
                        self.frame.words[slot].push(w);
                        self.frame.seen += 1;
                    }
                }
                self.frame.seen += words.count();
                if self.frame.words[0].set {
                    self.value(Outcome::Value, on_frame);
                } else {
                    self.reset();
                }
            }
            b'+' => {
                self.child_word(line);
                self.value(Outcome::Value, on_frame);
            }
            b'-' => self.value(Outcome::Error, on_frame),
            b':' => {
                let n = number(line)?;
                if self.depth == 1 && self.attributes == 0 {
                    self.frame.int = Some(n);
                }
                let outcome = if line == b"0" {
                    Outcome::Zero
                } else {
                    Outcome::Value
                };
                self.value(outcome, on_frame);
            }
            b'_' => self.value(Outcome::Nil, on_frame),
            b',' | b'#' | b'(' => self.value(Outcome::Value, on_frame),
            b'$' | b'!' | b'=' => {
                let n = number(line)?;
                if n < 0 {
                    self.value(Outcome::Nil, on_frame);
                } else {
                    let n = n as u64;
                    if n > MAX_BULK {
                        return Err(Desync::Invalid);
                    }
                    let word = (self.depth == 1 && self.attributes == 0 && self.frame.seen < 2)
                        .then_some(self.frame.seen as u8);
                    self.state = State::Bulk {
                        left: n + 2,
                        word,
                        kind,
                    };
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = number(line)?;
                if n < 0 {
                    self.value(Outcome::Nil, on_frame);
                } else if n == 0 && kind != b'|' {
                    self.value(Outcome::Empty, on_frame);
                } else {
                    let pairs = matches!(kind, b'%' | b'|');
                    let left = (n as u64).saturating_mul(if pairs { 2 } else { 1 });
                    if self.depth == MAX_DEPTH {
                        return Err(Desync::Invalid);
                    }
                    let attribute = kind == b'|';
                    self.stack[self.depth] = Open { left, attribute };
                    self.depth += 1;
                    if attribute {
                        self.attributes += 1;
                        if left == 0 {
                            self.close_attribute();
                        }
                    }
                }
            }
            _ => return Err(Desync::Invalid),
        }
        Ok(())
    }

    /// A simple string that is the top-level frame (`+QUEUED`) or one of
    /// its first two children.
    fn child_word(&mut self, line: &[u8]) {
        if self.depth == 0 {
            self.frame.words[0].push(line);
        } else if self.depth == 1 && self.attributes == 0 && self.frame.seen < 2 {
            self.frame.words[self.frame.seen].push(line);
        }
    }

    fn close_attribute(&mut self) {
        self.depth -= 1;
        self.attributes -= 1;
        if self.depth == 0 {
            // A top-level attribute: the frame is the value after it.
            self.frame.kind = 0;
        }
    }

    /// A value completed at the current depth.
    fn value(&mut self, outcome: Outcome, on_frame: &mut impl FnMut(&Frame)) {
        let mut outcome = outcome;
        loop {
            if self.depth == 0 {
                self.frame.outcome = outcome;
                on_frame(&self.frame);
                self.frame.clear();
                self.started = false;
                return;
            }
            let top = &mut self.stack[self.depth - 1];
            top.left -= 1;
            if self.depth == 1 && self.attributes == 0 {
                if self.frame.children.len() < MAX_CHILDREN {
                    self.frame.children.push(outcome);
                }
                self.frame.seen += 1;
            }
            if top.left > 0 {
                return;
            }
            if top.attribute {
                // The attribute is done; the value it annotates follows.
                self.close_attribute();
                return;
            }
            self.depth -= 1;
            outcome = Outcome::Value;
        }
    }
}

fn is_type(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b':'
            | b'$'
            | b'*'
            | b'_'
            | b','
            | b'#'
            | b'!'
            | b'='
            | b'('
            | b'%'
            | b'~'
            | b'>'
            | b'|'
    )
}

/// A header's or an integer's decimal value, as `str::parse::<i64>` reads
/// it (an optional sign, then digits; overflow is an error), straight from
/// the bytes: it runs for every header of every frame.
fn number(line: &[u8]) -> Result<i64, Desync> {
    let (negative, digits) = match line {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, line),
    };
    if digits.is_empty() {
        return Err(Desync::Invalid);
    }
    digits.iter().try_fold(0i64, |n, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(Desync::Invalid);
        }
        let n = n.checked_mul(10).ok_or(Desync::Invalid)?;
        if negative {
            n.checked_sub(i64::from(d))
        } else {
            n.checked_add(i64::from(d))
        }
        .ok_or(Desync::Invalid)
    })
}

/// Whether bytes a client sent first look like RESP: a command array, or
/// a complete inline command line whose first word is a Redis command (and
/// which is not an HTTP request line: `GET ` alone, the first write of a
/// client that writes its request line in pieces, is not decided here).
pub fn starts_like_command(data: &[u8]) -> bool {
    match data.first() {
        Some(b'*') => {
            // An array of bulk strings: "*<count>\r\n$", or as much of it
            // as the piece holds.
            let rest = &data[1..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let after = &rest[digits..];
            let n = after.len().min(3);
            digits > 0 && after[..n] == b"\r\n$"[..n]
        }
        Some(_) => {
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                return false;
            };
            let line = &data[..end];
            if line.windows(5).any(|w| w == b"HTTP/") {
                return false;
            }
            let word = line
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or(&[]);
            commands::lookup(word).is_some()
        }
        None => false,
    }
}

/// Whether bytes a server sent first look like a RESP reply (not HTTP).
pub fn starts_like_reply(data: &[u8]) -> bool {
    data.first().is_some_and(|&b| is_type(b))
}
