//! HPACK (RFC 7541) header blocks, decoded for the few fields apm reads:
//! `:method`, `:path`, `:status`, `content-type`, `grpc-status`,
//! `grpc-timeout` and `traceparent`. Every other field is parsed only as far as keeping the
//! dynamic table in step needs (its name and size); its value is never
//! kept.
//!
//! A connection joined mid-way (older than the agent) has a dynamic table
//! apm never saw filled. Its entries older than the ones seen inserted
//! are unknown: a field that refers to one is [`Field::Unknown`], never
//! guessed. The entries seen inserted are exact for as long as the
//! encoder cannot have evicted them (their sizes, newest first, sum to
//! at most the table's size), and once one of them is evicted every older
//! unknown one is too, which makes the table whole again. Huffman-coded
//! strings are decoded by `huffman`.

use std::collections::VecDeque;

use super::huffman;
use super::static_table::{STATIC, static_entry};

/// A field name apm reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    Method,
    Path,
    Status,
    ContentType,
    GrpcStatus,
    GrpcTimeout,
    TraceParent,
    /// Any other: only its size matters.
    Other,
    /// The name of a dynamic entry apm never saw: any of the above.
    Unknown,
}

impl Name {
    pub fn of(name: &[u8]) -> Self {
        match name {
            b":method" => Self::Method,
            b":path" => Self::Path,
            b":status" => Self::Status,
            b"content-type" => Self::ContentType,
            b"grpc-status" => Self::GrpcStatus,
            b"grpc-timeout" => Self::GrpcTimeout,
            b"traceparent" => Self::TraceParent,
            _ => Self::Other,
        }
    }

    /// Whether its value is kept.
    fn kept(self) -> bool {
        !matches!(self, Self::Other | Self::Unknown)
    }
}

/// The longest value kept (a path longer than this is cut and marked).
pub const VALUE_MAX: usize = 4096;

/// One decoded field of a header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// A field apm reads, with its value (at most [`VALUE_MAX`] bytes;
    /// `cut` when it was longer).
    Kept {
        name: Name,
        value: Vec<u8>,
        cut: bool,
    },
    /// Some other field.
    Other,
    /// A field whose name (and value) sit in a dynamic-table entry apm
    /// never saw: it may have been any of them.
    Unknown,
}

/// Why a header block could not be decoded: the connection's decoder is
/// then out of step with its encoder for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("truncated header block")]
    Truncated,
    #[error("integer overflow")]
    Integer,
    #[error("index 0 or past the static table")]
    Index,
    #[error("bad Huffman string")]
    Huffman,
    #[error("table size update past the limit")]
    SizeUpdate,
}

/// An entry apm saw inserted: its name and the name's length, its value
/// if kept, its size (name + value + 32; `None` when its name was an
/// unknown entry's).
#[derive(Clone, Debug)]
struct Entry {
    name: Name,
    name_len: Option<usize>,
    value: Option<(Vec<u8>, bool)>,
    size: Option<usize>,
}

/// The default table size (SETTINGS_HEADER_TABLE_SIZE's initial value).
pub const DEFAULT_TABLE: usize = 4096;
/// Largest table size followed: a size update past it (a peer that
/// advertised more) makes older entries unknown rather than memory grow.
const TABLE_MAX: usize = 64 << 10;
/// Entries kept at most (each takes at least 32 bytes of table size).
const ENTRIES_MAX: usize = TABLE_MAX / 32;

/// One direction's decoder.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    /// The entries' known (or least) sizes, summed.
    total: usize,
    max: usize,
    /// Entries older than [`Decoder::entries`] may exist (joined mid-way).
    partial: bool,
}

impl Decoder {
    /// A decoder for a stream seen from its start (`partial`: false) or
    /// joined mid-way.
    pub fn new(partial: bool) -> Self {
        Self {
            entries: VecDeque::new(),
            total: 0,
            max: DEFAULT_TABLE,
            partial,
        }
    }

    /// Whether some entries of the encoder's table are not known.
    pub fn partial(&self) -> bool {
        self.partial
    }

