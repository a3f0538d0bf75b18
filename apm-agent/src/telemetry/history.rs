//! The built-in dashboard's time series: every STEP, one point per
//! service (request rate, error ratio, latency quantiles, requests in
//! flight, open connections, CPU, memory, saturation) and one for the host, from the
//! agent's own rolling windows. 15 minutes are kept; services are capped
//! (the least busy are dropped first), so the history is bounded.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use serde::Serialize;

/// Seconds between points.
pub const STEP: Duration = Duration::from_secs(2);
/// Points kept per series (15 minutes).
pub const POINTS: usize = 450;
/// Services with a history at most.
pub const MAX_SERVICES: usize = 500;

/// One service's values at one step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServicePoint {
    pub rps: f64,
    pub error_ratio: f64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub in_flight: f64,
    pub connections: f64,
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    pub saturation: Saturation,
}

/// A service's saturation ratios at one step (`windows::ServicePoint`'s).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Saturation {
    pub cpu_wait: f64,
    pub cpu_throttled: f64,
    pub fd_usage: f64,
    pub accept_queue: f64,
}

/// Column-wise series, as uPlot takes them (`null` where there is no
/// value: no request in the step has no latency).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ServiceSeries {
    pub t: Vec<f64>,
    pub rps: Vec<f64>,
    pub error_ratio: Vec<f64>,
    pub p50: Vec<Option<f64>>,
    pub p95: Vec<Option<f64>>,
    pub p99: Vec<Option<f64>>,
    pub in_flight: Vec<f64>,
    pub connections: Vec<f64>,
    pub cpu_cores: Vec<f64>,
    pub memory_bytes: Vec<f64>,
    pub cpu_wait_ratio: Vec<f64>,
    pub cpu_throttled_ratio: Vec<f64>,
    pub fd_usage_ratio: Vec<f64>,
    pub accept_queue_ratio: Vec<f64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HostSeries {
    pub t: Vec<f64>,
    pub cpu: Vec<f64>,
    pub memory: Vec<f64>,
}

#[derive(Default)]
pub struct History {
    /// Unix seconds of each step, shared by every series.
    times: VecDeque<f64>,
    services: BTreeMap<String, VecDeque<Option<ServicePoint>>>,
    host: VecDeque<(f64, f64)>,
}

impl History {
    /// Adds one step at `t` (Unix seconds). A service absent from `points`
    /// gets a gap; one absent for the whole history is dropped.
    pub fn push(&mut self, t: f64, points: BTreeMap<String, ServicePoint>, host: (f64, f64)) {
        let full = self.times.len() == POINTS;
        if full {
            self.times.pop_front();
            self.host.pop_front();
        }
        self.times.push_back(t);
        self.host.push_back(host);
        let len = self.times.len();
        for series in self.services.values_mut() {
            if full {
                series.pop_front();
            }
        }
        for (name, point) in points {
            if !self.services.contains_key(&name) && self.services.len() >= MAX_SERVICES {
                continue;
            }
            let series = self
                .services
                .entry(name)
                .or_insert_with(|| VecDeque::from(vec![None; len - 1]));
            series.push_back(Some(point));
        }
        for series in self.services.values_mut() {
            while series.len() < len {
                series.push_back(None);
            }
        }
        self.services.retain(|_, s| s.iter().any(Option::is_some));
    }

    /// Service names with their latest point (None: no traffic now).
    pub fn latest(&self) -> Vec<(String, Option<ServicePoint>)> {
        self.services
            .iter()
            .map(|(n, s)| (n.clone(), s.back().copied().flatten()))
            .collect()
    }

    pub fn service(&self, name: &str) -> Option<ServiceSeries> {
        let points = self.services.get(name)?;
        let mut s = ServiceSeries::default();
        for (t, p) in self.times.iter().zip(points) {
            let p = p.unwrap_or_default();
            s.t.push(*t);
            s.rps.push(p.rps);
            s.error_ratio.push(p.error_ratio);
            s.p50.push(p.p50);
            s.p95.push(p.p95);
            s.p99.push(p.p99);
            s.in_flight.push(p.in_flight);
            s.connections.push(p.connections);
            s.cpu_cores.push(p.cpu_cores);
            s.memory_bytes.push(p.memory_bytes);
            let sat = p.saturation;
            s.cpu_wait_ratio.push(sat.cpu_wait);
            s.cpu_throttled_ratio.push(sat.cpu_throttled);
            s.fd_usage_ratio.push(sat.fd_usage);
            s.accept_queue_ratio.push(sat.accept_queue);
        }
        Some(s)
    }

