//! The ring-buffer reader: a loop for a thread of its own that waits for
//! the kernel's records with poll(2) and hands them to a [`RecordSink`]
//! (the request pipeline), which owns its state outright.

use std::{
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use apm_common::events::{BUSY_POLL_MS, POLL_INTERVAL_MS};
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
    let busy = Duration::from_millis(BUSY_POLL_MS);
    let mut busy_mode = false;
    while !stop.load(Ordering::Relaxed) {
        beat.beat();
        let Some(ring) = ring.as_mut() else {
            std::thread::sleep(interval);
            sink.tick();
            continue;
        };
        // Under load, a short sleep: poll(2) would return at once while
        // anything is queued. At rest, a wait that the kernel ends when
        // a burst has written WAKE_STEP_BYTES (packets) or WAKEUP_BYTES
        // are queued (syscalls), else after POLL_INTERVAL_MS.
        if busy_mode {
            std::thread::sleep(busy);
        } else {
            wait_readable(ring, interval);
        }
        // Everything queued, a batch at a time with a tick in between.
        let mut read = 0;
        loop {
            let (n, emptied) = drain(ring, sink, discard);
            read += n;
            sink.tick();
            beat.beat();
            if emptied || stop.load(Ordering::Relaxed) {
                break;
            }
        }
        busy_mode = read > 0;
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

/// Handles up to [`BATCH`] records; returns how many it read and whether
/// the ring is now empty.
fn drain(ring: &mut RingBuf<MapData>, sink: &mut impl RecordSink, discard: bool) -> (usize, bool) {
    sink.start_batch();
    for n in 0..BATCH {
        match ring.next() {
            Some(record) if !discard => sink.record(&record),
            Some(_) => {}
            None => return (n, true),
        }
    }
    (BATCH, false)
}
