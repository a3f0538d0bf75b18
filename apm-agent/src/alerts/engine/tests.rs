use super::*;
use crate::alerts::{
    clock::{Clock as _, FakeClock},
    rules::{Threshold, defaults},
};

fn rule(hold: u64, cooldown: u64) -> Rule {
    Rule {
        name: "Errors".into(),
        signal: Signal::HttpErrorRatio,
        threshold: Threshold::Above(0.05),
        window: Duration::from_secs(10),
        hold: Duration::from_secs(hold),
        cooldown: Duration::from_secs(cooldown),
        ..defaults().remove(3)
    }
}

/// `s` seconds on both clocks of a fake clock that never stepped.
fn at(s: u64) -> Now {
    let c = FakeClock::new();
    c.advance(Duration::from_secs(s));
    c.now()
}

fn svc(value: f64, samples: u64) -> Vec<Measurement> {
    vec![Measurement {
        labels: [("service_name".to_owned(), "shop".to_owned())].into(),
        value,
        samples,
    }]
}

fn firing(n: &[Notice]) -> usize {
    n.iter()
        .filter(|n| matches!(n, Notice::Firing { .. }))
        .count()
}

fn resolved(n: &[Notice]) -> usize {
    n.iter()
        .filter(|n| matches!(n, Notice::Resolved { .. }))
        .count()
}

#[test]
fn pending_until_for_has_elapsed_then_firing_once() {
    let mut e = Engine::new(vec![rule(2, 300)]);
    assert!(e.evaluate(0, at(0), &svc(0.2, 100)).is_empty());
    assert_eq!(e.active()[0].state, Phase::Pending);
    assert!(e.evaluate(0, at(1), &svc(0.2, 100)).is_empty());
    let n = e.evaluate(0, at(2), &svc(0.2, 100));
    assert_eq!(firing(&n), 1);
    assert_eq!(e.active()[0].state, Phase::Firing);
    // Within the cooldown: no repeat.
    for s in 3..300 {
        assert!(e.evaluate(0, at(s), &svc(0.2, 100)).is_empty(), "{s}");
    }
    // Past it: one repeat.
    let n = e.evaluate(0, at(302), &svc(0.2, 100));
    assert!(
        matches!(n[..], [Notice::Firing { repeat: true, .. }]),
        "{n:?}"
    );
}

