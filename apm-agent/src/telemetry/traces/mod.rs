//! Spans from the wire, joined into traces (`assemble`), kept or dropped
//! whole after their root ends (`sample`), listed for /traces/recent
//! (`recent`) and exported over OTLP/HTTP (`otlp`, `export`).
//!
//! Every span is made at pairing time from what the parsers let out
//! (method, route template, status, operation name, timings, the
//! `traceparent` ids), never from captured bytes.

mod arena;
pub mod assemble;
pub mod export;
pub mod make;
pub mod metrics;
pub mod otlp;
pub mod recent;
pub mod sample;
#[cfg(test)]
mod tests;
pub mod tracer;

use std::{net::IpAddr, sync::Arc};

use crate::protocols::http::TraceParent;

/// What a span stands for (OpenTelemetry's span kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Server,
    Client,
}

/// Which evidence placed a span in its trace (`apm.trace.join`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// Nothing: it starts its trace.
    Root,
    /// The request's `traceparent` header named its parent.
    Traceparent,
    /// The same TCP bytes seen at a monitored client's socket: its parent
    /// is that client's call.
    Connection,
    /// A call its process made while this one server request, and no
    /// other, was in flight.
    Nesting,
}

impl Join {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Traceparent => "traceparent",
            Self::Connection => "connection",
            Self::Nesting => "nesting",
        }
    }
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Static(&'static str),
    Str(Arc<str>),
    Addr(IpAddr),
    Int(i64),
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(i) => s.serialize_i64(*i),
            other => s.collect_str(other),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(s) => f.write_str(s),
            Self::Str(s) => f.write_str(s),
            Self::Addr(a) => write!(f, "{a}"),
            Self::Int(i) => write!(f, "{i}"),
        }
    }
}

/// One finished operation, as the pairing saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// Random, non-zero; also its OTLP span id.
    pub id: u64,
    pub kind: Kind,
    pub service: Arc<str>,
    /// The process that made it, when known (clients, the syscall
    /// capture), else its service's lowest pid.
    pub pid: Option<u32>,
    /// The container of that process, when it runs in one.
    pub container: Option<Arc<str>>,
    /// Kernel clock.
    pub start_ns: u64,
    pub end_ns: u64,
    /// OpenTelemetry semantic-convention attributes.
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
    /// The caller's span, from the request's `traceparent`.
    pub remote: Option<TraceParent>,
    /// For an HTTP call or request seen on packets: (server port, client
    /// port, TCP sequence number of its first byte), the same at both ends.
    pub wire: Option<(u16, u16, u32)>,
    /// The thread that sent a call, or a request's response; 0 when not
    /// known.
    pub thread: u32,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }

    /// The OpenTelemetry span name: `{method} {route}` for a request,
    /// `{method}` for an HTTP call, the operation (and table) for a
    /// database call.
    pub fn name(&self) -> String {
        let method = self.attribute("http.request.method");
        match (method, self.attribute("http.route")) {
            (Some(m), Some(r)) => format!("{m} {r}"),
            (Some(m), None) => m.to_string(),
            _ => match (
                self.attribute("db.operation.name"),
                self.attribute("db.collection.name"),
            ) {
                (Some(op), Some(table)) => format!("{op} {table}"),
                (Some(op), None) => op.to_string(),
                _ => "call".to_owned(),
            },
        }
    }
}

/// A span placed in its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub span: Span,
    pub parent: Option<u64>,
    pub join: Join,
}

/// A whole trace as this host saw it: its root first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: [u8; 16],
    pub spans: Vec<Placed>,
}

impl Trace {
    pub fn root(&self) -> &Span {
        &self.spans[0].span
    }

    pub fn error(&self) -> bool {
        self.spans.iter().any(|p| p.span.error)
    }

    /// The longest span's duration.
    pub fn slowest_ns(&self) -> u64 {
        self.spans
            .iter()
            .map(|p| p.span.duration_ns())
            .max()
            .unwrap_or(0)
    }
}

/// A random non-zero id.
pub fn random_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
