//! The exporter: kept traces wait in a bounded queue (the pipeline offers
//! them without waiting; a full queue drops the trace, counted), and one
//! task POSTs them in batches as OTLP/HTTP protobuf, retrying with backoff.
//! A slow or dead collector fills the queue and nothing else: capture,
//! metrics and /traces/recent go on.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use prost::Message as _;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{Trace, otlp};
use crate::{
    post::{self, Failure, Retry},
    tasks::Beat,
    telemetry::metrics::Metrics,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

/// Traces waiting for export at most.
pub const QUEUE: usize = 2048;
/// Spans per request at most; a batch also goes after [`BATCH_WAIT`].
const BATCH_SPANS: usize = 2048;
const BATCH_WAIT: Duration = Duration::from_secs(1);
const RETRY: Retry = Retry {
    attempts: 4,
    first_wait: Duration::from_millis(500),
    timeout: Duration::from_secs(10),
};
/// All of one batch's attempts' limit.
const DEADLINE: Duration = Duration::from_secs(20);
/// After the stop signal, what is under way or queued has this long.
const DRAIN: Duration = Duration::from_secs(3);
const PROTOBUF: &str = "application/x-protobuf";

/// The pipeline's end of the queue.
pub struct Queue {
    tx: mpsc::Sender<Arc<Trace>>,
}

impl Queue {
    pub fn new() -> (Self, mpsc::Receiver<Arc<Trace>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Offers `trace` without waiting; when the queue is full its spans
    /// are counted as dropped.
    pub fn offer(&self, trace: Arc<Trace>, metrics: &Metrics) {
        let spans = trace.spans.len() as u64;
        let reason = match self.tx.try_send(trace) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "queue_full",
            Err(mpsc::error::TrySendError::Closed(_)) => "export_failed",
        };
        metrics
            .traces
            .spans_dropped
            .with_label_values(&[reason])
            .inc_by(spans);
    }
}

/// The kernel clock's offset to Unix time, now.
pub fn unix_offset_ns() -> i128 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    unix - i128::from(crate::telemetry::pipeline::monotonic_ns())
}

/// The host's name for the resource.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Exports what the queue holds to `url` until stop; then what is under
/// way or queued gets [`DRAIN`] more, and the rest is dropped (counted as
/// `shutdown`).
pub async fn run(
    mut queue: mpsc::Receiver<Arc<Trace>>,
    url: String,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    beat: Beat,
) {
    let client = post::client();
    let host = host_name();
    let shown = crate::redact::url(&url);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    // Set by the stop signal: what is queued then gets until this instant.
    let mut closing: Option<Instant> = None;
    let mut failing = false;
    loop {
        let first = match closing {
            None => tokio::select! {
                t = queue.recv() => match t {
                    Some(t) => t,
                    None => return,
                },
                _ = ticker.tick() => {
                    beat.beat();
                    continue;
                }
                _ = stop.wait_for(|s| *s) => {
                    closing = Some(Instant::now() + DRAIN);
                    continue;
                }
            },
            Some(at) if Instant::now() >= at => break,
            Some(_) => match queue.try_recv() {
                Ok(t) => t,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let mut spans = batch[0].spans.len();
        let until = Instant::now() + BATCH_WAIT;
        while spans < BATCH_SPANS {
            let next = match closing {
                None => tokio::time::timeout_at(until, queue.recv())
                    .await
                    .ok()
                    .flatten(),
                Some(_) => queue.try_recv().ok(),
            };
            let Some(t) = next else {
                break;
            };
            spans += t.spans.len();
            batch.push(t);
        }
        metrics
            .traces
            .export_queue
            .set(i64::try_from(QUEUE - queue.capacity()).unwrap_or(i64::MAX));
        let request = otlp::encode(batch.iter().map(|t| &**t), &host, unix_offset_ns());
        let body = Bytes::from(request.encode_to_vec());
        let deadline = Instant::now() + DEADLINE;
        let deadline = closing.map_or(deadline, |c| c.min(deadline));
        let sending = post::send(&client, &url, PROTOBUF, &body, deadline, RETRY);
        // A send under way when the stop comes gets until the drain's end.
        let stopping = post::Stop {
            signal: &mut stop,
            closing: &mut closing,
            drain: DRAIN,
        };
        let result = post::or_stop(sending, stopping).await;
        beat.beat();
        let outcome = post::outcome(&result);
        metrics
            .traces
            .export_requests
            .with_label_values(&[outcome])
            .inc();
        // One line when export starts failing and one when it recovers.
        match result {
            Ok(answer) => {
                // A partial success names the spans the collector rejected.
                let rejected = ExportTraceServiceResponse::decode(answer)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(spans as u64);
                metrics
                    .traces
                    .spans_exported
                    .inc_by(spans as u64 - rejected);
                metrics
                    .traces
                    .spans_dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(rejected);
                if std::mem::take(&mut failing) {
                    tracing::info!(collector = %shown, "span export recovered");
                }
            }
            Err(Failure::Failed(e) | Failure::Timeout(e)) => {
                let reason = if closing.is_some() {
                    "shutdown"
                } else {
                    "export_failed"
                };
                metrics
                    .traces
                    .spans_dropped
                    .with_label_values(&[reason])
                    .inc_by(spans as u64);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(collector = %shown, error = %e, spans, "span export {outcome}; dropping spans until the collector answers");
                }
            }
        }
    }
    // The drain is over: what is still queued (at most the queue) goes.
    let mut left = 0;
    for _ in 0..QUEUE {
        match queue.try_recv() {
            Ok(t) => left += t.spans.len() as u64,
            Err(_) => break,
        }
    }
    metrics
        .traces
        .spans_dropped
        .with_label_values(&["shutdown"])
        .inc_by(left);
}
