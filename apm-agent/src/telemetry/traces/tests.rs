//! Joining, deciding, listing and encoding traces, on spans made by hand.

use std::sync::Arc;

use prost::Message as _;

use super::{
    Join, Kind, Span, Trace, Value,
    assemble::{Assembler, Limits, Unplaced},
    otlp,
    recent::RecentTraces,
    sample::{Decision, SampleConfig, Sampler},
};
use crate::protocols::http::TraceParent;

const MS: u64 = 1_000_000;
/// The client's port of every exchange here.
const CLIENT_PORT: u16 = 40000;

fn span(id: u64, kind: Kind, service: &str, start_ms: u64, end_ms: u64) -> Span {
    Span {
        id,
        kind,
        service: service.into(),
        pid: None,
        container: None,
        start_ns: start_ms * MS,
        end_ns: end_ms * MS,
        attributes: vec![
            ("http.request.method", Value::Static("GET")),
            ("http.route", Value::Str(format!("/r{id}").into())),
        ],
        error: false,
        remote: None,
        wire: None,
        thread: 0,
    }
}

fn wired(mut s: Span, port: u16, seq: u32) -> Span {
    s.wire = Some((port, CLIENT_PORT, seq));
    s
}

fn limits() -> Limits {
    Limits {
        max_pending: 100,
        grace_ns: 500 * MS,
        max_wait_ns: 10_000 * MS,
    }
}

fn finish(a: &mut Assembler, at_ms: u64) -> Vec<Trace> {
    let mut out = Vec::new();
    a.finish(at_ms * MS, |t| out.push(t));
    out
}

/// A server span as the tracer hands it on: held when something on this
/// host may join it, else its whole trace at once.
fn server(a: &mut Assembler, s: Span) -> Option<Trace> {
    if a.joinable(&s.service, s.wire, s.remote.is_some()) {
        a.server(s);
        None
    } else {
        Some(a.alone(s, super::assemble::new_trace_id()))
    }
}

/// A server span that must be held (something may join it).
fn held(a: &mut Assembler, s: Span) {
    assert!(server(a, s).is_none(), "handed back at once");
}

/// (span, parent, join) of a trace, in its order.
fn shape(t: &Trace) -> Vec<(u64, Option<u64>, Join)> {
    t.spans
        .iter()
        .map(|p| (p.span.id, p.parent, p.join))
        .collect()
}

#[test]
fn a_request_its_calls_and_the_next_services_request_form_one_trace() {
    let mut a = Assembler::new(limits());
    // front's call to back starts (port 8001, sequence 1000); back's
    // request ends first, then front's call (the same bytes), a Redis call,
    // then front's request.
    a.call_started((8001, CLIENT_PORT, 1000), 11 * MS);
    held(
        &mut a,
        wired(span(3, Kind::Server, "back", 12, 60), 8001, 1000),
    );
    a.call(wired(span(2, Kind::Client, "front", 11, 61), 8001, 1000), 1);
    a.call(span(4, Kind::Client, "front", 62, 63), 1);
    assert!(finish(&mut a, 70).is_empty(), "nothing has ended its trace");
    held(&mut a, span(1, Kind::Server, "front", 10, 64));
    // The root waits its grace period.
    assert!(finish(&mut a, 500).is_empty());
    let traces = finish(&mut a, 565);
    assert_eq!(traces.len(), 1);
    assert_eq!(
        shape(&traces[0]),
        [
            (1, None, Join::Root),
            (2, Some(1), Join::Nesting),
            (3, Some(2), Join::Connection),
            (4, Some(1), Join::Nesting),
        ]
    );
    assert_eq!(a.pending(), 0);
    assert!(a.take_losses().unplaced.is_empty());
}

