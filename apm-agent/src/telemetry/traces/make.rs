//! Spans made from what pairing lets out, with OpenTelemetry's attribute
//! names: a server request, a client's HTTP call, a Redis command, a SQL
//! statement (normalised: every literal a placeholder).

use std::sync::Arc;

use super::{Kind, Span, Value, random_id};
use crate::{
    protocols::{resp::commands::Command, sql::Statement},
    services::directory::ServiceResource,
    streams::{
        pairing::{Completed, Origin},
        resp::Peer,
        sql::{Outcome, System},
    },
};

/// The span of a paired HTTP request or call of `service`.
pub fn http(done: &Completed, service: Arc<str>, port: u16) -> Span {
    let status = i64::from(done.status);
    let mut attributes = vec![
        ("http.request.method", Value::Static(done.method.as_str())),
        ("http.response.status_code", Value::Int(status)),
    ];
    let (kind, pid, error) = match done.origin {
        Origin::Client { tgid, server } => {
            attributes.push(("server.address", Value::Addr(server)));
            // A client's call failed on any 4xx or 5xx.
            (Kind::Client, Some(tgid), done.status >= 400)
        }
        origin => {
            attributes.push(("http.route", Value::Str(done.route.clone())));
            let pid = match origin {
                Origin::Process(tgid) => Some(tgid),
                _ => None,
            };
            (Kind::Server, pid, done.status >= 500)
        }
    };
    attributes.push(("server.port", Value::Int(port.into())));
    Span {
        id: random_id(),
        kind,
        service,
        pid,
        container: None,
        start_ns: done.start_ns,
        end_ns: done.start_ns.saturating_add(done.duration_ns),
        attributes,
        error,
        remote: done.trace,
        wire: wire(done),
        thread: done.thread,
    }
}

/// Where a paired request's first byte is in its connection: (server
/// port, client port, sequence number), the same at both ends.
pub fn wire(done: &Completed) -> Option<(u16, u16, u32)> {
    done.seq.map(|(client, seq)| (done.port, client, seq))
}

/// The span of a monitored client's Redis command to `peer`'s server.
/// `at`: when it started and ended; `thread`: the thread that sent it.
pub fn redis(
    peer: &Peer,
    cmd: Command,
    service: Arc<str>,
    (start_ns, end_ns): (u64, u64),
    thread: u32,
) -> Span {
    let attributes = vec![
        ("db.system.name", Value::Static("redis")),
        ("db.operation.name", Value::Static(cmd.name)),
    ];
    db_call(peer, service, (start_ns, end_ns), thread, attributes, false)
}
/// The span of a monitored client's SQL statement to `peer`'s server;
/// `at`: when it started and ended; `thread`: the thread that sent it.
pub fn sql(
    peer: &Peer,
    system: System,
    stmt: &Statement,
    outcome: Outcome,
    service: Arc<str>,
    (start_ns, end_ns): (u64, u64),
    thread: u32,
) -> Span {
    let mut attributes = vec![
        ("db.system.name", Value::Static(system.label())),
        ("db.operation.name", Value::Static(stmt.operation)),
    ];
    if let Some(table) = &stmt.collection {
        attributes.push(("db.collection.name", Value::Str(table.as_str().into())));
    }
    attributes.push(("db.query.text", Value::Str(stmt.text.as_str().into())));
    if let Outcome::Error(code) = outcome {
        let code = code.map_or_else(String::new, |c| {
            String::from_utf8_lossy(&c)
                .trim_end_matches('\0')
                .to_owned()
        });
        attributes.push(("db.response.status_code", Value::Str(code.into())));
    }
    let failed = matches!(outcome, Outcome::Error(_));
    db_call(
        peer,
        service,
        (start_ns, end_ns),
        thread,
        attributes,
        failed,
    )
}

/// A database call's span: `attributes` and the server's address and port.
fn db_call(
    peer: &Peer,
    service: Arc<str>,
    (start_ns, end_ns): (u64, u64),
    thread: u32,
    mut attributes: Vec<(&'static str, Value)>,
    error: bool,
) -> Span {
    if let Some(server) = peer.server {
        attributes.push(("server.address", Value::Addr(server)));
    }
    attributes.push(("server.port", Value::Int(peer.port.into())));
    let pid = match peer.origin {
        Origin::Process(tgid) | Origin::Client { tgid, .. } => Some(tgid),
        Origin::Socket { .. } => None,
    };
    Span {
        id: random_id(),
        kind: Kind::Client,
        service,
        pid,
        container: None,
        start_ns,
        end_ns,
        attributes,
        error,
        remote: None,
        wire: None,
        thread,
    }
}

/// `span` with its service's resource: the container, and the lowest pid
/// when the span's own process is not known.
pub fn resourced(mut span: Span, resource: Option<&ServiceResource>) -> Span {
    if let Some(r) = resource {
        span.pid = span.pid.or(Some(r.pid));
        span.container.clone_from(&r.container_id);
    }
    span
}
