//! Rules, signals and the engine together, on real rolling windows and a
//! fake monotonic clock: what an operator sees when traffic is quiet, or
//! when a service stops while its alert fires.

use std::{sync::Arc, time::Duration};

use super::{
    clock::{Clock as _, FakeClock},
    engine::{Engine, Notice, Phase},
    rules::{Rule, Signal, Threshold, defaults, parse},
    signals::{Inputs, measure},
};
use crate::telemetry::windows::{SampleWindow, Windows};

/// The windows the evaluation task reads, the engine, and a clock whose
/// monotonic seconds are the windows' seconds too.
struct Harness {
    clock: FakeClock,
    windows: Windows,
    samples: SampleWindow,
    engine: Engine,
}

impl Harness {
    fn new(rules: Vec<Rule>) -> Self {
        Self {
            clock: FakeClock::new(),
            windows: Windows::new(Duration::from_secs(120)),
            samples: SampleWindow::new(Duration::from_secs(120)),
            engine: Engine::new(rules),
        }
    }

    fn now_s(&self) -> u64 {
        self.clock.now().mono.as_secs()
    }

    fn record(&mut self, service: &str, route: &str, status: u16, seconds: f64, n: usize) {
        let (s, r): (Arc<str>, Arc<str>) = (service.into(), route.into());
        let now_s = self.now_s();
        for _ in 0..n {
            self.windows.record(now_s, &s, &r, status, seconds);
        }
    }

    /// One evaluation of every rule, as the evaluation task does it.
    fn evaluate(&mut self) -> Vec<Notice> {
        let now = self.clock.now();
        let no_statements = Windows::new(Duration::ZERO);
        let inputs = Inputs {
            requests: &self.windows,
            statements: &no_statements,
            calls: &no_statements,
            samples: &self.samples,
            now_s: now.mono.as_secs(),
        };
        let measured: Vec<_> = self
            .engine
            .rules()
            .iter()
            .map(|r| measure(r, &inputs))
            .collect();
        measured
            .iter()
            .enumerate()
            .flat_map(|(i, m)| self.engine.evaluate(i, now, m))
            .collect()
    }

    fn firing(&self, alertname: &str) -> Vec<super::engine::Active> {
        self.engine
            .active()
            .into_iter()
            .filter(|a| a.alertname == alertname && a.state == Phase::Firing)
            .collect()
    }

    fn tick(&self) {
        self.clock.advance(Duration::from_secs(5));
    }
}

fn named<'a>(notices: &'a [Notice], name: &str) -> Vec<&'a Notice> {
    notices
        .iter()
        .filter(|n| match n {
            Notice::Firing { alertname, .. } | Notice::Resolved { alertname, .. } => {
                alertname == name
            }
        })
        .collect()
}

fn latency_rule() -> Rule {
    defaults()
        .into_iter()
        .find(|r| r.signal == Signal::HttpLatencyP95Seconds)
        .expect("the built-in latency rule")
}

#[test]
fn a_quiet_route_with_one_slow_request_does_not_fire() {
    let mut h = Harness::new(vec![latency_rule()]);
    let mut sent = Vec::new();
    // Five minutes: a busy fast route, a quiet route whose only request
    // took 5 s (its p95 is that request), and a route slow throughout.
    for step in 0..60 {
        h.record("shop", "/busy", 200, 0.02, 10);
        h.record("shop", "/slow", 200, 3.0, 3);
        if step == 20 {
            h.record("shop", "/quiet", 200, 5.0, 1);
        }
        sent.extend(h.evaluate());
        h.tick();
    }
    let firing = h.firing("HttpLatencyP95High");
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].labels["http_route"], "/slow");
    assert!(
        sent.iter()
            .all(|n| matches!(n, Notice::Firing { labels, .. } if labels["http_route"] == "/slow")),
        "{sent:?}"
    );
    // With 20 requests in its window, the same route's slow half counts.
    for _ in 0..24 {
        let seconds = if h.now_s().is_multiple_of(10) {
            5.0
        } else {
            0.01
        };
        h.record("shop", "/quiet", 200, seconds, 2);
        h.evaluate();
        h.tick();
    }
    assert!(
        h.engine
            .active()
            .iter()
            .any(|a| a.labels["http_route"] == "/quiet"),
        "{:?}",
        h.engine.active()
    );
}

