//! What every protocol's pairing speaks: whose connection an event is
//! (`Origin`), which way its bytes go (`Flow`), the event itself, how a
//! request ends (`Completed`, `Unpaired`) and where results go (`Sink`).
//! HTTP/1's pairing (this module's parent), HTTP/2's, RESP's and SQL's
//! share them.

use std::{net::IpAddr, sync::Arc};

use apm_common::events::EventKind;

use crate::protocols::{
    http::{Method, TraceParent},
    routes::Route,
};

/// Whose connection it is, for naming its service: the process (syscall
/// capture) or the server socket's namespace and port (packet capture);
/// or a monitored process's call to the server at `server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Process(u32),
    Socket { netns: u64, port: u16 },
    Client { tgid: u32, server: IpAddr },
}

impl Origin {
    /// Whether it is a client's call rather than a server's request.
    pub const fn is_client(self) -> bool {
        matches!(self, Self::Client { .. })
    }
}

/// The client's port and a TCP sequence number: where a byte is in a
/// connection, the same at both its ends.
pub type SeqAt = (u16, u32);

/// What an [`Event`] is, seen from the server's end of its connection (a
/// monitored client's connection is seen as its server would see it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// The server accepted the connection.
    Accept,
    /// Bytes toward the server: the request direction.
    ToServer,
    /// Bytes from the server: the response direction.
    FromServer,
    /// Bytes from the server by sendfile(): a length, no data.
    Sendfile,
    /// The connection closed.
    Close,
}

impl Flow {
    /// A syscall record's kind as seen by the server that made the call;
    /// `None` for the kinds that are not events of a connection's bytes.
    pub fn of_syscall(kind: EventKind) -> Option<Self> {
        match kind {
            EventKind::Accept => Some(Self::Accept),
            EventKind::Read => Some(Self::ToServer),
            EventKind::Write => Some(Self::FromServer),
            EventKind::Sendfile => Some(Self::Sendfile),
            EventKind::Close => Some(Self::Close),
            EventKind::Packet | EventKind::Connect | EventKind::Tie => None,
        }
    }

    /// The same event made by the client end: what it reads comes from
    /// the server, what it writes goes to it.
    pub fn of_client(self) -> Self {
        match self {
            Self::ToServer => Self::FromServer,
            Self::FromServer => Self::ToServer,
            other => other,
        }
    }
}

/// One piece of a connection's traffic, decoded.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub kind: Flow,
    pub ts_ns: u64,
    /// The connection: (tgid << 32 | fd) for syscalls, the socket cookie
    /// for packets.
    pub conn: u64,
    pub origin: Origin,
    pub port: u16,
    /// Bytes transferred.
    pub ret: i64,
    /// The captured prefix of those bytes.
    pub data: &'a [u8],
    /// The last bytes of a long write (empty otherwise).
    pub tail: &'a [u8],
    /// The client's port and the TCP sequence number of `data`'s first
    /// byte (packets only): the same bytes carry them at both ends of a
    /// connection.
    pub seq: Option<SeqAt>,
    /// The thread that sent these bytes, when known (packets going out
    /// in their process's own time); else 0.
    pub tid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unpaired {
    /// The connection closed before the response began.
    ClosedMidRequest,
    /// The connection closed before a length-delimited response ended.
    ClosedMidResponse,
    /// A status line with no request waiting for it.
    ResponseWithoutRequest,
    /// Bytes that are not HTTP/1.x (counted once per connection).
    NotHttp,
    /// Bytes beyond the capture that may have held requests.
    Truncated,
    /// More than [`MAX_PIPELINE`] requests waiting on one connection.
    QueueFull,
    /// Connection state dropped (idle too long, table full, fd reused).
    Evicted,
    /// A request on a connection the full table had no room for.
    TableFull,
    /// Bytes of the connection were never seen (ring-buffer loss, a
    /// segment out of order): the requests waiting on it are dropped and
    /// pairing resyncs; each gap counts at least once.
    Gap,
    /// Bytes that stopped parsing on a connection already recognised
    /// (RESP): it resyncs at the next piece that starts like a command.
    Malformed,
    /// An HTTP/2 request whose method, path or status sat in a
    /// header-table entry apm never saw (a connection older than it).
    HpackUnknown,
    /// An HTTP/2 stream reset (RST_STREAM) before its response ended.
    Reset,
    /// An HTTP/2 stream the server refused (past a GOAWAY's last stream).
    Refused,
}

