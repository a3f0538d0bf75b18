//! The pipeline's side of tracing: spans in, traces decided when their
//! root ends, kept ones to /traces/recent's list and the export queue.

use std::sync::Arc;

use prometheus::IntCounter;

use super::{
    Span, Value,
    arena::Ref,
    assemble::{Assembler, Limits, new_trace_id},
    export::Queue,
    make,
    recent::RecentTraces,
    sample::{Decision, SampleConfig, Sampler, Summary},
};
use crate::telemetry::metrics::Metrics;
use crate::{services::directory::ServiceResource, streams::pairing::Completed};

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

/// The decision counters' handles, resolved once (a label lookup per
/// trace hashed and locked).
struct Counters {
    /// `apm_traces_total` per decision, in [`Decision::ALL`]'s order.
    decided: Vec<IntCounter>,
    /// `apm_trace_spans_dropped_total` per decision that drops.
    dropped: Vec<Option<IntCounter>>,
}

impl Counters {
    fn of(metrics: &Metrics) -> Self {
        let t = &metrics.traces;
        let label = |family: &prometheus::IntCounterVec, d: Decision| {
            family.with_label_values(&[d.as_str()])
        };
        Self {
            decided: Decision::ALL.iter().map(|&d| label(&t.traces, d)).collect(),
            dropped: Decision::ALL
                .iter()
                .map(|&d| (!d.kept()).then(|| label(&t.spans_dropped, d)))
                .collect(),
        }
    }
}

pub struct Tracer {
    enabled: bool,
    counters: Option<Counters>,
    assembler: Assembler,
    sampler: Sampler,
    recent: RecentTraces,
    recent_changed: bool,
    export: Option<Queue>,
    /// The last call's span and operation, for its result.
    last_call: Option<(Ref, &'static str)>,
}

impl Tracer {
    pub fn new(config: TraceConfig, export: Option<Queue>) -> Self {
        Self {
            enabled: config.enabled,
            counters: None,
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

    /// A server request of `service` (its port `port`, its `resource`)
    /// ended.
    pub fn request(
        &mut self,
        done: &Completed,
        (service, port): (Arc<str>, u16),
        resource: Option<&ServiceResource>,
        metrics: &Metrics,
    ) {
        metrics.traces.spans.inc();
        let wire = make::wire(done);
        let span = |service| make::resourced(make::http(done, service, port), resource);
        if self
            .assembler
            .joinable(&service, wire, done.trace.is_some())
        {
            self.assembler.server(span(service));
            return;
        }
        // Nothing on this host can join it: its trace is this span, decided
        // now, and built only when kept or listed.
        let end = done.start_ns.saturating_add(done.duration_ns);
        let trace_id = done.trace.map_or_else(new_trace_id, |t| t.trace_id);
        let summary = Summary {
            error: done.status >= 500,
            slowest_ns: done.duration_ns,
            parent_sampled: done.trace.is_some_and(|t| t.sampled),
            trace_id,
            spans: 1,
        };
        let i = self.sampler.decide_on(&summary, end).index();
        let counters = self.counters.get_or_insert_with(|| Counters::of(metrics));
        counters.decided[i].inc();
        let op = (
            Value::Static(done.method.as_str()),
            Value::Str(done.route.clone()),
        );
        let listed = summary.error || self.recent.would_list(&service, &op, done.duration_ns, end);
        if !listed && let Some(dropped) = &counters.dropped[i] {
            self.assembler.remember(&service, (done.start_ns, end));
            dropped.inc();
            return;
        }
        let trace = Arc::new(self.assembler.alone(span(service), trace_id));
        if listed {
            self.recent_changed |= self.recent.add(&trace, end);
        }
        dispose(trace, i, counters, self.export.as_ref(), metrics);
    }

    /// A request of `service` will never be paired.
    pub fn request_lost(&mut self, service: &Arc<str>, now_ns: u64) {
        self.assembler.request_lost(service, now_ns);
    }

    /// A client's HTTP call began (its server's end may be on this host).
    pub fn call_started(&mut self, port: u16, (client, seq): (u16, u32), start_ns: u64) {
        self.assembler.call_started((port, client, seq), start_ns);
    }

    /// A client's call ended while `in_flight` requests of its service
    /// were in flight.
    pub fn call(&mut self, span: Span, in_flight: u64, metrics: &Metrics) {
        metrics.traces.spans.inc();
        let op = match span.attribute("db.operation.name") {
            Some(Value::Static(op)) => Some(*op),
            _ => None,
        };
        let held = self.assembler.call(span, in_flight);
        self.last_call = held.zip(op);
    }

    /// The reply to the last call, of operation `op`, was an error.
    pub fn last_call_failed(&mut self, op: &str) {
        if let Some((held, last)) = self.last_call
            && last == op
        {
            self.assembler.mark_error(held);
        }
    }

    /// Decides the traces whose root ended a grace period before `now_ns`.
    pub fn finish(&mut self, now_ns: u64, metrics: &Metrics) {
        let counters = self.counters.get_or_insert_with(|| Counters::of(metrics));
        let mut out = Output {
            counters,
            sampler: &mut self.sampler,
            recent: &mut self.recent,
            export: self.export.as_ref(),
        };
        let mut changed = false;
        self.assembler.finish(now_ns, |trace| {
            changed |= decide(trace, now_ns, &mut out, metrics);
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

/// Where decided traces go.
struct Output<'a> {
    counters: &'a Counters,
    sampler: &'a mut Sampler,
    recent: &'a mut RecentTraces,
    export: Option<&'a Queue>,
}

/// Lists, decides, counts and (when kept) queues `trace`, whose root ended
/// by `now_ns`; whether /traces/recent's list changed.
fn decide(trace: super::Trace, now_ns: u64, out: &mut Output<'_>, metrics: &Metrics) -> bool {
    let trace = Arc::new(trace);
    let listed = out.recent.add(&trace, now_ns);
    let i = out.sampler.decide(&trace, now_ns).index();
    out.counters.decided[i].inc();
    dispose(trace, i, out.counters, out.export, metrics);
    listed
}

/// A decided trace (decision `i` of [`Decision::ALL`]): its spans counted
/// as dropped, or queued for export when there is an exporter.
fn dispose(
    trace: Arc<super::Trace>,
    i: usize,
    counters: &Counters,
    export: Option<&Queue>,
    metrics: &Metrics,
) {
    if let Some(dropped) = &counters.dropped[i] {
        dropped.inc_by(trace.spans.len() as u64);
    } else if let Some(queue) = export {
        queue.offer(trace, metrics);
    }
}
