//! HTTP/2 (RFC 9113) and gRPC over it: frames (`frames`), header blocks
//! (`hpack`, with the static table in `static_table`), and what apm reads
//! of a header block (this file): the method, the path (for templating,
//! then dropped), the status, whether it is gRPC, its `grpc-status` and
//! `grpc-timeout`, and `traceparent`. Nothing else leaves the parser.

pub mod frames;
pub mod hpack;
mod huffman;
mod static_table;
#[cfg(test)]
mod tests;

use self::hpack::{Decoder, Field, HpackError, Name};
use super::http::{Method, TraceParent, trace_context};

/// What apm reads of one header block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub method: Option<Method>,
    /// The path without query string; `path_cut` when it was longer than
    /// [`hpack::VALUE_MAX`].
    pub path: Option<String>,
    pub path_cut: bool,
    pub status: Option<u16>,
    /// `content-type: application/grpc` (or `application/grpc+proto`, …).
    pub grpc: bool,
    pub grpc_status: Option<u16>,
    /// `grpc-timeout`, in nanoseconds.
    pub grpc_timeout_ns: Option<u64>,
    pub trace: Option<TraceParent>,
    /// A field referred to a dynamic-table entry apm never saw: any of
    /// the above that is missing may have been there.
    pub unknown: bool,
}

/// Decodes header block `block` with `decoder` into what apm reads.
pub fn read_block(decoder: &mut Decoder, block: &[u8]) -> Result<Headers, HpackError> {
    let mut h = Headers::default();
    decoder.decode(block, |field| match field {
        Field::Unknown => h.unknown = true,
        Field::Other => {}
        Field::Kept { name, value, cut } => match name {
            Name::Method => {
                h.method = Some(std::str::from_utf8(&value).map_or(Method::Other, Method::parse));
            }
            Name::Path => {
                let end = value
                    .iter()
                    .position(|&b| b == b'?' || b == b'#')
                    .unwrap_or(value.len());
                h.path = Some(String::from_utf8_lossy(&value[..end]).into_owned());
                h.path_cut = cut && end == value.len();
            }
            Name::Status => h.status = number(&value),
            Name::ContentType => h.grpc = value.starts_with(b"application/grpc"),
            Name::GrpcStatus => h.grpc_status = number(&value),
            Name::GrpcTimeout => h.grpc_timeout_ns = grpc_timeout(&value),
            Name::TraceParent => h.trace = trace_context::parse(&value),
            Name::Other | Name::Unknown => {}
        },
    })?;
    Ok(h)
}

/// A status code of 1 to 3 digits.
fn number(value: &[u8]) -> Option<u16> {
    if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &[u8]) -> Option<u64> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let per = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    n.checked_mul(per)
}

/// gRPC status codes by number (their names are the metric's values).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status code's name; an unknown number is `UNKNOWN` (as the
/// gRPC libraries read it).
pub fn grpc_code_name(code: u16) -> &'static str {
    GRPC_CODES
        .get(usize::from(code))
        .copied()
        .unwrap_or("UNKNOWN")
}
