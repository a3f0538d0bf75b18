//! One raw path segment in a template: a route word, a file name, or a
//! placeholder.

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

/// The template form of one raw segment (its `;params` already dropped).
pub(super) fn classify(seg: &str) -> std::borrow::Cow<'_, str> {
    if is_route_word(seg) {
        return seg.into();
    }
    match file_name(seg) {
        Some((name, _)) if is_route_word(name) => seg.into(),
        Some((name, ext)) => format!("{}.{ext}", placeholder(name)).into(),
        None => placeholder(seg).into(),
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
/// rules; the per-parent cap catches the rest.
pub fn is_route_word(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() || b.len() > MAX_WORD {
        return false;
    }
    if b.len() <= 4 && b[0] == b'v' && b.len() > 1 && b[1..].iter().all(u8::is_ascii_digit) {
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

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
