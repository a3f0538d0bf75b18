//! The alert state machine, on the time the caller passes in (so tests
//! use a fake clock): each (rule, labels) moves inactive → pending →
//! firing → resolved. Every interval (`for`, `keep_firing_for`, cooldown)
//! is monotonic; wall time only stamps what is shown and sent. A window
//! without data (no measurement, or fewer than `min_requests` requests)
//! is its own reading: it clears a pending alert and, by default, keeps a
//! firing one firing until data returns. Evaluation says which
//! notifications to send; delivery is elsewhere and never holds
//! evaluation up. Its state is bounded: what outlives an alert (the last
//! notification, for the cooldown across flaps; the services an absent
//! rule has seen) is pruned and capped.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{
    clock::{Now, rfc3339, rfc3339_opt},
    rules::{NoData, Rule, Signal},
};

/// The labels that tell one alert of a rule from another (service, route,
/// mountpoint), plus the rule's own labels.
pub type Labels = BTreeMap<String, String>;

/// One measured value of a rule's signal for one label set. `samples` is
/// how many requests the value comes from (request signals), else 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub labels: Labels,
    pub value: f64,
    pub samples: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Firing,
}

/// An alert that is pending or firing.
#[derive(Clone, Debug, Serialize)]
pub struct Active {
    pub alertname: String,
    pub severity: String,
    pub labels: Labels,
    pub state: Phase,
    /// The last value measured with data.
    pub value: f64,
    pub threshold: f64,
    /// When the condition started to hold.
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    /// When it fired (firing only).
    #[serde(with = "rfc3339_opt")]
    pub fired_at: Option<SystemTime>,
    /// Firing while its window has had no data since then.
    #[serde(with = "rfc3339_opt")]
    pub no_data_since: Option<SystemTime>,
    /// Monotonic: when the condition started to hold, when it stopped
    /// (a firing alert within `keep_firing_for`), the last notification.
    #[serde(skip)]
    since_mono: Duration,
    #[serde(skip)]
    cleared_mono: Option<Duration>,
    #[serde(skip)]
    last_notified: Option<Duration>,
}

/// An alert that fired and resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Resolved {
    pub alertname: String,
    pub severity: String,
    pub labels: Labels,
    #[serde(with = "rfc3339")]
    pub fired_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub resolved_at: SystemTime,
}

/// What evaluation asks delivery to send.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// Newly firing, or still firing and past its cooldown.
    Firing {
        alertname: String,
        severity: String,
        labels: Labels,
        value: f64,
        threshold: f64,
        starts_at: SystemTime,
        /// Kept firing without data since then.
        no_data_since: Option<SystemTime>,
        repeat: bool,
    },
    Resolved {
        alertname: String,
        severity: String,
        labels: Labels,
        starts_at: SystemTime,
        ends_at: SystemTime,
    },
}

/// Resolved alerts kept for /alerts.
pub const HISTORY: usize = 100;
/// Last notifications kept past a resolve (each for at most its rule's
/// cooldown), at most.
pub const NOTIFIED_MAX: usize = 10_000;
/// Services remembered by absent rules without a `service`, at most (the
/// least recently seen is forgotten first).
pub const SEEN_MAX: usize = 4_096;

/// One label set's reading at one evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reading {
    Breach(f64),
    Clear(f64),
    NoData,
}

type Key = (usize, Labels);