impl Unpaired {
    pub const ALL: [Unpaired; 13] = [
        Unpaired::ClosedMidRequest,
        Unpaired::ClosedMidResponse,
        Unpaired::ResponseWithoutRequest,
        Unpaired::NotHttp,
        Unpaired::Truncated,
        Unpaired::QueueFull,
        Unpaired::Evicted,
        Unpaired::TableFull,
        Unpaired::Gap,
        Unpaired::Malformed,
        Unpaired::HpackUnknown,
        Unpaired::Reset,
        Unpaired::Refused,
    ];

    /// Why a request seen by [`Sink::request`] was not paired.
    pub const REQUEST: [Unpaired; 11] = [
        Unpaired::ClosedMidRequest,
        Unpaired::ClosedMidResponse,
        Unpaired::Truncated,
        Unpaired::QueueFull,
        Unpaired::Evicted,
        Unpaired::TableFull,
        Unpaired::Gap,
        Unpaired::Malformed,
        Unpaired::HpackUnknown,
        Unpaired::Reset,
        Unpaired::Refused,
    ];

    /// Why pairing resynced ([`Sink::resync`]).
    pub const RESYNC: [Unpaired; 5] = [
        Unpaired::Gap,
        Unpaired::Truncated,
        Unpaired::NotHttp,
        Unpaired::ResponseWithoutRequest,
        Unpaired::Malformed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClosedMidRequest => "closed_mid_request",
            Self::ClosedMidResponse => "closed_mid_response",
            Self::ResponseWithoutRequest => "response_without_request",
            Self::NotHttp => "not_http",
            Self::Truncated => "truncated",
            Self::QueueFull => "queue_full",
            Self::Evicted => "evicted",
            Self::TableFull => "table_full",
            Self::Gap => "gap",
            Self::Malformed => "malformed",
            Self::HpackUnknown => "hpack_unknown",
            Self::Reset => "reset",
            Self::Refused => "refused",
        }
    }
}

pub use crate::protocols::http::Version;

/// A paired request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub origin: Origin,
    pub port: u16,
    pub method: Method,
    pub route: Arc<str>,
    pub status: u16,
    pub duration_ns: u64,
    /// When its first byte was seen (kernel clock).
    pub start_ns: u64,
    /// Its connection's key.
    pub conn: u64,
    /// The client's port and the TCP sequence number of its first byte,
    /// if seen on packets.
    pub seq: Option<SeqAt>,
    /// The caller's span, from its `traceparent` header.
    pub trace: Option<TraceParent>,
    /// The thread that sent the call's request (a client's), or the
    /// request's response (a server's); 0 when not known.
    pub thread: u32,
    pub version: Version,
}

/// Where pairing results go. `route` turns a raw path into a template
/// (the raw path goes no further). Every `request` is followed, once, by
/// its `completed` or its `unpaired`.
pub trait Sink {
    fn route(&mut self, origin: Origin, path: &str) -> Route;
    fn request(&mut self, origin: Origin, port: u16);
    /// A client's call to server port `port` began with the byte of TCP
    /// sequence number `seq` at `start_ns`: the server's end of it may be
    /// on this host.
    fn call_started(&mut self, _port: u16, _seq: SeqAt, _start_ns: u64) {}
    fn completed(&mut self, done: Completed);
    /// A request seen by [`Sink::request`] that will not be paired.
    fn unpaired(&mut self, origin: Origin, port: u16, reason: Unpaired);
    /// Framing was lost on the connection and pairing resynced: bytes
    /// that may have held requests were not parsed (`Gap`, `Truncated`),
    /// bytes were not HTTP (`NotHttp`, once per connection), or a
    /// response came with no request (`ResponseWithoutRequest`).
    fn resync(&mut self, origin: Origin, port: u16, reason: Unpaired);
}
