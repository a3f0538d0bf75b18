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
use tracing::{error, info};

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
    info!("reading request records");
    // The kernel wakes us only when a batch has piled up (WAKEUP_BYTES);
    // the timer picks up the rest within POLL_INTERVAL_MS.
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.beat();
        let drained = tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(e) => {
                        error!(error = %e, "ring buffer poll failed; no more HTTP metrics");
                        return;
                    }
                };
                let drained = drain(guard.get_inner_mut(), &sink, &context);
                if drained == Some(true) {
                    guard.clear_ready();
                }
                drained
            }
            _ = tick.tick() => drain(fd.get_mut(), &sink, &context),
            _ = stop.wait_for(|s| *s) => return,
        };
        match drained {
            None => {
                // Dropping the beat on return turns readiness false.
                error!("request pipeline state poisoned; stopping the reader (not ready)");
                return;
            }
            // More than a batch waiting: let other tasks run, then go on.
            Some(false) => tokio::task::yield_now().await,
            Some(true) => {}
        }
    }
}

/// Handles up to [`BATCH`] records; returns whether the ring is now empty
/// (None when the pipeline state is poisoned).
fn drain<S: RecordSink>(
    ring: &mut RingBuf<MapData>,
    sink: &Mutex<S>,
    context: &S::Context,
) -> Option<bool> {
    let mut sink = sink.lock().ok()?;
    sink.start_batch();
    for _ in 0..BATCH {
        match ring.next() {
            Some(record) => sink.record(&record, context),
            None => return Some(true),
        }
    }
    Some(false)
}