#[test]
fn for_and_cooldown_follow_the_monotonic_clock_not_the_wall_clock() {
    let clock = FakeClock::new();
    let mut e = Engine::new(vec![rule(60, 300)]);
    e.evaluate(0, clock.now(), &svc(0.2, 100));
    // The wall clock is set back an hour: `for` still ends 60 s on.
    clock.advance(Duration::from_secs(30));
    clock.step_wall(Duration::from_secs(3600), false);
    assert!(e.evaluate(0, clock.now(), &svc(0.2, 100)).is_empty());
    clock.advance(Duration::from_secs(30));
    assert_eq!(firing(&e.evaluate(0, clock.now(), &svc(0.2, 100))), 1);
    // Set forward a day: the cooldown is not over.
    clock.step_wall(Duration::from_secs(86_400), true);
    clock.advance(Duration::from_secs(10));
    assert!(e.evaluate(0, clock.now(), &svc(0.2, 100)).is_empty());
    // It is after 300 monotonic seconds.
    clock.advance(Duration::from_secs(290));
    assert_eq!(firing(&e.evaluate(0, clock.now(), &svc(0.2, 100))), 1);
    // Set back past the start: the resolve still ends after it began,
    // or Alertmanager would refuse it.
    clock.step_wall(Duration::from_secs(2 * 86_400), false);
    let n = e.evaluate(0, clock.now(), &svc(0.0, 100));
    match &n[..] {
        [
            Notice::Resolved {
                starts_at, ends_at, ..
            },
        ] => assert!(ends_at >= starts_at),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_short_breach_never_fires_and_clears_silently() {
    let mut e = Engine::new(vec![rule(5, 300)]);
    e.evaluate(0, at(0), &svc(0.2, 100));
    let n = e.evaluate(0, at(3), &svc(0.0, 100));
    assert!(n.is_empty());
    assert!(e.active().is_empty());
    assert!(e.history().is_empty());
}

#[test]
fn resolve_sends_ends_at_and_keeps_history() {
    let mut e = Engine::new(vec![rule(0, 300)]);
    assert_eq!(firing(&e.evaluate(0, at(0), &svc(0.5, 100))), 1);
    let n = e.evaluate(0, at(10), &svc(0.01, 100));
    assert_eq!(resolved(&n), 1);
    match &n[0] {
        Notice::Resolved {
            starts_at, ends_at, ..
        } => {
            assert_eq!((*starts_at, *ends_at), (at(0).wall, at(10).wall));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.history().len(), 1);
    assert!(e.active().is_empty());
}

#[test]
fn flapping_is_not_renotified_within_the_cooldown() {
    let mut e = Engine::new(vec![rule(0, 300)]);
    assert_eq!(firing(&e.evaluate(0, at(0), &svc(0.5, 100))), 1);
    for round in 0..10 {
        let t = 10 + round * 20;
        assert_eq!(resolved(&e.evaluate(0, at(t), &svc(0.0, 100))), 1);
        // Fires again: shown as firing, not notified as new.
        assert_eq!(firing(&e.evaluate(0, at(t + 10), &svc(0.5, 100))), 0);
        assert_eq!(e.active()[0].state, Phase::Firing);
    }
    // After the cooldown it is notified again.
    e.evaluate(0, at(400), &svc(0.0, 100));
    assert_eq!(firing(&e.evaluate(0, at(401), &svc(0.5, 100))), 1);
}

#[test]
fn windows_with_too_few_requests_have_no_data() {
    let mut e = Engine::new(vec![rule(0, 300)]);
    // 1 error in 2 requests is 50 %, but 2 < 20 requests.
    assert!(e.evaluate(0, at(0), &svc(0.5, 2)).is_empty());
    assert!(e.active().is_empty());
    assert_eq!(firing(&e.evaluate(0, at(1), &svc(0.5, 20))), 1);
    // Nor do they resolve it: 2 good requests say little.
    assert!(e.evaluate(0, at(2), &svc(0.0, 2)).is_empty());
    assert_eq!(e.active()[0].state, Phase::Firing);
    assert!(e.active()[0].no_data_since.is_some());
    assert_eq!(resolved(&e.evaluate(0, at(3), &svc(0.0, 20))), 1);
}

#[test]
fn a_firing_alert_without_data_stays_firing_until_data_returns() {
    let mut e = Engine::new(vec![rule(0, 60)]);
    assert_eq!(firing(&e.evaluate(0, at(0), &svc(0.5, 100))), 1);
    // The service stops: first an empty window, then no measurement
    // at all (its windows forgotten). Still firing, re-notified on
    // the cooldown, marked since when it has no data.
    for s in 1..200 {
        let m = if s < 100 { svc(0.0, 0) } else { Vec::new() };
        let n = e.evaluate(0, at(s), &m);
        assert_eq!(resolved(&n), 0, "{s}");
        if s % 60 == 0 {
            assert!(
                matches!(&n[..], [Notice::Firing { no_data_since: Some(t), .. }] if *t == at(1).wall),
                "{s}: {n:?}"
            );
        }
    }
    let a = &e.active()[0];
    assert_eq!(
        (a.state, a.no_data_since, a.value),
        (Phase::Firing, Some(at(1).wall), 0.5)
    );
    // Data returns, still bad: firing, with data.
    assert!(e.evaluate(0, at(200), &svc(0.4, 50)).is_empty());
    assert_eq!(e.active()[0].no_data_since, None);
    // Data returns good: resolved.
    assert_eq!(resolved(&e.evaluate(0, at(201), &svc(0.0, 50))), 1);
}

#[test]
fn no_data_clears_a_pending_alert() {
    let mut e = Engine::new(vec![rule(30, 300)]);
    e.evaluate(0, at(0), &svc(0.5, 100));
    assert_eq!(e.active()[0].state, Phase::Pending);
    assert!(e.evaluate(0, at(10), &[]).is_empty());
    assert!(e.active().is_empty());
    // `for` starts again.
    e.evaluate(0, at(20), &svc(0.5, 100));
    assert!(e.evaluate(0, at(40), &svc(0.5, 100)).is_empty());
    assert_eq!(firing(&e.evaluate(0, at(50), &svc(0.5, 100))), 1);
}

#[test]
fn no_data_resolve_and_keep_firing_for_as_prometheus_does() {
    let r = Rule {
        no_data: NoData::Resolve,
        keep_firing_for: Duration::from_secs(30),
        ..rule(0, 300)
    };
    let mut e = Engine::new(vec![r]);
    assert_eq!(firing(&e.evaluate(0, at(0), &svc(0.5, 100))), 1);
    // The condition stops: firing for 30 s more, then resolved.
    assert!(e.evaluate(0, at(10), &svc(0.0, 100)).is_empty());
    assert!(e.evaluate(0, at(39), &[]).is_empty());
    assert_eq!(e.active()[0].state, Phase::Firing);
    // It held again meanwhile: the 30 s start over.
    e.evaluate(0, at(40), &svc(0.5, 100));
    assert!(e.evaluate(0, at(50), &[]).is_empty());
    assert!(e.evaluate(0, at(79), &[]).is_empty());
    let n = e.evaluate(0, at(80), &[]);
    assert_eq!(resolved(&n), 1, "{n:?}");
    assert!(e.active().is_empty());
}

#[test]
fn an_absent_rule_fires_for_a_service_seen_before_until_it_returns() {
    let absent = Rule {
        name: "ServiceAbsent".into(),
        signal: Signal::ServiceAbsent,
        threshold: Threshold::Below(1.0),
        hold: Duration::from_secs(30),
        ..rule(0, 300)
    };
    let named = Rule {
        service: Some("cart".into()),
        ..absent.clone()
    };
    let mut e = Engine::new(vec![absent, named]);
    let requests = |n: u64| svc(n as f64, n);
    assert!(e.evaluate(0, at(0), &requests(5)).is_empty());
    // Its windows are forgotten: absent, pending, then firing.
    assert!(e.evaluate(0, at(10), &[]).is_empty());
    assert_eq!(e.active()[0].state, Phase::Pending);
    assert_eq!(firing(&e.evaluate(0, at(40), &[])), 1);
    assert_eq!(e.active()[0].labels["service_name"], "shop");
    assert_eq!(resolved(&e.evaluate(0, at(50), &requests(1))), 1);
    // A named service is absent without ever being seen, as absent()
    // is.
    let cart = |n: u64| {
        vec![Measurement {
            labels: [("service_name".to_owned(), "cart".to_owned())].into(),
            value: n as f64,
            samples: n,
        }]
    };
    e.evaluate(1, at(0), &cart(0));
    assert_eq!(firing(&e.evaluate(1, at(30), &cart(0))), 1);
}

#[test]
fn notification_state_is_pruned_after_the_cooldown() {
    let mut e = Engine::new(vec![rule(0, 300)]);
    let route = |i: u64, v: f64| {
        vec![Measurement {
            labels: [("service_name".to_owned(), format!("svc{i}"))].into(),
            value: v,
            samples: 100,
        }]
    };
    for i in 0..1000 {
        e.evaluate(0, at(i), &route(i, 0.5));
        e.evaluate(0, at(i), &route(i, 0.0));
    }
    assert!(e.active().is_empty());
    // Only those notified within the last 300 s are remembered.
    assert!(e.tracked() <= 301, "{}", e.tracked());
    e.evaluate(0, at(2000), &[]);
    assert_eq!(e.tracked(), 0);
}

#[test]
fn eviction_keeps_the_newest() {
    let mut m: HashMap<Key, Duration> = (0..10u64)
        .map(|i| {
            (
                (0, [("i".to_owned(), i.to_string())].into()),
                Duration::from_secs(i),
            )
        })
        .collect();
    evict_oldest(&mut m, 4);
    let mut left: Vec<u64> = m.values().map(Duration::as_secs).collect();
    left.sort_unstable();
    assert_eq!(left, [6, 7, 8, 9]);
}

#[test]
fn history_is_bounded_and_labels_carry_the_rules_own() {
    let mut r = rule(0, 0);
    r.labels.insert("team".into(), "payments".into());
    let mut e = Engine::new(vec![r]);
    for i in 0..(HISTORY as u64 + 20) {
        e.evaluate(0, at(2 * i), &svc(0.5, 100));
        e.evaluate(0, at(2 * i + 1), &svc(0.0, 100));
    }
    assert_eq!(e.history().len(), HISTORY);
    assert_eq!(e.history()[0].labels["team"], "payments");
}
