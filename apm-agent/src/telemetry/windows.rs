//! Rolling windows of request outcomes, for alerts: per service, requests
//! and 5xx responses per second; per service and route, request durations
//! in 10-second buckets of a log-scale histogram (bins 25 % wide, so a
//! quantile is within 12 % of the truth). Only `keep` of history is kept,
//! and a route's window exists only while its duration series does, so
//! memory follows the series budget: at most 12 buckets of 288 bytes per
//! route for a 2-minute window.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use rustc_hash::FxHashMap;

/// Seconds per latency bucket.
const LATENCY_BUCKET_SECS: u64 = 10;
/// Histogram bins: 100 µs × 1.25^i, i < BINS (up to ~ 1000 s).
const BINS: usize = 72;
const BIN_BASE: f64 = 1e-4;
const BIN_GROWTH: f64 = 1.25;

#[derive(Clone, Default)]
struct Counts {
    /// (second, requests, 5xx), oldest first.
    seconds: VecDeque<(u64, u64, u64)>,
}

#[derive(Clone)]
struct Latencies {
    /// (10-second bucket, bin counts), oldest first. Shared with the
    /// published snapshots: only the newest bucket is ever written, and
    /// copied first when a snapshot still holds it.
    buckets: VecDeque<(u64, Arc<[u32; BINS]>)>,
}

/// What the alert rules read: rolling windows of the request pipeline.
/// Cloning it (for a snapshot) copies no histogram.
#[derive(Clone)]
pub struct Windows {
    keep: Duration,
    /// Keys are service names and route templates (the agent's, bounded),
    /// so a fast non-keyed hash is safe; looked up by &str on the hot path.
    services: FxHashMap<Arc<str>, Counts>,
    routes: FxHashMap<Arc<str>, FxHashMap<Arc<str>, Latencies>>,
}

/// A window's error ratio and how many requests it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorRatio {
    pub requests: u64,
    pub ratio: f64,
}

