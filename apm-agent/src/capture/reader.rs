//! The ring-buffer reader task: waits for the kernel's records with epoll
//! (tokio's AsyncFd) and hands them to a [`RecordSink`] (the request
//! pipeline) in batches.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use apm_common::events::POLL_INTERVAL_MS;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};
use tracing::{error, info, warn};

use crate::tasks::Beat;

/// Where the reader delivers records; `Context` is shared state the sink
/// needs beside itself (the metrics).
pub trait RecordSink: Send + 'static {
    type Context: Send + Sync + 'static;
    /// Called once per batch, before its records.
    fn start_batch(&mut self);
    fn record(&mut self, record: &[u8], context: &Self::Context);
}

/// Records handled per lock of the pipeline, so /stats/requests is never
/// kept waiting for long.
const BATCH: usize = 4096;

pub async fn run<S: RecordSink>(
    ring: RingBuf<MapData>,
    sink: Arc<Mutex<S>>,
    context: Arc<S::Context>,
    mut stop: watch::Receiver<bool>,
    beat: Beat,
    discard: bool,
) {
    let registered = {
        // SAFETY: the RingBuf owns its map's file descriptor (MapData) and
        // returns the same one from every as_raw_fd call; it stays open
        // until the RingBuf, now owned by the AsyncFd, is dropped.
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the ring buffer; no HTTP metrics");
            return;
        }
    };
    if discard {
        warn!("test fault: ring records are read and dropped unparsed; no request metrics");
    } else {
        info!("reading request records");
    }
    // The kernel wakes us each WAKE_STEP_BYTES written (packets) or when
    // WAKEUP_BYTES are queued (syscalls); the timer picks up the rest
    // within POLL_INTERVAL_MS. Short batches cost more CPU per request
    // (the pipeline's tables go cold between them) but keep this thread
    // from holding a shared CPU for milliseconds (see WAKE_STEP_BYTES).
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.beat();
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                // Cleared before draining: a wakeup during the drain sets
                // it again rather than being lost.
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    error!(error = %e, "ring buffer poll failed; no more HTTP metrics");
                    return;
                }
            },
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Everything queued, a batch per lock, letting other tasks run in
        // between: waiting for the next wakeup after one batch would leave
        // the rest to pile up until the ring overflows.
        loop {
            match drain(fd.get_mut(), &sink, &context, discard) {
                None => {
                    // Dropping the beat on return turns readiness false.
                    error!("request pipeline state poisoned; stopping the reader (not ready)");
                    return;
                }
                Some(true) => break,
                Some(false) if *stop.borrow() => return,
                Some(false) => {
                    beat.beat();
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Handles up to [`BATCH`] records (reads and drops them when `discard`:
/// the bench's measure of the kernel side alone); returns whether the ring
/// is now empty (None when the pipeline state is poisoned).
fn drain<S: RecordSink>(
    ring: &mut RingBuf<MapData>,
    sink: &Mutex<S>,
    context: &S::Context,
    discard: bool,
) -> Option<bool> {
    let mut sink = sink.lock().ok()?;
    sink.start_batch();
    for _ in 0..BATCH {
        match ring.next() {
            Some(record) if !discard => sink.record(&record, context),
            Some(_) => {}
            None => return Some(true),
        }
    }
    Some(false)
}
