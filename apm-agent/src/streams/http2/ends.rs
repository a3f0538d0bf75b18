//! How an HTTP/2 stream ends: paired (an HTTP request, or a gRPC call
//! with its status), reset, or counted unpaired; and how a stream of a
//! connection joined mid-way is told gRPC or HTTP.

use super::{Conn, RpcCall, RpcSink, Stream, TRUNCATED};
use crate::streams::pairing::{Completed, Origin, Sink, Unpaired, Version};

/// gRPC's CANCELLED and DEADLINE_EXCEEDED.
const CANCELLED: u16 = 1;
const DEADLINE_EXCEEDED: u16 = 4;

/// Every open stream counts as unpaired for `reason`.
pub(super) fn finish(conn: &mut Conn, reason: Unpaired, sink: &mut (impl Sink + RpcSink)) {
    for (_, s) in conn.streams.drain() {
        unpaired(conn.origin, conn.port, &s, reason, sink);
    }
}

/// Stream `s` will not be paired: a call, or a request.
pub(super) fn unpaired(
    origin: Origin,
    port: u16,
    s: &Stream,
    reason: Unpaired,
    sink: &mut (impl Sink + RpcSink),
) {
    if s.grpc {
        sink.rpc_unpaired(origin, port, reason);
    } else {
        if s.unsure.is_some() {
            // Not counted as a request yet: it is one, of no known kind.
            sink.request(origin, port);
        }
        sink.unpaired(origin, port, reason);
    }
}

/// Decides an unsure stream's kind (`grpc` or HTTP) and names it.
pub(super) fn resolve(conn: &Conn, s: &mut Stream, grpc: bool, sink: &mut (impl Sink + RpcSink)) {
    let Some(path) = s.unsure.take() else {
        return;
    };
    s.grpc = grpc;
    if !grpc {
        sink.request(conn.origin, conn.port);
    }
    if &*s.route != TRUNCATED {
        s.route = if grpc {
            sink.rpc_method(conn.origin, &path)
        } else {
            sink.route(conn.origin, &path).template
        };
    }
}

pub(super) fn complete(
    conn: &Conn,
    key: u64,
    s: Stream,
    end_ns: u64,
    sink: &mut (impl Sink + RpcSink),
) {
    if s.unsure.is_some() {
        // Whether it was a gRPC call sat in a table apm lost.
        return unpaired(conn.origin, conn.port, &s, Unpaired::HpackUnknown, sink);
    }
    let status = s.status.unwrap_or(0);
    if s.grpc {
        let code = s.grpc_status.unwrap_or_else(|| grpc_of_http(status));
        return rpc(conn, key, s, code, end_ns, sink);
    }
    sink.completed(Completed {
        origin: conn.origin,
        port: conn.port,
        method: s.method,
        route: s.route,
        status,
        duration_ns: end_ns.saturating_sub(s.start_ns),
        start_ns: s.start_ns,
        conn: key,
        seq: s.seq,
        trace: s.trace,
        thread: 0,
        version: Version::Http2,
    });
}

/// A stream reset: a gRPC call ends CANCELLED, or DEADLINE_EXCEEDED once
/// its deadline passed (as its client decides, within
/// [`deadline_slack`]); an HTTP request counts as reset.
pub(super) fn reset(
    conn: &Conn,
    key: u64,
    s: Stream,
    end_ns: u64,
    sink: &mut (impl Sink + RpcSink),
) {
    if s.unsure.is_some() {
        return unpaired(conn.origin, conn.port, &s, Unpaired::HpackUnknown, sink);
    }
    if !s.grpc {
        return sink.unpaired(conn.origin, conn.port, Unpaired::Reset);
    }
    let late = s
        .timeout_ns
        .is_some_and(|t| end_ns.saturating_sub(s.start_ns) >= t - deadline_slack(t));
    let code = match s.grpc_status {
        Some(code) => code,
        None if late => DEADLINE_EXCEEDED,
        None => CANCELLED,
    };
    rpc(conn, key, s, code, end_ns, sink);
}

/// How much earlier than its `grpc-timeout` (of `t` ns) a reset still is
/// the deadline's: the client wrote the timeout when it made the
/// headers, rounded up, and they left its socket (where apm starts the
/// clock) later; a tenth of it, at most 100 ms.
fn deadline_slack(t: u64) -> u64 {
    (t / 10).min(100_000_000)
}

fn rpc(conn: &Conn, key: u64, s: Stream, code: u16, end_ns: u64, sink: &mut impl RpcSink) {
    sink.rpc_completed(RpcCall {
        origin: conn.origin,
        port: conn.port,
        method: s.route,
        code,
        duration_ns: end_ns.saturating_sub(s.start_ns),
        start_ns: s.start_ns,
        conn: key,
        seq: s.seq,
        trace: s.trace,
    });
}

/// The gRPC status of a response without one (the HTTP-to-gRPC mapping
/// of the gRPC spec).
fn grpc_of_http(status: u16) -> u16 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}
