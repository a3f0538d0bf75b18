//! The trace families, registered with the agent's registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::sample::Decision;
use crate::telemetry::metrics::{MetricsError, SERVICE};

/// Every `reason` of `apm_trace_spans_dropped_total`.
pub const DROP_REASONS: [&str; 6] = [
    "pending_full",
    "sampled_out",
    "rate_limited",
    "queue_full",
    "export_failed",
    "shutdown",
];

pub struct TraceMetrics {
    pub spans: IntCounter,
    pub spans_dropped: IntCounterVec,
    pub spans_exported: IntCounter,
    pub traces: IntCounterVec,
    pub unplaced: IntCounterVec,
    pub pending: IntGauge,
    pub export_queue: IntGauge,
    pub export_requests: IntCounterVec,
}

impl TraceMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, MetricsError>(c)
        };
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, MetricsError>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, MetricsError>(g)
        };
        let m = Self {
            spans: plain(
                "apm_trace_spans_total",
                "Spans made: HTTP server requests, monitored clients' HTTP calls, Redis commands and SQL statements.",
            )?,
            spans_dropped: counter(
                "apm_trace_spans_dropped_total",
                "Spans not exported, by reason: pending_full (the assembler held its maximum), sampled_out and rate_limited (the tail decision), queue_full (the export queue was full), export_failed (the collector did not take them, or rejected them in a partial success), shutdown (still queued or under way when the agent stopped).",
                &["reason"],
            )?,
            spans_exported: plain(
                "apm_trace_spans_exported_total",
                "Spans the OTLP collector accepted.",
            )?,
            traces: counter(
                "apm_traces_total",
                "Traces decided once their root ended, by decision: error, slow, sampled, parent_sampled (kept); sampled_out, rate_limited (dropped).",
                &["decision"],
            )?,
            unplaced: counter(
                "apm_trace_calls_unplaced_total",
                "Calls of a service that could not be placed under one of its requests, so they start traces of their own: no_request (none in flight), ambiguous (several in flight or overlapping), timeout (the request never ended in time), other_thread (a thread other than the one that answered the request sent it, such as a background exporter).",
                &[SERVICE, "reason"],
            )?,
            pending: gauge(
                "apm_trace_pending_spans",
                "Spans held until their trace's root ends.",
            )?,
            export_queue: gauge(
                "apm_trace_export_queue_traces",
                "Kept traces waiting for the OTLP exporter.",
            )?,
            export_requests: counter(
                "apm_trace_export_requests_total",
                "OTLP export requests, by result: sent, failed (after retries, or refused), timeout.",
                &["result"],
            )?,
        };
        for reason in DROP_REASONS {
            m.spans_dropped.with_label_values(&[reason]).inc_by(0);
        }
        for d in Decision::ALL {
            m.traces.with_label_values(&[d.as_str()]).inc_by(0);
        }
        for result in ["sent", "failed", "timeout"] {
            m.export_requests.with_label_values(&[result]).inc_by(0);
        }
        Ok(m)
    }
}
