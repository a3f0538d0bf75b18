//! One raw path segment in a template: a route word, a file name, or a
//! placeholder.

use std::borrow::Cow;

/// The placeholder of a segment that may not be kept verbatim.
pub(super) const VAR: &str = "{var}";
/// Longest segment kept verbatim.
const MAX_WORD: usize = 32;
/// Longest letter run between separators in a kept segment.
const MAX_RUN: usize = 20;
/// Extensions that make a segment a file name (`name.ext`), sorted for
/// binary search: static assets, documents and script pages.
#[rustfmt::skip]
pub const FILE_EXTENSIONS: &[&str] = &[
    "asp", "aspx", "atom", "avif", "bmp", "css", "csv", "eot", "gif", "gz", "htm", "html", "ico",
    "jpeg", "jpg", "js", "json", "jsp", "map", "md", "mjs", "mp3", "mp4", "ogg", "otf", "pdf",
    "php", "png", "rss", "svg", "ttf", "txt", "wasm", "wav", "webm", "webmanifest", "webp",
    "woff", "woff2", "xml", "yaml", "yml", "zip",
];

/// What one raw segment (its `;params` already dropped) is in a template.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    /// A route word that is not a version: a fixed vocabulary's word or a
    /// lower-case identifier (`users`, `alice`), told apart by how many
    /// distinct ones share its position.
    Word(&'a str),
    /// A version (`v2`): never an identifier.
    Version(&'a str),
    /// A file name whose name is a route word (`app.js`), and its extension.
    File(&'a str, &'a str),
    /// Bounded by construction: `{id}`, `{uuid}`, `{hex}`, `{var}`, alone
    /// or with a known extension (`{var}.js`).
    Placeholder(Cow<'static, str>),
}

impl<'a> Segment<'a> {
    pub(super) fn of(seg: &'a str) -> Self {
        if is_version(seg) {
            return Self::Version(seg);
        }
        if is_route_word(seg) {
            return Self::Word(seg);
        }
        match file_name(seg) {
            Some((name, ext)) if is_route_word(name) => Self::File(seg, ext),
            Some((name, ext)) => Self::Placeholder(format!("{}.{ext}", placeholder(name)).into()),
            None => Self::Placeholder(placeholder(seg).into()),
        }
    }

    /// What the segment becomes where it may not be kept verbatim: `{var}`,
    /// with a file name's extension (`{var}.js`).
    pub(super) fn fallback(&self) -> Cow<'static, str> {
        match self {
            Self::File(_, ext) => format!("{{var}}.{ext}").into(),
            Self::Placeholder(p) => p.clone(),
            Self::Word(_) | Self::Version(_) => VAR.into(),
        }
    }
}

/// The placeholder of a segment (or file name) that is not a route word.
fn placeholder(seg: &str) -> &'static str {
    if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
        "{id}"
    } else if is_uuid(seg) {
        "{uuid}"
    } else if seg.len() >= 16 && seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        "{hex}"
    } else {
        "{var}"
    }
}

/// `seg` as a file name: a non-empty name and an extension of
/// [`FILE_EXTENSIONS`], split at the last dot.
pub fn file_name(seg: &str) -> Option<(&str, &str)> {
    let (name, ext) = seg.rsplit_once('.')?;
    (!name.is_empty() && FILE_EXTENSIONS.binary_search(&ext).is_ok()).then_some((name, ext))
}

/// A segment that reads like a word of a route table: at most MAX_WORD
/// bytes of lower-case letters joined by `-` or `_` (no digits mixed in,
/// no `@ : ; = . ~ %`, no upper case), each letter run at most MAX_RUN
/// long and pronounceable (a vowel, no five consonants in a row); or a
/// version (`v1`, `v22`). Random lower-case tokens mostly fail the run
/// rules; the per-position word limit catches the rest.
pub fn is_route_word(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() || b.len() > MAX_WORD {
        return false;
    }
    if is_version(seg) {
        return true;
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c == b'-' || c == b'_')
    {
        return false;
    }
    seg.split(['-', '_'])
        .all(|run| run.is_empty() || (run.len() <= MAX_RUN && pronounceable(run.as_bytes())))
}

fn pronounceable(run: &[u8]) -> bool {
    let vowel = |c: &u8| matches!(c, b'a' | b'e' | b'i' | b'o' | b'u' | b'y');
    if run.len() > 3 && !run.iter().any(vowel) {
        return false;
    }
    let mut consonants = 0;
    for c in run {
        consonants = if vowel(c) { 0 } else { consonants + 1 };
        if consonants >= 5 {
            return false;
        }
    }
    true
}

/// `v` and one to three digits: `v1`, `v22`.
pub fn is_version(seg: &str) -> bool {
    let b = seg.as_bytes();
    (2..=4).contains(&b.len()) && b[0] == b'v' && b[1..].iter().all(u8::is_ascii_digit)
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