#[test]
fn a_traceparent_names_the_trace_and_the_roots_parent() {
    let mut a = Assembler::new(limits());
    let mut s = span(1, Kind::Server, "front", 10, 20);
    let remote = TraceParent {
        trace_id: [7; 16],
        parent_id: [0, 0, 0, 0, 0, 0, 0, 9],
        sampled: true,
    };
    s.remote = Some(remote);
    // Nothing can join it: whole at once.
    let t = server(&mut a, s).expect("trace");
    assert_eq!(t.trace_id, [7; 16]);
    assert_eq!(shape(&t), [(1, Some(9), Join::Traceparent)]);
}

#[test]
fn calls_that_cannot_be_placed_start_their_own_traces_and_are_counted() {
    let mut a = Assembler::new(limits());
    // Two requests in flight: which one made the call is unknown.
    a.call(span(1, Kind::Client, "front", 10, 12), 2);
    // None in flight: a background call.
    a.call(span(2, Kind::Client, "front", 20, 22), 0);
    // One in flight, but another one ended during the call.
    let alone = server(&mut a, span(3, Kind::Server, "front", 25, 31));
    a.call(span(4, Kind::Client, "front", 30, 33), 1);
    held(&mut a, span(5, Kind::Server, "front", 29, 40));
    // One in flight that never ends.
    a.call(span(6, Kind::Client, "front", 50, 51), 1);
    let mut traces = finish(&mut a, 20_000);
    traces.extend(alone);
    let mut roots: Vec<u64> = traces.iter().map(|t| t.root().id).collect();
    roots.sort_unstable();
    assert_eq!(roots, [1, 2, 3, 4, 5, 6]);
    assert!(traces.iter().all(|t| t.spans.len() == 1));
    let losses = a.take_losses();
    let count = |why| losses.unplaced.get(&(Arc::from("front"), why)).copied();
    assert_eq!(count(Unplaced::Ambiguous), Some(2));
    assert_eq!(count(Unplaced::NoRequest), Some(1));
    assert_eq!(count(Unplaced::Timeout), Some(1));
}

#[test]
fn a_call_from_another_thread_than_the_requests_is_not_its_child() {
    let mut a = Assembler::new(limits());
    let threaded = |mut s: Span, t| {
        s.thread = t;
        s
    };
    // An exporter thread's call and the request thread's own.
    a.call(threaded(span(2, Kind::Client, "front", 11, 12), 77), 1);
    a.call(threaded(span(3, Kind::Client, "front", 13, 14), 70), 1);
    held(&mut a, threaded(span(1, Kind::Server, "front", 10, 20), 70));
    let mut traces = finish(&mut a, 1000);
    traces.sort_by_key(|t| t.root().id);
    assert_eq!(
        shape(&traces[0]),
        [(1, None, Join::Root), (3, Some(1), Join::Nesting)]
    );
    assert_eq!(shape(&traces[1]), [(2, None, Join::Root)]);
    let losses = a.take_losses();
    assert_eq!(
        losses
            .unplaced
            .get(&(Arc::from("front"), Unplaced::OtherThread)),
        Some(&1)
    );
}

#[test]
fn a_full_assembler_drops_and_counts() {
    let mut a = Assembler::new(Limits {
        max_pending: 2,
        ..limits()
    });
    // Held: a local client's calls may claim them.
    for id in 1..=3 {
        a.call_started((80, CLIENT_PORT, id as u32), 9 * MS);
        assert!(
            server(
                &mut a,
                wired(span(id, Kind::Server, "s", 10, 20), 80, id as u32)
            )
            .is_none()
        );
    }
    assert_eq!(a.take_losses().full, 1);
    assert_eq!(finish(&mut a, 1000).len(), 2);
}

fn trace(ms: u64, error: bool, low: u8) -> Trace {
    let mut s = span(1, Kind::Server, "s", 0, ms);
    s.error = error;
    let mut trace_id = [0u8; 16];
    trace_id[8] = low;
    Trace {
        trace_id,
        spans: vec![super::Placed {
            span: s,
            parent: None,
            join: Join::Root,
        }],
    }
}

