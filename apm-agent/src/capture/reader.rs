//! The ring-buffer reader: a loop for a thread of its own that drains the
//! kernel's records on a timer (short under load, long at rest, either
//! cut short by the kernel's wakeup) and hands them to a [`RecordSink`]
//! (the request pipeline), which owns its state outright.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
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
    let waiter = ring.as_ref().map(Waiter::new);
    let mut busy_mode = false;
    while !stop.load(Ordering::Relaxed) {
        beat.beat();
        let (Some(ring), Some(waiter)) = (ring.as_mut(), waiter.as_ref()) else {
            std::thread::sleep(interval);
            sink.tick();
            continue;
        };
        // Under load a short wait, at rest a long one; either ends early
        // when the kernel wakes the reader (a burst crossed a wake step).
        waiter.wait(if busy_mode { busy } else { interval });
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

/// Waits for the kernel's wakeups of one ring, edge-triggered: poll(2)
/// returns at once while anything is queued, where the reader wants to
/// sleep out its interval unless the kernel asks for a drain.
struct Waiter {
    /// The epoll instance; None when it could not be made, and then the
    /// waits are plain sleeps that no wakeup ends.
    epoll: Option<OwnedFd>,
}

impl Waiter {
    fn new(ring: &RingBuf<MapData>) -> Self {
        let epoll = Self::epoll(ring)
            .inspect_err(|e| {
                warn!(error = %e, "no epoll on the ring buffer; the reader drains on its timer alone")
            })
            .ok();
        Self { epoll }
    }

    fn epoll(ring: &RingBuf<MapData>) -> std::io::Result<OwnedFd> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned to us, owned from here on.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; the kernel copies `event`.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_raw_fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(epoll)
    }

    /// Returns after `timeout`, or sooner on a wakeup of the ring.
    fn wait(&self, timeout: Duration) {
        let Some(epoll) = self.epoll.as_ref() else {
            std::thread::sleep(timeout);
            return;
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: epoll_wait writes at most one event into `event`, which
        // we own; an error (EINTR) only ends the wait early.
        let _ = unsafe { libc::epoll_wait(epoll.as_raw_fd(), &mut event, 1, ms) };
    }
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
