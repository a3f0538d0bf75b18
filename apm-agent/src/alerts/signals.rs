//! A rule's signal, measured on the agent's own rolling windows (never by
//! scraping itself): one value per label set the rule applies to. Request
//! signals carry how many requests the value comes from, so the engine
//! can tell a window without enough data from a healthy one.

use std::time::Duration;

use super::{
    engine::{Labels, Measurement},
    rules::{Rule, Signal},
};
use crate::telemetry::windows::{SampleWindow, Windows};

/// The windows a measurement reads, at `now_s` (monotonic seconds).
pub struct Inputs<'a> {
    pub requests: &'a Windows,
    /// SQL statements, an error counting as a 5xx.
    pub statements: &'a Windows,
    /// gRPC calls, a server error status counting as a 5xx.
    pub calls: &'a Windows,
    pub samples: &'a SampleWindow,
    pub now_s: u64,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The rule's signal for every label set it covers now.
pub fn measure(rule: &Rule, i: &Inputs<'_>) -> Vec<Measurement> {
    let window = rule.window;
    let wants_service = |s: &str| rule.service.as_deref().is_none_or(|want| want == s);
    let error_ratio = |windows: &Windows| -> Vec<Measurement> {
        windows
            .services()
            .filter(|s| wants_service(s))
            .map(|s| {
                let e = windows.error_ratio(s, i.now_s, window);
                Measurement {
                    labels: labels(&[("service_name", s)]),
                    value: e.ratio,
                    samples: e.requests,
                }
            })
            .collect()
    };
    match rule.signal {
        Signal::HttpErrorRatio => error_ratio(i.requests),
        Signal::DbErrorRatio => error_ratio(i.statements),
        Signal::GrpcErrorRatio => error_ratio(i.calls),
        Signal::DbStatementP95Seconds => i
            .statements
            .route_quantiles_covering(i.now_s, window, 0.95)
            .into_iter()
            .filter(|(s, ..)| wants_service(s))
            .map(|(s, statement, value, n)| Measurement {
                labels: labels(&[("service_name", &s), ("db_statement", &statement)]),
                value,
                samples: n,
            })
            .collect(),
        Signal::HttpLatencyP95Seconds => i
            .requests
            .route_quantiles_covering(i.now_s, window, 0.95)
            .into_iter()
            .filter(|(s, r, _, _)| {
                wants_service(s) && rule.route.as_deref().is_none_or(|want| want == &**r)
            })
            .map(|(s, r, value, n)| Measurement {
                labels: labels(&[("service_name", &s), ("http_route", &r)]),
                value,
                samples: n,
            })
            .collect(),
        Signal::ServiceAbsent => {
            let count = |s: &str| i.requests.error_ratio(s, i.now_s, window).requests;
            let measure = |s: &str| {
                let n = count(s);
                Measurement {
                    labels: labels(&[("service_name", s)]),
                    value: n as f64,
                    samples: n,
                }
            };
            match &rule.service {
                // Measured even when never seen, as absent() does.
                Some(s) => vec![measure(s)],
                None => i.requests.services().map(|s| measure(s)).collect(),
            }
        }
        Signal::HostCpuRatio => host(i.samples.host_cpu(i.now_s, window)),
        Signal::HostMemoryRatio => host(i.samples.host_memory(i.now_s, window)),
        Signal::FilesystemUsedRatio => i
            .samples
            .filesystems()
            .into_iter()
            .map(|(mountpoint, value)| Measurement {
                labels: labels(&[("mountpoint", &mountpoint)]),
                value,
                samples: 0,
            })
            .collect(),
        Signal::ProcessCpuCores
        | Signal::ProcessMemoryBytes
        | Signal::CpuWaitRatio
        | Signal::CpuThrottledRatio
        | Signal::FdUsageRatio
        | Signal::OomKills
        | Signal::AcceptQueueRatio
        | Signal::ListenDrops => i
            .samples
            .services(i.now_s, window)
            .into_iter()
            .filter(|(s, _)| wants_service(s))
            .map(|(s, p)| Measurement {
                labels: labels(&[("service_name", &s)]),
                value: match rule.signal {
                    Signal::ProcessCpuCores => p.cpu_cores,
                    Signal::ProcessMemoryBytes => p.memory_bytes,
                    Signal::CpuWaitRatio => p.cpu_wait_ratio,
                    Signal::CpuThrottledRatio => p.cpu_throttled_ratio,
                    Signal::FdUsageRatio => p.fd_usage_ratio,
                    Signal::OomKills => p.oom_kills_total,
                    Signal::ListenDrops => p.listen_drops,
                    _ => p.accept_queue_ratio,
                },
                samples: 0,
            })
            .collect(),
    }
}

