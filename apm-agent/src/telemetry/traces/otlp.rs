//! Traces as one OTLP `ExportTraceServiceRequest`: spans grouped by the
//! resource they belong to (service, process), with the OpenTelemetry
//! attribute names they were made with.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span::SpanKind, status},
};

use super::{Kind, Trace, Value, recent::unix_ns};

/// Names the instrumentation in every export.
const SCOPE: &str = "apm";

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn any(value: &Value) -> any_value::Value {
    match value {
        Value::Int(i) => any_value::Value::IntValue(*i),
        other => any_value::Value::StringValue(other.to_string()),
    }
}

/// The request body for `traces`, on host `host`; `offset` turns the
/// kernel clock into Unix time.
pub fn encode<'a>(
    traces: impl IntoIterator<Item = &'a Trace>,
    host: &str,
    offset: i128,
) -> ExportTraceServiceRequest {
    // (service, pid, container) → spans.
    type Group<'a> = (&'a str, Option<u32>, Option<&'a str>);
    let mut groups: BTreeMap<Group<'_>, Vec<OtlpSpan>> = BTreeMap::new();
    for trace in traces {
        for placed in &trace.spans {
            let s = &placed.span;
            let mut attributes: Vec<KeyValue> =
                s.attributes.iter().map(|(k, v)| kv(k, any(v))).collect();
            attributes.push(kv(
                "apm.trace.join",
                any_value::Value::StringValue(placed.join.as_str().to_owned()),
            ));
            let span = OtlpSpan {
                trace_id: trace.trace_id.to_vec(),
                span_id: s.id.to_be_bytes().to_vec(),
                parent_span_id: placed
                    .parent
                    .map(|p| p.to_be_bytes().to_vec())
                    .unwrap_or_default(),
                name: s.name(),
                kind: match s.kind {
                    Kind::Server => SpanKind::Server as i32,
                    Kind::Client => SpanKind::Client as i32,
                },
                start_time_unix_nano: unix_ns(s.start_ns, offset),
                end_time_unix_nano: unix_ns(s.end_ns, offset),
                attributes,
                status: Some(Status {
                    code: if s.error {
                        status::StatusCode::Error as i32
                    } else {
                        status::StatusCode::Unset as i32
                    },
                    ..Default::default()
                }),
                ..Default::default()
            };
            groups
                .entry((&s.service, s.pid, s.container.as_deref()))
                .or_default()
                .push(span);
        }
    }
    let resource_spans = groups
        .into_iter()
        .map(|((service, pid, container), spans)| {
            let mut attributes = vec![
                kv(
                    "service.name",
                    any_value::Value::StringValue(service.to_owned()),
                ),
                kv("host.name", any_value::Value::StringValue(host.to_owned())),
                kv(
                    "telemetry.sdk.name",
                    any_value::Value::StringValue(SCOPE.to_owned()),
                ),
            ];
            if let Some(pid) = pid {
                attributes.push(kv("process.pid", any_value::Value::IntValue(pid.into())));
            }
            if let Some(id) = container {
                attributes.push(kv(
                    "container.id",
                    any_value::Value::StringValue(id.to_owned()),
                ));
            }
            ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}