#[test]
fn the_tail_decision_keeps_slow_and_failed_traces_and_a_bounded_share() {
    let mut s = Sampler::new(SampleConfig {
        slow_ns: 40 * MS,
        ratio: 0.0,
        max_spans_per_second: 2,
    });
    assert_eq!(s.decide(&trace(50, false, 0), 0), Decision::Slow);
    assert_eq!(s.decide(&trace(5, true, 0), 0), Decision::Error);
    assert_eq!(s.decide(&trace(5, false, 0), 0), Decision::SampledOut);
    let mut s = Sampler::new(SampleConfig {
        slow_ns: 40 * MS,
        ratio: 0.5,
        max_spans_per_second: 2,
    });
    // The low half of the id space is in the share, the high half not.
    assert_eq!(s.decide(&trace(5, false, 0x7f), 0), Decision::Sampled);
    assert_eq!(s.decide(&trace(5, false, 0x80), 0), Decision::SampledOut);
    assert_eq!(s.decide(&trace(5, false, 0x10), 0), Decision::Sampled);
    // Two spans a second: the third within the second is over.
    assert_eq!(s.decide(&trace(5, false, 0x10), 1), Decision::RateLimited);
    assert_eq!(
        s.decide(&trace(5, false, 0x10), 1_000 * MS),
        Decision::Sampled
    );
}

