//! The pipeline's side of tracing: spans in, traces decided when their
//! root ends, kept ones to /traces/recent's list and the export queue.

use std::sync::Arc;

use super::{
    Span,
    assemble::{Assembler, Limits},
    export::Queue,
    recent::RecentTraces,
    sample::{SampleConfig, Sampler},
};
use crate::telemetry::metrics::Metrics;

#[derive(Clone, Copy, Debug)]
pub struct TraceConfig {
    /// Make spans at all (`--no-traces` turns it off).
    pub enabled: bool,
    pub sample: SampleConfig,
    pub limits: Limits,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample: SampleConfig {
                slow_ns: 500_000_000,
                ratio: 0.05,
                max_spans_per_second: 1000,
            },
            limits: Limits::default(),
        }
    }
}

pub struct Tracer {
    enabled: bool,
    assembler: Assembler,
    sampler: Sampler,
    recent: RecentTraces,
    recent_changed: bool,
    export: Option<Queue>,
    /// The last call's span and operation, for its result.
    last_call: Option<(u64, &'static str)>,
}

impl Tracer {
    pub fn new(config: TraceConfig, export: Option<Queue>) -> Self {
        Self {
            enabled: config.enabled,
            assembler: Assembler::new(config.limits),
            sampler: Sampler::new(config.sample),
            recent: RecentTraces::default(),
            recent_changed: false,
            export,
            last_call: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A server request ended.
    pub fn server(&mut self, span: Span, metrics: &Metrics) {
        metrics.traces.spans.inc();
        self.assembler.server(span);
    }

    /// A client's call ended while `in_flight` requests of its service
    /// were in flight.
    pub fn call(&mut self, span: Span, in_flight: u64, metrics: &Metrics) {
        metrics.traces.spans.inc();
        self.last_call = match span.attribute("db.operation.name") {
            Some(super::Value::Static(op)) => Some((span.id, op)),
            _ => None,
        };
        self.assembler.call(span, in_flight);
    }

    /// The reply to the last call, of operation `op`, was an error.
    pub fn last_call_failed(&mut self, op: &str) {
        if let Some((id, last)) = self.last_call
            && last == op
        {
            self.assembler.mark_error(id);
        }
    }

    /// Decides the traces whose root ended a grace period before `now_ns`.
    pub fn finish(&mut self, now_ns: u64, metrics: &Metrics) {
        let (sampler, recent, export) = (&mut self.sampler, &mut self.recent, &self.export);
        let mut changed = false;
        self.assembler.finish(now_ns, |trace| {
            let trace = Arc::new(trace);
            changed |= recent.add(&trace, now_ns);
            let decision = sampler.decide(&trace, now_ns);
            let t = &metrics.traces;
            t.traces.with_label_values(&[decision.as_str()]).inc();
            let spans = trace.spans.len() as u64;
            if !decision.kept() {
                t.spans_dropped
                    .with_label_values(&[decision.as_str()])
                    .inc_by(spans);
            } else if let Some(queue) = export {
                queue.offer(trace, metrics);
            }
        });
        changed |= self.recent.expire(now_ns);
        self.recent_changed |= changed;
        let losses = self.assembler.take_losses();
        let t = &metrics.traces;
        if losses.full > 0 {
            t.spans_dropped
                .with_label_values(&["pending_full"])
                .inc_by(losses.full);
        }
        for ((service, why), n) in losses.unplaced {
            t.unplaced
                .with_label_values(&[&service, why.as_str()])
                .inc_by(n);
        }
        t.pending
            .set(i64::try_from(self.assembler.pending()).unwrap_or(i64::MAX));
    }

    /// /traces/recent's list, when it changed since the last call.
    pub fn take_recent(&mut self) -> Option<Arc<RecentTraces>> {
        std::mem::take(&mut self.recent_changed).then(|| Arc::new(self.recent.snapshot()))
    }
}