    /// Decodes one whole header block (HEADERS or PUSH_PROMISE and its
    /// CONTINUATIONs), calling `field` for each field.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(Field),
    ) -> Result<(), HpackError> {
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                field(self.indexed(index)?);
            } else if first & 0x40 != 0 {
                let index = integer(&mut block, 6)?;
                let (name, name_len) = self.name(index, &mut block)?;
                let (value, value_len, cut) = string(&mut block, name.kept(), true)?;
                field(kept(name, &value, cut));
                self.insert(Entry {
                    name,
                    name_len,
                    value: name.kept().then_some((value, cut)),
                    size: name_len.map(|n| n + value_len + 32),
                });
            } else if first & 0x20 != 0 {
                let size = integer(&mut block, 5)?;
                self.resize(size);
            } else {
                // Without indexing (0000) or never indexed (0001).
                let index = integer(&mut block, 4)?;
                let (name, _) = self.name(index, &mut block)?;
                let (value, _, cut) = string(&mut block, name.kept(), false)?;
                field(kept(name, &value, cut));
            }
        }
        Ok(())
    }

    /// An indexed field.
    fn indexed(&self, index: usize) -> Result<Field, HpackError> {
        if let Some((name, value)) = static_entry(index)? {
            let name = Name::of(name.as_bytes());
            return Ok(kept(name, value.as_bytes(), false));
        }
        Ok(match self.dynamic(index - STATIC.len() - 1) {
            Some(Entry {
                name,
                value: Some((value, cut)),
                ..
            }) => Field::Kept {
                name: *name,
                value: value.clone(),
                cut: *cut,
            },
            Some(e) if e.name == Name::Unknown => Field::Unknown,
            Some(_) => Field::Other,
            None => Field::Unknown,
        })
    }

    /// A literal's name: by index (0: a literal string follows), with its
    /// length when known.
    fn name(&self, index: usize, block: &mut &[u8]) -> Result<(Name, Option<usize>), HpackError> {
        if index == 0 {
            let (name, len, _) = string(block, true, true)?;
            return Ok((Name::of(&name), Some(len)));
        }
        if let Some((name, _)) = static_entry(index)? {
            return Ok((Name::of(name.as_bytes()), Some(name.len())));
        }
        Ok(match self.dynamic(index - STATIC.len() - 1) {
            Some(e) => (e.name, e.name_len),
            // It may have been any name, a read one too: not guessed.
            None => (Name::Unknown, None),
        })
    }

    /// Dynamic entry `i` (0: newest), if it is surely the encoder's:
    /// every entry up to it has a known size and together they fit.
    fn dynamic(&self, i: usize) -> Option<&Entry> {
        let mut total = 0;
        for e in self.entries.iter().take(i + 1) {
            total += e.size?;
        }
        (total <= self.max).then(|| self.entries.get(i)).flatten()
    }

    fn insert(&mut self, entry: Entry) {
        self.total += least(&entry);
        self.entries.push_front(entry);
        self.evict();
    }

    /// A dynamic table size update.
    fn resize(&mut self, size: usize) {
        if size > TABLE_MAX {
            // Not followed: what it keeps is unknown from here on.
            self.entries.clear();
            self.total = 0;
            self.partial = true;
            self.max = TABLE_MAX;
            return;
        }
        self.max = size;
        if size == 0 {
            // The encoder's table is empty: whole again.
            self.entries.clear();
            self.total = 0;
            self.partial = false;
        }
        self.evict();
    }

    /// Drops the entries the encoder has surely evicted: the oldest ones
    /// while the known (or least) sizes of all sum past the table size.
    /// Once one of ours goes, every older unknown entry went before it.
    fn evict(&mut self) {
        while self.total > self.max
            && let Some(old) = self.entries.pop_back()
        {
            self.total -= least(&old);
            self.partial = false;
        }
        while self.entries.len() > ENTRIES_MAX
            && let Some(old) = self.entries.pop_back()
        {
            self.total -= least(&old);
            self.partial = true;
        }
    }
}

/// An entry's size, or the least an entry of unknown name takes.
fn least(e: &Entry) -> usize {
    e.size.unwrap_or(33)
}

fn kept(name: Name, value: &[u8], cut: bool) -> Field {
    match name {
        Name::Other => Field::Other,
        Name::Unknown => Field::Unknown,
        name => Field::Kept {
            name,
            value: value.to_vec(),
            cut,
        },
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1).
fn integer(block: &mut &[u8], n: u32) -> Result<usize, HpackError> {
    let (&first, rest) = block.split_first().ok_or(HpackError::Truncated)?;
    *block = rest;
    let mask = (1usize << n) - 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let (&b, rest) = block.split_first().ok_or(HpackError::Truncated)?;
        *block = rest;
        if shift > 28 {
            return Err(HpackError::Integer);
        }
        value = value
            .checked_add(usize::from(b & 0x7f) << shift)
            .ok_or(HpackError::Integer)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string literal (RFC 7541 §5.2): its bytes when `want` (cut at
/// [`VALUE_MAX`]), its decoded length when `want` or `count` (an entry's
/// size needs it; else 0), and whether it was cut.
fn string(
    block: &mut &[u8],
    want: bool,
    count: bool,
) -> Result<(Vec<u8>, usize, bool), HpackError> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    if !huffman {
        let cut = want && raw.len() > VALUE_MAX;
        let keep = if want {
            &raw[..raw.len().min(VALUE_MAX)]
        } else {
            &[]
        };
        return Ok((keep.to_vec(), len, cut));
    }
    if !want && !count {
        return Ok((Vec::new(), 0, false));
    }
    let mut decoded = Vec::new();
    let max = if want { VALUE_MAX } else { 0 };
    let decoded_len = huffman::decode(raw, &mut decoded, max).ok_or(HpackError::Huffman)?;
    Ok((decoded, decoded_len, decoded_len > max && want))
}