    pub fn host(&self) -> HostSeries {
        HostSeries {
            t: self.times.iter().copied().collect(),
            cpu: self.host.iter().map(|h| h.0).collect(),
            memory: self.host.iter().map(|h| h.1).collect(),
        }
    }
}

/// This step's point of every service with traffic, processes or
/// connections, at `now_s` (monotonic seconds).
pub fn points(
    pipeline: &super::snapshot::PipelineSnapshot,
    samples: &super::windows::SampleWindow,
    connections: &std::collections::HashMap<String, f64>,
    now_s: u64,
) -> BTreeMap<String, ServicePoint> {
    let windows = &pipeline.windows;
    let in_flight = pipeline
        .stats
        .services
        .iter()
        .filter(|(_, s)| s.in_flight > 0)
        .map(|(name, s)| (name, s.in_flight));
    let mut out: BTreeMap<String, ServicePoint> = BTreeMap::new();
    for service in windows.services() {
        let e = windows.error_ratio(service, now_s, STEP);
        let q =
            windows.service_quantiles(service, now_s, Duration::from_secs(10), &[0.5, 0.95, 0.99]);
        let p = out.entry(service.to_string()).or_default();
        p.rps = e.requests as f64 / STEP.as_secs_f64();
        p.error_ratio = e.ratio;
        if let Some(q) = q {
            (p.p50, p.p95, p.p99) = (Some(q[0]), Some(q[1]), Some(q[2]));
        }
    }
    for (name, s) in samples.services(now_s, STEP * 2) {
        let p = out.entry(name).or_default();
        p.cpu_cores = s.cpu_cores;
        p.memory_bytes = s.memory_bytes;
        p.saturation = Saturation {
            cpu_wait: s.cpu_wait_ratio,
            cpu_throttled: s.cpu_throttled_ratio,
            fd_usage: s.fd_usage_ratio,
            accept_queue: s.accept_queue_ratio,
        };
    }
    for (name, n) in in_flight {
        out.entry(name.clone()).or_default().in_flight = n as f64;
    }
    for (name, n) in connections {
        out.entry(name.clone()).or_default().connections = *n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rps: f64) -> ServicePoint {
        ServicePoint {
            rps,
            ..Default::default()
        }
    }

    #[test]
    fn series_align_have_gaps_and_stay_bounded() {
        let mut h = History::default();
        h.push(1.0, [("a".to_owned(), point(1.0))].into(), (0.1, 0.2));
        h.push(3.0, [("b".to_owned(), point(2.0))].into(), (0.1, 0.2));
        let a = h.service("a").expect("a");
        let b = h.service("b").expect("b");
        assert_eq!(a.t, vec![1.0, 3.0]);
        assert_eq!(a.rps, vec![1.0, 0.0]);
        assert_eq!(b.rps, vec![0.0, 2.0]);
        assert_eq!(b.p95, vec![None, None]);
        for i in 0..(POINTS * 2) {
            h.push(
                5.0 + i as f64,
                [("b".to_owned(), point(3.0))].into(),
                (0.5, 0.5),
            );
        }
        assert_eq!(h.service("b").expect("b").t.len(), POINTS);
        assert_eq!(h.host().cpu.len(), POINTS);
        // "a" had no traffic for the whole history: gone.
        assert!(h.service("a").is_none());
        assert_eq!(h.latest().len(), 1);
    }

    #[test]
    fn services_are_capped() {
        let mut h = History::default();
        let many: BTreeMap<String, ServicePoint> = (0..MAX_SERVICES + 50)
            .map(|i| (format!("s{i:04}"), point(1.0)))
            .collect();
        h.push(1.0, many, (0.0, 0.0));
        assert_eq!(h.latest().len(), MAX_SERVICES);
    }
}
