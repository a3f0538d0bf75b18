//! The pipeline's own OS thread: it owns the [`Pipeline`] outright, feeds
//! it the ring's records (once the agent's first scan named the services),
//! sweeps it, and publishes a snapshot every [`PUBLISH_EVERY`]. Nothing
//! else ever touches the pipeline's state.

use std::{
    sync::{Arc, atomic::AtomicBool},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use super::{Pipeline, monotonic_ns};
use crate::{
    capture::reader::{self, RecordSink},
    tasks::Beat,
    telemetry::{
        metrics::Metrics,
        snapshot::{PUBLISH_EVERY, Published},
    },
};

/// How the thread runs.
pub struct Options {
    /// How often idle connections are swept and unused series expired.
    pub housekeeping_every: Duration,
    /// Connections silent for this long are forgotten.
    pub idle_connection: Duration,
    /// Series without a request for this long are removed.
    pub series_ttl: Duration,
    /// Read records and drop them unparsed (a test fault).
    pub discard: bool,
    /// Panic after this long (`--test-fault poison-pipeline`).
    pub panic_after: Option<Duration>,
    /// Spend this long more on every record (`--test-fault slow-pipeline`).
    pub slow_by: Option<Duration>,
}

struct Driver {
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    published: Arc<Published>,
    options: Options,
    next_publish: Instant,
    next_housekeeping: Instant,
    panic_at: Option<Instant>,
}

/// How long the thread leaves records in the ring, at start, for the
/// agent's first scan: read before it, they would all be filed under
/// "unknown". A slower scan (a host with a huge /proc) lets them go on.
/// Nothing is published meanwhile, and a ring that fills drops records,
/// counted like any ring loss.
const FIRST_SCAN_WAIT: Duration = Duration::from_secs(5);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RecordSink for Driver {
    fn start_batch(&mut self) {
        self.pipeline.refresh_services();
    }

    fn record(&mut self, record: &[u8]) {
        self.pipeline.handle_record(record, &self.metrics);
        if let Some(slow) = self.options.slow_by {
            let until = Instant::now() + slow;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if self.panic_at.is_some_and(|at| now >= at) {
            panic!("test fault: the request pipeline panics");
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + self.options.housekeeping_every;
            let at = monotonic_ns();
            self.pipeline
                .sweep(at, nanos(self.options.idle_connection), &self.metrics);
            self.pipeline
                .expire(at, nanos(self.options.series_ttl), &self.metrics);
        }
        if now >= self.next_publish {
            self.next_publish = now + PUBLISH_EVERY;
            self.pipeline.refresh_services();
            self.pipeline.finish_traces(monotonic_ns(), &self.metrics);
            self.published.store(self.pipeline.publish(monotonic_ns()));
        }
    }
}

/// Starts the pipeline's thread; it runs until `stop`, and its `beat`
/// ends with it (also when it panics).
pub fn spawn(
    pipeline: Pipeline,
    ring: Option<RingBuf<MapData>>,
    metrics: Arc<Metrics>,
    published: Arc<Published>,
    stop: Arc<AtomicBool>,
    beat: Beat,
    options: Options,
) -> std::io::Result<JoinHandle<()>> {
    let now = Instant::now();
    let mut driver = Driver {
        pipeline,
        metrics,
        published,
        next_publish: now,
        next_housekeeping: now + options.housekeeping_every,
        panic_at: options.panic_after.map(|d| now + d),
        options,
    };
    std::thread::Builder::new()
        .name("apm-pipeline".into())
        .spawn(move || {
            let waiting = Instant::now();
            while ring.is_some()
                && !driver.pipeline.services_known()
                && waiting.elapsed() < FIRST_SCAN_WAIT
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                beat.beat();
                std::thread::sleep(Duration::from_millis(10));
            }
            let discard = driver.options.discard;
            reader::run(ring, &mut driver, &stop, &beat, discard);
        })
}
