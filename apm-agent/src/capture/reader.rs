//! The ring-buffer reader: a loop for a thread of its own that waits for
//! the kernel's records with poll(2) and hands them to a [`RecordSink`]
//! (the request pipeline), which owns its state outright.

use std::{
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use apm_common::events::POLL_INTERVAL_MS;
use aya::maps::{MapData, RingBuf};
use tracing::{info, warn};

use crate::tasks::Beat;

/// Where the reader delivers records.
pub trait RecordSink {
    /// Called once per batch, before its records.
    fn start_batch(&mut self);
    fn record(&mut self, record: &[u8]);
    /// Called after each batch and at least every [`POLL_INTERVAL_MS`]
    /// when no record comes: the sink's own housekeeping.
    fn tick(&mut self);
}

/// Records handled between two ticks, so housekeeping and publication
/// keep their cadence under a flood.
const BATCH: usize = 4096;

/// Reads `ring` (or, without one, only ticks) until `stop`, beating after
/// every batch and every wait. `discard`: records are read and dropped
/// unparsed (the bench's measure of the kernel side alone).
pub fn run(
    mut ring: Option<RingBuf<MapData>>,
    sink: &mut impl RecordSink,
    stop: &AtomicBool,
    beat: &Beat,
    discard: bool,
) {
    match (&ring, discard) {
        (None, _) => info!("no ring buffer; the request pipeline only publishes"),
        (Some(_), true) => {
            warn!("test fault: ring records are read and dropped unparsed; no request metrics")
        }
        (Some(_), false) => info!("reading request records"),
    }
    let interval = Duration::from_millis(POLL_INTERVAL_MS);
    while !stop.load(Ordering::Relaxed) {
        beat.beat();
        let Some(ring) = ring.as_mut() else {
            std::thread::sleep(interval);
            sink.tick();
            continue;
        };
        // The kernel wakes us each WAKE_STEP_BYTES written (packets) or
        // when WAKEUP_BYTES are queued (syscalls); the timeout picks up
        // the rest within POLL_INTERVAL_MS.
        wait_readable(ring, interval);
        // Everything queued, a batch at a time with a tick in between.
        loop {
            let emptied = drain(ring, sink, discard);
            sink.tick();
            beat.beat();
            if emptied || stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

/// Waits until the ring has records or `timeout` passes.
fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll reads and writes exactly the one pollfd we pass and own;
    // an error (EINTR) only ends the wait early.
    let _ = unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Handles up to [`BATCH`] records; returns whether the ring is now empty.
fn drain(ring: &mut RingBuf<MapData>, sink: &mut impl RecordSink, discard: bool) -> bool {
    sink.start_batch();
    for _ in 0..BATCH {
        match ring.next() {
            Some(record) if !discard => sink.record(&record),
            Some(_) => {}
            None => return true,
        }
    }
    false
}
