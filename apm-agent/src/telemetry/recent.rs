//! A route's durations over a recent window, for /stats/requests and the
//! dashboard: two sketches, the current and the previous
//! [`RECENT_WINDOW_NS`], the older dropped as each window ends, so a
//! summary covers between one and two windows of the newest traffic, not
//! everything since the route was first seen.

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

/// The length of one window (five minutes).
pub const RECENT_WINDOW_NS: u64 = 300_000_000_000;

#[derive(Clone)]
struct Slot {
    /// Which window (kernel time / [`RECENT_WINDOW_NS`]).
    epoch: u64,
    count: u64,
    errors: u64,
    sketch: DDSketch,
}

impl Slot {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            count: 0,
            errors: 0,
            // 1 % relative accuracy.
            sketch: DDSketch::new(SketchConfig::new(0.01, 2048, 1e-9)),
        }
    }
}

/// Counts and quantiles over the recent window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RecentSummary {
    pub count: u64,
    pub errors: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The recent durations of one route.
#[derive(Clone)]
pub struct RecentDurations {
    current: Slot,
    previous: Option<Slot>,
    /// The summary as of the last change: recomputed only for routes that
    /// had requests since it was taken.
    cached: Option<(u64, RecentSummary)>,
}

impl RecentDurations {
    pub fn new(now_ns: u64) -> Self {
        Self {
            current: Slot::new(now_ns / RECENT_WINDOW_NS),
            previous: None,
            cached: None,
        }
    }

    /// Moves to the window of `now_ns`, dropping what is older than the
    /// previous one.
    fn roll(&mut self, now_ns: u64) {
        let epoch = now_ns / RECENT_WINDOW_NS;
        if epoch <= self.current.epoch {
            return;
        }
        let old = std::mem::replace(&mut self.current, Slot::new(epoch));
        self.previous = (old.epoch + 1 == epoch).then_some(old);
        self.cached = None;
    }

    pub fn add(&mut self, now_ns: u64, seconds: f64, error: bool) {
        self.roll(now_ns);
        self.current.count += 1;
        self.current.errors += u64::from(error);
        self.current.sketch.add(seconds);
        self.cached = None;
    }

    /// The summary at `now_ns`; all zero when the window holds nothing.
    pub fn summary(&mut self, now_ns: u64) -> RecentSummary {
        self.roll(now_ns);
        let epoch = now_ns / RECENT_WINDOW_NS;
        if let Some((at, s)) = self.cached
            && at == epoch
        {
            return s;
        }
        let mut sketch = self.current.sketch.clone();
        let (mut count, mut errors) = (self.current.count, self.current.errors);
        if let Some(p) = &self.previous {
            // Same configuration on both sides: merging cannot fail.
            let _ = sketch.merge(&p.sketch);
            count += p.count;
            errors += p.errors;
        }
        let q = |q: f64| sketch.quantile(q).ok().flatten().unwrap_or(0.0);
        let s = RecentSummary {
            count,
            errors,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: sketch.max().unwrap_or(0.0),
        };
        self.cached = Some((epoch, s));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn old_requests_leave_the_window() {
        let mut r = RecentDurations::new(0);
        for _ in 0..10 {
            r.add(10 * S, 2.0, true);
        }
        r.add(20 * S, 0.01, false);
        let s = r.summary(30 * S);
        assert_eq!((s.count, s.errors), (11, 10));
        assert!((s.p50 - 2.0).abs() < 0.05, "{s:?}");
        // Next window: the previous one still counts.
        r.add(310 * S, 0.01, false);
        assert_eq!(r.summary(310 * S).count, 12);
        // Two windows later the slow ones are gone.
        r.add(610 * S, 0.01, false);
        let s = r.summary(610 * S);
        assert_eq!((s.count, s.errors), (2, 0));
        assert!(s.p99 < 0.02, "{s:?}");
        // Nothing for a long time: an empty window.
        assert_eq!(r.summary(2000 * S), RecentSummary::default());
    }
}