#[test]
fn recent_traces_keep_the_slowest_per_operation_and_the_failed_ones() {
    let mut r = RecentTraces::default();
    for ms in [5, 50, 7, 30, 1] {
        r.add(&Arc::new(trace(ms, false, 0)), 100 * MS);
    }
    r.add(&Arc::new(trace(2, true, 0)), 100 * MS);
    let doc = r.to_json(Some("s"), None, 10, 0);
    let listed: Vec<(bool, f64)> = doc["traces"]
        .as_array()
        .expect("list")
        .iter()
        .map(|t| {
            (
                t["error"].as_bool().unwrap_or(false),
                t["duration_seconds"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(true, 0.002), (false, 0.05), (false, 0.03), (false, 0.007)]
    );
    assert_eq!(
        r.to_json(Some("other"), None, 10, 0)["traces"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(doc["traces"][0]["spans"][0]["name"], "GET /r1");
}

#[test]
fn otlp_export_carries_ids_parents_kinds_and_attributes() {
    let mut a = Assembler::new(limits());
    a.call_started((8001, CLIENT_PORT, 1000), 11 * MS);
    held(
        &mut a,
        wired(span(3, Kind::Server, "back", 12, 60), 8001, 1000),
    );
    let mut call = wired(span(2, Kind::Client, "front", 11, 61), 8001, 1000);
    call.pid = Some(42);
    call.container = Some("3f9a2b1c".into());
    call.error = true;
    a.call(call, 0);
    let t = finish(&mut a, 1000).pop().expect("trace");
    let body = otlp::encode([&t], "host-a", 1_000).encode_to_vec();
    let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
        &body[..],
    )
    .expect("decodes");
    assert_eq!(req.resource_spans.len(), 2);
    let front = req
        .resource_spans
        .iter()
        .find(|r| {
            r.resource
                .as_ref()
                .is_some_and(|res| res.attributes.iter().any(|kv| kv.key == "process.pid"))
        })
        .expect("front's resource");
    let container = front.resource.as_ref().and_then(|r| {
        r.attributes
            .iter()
            .find(|kv| kv.key == "container.id")
            .cloned()
    });
    assert!(container.is_some(), "{front:?}");
    let span = &front.scope_spans[0].spans[0];
    assert_eq!(span.span_id, 2u64.to_be_bytes());
    assert_eq!(span.trace_id, t.trace_id);
    assert!(span.parent_span_id.is_empty());
    assert_eq!(span.kind, 3, "client");
    assert_eq!(span.start_time_unix_nano, 11 * MS + 1_000);
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "error");
    let back = req
        .resource_spans
        .iter()
        .find(|r| !std::ptr::eq(*r, front))
        .expect("back's resource");
    let child = &back.scope_spans[0].spans[0];
    assert_eq!(child.parent_span_id, 2u64.to_be_bytes());
    assert_eq!(child.name, "GET /r3");
    assert!(child.attributes.iter().any(|kv| kv.key == "apm.trace.join"));
}

#[test]
fn a_request_no_local_client_made_is_whole_at_once() {
    let mut a = Assembler::new(limits());
    let t = server(&mut a, wired(span(1, Kind::Server, "nginx", 10, 11), 80, 5)).expect("whole");
    assert_eq!(shape(&t), [(1, None, Join::Root)]);
    assert_eq!(a.pending(), 0);
    // A local client's call to it: held for the call.
    a.call_started((80, CLIENT_PORT, 99), 20 * MS);
    assert!(
        server(
            &mut a,
            wired(span(2, Kind::Server, "nginx", 21, 22), 80, 99)
        )
        .is_none()
    );
    a.call(wired(span(3, Kind::Client, "shop", 20, 23), 80, 99), 0);
    let t = finish(&mut a, 1000).pop().expect("trace");
    assert_eq!(
        shape(&t),
        [(3, None, Join::Root), (2, Some(3), Join::Connection)]
    );
}

#[test]
fn a_request_that_starts_after_a_call_does_not_take_it() {
    let mut a = Assembler::new(limits());
    // The call is made in request 1 and ends while only 1 is in flight;
    // request 3 starts right after it and ends first.
    a.call(span(2, Kind::Client, "front", 20, 21), 1);
    held(&mut a, span(3, Kind::Server, "front", 22, 30));
    held(&mut a, span(1, Kind::Server, "front", 10, 50));
    let mut traces = finish(&mut a, 1000);
    traces.sort_by_key(|t| t.root().id);
    assert_eq!(
        shape(&traces[0]),
        [(1, None, Join::Root), (2, Some(1), Join::Nesting)]
    );
    assert_eq!(shape(&traces[1]), [(3, None, Join::Root)]);
    assert!(a.take_losses().unplaced.is_empty());
}

#[test]
fn a_lost_request_makes_the_calls_of_its_time_unplaceable() {
    let mut a = Assembler::new(limits());
    a.call(span(2, Kind::Client, "front", 20, 21), 1);
    // Another request of the service, in flight during the call, will
    // never be paired: the call could be its.
    a.request_lost(&Arc::from("front"), 25 * MS);
    held(&mut a, span(1, Kind::Server, "front", 10, 50));
    assert_eq!(finish(&mut a, 1000).len(), 2);
    let losses = a.take_losses();
    assert_eq!(
        losses
            .unplaced
            .get(&(Arc::from("front"), Unplaced::Ambiguous)),
        Some(&1)
    );
}

#[tokio::test]
async fn spans_a_collector_rejects_are_counted_as_dropped_not_exported() {
    use std::io::{Read as _, Write as _};
    // A collector that takes the request and rejects one span of it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 65536];
        let _ = s.read(&mut buf);
        let answer = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: 1,
                    error_message: "too old".into(),
                },
            ),
        }
        .encode_to_vec();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&answer);
    });
    let metrics = Arc::new(crate::telemetry::metrics::Metrics::new().expect("metrics"));
    let (queue, rx) = super::export::Queue::new();
    let mut two = trace(5, false, 0);
    let mut child = two.spans[0].clone();
    child.span.id = 2;
    child.parent = Some(1);
    two.spans.push(child);
    queue.offer(Arc::new(two), &metrics);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = crate::tasks::Tasks::default();
    let exporter = tokio::spawn(super::export::run(
        rx,
        format!("http://127.0.0.1:{port}/v1/traces"),
        metrics.clone(),
        stop_rx,
        tasks.watch("span export", std::time::Duration::from_secs(60)),
    ));
    let t = &metrics.traces;
    for _ in 0..100 {
        if t.spans_exported.get() + t.spans_dropped.with_label_values(&["export_failed"]).get() >= 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(t.spans_exported.get(), 1);
    assert_eq!(
        t.spans_dropped.with_label_values(&["export_failed"]).get(),
        1
    );
    let _ = stop_tx.send(true);
    let _ = exporter.await;
}