pub struct Engine {
    rules: Vec<Rule>,
    active: HashMap<Key, Active>,
    /// Last notification (monotonic) per (rule, labels), kept past a
    /// resolve for the rule's cooldown, so that a flapping alert is not
    /// re-notified within it; then pruned.
    notified: HashMap<Key, Duration>,
    /// Absent rules without a service: the services that sent requests,
    /// and when last (monotonic).
    seen: HashMap<Key, Duration>,
    history: VecDeque<Resolved>,
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            active: HashMap::new(),
            notified: HashMap::new(),
            seen: HashMap::new(),
            history: VecDeque::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// One evaluation of rule `index` at `now` over its measurements. A
    /// label set with an alert (or, for an absent rule, one seen before)
    /// that is not measured has no data, or is absent. Returns what to
    /// send; transitions are logged once each.
    pub fn evaluate(&mut self, index: usize, now: Now, measured: &[Measurement]) -> Vec<Notice> {
        let Some(rule) = self.rules.get(index).cloned() else {
            return Vec::new();
        };
        let absent = rule.signal == Signal::ServiceAbsent;
        let mut readings: HashMap<Labels, Reading> = HashMap::new();
        for m in measured {
            let mut labels = m.labels.clone();
            labels.extend(rule.labels.clone());
            let reading = if rule.signal.counts_requests() && m.samples < rule.min_requests.max(1) {
                Reading::NoData
            } else if rule.threshold.breached(m.value) {
                Reading::Breach(m.value)
            } else {
                Reading::Clear(m.value)
            };
            if absent && rule.service.is_none() && m.samples > 0 {
                self.seen.insert((index, labels.clone()), now.mono);
            }
            readings.insert(labels, reading);
        }
        // What is no longer measured: absent for an absent rule, else no
        // data.
        let missing = if absent {
            Reading::Breach(0.0)
        } else {
            Reading::NoData
        };
        for (i, labels) in self.active.keys().chain(self.seen.keys()) {
            if *i == index && !readings.contains_key(labels) {
                readings.insert(labels.clone(), missing);
            }
        }
        let mut notices = Vec::new();
        for (labels, reading) in readings {
            self.step(&rule, (index, labels), reading, now, &mut notices);
        }
        self.prune(index, &rule, now.mono);
        notices
    }

    /// Advances one alert.
    fn step(&mut self, rule: &Rule, key: Key, reading: Reading, now: Now, out: &mut Vec<Notice>) {
        let labels = &key.1;
        let holds = match reading {
            Reading::Breach(v) => Some(v),
            Reading::Clear(_) => None,
            Reading::NoData if rule.no_data == NoData::Resolve => None,
            Reading::NoData => {
                let Some(alert) = self.active.get_mut(&key) else {
                    return;
                };
                if alert.state == Phase::Pending {
                    self.active.remove(&key);
                    tracing::debug!(alertname = %rule.name, labels = ?labels, "pending alert cleared: no data");
                    return;
                }
                if alert.no_data_since.is_none() {
                    alert.no_data_since = Some(now.wall);
                    tracing::info!(alertname = %rule.name, labels = ?labels, "alert kept firing without data");
                }
                // No data is no evidence that the condition stopped.
                alert.cleared_mono = None;
                notify_if_due(rule, &key, alert, &mut self.notified, now, out);
                return;
            }
        };
        let Some(value) = holds else {
            let Some(alert) = self.active.get_mut(&key) else {
                return;
            };
            if let Reading::Clear(v) = reading {
                alert.value = v;
                alert.no_data_since = None;
            }
            if alert.state == Phase::Pending {
                self.active.remove(&key);
                tracing::debug!(alertname = %rule.name, labels = ?labels, "pending alert cleared");
                return;
            }
            let cleared = *alert.cleared_mono.get_or_insert(now.mono);
            if now.mono.saturating_sub(cleared) < rule.keep_firing_for {
                notify_if_due(rule, &key, alert, &mut self.notified, now, out);
                return;
            }
            let fired_at = alert.fired_at.unwrap_or(alert.since);
            self.active.remove(&key);
            self.resolve(rule, key.1, fired_at, now.wall, out);
            return;
        };
        let alert = self.active.entry(key.clone()).or_insert_with(|| {
            tracing::info!(alertname = %rule.name, labels = ?labels, value, "alert pending");
            Active {
                alertname: rule.name.clone(),
                severity: rule.severity.clone(),
                labels: labels.clone(),
                state: Phase::Pending,
                value,
                threshold: rule.threshold.value(),
                since: now.wall,
                fired_at: None,
                no_data_since: None,
                since_mono: now.mono,
                cleared_mono: None,
                last_notified: None,
            }
        });
        alert.value = value;
        alert.cleared_mono = None;
        if alert.no_data_since.take().is_some() {
            tracing::info!(alertname = %rule.name, labels = ?labels, value, "alert has data again");
        }
        if alert.state == Phase::Pending && now.mono.saturating_sub(alert.since_mono) >= rule.hold {
            alert.state = Phase::Firing;
            alert.fired_at = Some(now.wall);
            tracing::warn!(alertname = %rule.name, labels = ?labels, value, threshold = rule.threshold.value(), severity = %rule.severity, "alert firing");
        }
        if alert.state == Phase::Firing {
            notify_if_due(rule, &key, alert, &mut self.notified, now, out);
        }
    }