impl Windows {
    /// Keeps `keep` of history (the longest window a rule asks for).
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            services: FxHashMap::default(),
            routes: FxHashMap::default(),
        }
    }

    /// One completed request at `now_s` (seconds, any monotonic origin).
    pub fn record(
        &mut self,
        now_s: u64,
        service: &Arc<str>,
        route: &Arc<str>,
        status: u16,
        seconds: f64,
    ) {
        if self.keep.is_zero() {
            return;
        }
        let keep = self.keep.as_secs().max(1);
        if !self.services.contains_key(&**service) {
            self.services.insert(service.clone(), Counts::default());
        }
        let Some(counts) = self.services.get_mut(&**service) else {
            return;
        };
        match counts.seconds.back_mut() {
            Some((s, n, e)) if *s == now_s => {
                *n += 1;
                *e += u64::from(status >= 500);
            }
            _ => counts
                .seconds
                .push_back((now_s, 1, u64::from(status >= 500))),
        }
        while counts
            .seconds
            .front()
            .is_some_and(|(s, _, _)| now_s.saturating_sub(*s) >= keep)
        {
            counts.seconds.pop_front();
        }
        let bucket = now_s / LATENCY_BUCKET_SECS;
        if !self.routes.contains_key(&**service) {
            self.routes.insert(service.clone(), FxHashMap::default());
        }
        let Some(routes) = self.routes.get_mut(&**service) else {
            return;
        };
        if !routes.contains_key(&**route) {
            routes.insert(
                route.clone(),
                Latencies {
                    buckets: VecDeque::new(),
                },
            );
        }
        let Some(lat) = routes.get_mut(&**route) else {
            return;
        };
        if lat.buckets.back().is_none_or(|(b, _)| *b != bucket) {
            lat.buckets.push_back((bucket, Arc::new([0; BINS])));
        }
        if let Some((_, bins)) = lat.buckets.back_mut() {
            let bin = bin_of(seconds);
            let bins = Arc::make_mut(bins);
            bins[bin] = bins[bin].saturating_add(1);
        }
        let keep_buckets = keep.div_ceil(LATENCY_BUCKET_SECS) + 1;
        while lat
            .buckets
            .front()
            .is_some_and(|(b, _)| bucket.saturating_sub(*b) >= keep_buckets)
        {
            lat.buckets.pop_front();
        }
    }

    /// Requests and 5xx ratio of `service` over the last `window` before
    /// `now_s`.
    pub fn error_ratio(&self, service: &str, now_s: u64, window: Duration) -> ErrorRatio {
        let from = now_s.saturating_sub(window.as_secs().max(1));
        let (mut n, mut e) = (0, 0);
        if let Some(c) = self.services.get(service) {
            for &(s, count, errors) in &c.seconds {
                if s > from && s <= now_s {
                    n += count;
                    e += errors;
                }
            }
        }
        ErrorRatio {
            requests: n,
            ratio: if n == 0 { 0.0 } else { e as f64 / n as f64 },
        }
    }

    /// Services with requests in the last `window`.
    pub fn services(&self) -> impl Iterator<Item = &Arc<str>> {
        self.services.keys()
    }

    /// Quantile `q` of the durations of (service, route) over the last
    /// `window`, with how many requests it comes from. Buckets are 10 s, so
    /// the window is rounded up to them.
    pub fn latency_quantile(
        &self,
        service: &str,
        route: &str,
        now_s: u64,
        window: Duration,
        q: f64,
    ) -> Option<(f64, u64)> {
        let lat = self.routes.get(service)?.get(route)?;
        latency_quantile(lat, now_s, window, q)
    }

    /// Quantiles `qs` of all of a service's durations over the last
    /// `window` (its routes merged); None without a request.
    pub fn service_quantiles(
        &self,
        service: &str,
        now_s: u64,
        window: Duration,
        qs: &[f64],
    ) -> Option<Vec<f64>> {
        let mut merged = [0u64; BINS];
        for lat in self.routes.get(service)?.values() {
            add_window(lat, now_s, window, &mut merged);
        }
        qs.iter().map(|&q| quantile_of(&merged, q)).collect()
    }

    /// Every (service, route) with a latency window, and its quantile.
    pub fn route_quantiles(
        &self,
        now_s: u64,
        window: Duration,
        q: f64,
    ) -> Vec<(Arc<str>, Arc<str>, f64, u64)> {
        self.routes
            .iter()
            .flat_map(|(s, routes)| {
                routes.iter().filter_map(move |(r, l)| {
                    latency_quantile(l, now_s, window, q).map(|(v, n)| (s.clone(), r.clone(), v, n))
                })
            })
            .collect()
    }

    /// Like [`Self::route_quantiles`], over whole buckets covering at
    /// least the last `window` (one more bucket than `route_quantiles`
    /// reads, which `keep` holds): a count that does not fall to the
    /// current bucket's few requests each time a bucket starts, for a
    /// minimum request count to be checked against.
    pub fn route_quantiles_covering(
        &self,
        now_s: u64,
        window: Duration,
        q: f64,
    ) -> Vec<(Arc<str>, Arc<str>, f64, u64)> {
        self.route_quantiles(now_s, window + Duration::from_secs(LATENCY_BUCKET_SECS), q)
    }

    /// Drops the window of a route whose series was removed, and of a
    /// service that is gone.
    pub fn forget_route(&mut self, service: &str, route: &str) {
        if let Some(routes) = self.routes.get_mut(service) {
            routes.remove(route);
        }
    }

    pub fn forget_service(&mut self, service: &str) {
        self.services.remove(service);
        self.routes.remove(service);
    }
}

fn latency_quantile(lat: &Latencies, now_s: u64, window: Duration, q: f64) -> Option<(f64, u64)> {
    let mut merged = [0u64; BINS];
    add_window(lat, now_s, window, &mut merged);
    let total: u64 = merged.iter().sum();
    quantile_of(&merged, q).map(|v| (v, total))
}

/// Adds the buckets of `lat` within `window` of `now_s` into `merged`.
fn add_window(lat: &Latencies, now_s: u64, window: Duration, merged: &mut [u64; BINS]) {
    let now_b = now_s / LATENCY_BUCKET_SECS;
    let span = window.as_secs().max(1).div_ceil(LATENCY_BUCKET_SECS);
    for (b, bins) in &lat.buckets {
        if now_b.saturating_sub(*b) < span {
            for (m, c) in merged.iter_mut().zip(bins.iter()) {
                *m += u64::from(*c);
            }
        }
    }
}