#[test]
fn a_service_that_stops_while_firing_stays_firing_and_raises_service_absent() {
    let config = parse(
        "[alerts]\n[[alerts.rules]]\nname = \"ServiceAbsent\"\nsignal = \"service_absent\"\nwindow = \"1m\"\nfor = \"1m\"\n",
        "apm.toml",
    )
    .expect("config");
    let mut h = Harness::new(config.rules);
    let mut sent = Vec::new();
    // Three minutes of 50 % errors: the error-ratio alert fires.
    for _ in 0..36 {
        h.record("shop", "/pay", 200, 0.01, 5);
        h.record("shop", "/pay", 500, 0.01, 5);
        sent.extend(h.evaluate());
        h.tick();
    }
    assert_eq!(named(&sent, "HttpErrorRatioHigh").len(), 1, "{sent:?}");
    assert!(named(&sent, "ServiceAbsent").is_empty());
    // It stops: ten minutes without a request, its windows forgotten
    // half-way as the pipeline does for a service that is gone.
    sent.clear();
    for step in 0..120 {
        if step == 60 {
            h.windows.forget_service("shop");
        }
        sent.extend(h.evaluate());
        h.tick();
    }
    let errors = named(&sent, "HttpErrorRatioHigh");
    assert!(
        errors.iter().all(|n| matches!(
            n,
            Notice::Firing {
                no_data_since: Some(_),
                ..
            }
        )),
        "no resolve while the service is silent: {errors:?}"
    );
    let firing = h.firing("HttpErrorRatioHigh");
    assert_eq!(firing.len(), 1);
    assert!(firing[0].no_data_since.is_some());
    assert_eq!(firing[0].value, 0.5);
    let absent = named(&sent, "ServiceAbsent");
    assert!(!absent.is_empty());
    assert!(
        absent.iter().all(
            |n| matches!(n, Notice::Firing { labels, .. } if labels["service_name"] == "shop")
        ),
        "{absent:?}"
    );
    // Healthy traffic returns: both resolve, the error alert once its
    // window holds 20 requests.
    sent.clear();
    for _ in 0..12 {
        h.record("shop", "/pay", 200, 0.01, 5);
        sent.extend(h.evaluate());
        h.tick();
    }
    for name in ["HttpErrorRatioHigh", "ServiceAbsent"] {
        let resolves = named(&sent, name)
            .into_iter()
            .filter(|n| matches!(n, Notice::Resolved { .. }))
            .count();
        assert_eq!(resolves, 1, "{name}: {sent:?}");
    }
    assert!(h.engine.active().is_empty());
}

#[test]
fn the_latency_count_does_not_drop_when_a_bucket_starts() {
    // A 10 s window on 10 s buckets: the count covers at least the last
    // 10 s, never only the bucket just begun.
    let rule = Rule {
        window: Duration::from_secs(10),
        threshold: Threshold::Above(0.2),
        hold: Duration::from_secs(3),
        ..latency_rule()
    };
    let mut h = Harness::new(vec![rule]);
    let mut fired = false;
    for _ in 0..40 {
        // 3 slow requests a second.
        h.record("shop", "/slow", 200, 0.3, 3);
        fired |= !h.evaluate().is_empty();
        h.clock.advance(Duration::from_secs(1));
        if fired {
            // Firing, it stays so at every bucket boundary after.
            assert_eq!(h.firing("HttpLatencyP95High").len(), 1);
            assert!(h.engine.active()[0].no_data_since.is_none());
        }
    }
    assert!(fired);
}