    fn resolve(
        &mut self,
        rule: &Rule,
        labels: Labels,
        fired_at: SystemTime,
        wall: SystemTime,
        out: &mut Vec<Notice>,
    ) {
        // Alertmanager refuses an end before the start: a wall clock set
        // back while the alert fired must not lose the resolve.
        let ends_at = wall.max(fired_at);
        tracing::info!(alertname = %rule.name, labels = ?labels, "alert resolved");
        out.push(Notice::Resolved {
            alertname: rule.name.clone(),
            severity: rule.severity.clone(),
            labels: labels.clone(),
            starts_at: fired_at,
            ends_at,
        });
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Resolved {
            alertname: rule.name.clone(),
            severity: rule.severity.clone(),
            labels,
            fired_at,
            resolved_at: ends_at,
        });
    }

    /// Forgets last notifications past their rule's cooldown (they can no
    /// longer hold a notice back) and caps what stays.
    fn prune(&mut self, index: usize, rule: &Rule, mono: Duration) {
        self.notified
            .retain(|(i, _), t| *i != index || mono.saturating_sub(*t) < rule.cooldown);
        evict_oldest(&mut self.notified, NOTIFIED_MAX);
        evict_oldest(&mut self.seen, SEEN_MAX);
    }

    /// Pending and firing alerts, firing first.
    pub fn active(&self) -> Vec<Active> {
        let mut v: Vec<Active> = self.active.values().cloned().collect();
        v.sort_by(|a, b| {
            (b.state == Phase::Firing)
                .cmp(&(a.state == Phase::Firing))
                .then(a.alertname.cmp(&b.alertname))
                .then(a.labels.cmp(&b.labels))
        });
        v
    }

    /// Resolved alerts, newest first.
    pub fn history(&self) -> Vec<Resolved> {
        self.history.iter().rev().cloned().collect()
    }

    /// Entries of the bounded state (last notifications and services seen).
    pub fn tracked(&self) -> usize {
        self.notified.len() + self.seen.len()
    }
}

/// Sends a firing alert's notice when none went out within the cooldown
/// (its own, or the last one of the same labels before a resolve).
fn notify_if_due(
    rule: &Rule,
    key: &Key,
    alert: &mut Active,
    notified: &mut HashMap<Key, Duration>,
    now: Now,
    out: &mut Vec<Notice>,
) {
    let last = alert.last_notified.or_else(|| notified.get(key).copied());
    if last.is_some_and(|t| now.mono.saturating_sub(t) < rule.cooldown) {
        return;
    }
    out.push(Notice::Firing {
        alertname: rule.name.clone(),
        severity: rule.severity.clone(),
        labels: key.1.clone(),
        value: alert.value,
        threshold: rule.threshold.value(),
        starts_at: alert.fired_at.unwrap_or(now.wall),
        no_data_since: alert.no_data_since,
        repeat: alert.last_notified.is_some(),
    });
    alert.last_notified = Some(now.mono);
    notified.insert(key.clone(), now.mono);
}

/// Drops the entries with the oldest times until at most `max` are left.
fn evict_oldest(map: &mut HashMap<Key, Duration>, max: usize) {
    if map.len() <= max {
        return;
    }
    let mut times: Vec<Duration> = map.values().copied().collect();
    let cut = map.len() - max;
    times.select_nth_unstable(cut - 1);
    let oldest = times[cut - 1];
    let mut excess = cut;
    map.retain(|_, t| {
        if excess > 0 && *t <= oldest {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
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
}