fn quantile_of(merged: &[u64; BINS], q: f64) -> Option<f64> {
    let total: u64 = merged.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, c) in merged.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bin_value(i));
        }
    }
    None
}

fn bin_of(seconds: f64) -> usize {
    if seconds <= BIN_BASE {
        return 0;
    }
    let i = ((seconds / BIN_BASE).ln() / BIN_GROWTH.ln()).ceil();
    (i as usize).min(BINS - 1)
}

/// A bin's representative value: the geometric middle of its bounds.
fn bin_value(i: usize) -> f64 {
    if i == 0 {
        return BIN_BASE;
    }
    BIN_BASE * BIN_GROWTH.powf(i as f64 - 0.5)
}

/// One sample's worth of what the host and process rules read.
#[derive(Clone, Debug, Default)]
struct Point {
    at_s: u64,
    cpu: f64,
    memory: f64,
    /// (mountpoint, used ratio)
    filesystems: Vec<(String, f64)>,
    services: Vec<(String, ServicePoint)>,
}

/// What the service rules read of one sample of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServicePoint {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    pub cpu_wait_ratio: f64,
    pub cpu_throttled_ratio: f64,
    pub fd_usage_ratio: f64,
    pub oom_kills_total: f64,
    /// The fullest of its accept queues: connections waiting over the
    /// backlog (above 1 when full: the kernel queues one more).
    pub accept_queue_ratio: f64,
    /// Connection attempts its listeners dropped: since the previous
    /// sample in a sample, in the window in a window's summary.
    pub listen_drops: f64,
}

impl ServicePoint {
    fn of(s: &super::sampler::ServiceSample) -> Self {
        let sat = &s.saturation;
        Self {
            cpu_cores: s.cpu_cores,
            memory_bytes: s.resident_memory_bytes as f64,
            cpu_wait_ratio: sat.cpu_wait_ratio,
            cpu_throttled_ratio: sat.cpu_throttled_ratio,
            fd_usage_ratio: sat.fd_usage_ratio,
            oom_kills_total: sat.oom_kills_total as f64,
            accept_queue_ratio: sat
                .accept_queues
                .iter()
                .filter(|q| q.limit > 0)
                .map(|q| q.queued as f64 / q.limit as f64)
                .fold(0.0, f64::max),
            listen_drops: sat.accept_queues.iter().map(|q| q.dropped as f64).sum(),
        }
    }
}

/// Rolling window of the sampler's results, for host and process rules.
pub struct SampleWindow {
    keep: Duration,
    points: VecDeque<Point>,
}