fn host(value: Option<f64>) -> Vec<Measurement> {
    value
        .map(|value| Measurement {
            labels: Labels::new(),
            value,
            samples: 0,
        })
        .into_iter()
        .collect()
}

/// The longest window any rule asks for: how much history to keep.
pub fn longest_window(rules: &[Rule]) -> Duration {
    rules
        .iter()
        .map(|r| r.window)
        .max()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::alerts::rules::{Threshold, defaults};

    #[test]
    fn error_and_latency_rules_measure_per_service_and_route() {
        let mut w = Windows::new(Duration::from_secs(60));
        let (shop, pay, list): (Arc<str>, Arc<str>, Arc<str>) =
            ("shop".into(), "/pay".into(), "/list".into());
        for t in 0..20 {
            w.record(
                100 + t / 10,
                &shop,
                &pay,
                if t % 4 == 0 { 500 } else { 200 },
                1.5,
            );
            w.record(100 + t / 10, &shop, &list, 200, 0.01);
        }
        let samples = SampleWindow::new(Duration::from_secs(60));
        let none = Windows::new(Duration::ZERO);
        let inputs = Inputs {
            requests: &w,
            statements: &none,
            calls: &none,
            samples: &samples,
            now_s: 101,
        };
        let mut errors = defaults().remove(3);
        errors.window = Duration::from_secs(30);
        let m = measure(&errors, &inputs);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].samples, m[0].labels["service_name"].as_str()),
            (40, "shop")
        );
        assert!((m[0].value - 0.125).abs() < 1e-9, "{m:?}");
        let latency = Rule {
            threshold: Threshold::Above(1.0),
            window: Duration::from_secs(30),
            ..defaults().remove(4)
        };
        let mut m = measure(&latency, &inputs);
        m.sort_by(|a, b| a.value.total_cmp(&b.value));
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].labels["http_route"], "/pay");
        assert!(latency.threshold.breached(m[1].value) && !latency.threshold.breached(m[0].value));
        let only_list = Rule {
            route: Some("/list".into()),
            ..latency
        };
        assert_eq!(measure(&only_list, &inputs).len(), 1);
    }

    #[test]
    fn database_rules_measure_statements_per_service() {
        let mut statements = Windows::new(Duration::from_secs(60));
        let (db, fast, slow): (Arc<str>, Arc<str>, Arc<str>) = (
            "postgres".into(),
            "SELECT a FROM t WHERE id = $1".into(),
            "SELECT pg_sleep($1)".into(),
        );
        for t in 0..30 {
            let failed = if t % 10 == 0 { 500 } else { 200 };
            statements.record(100 + t / 15, &db, &fast, failed, 0.001);
            statements.record(100 + t / 15, &db, &slow, 200, 0.5);
        }
        let none = Windows::new(Duration::ZERO);
        let samples = SampleWindow::new(Duration::from_secs(60));
        let inputs = Inputs {
            requests: &none,
            statements: &statements,
            calls: &none,
            samples: &samples,
            now_s: 101,
        };
        let rule = |signal, above| Rule {
            name: "db".into(),
            signal,
            threshold: Threshold::Above(above),
            window: Duration::from_secs(30),
            ..defaults().remove(3)
        };
        let errors = measure(&rule(Signal::DbErrorRatio, 0.01), &inputs);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].samples, 60);
        assert!((errors[0].value - 3.0 / 60.0).abs() < 1e-9, "{errors:?}");
        let mut p95 = measure(&rule(Signal::DbStatementP95Seconds, 0.1), &inputs);
        p95.sort_by(|a, b| a.value.total_cmp(&b.value));
        assert_eq!(p95.len(), 2);
        assert_eq!(p95[1].labels["db_statement"], "SELECT pg_sleep($1)");
        assert!(p95[1].value > 0.4 && p95[0].value < 0.01, "{p95:?}");
        // The HTTP signals see none of it.
        assert!(measure(&rule(Signal::HttpErrorRatio, 0.01), &inputs).is_empty());
    }

    #[test]
    fn the_grpc_error_ratio_measures_calls_per_service() {
        let mut calls = Windows::new(Duration::from_secs(60));
        let (api, get): (Arc<str>, Arc<str>) = ("api".into(), "/shop.Cart/Get".into());
        for t in 0..40 {
            let status = if t % 8 == 0 { 500 } else { 200 };
            calls.record(100 + t / 20, &api, &get, status, 0.002);
        }
        let none = Windows::new(Duration::ZERO);
        let samples = SampleWindow::new(Duration::from_secs(60));
        let inputs = Inputs {
            requests: &none,
            statements: &none,
            calls: &calls,
            samples: &samples,
            now_s: 101,
        };
        let rule = Rule {
            name: "grpc".into(),
            signal: Signal::GrpcErrorRatio,
            threshold: Threshold::Above(0.1),
            window: Duration::from_secs(30),
            ..defaults().remove(3)
        };
        let m = measure(&rule, &inputs);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].samples, m[0].labels["service_name"].as_str()),
            (40, "api")
        );
        assert!((m[0].value - 5.0 / 40.0).abs() < 1e-9, "{m:?}");
        assert!(rule.threshold.breached(m[0].value));
    }

    #[test]
    fn saturation_rules_read_the_services_samples() {
        use crate::telemetry::{
            sampler::{HostSample, ServiceSample, SystemSample},
            saturation::ServiceSaturation,
        };
        let mut samples = SampleWindow::new(Duration::from_secs(300));
        for (at, kills, fds, dropped) in [(100, 2, 0.5, 4), (101, 3, 0.95, 0), (102, 3, 0.6, 3)] {
            let queue = crate::telemetry::saturation::PortQueue {
                port: 80,
                queued: 2,
                limit: 1,
                dropped,
            };
            let shop = ServiceSample {
                saturation: ServiceSaturation {
                    fd_usage_ratio: fds,
                    oom_kills_total: kills,
                    cpu_throttled_ratio: 0.3,
                    accept_queues: vec![queue],
                    ..ServiceSaturation::default()
                },
                ..ServiceSample::default()
            };
            let sample = SystemSample {
                timestamp: 0.0,
                host: HostSample::default(),
                services: [("shop".to_owned(), shop)].into(),
            };
            samples.push(at, &sample);
        }
        let none = Windows::new(Duration::ZERO);
        let inputs = Inputs {
            requests: &none,
            statements: &none,
            calls: &none,
            samples: &samples,
            now_s: 102,
        };
        let value = |name: &str| {
            let rule = defaults()
                .into_iter()
                .find(|r| r.name == name)
                .expect("a built-in rule");
            let m = measure(&rule, &inputs);
            assert_eq!(m[0].labels["service_name"], "shop");
            (m[0].value, rule.threshold.breached(m[0].value))
        };
        // The fullest over the window; kills within it; the mean share.
        assert_eq!(value("ServiceFdsAlmostExhausted"), (0.95, true));
        assert_eq!(value("ServiceOomKilled"), (1.0, true));
        assert_eq!(value("ServiceCpuThrottled"), (0.3, true));
        // Every drop in the window.
        assert_eq!(value("ServiceDroppingConnections"), (7.0, true));
    }
}