impl SampleWindow {
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            points: VecDeque::new(),
        }
    }

    pub fn push(&mut self, at_s: u64, sample: &super::sampler::SystemSample) {
        self.points.push_back(Point {
            at_s,
            cpu: sample.host.cpu_busy_ratio,
            memory: sample.host.memory_used_ratio,
            filesystems: sample
                .host
                .filesystems
                .iter()
                .map(|f| (f.mountpoint.clone(), f.used_ratio))
                .collect(),
            services: sample
                .services
                .iter()
                .map(|(name, s)| (name.clone(), ServicePoint::of(s)))
                .collect(),
        });
        let keep = self.keep.as_secs().max(1);
        while self
            .points
            .front()
            .is_some_and(|p| at_s.saturating_sub(p.at_s) >= keep)
        {
            self.points.pop_front();
        }
    }

    fn within(&self, now_s: u64, window: Duration) -> impl Iterator<Item = &Point> {
        let from = now_s.saturating_sub(window.as_secs().max(1));
        self.points.iter().filter(move |p| p.at_s > from)
    }

    fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
        let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    pub fn host_cpu(&self, now_s: u64, window: Duration) -> Option<f64> {
        Self::mean(self.within(now_s, window).map(|p| p.cpu))
    }

    pub fn host_memory(&self, now_s: u64, window: Duration) -> Option<f64> {
        Self::mean(self.within(now_s, window).map(|p| p.memory))
    }

    /// The latest used ratio of each filesystem.
    pub fn filesystems(&self) -> Vec<(String, f64)> {
        self.points
            .back()
            .map(|p| p.filesystems.clone())
            .unwrap_or_default()
    }

    /// Per service over the window: the mean of its CPU cores, resident
    /// bytes, CPU wait and throttled ratios; the largest descriptor usage
    /// and accept-queue ratio; and the OOM kills (in `oom_kills_total`)
    /// and listen drops it saw.
    pub fn services(&self, now_s: u64, window: Duration) -> Vec<(String, ServicePoint)> {
        let mut acc: HashMap<&str, (ServicePoint, u32, f64)> = HashMap::new();
        for p in self.within(now_s, window) {
            for (name, s) in &p.services {
                let (sum, n, first_kills) =
                    acc.entry(name)
                        .or_insert((ServicePoint::default(), 0, s.oom_kills_total));
                sum.cpu_cores += s.cpu_cores;
                sum.memory_bytes += s.memory_bytes;
                sum.cpu_wait_ratio += s.cpu_wait_ratio;
                sum.cpu_throttled_ratio += s.cpu_throttled_ratio;
                sum.fd_usage_ratio = sum.fd_usage_ratio.max(s.fd_usage_ratio);
                sum.accept_queue_ratio = sum.accept_queue_ratio.max(s.accept_queue_ratio);
                sum.listen_drops += s.listen_drops;
                sum.oom_kills_total = s.oom_kills_total - *first_kills;
                *n += 1;
            }
        }
        acc.into_iter()
            .map(|(name, (s, n, _))| {
                let k = f64::from(n);
                let mean = ServicePoint {
                    cpu_cores: s.cpu_cores / k,
                    memory_bytes: s.memory_bytes / k,
                    cpu_wait_ratio: s.cpu_wait_ratio / k,
                    cpu_throttled_ratio: s.cpu_throttled_ratio / k,
                    ..s
                };
                (name.to_owned(), mean)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_ratio_over_the_window_only() {
        let mut w = Windows::new(Duration::from_secs(60));
        let (s, r): (Arc<str>, Arc<str>) = ("shop".into(), "/pay".into());
        for t in 0..100 {
            w.record(t, &s, &r, if t % 5 == 0 { 500 } else { 200 }, 0.01);
        }
        let e = w.error_ratio("shop", 99, Duration::from_secs(10));
        assert_eq!(e.requests, 10);
        assert!((e.ratio - 0.2).abs() < 1e-9, "{e:?}");
        // Old seconds were dropped beyond `keep`.
        assert_eq!(
            w.error_ratio("shop", 99, Duration::from_secs(600)).requests,
            60
        );
        assert_eq!(
            w.error_ratio("other", 99, Duration::from_secs(10)).requests,
            0
        );
    }

    #[test]
    fn p95_is_within_the_bins_accuracy() {
        let mut w = Windows::new(Duration::from_secs(120));
        let (s, fast, slow): (Arc<str>, Arc<str>, Arc<str>) =
            ("shop".into(), "/ok".into(), "/slow".into());
        for i in 0..1000u64 {
            // 1..=1000 ms uniformly: p95 = 950 ms.
            w.record(100, &s, &fast, 200, (i + 1) as f64 / 1000.0);
            w.record(100, &s, &slow, 200, 2.5);
        }
        let (p95, n) = w
            .latency_quantile("shop", "/ok", 105, Duration::from_secs(30), 0.95)
            .expect("p95");
        assert_eq!(n, 1000);
        assert!((p95 / 0.95 - 1.0).abs() < 0.13, "{p95}");
        let (slow95, _) = w
            .latency_quantile("shop", "/slow", 105, Duration::from_secs(30), 0.95)
            .expect("p95");
        assert!((slow95 / 2.5 - 1.0).abs() < 0.13, "{slow95}");
        // Outside the window: nothing.
        assert!(
            w.latency_quantile("shop", "/ok", 300, Duration::from_secs(30), 0.95)
                .is_none()
        );
        assert_eq!(
            w.route_quantiles(105, Duration::from_secs(30), 0.95).len(),
            2
        );
        w.forget_service("shop");
        assert!(
            w.route_quantiles(105, Duration::from_secs(30), 0.95)
                .is_empty()
        );
    }
}
