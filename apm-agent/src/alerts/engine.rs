//! The alert state machine, on a clock the caller passes in (so tests use
//! a fake one): each (rule, labels) moves inactive → pending → firing →
//! resolved. Evaluation says which notifications to send; delivery is
//! elsewhere and never holds evaluation up.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::rules::{Rule, Signal};

/// The labels that tell one alert of a rule from another (service, route,
/// mountpoint), plus the rule's own labels.
pub type Labels = BTreeMap<String, String>;

/// One measured value of a rule's signal for one label set. `samples` is
/// how many requests the value comes from (error ratio), else 0.
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
    pub value: f64,
    pub threshold: f64,
    /// When the condition started to hold.
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    /// When it fired (firing only).
    #[serde(with = "rfc3339_opt")]
    pub fired_at: Option<SystemTime>,
    #[serde(skip)]
    last_notified: Option<SystemTime>,
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

pub struct Engine {
    rules: Vec<Rule>,
    /// (rule index, labels) → state.
    active: HashMap<(usize, Labels), Active>,
    /// Last notification per (rule, labels), kept past a resolve so that
    /// a flapping alert is not re-notified within its cooldown.
    notified: HashMap<(usize, Labels), SystemTime>,
    history: VecDeque<Resolved>,
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            active: HashMap::new(),
            notified: HashMap::new(),
            history: VecDeque::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// One evaluation of rule `index` at `now` over its measurements (label
    /// sets not measured are treated as not breaching). Returns what to
    /// send; transitions are logged once each.
    pub fn evaluate(
        &mut self,
        index: usize,
        now: SystemTime,
        measured: &[Measurement],
    ) -> Vec<Notice> {
        let Some(rule) = self.rules.get(index).cloned() else {
            return Vec::new();
        };
        let mut notices = Vec::new();
        let mut breaching: HashMap<Labels, f64> = HashMap::new();
        for m in measured {
            let enough = rule.signal != Signal::HttpErrorRatio || m.samples >= rule.min_requests;
            if enough && rule.threshold.breached(m.value) {
                let mut labels = m.labels.clone();
                labels.extend(rule.labels.clone());
                breaching.insert(labels, m.value);
            }
        }
        // Alerts whose condition stopped: pending ones vanish, firing ones
        // resolve.
        let stopped: Vec<Labels> = self
            .active
            .keys()
            .filter(|(i, labels)| *i == index && !breaching.contains_key(labels))
            .map(|(_, l)| l.clone())
            .collect();
        for labels in stopped {
            let Some(alert) = self.active.remove(&(index, labels.clone())) else {
                continue;
            };
            if let Some(fired_at) = alert.fired_at {
                tracing::info!(alertname = %rule.name, labels = ?labels, "alert resolved");
                notices.push(Notice::Resolved {
                    alertname: rule.name.clone(),
                    severity: rule.severity.clone(),
                    labels: labels.clone(),
                    starts_at: fired_at,
                    ends_at: now,
                });
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(Resolved {
                    alertname: rule.name.clone(),
                    severity: rule.severity.clone(),
                    labels,
                    fired_at,
                    resolved_at: now,
                });
            } else {
                tracing::debug!(alertname = %rule.name, labels = ?labels, "pending alert cleared");
            }
        }
        for (labels, value) in breaching {
            let key = (index, labels.clone());
            let alert = self.active.entry(key.clone()).or_insert_with(|| {
                tracing::info!(alertname = %rule.name, labels = ?labels, value, "alert pending");
                Active {
                    alertname: rule.name.clone(),
                    severity: rule.severity.clone(),
                    labels: labels.clone(),
                    state: Phase::Pending,
                    value,
                    threshold: rule.threshold.value(),
                    since: now,
                    fired_at: None,
                    last_notified: None,
                }
            });
            alert.value = value;
            let held = now.duration_since(alert.since).unwrap_or(Duration::ZERO);
            if alert.state == Phase::Pending && held >= rule.hold {
                alert.state = Phase::Firing;
                alert.fired_at = Some(now);
                tracing::warn!(alertname = %rule.name, labels = ?labels, value, threshold = rule.threshold.value(), severity = %rule.severity, "alert firing");
            }
            if alert.state != Phase::Firing {
                continue;
            }
            let last = alert
                .last_notified
                .or_else(|| self.notified.get(&key).copied());
            let due = last
                .is_none_or(|t| now.duration_since(t).unwrap_or(Duration::ZERO) >= rule.cooldown);
            if due {
                notices.push(Notice::Firing {
                    alertname: rule.name.clone(),
                    severity: rule.severity.clone(),
                    labels: labels.clone(),
                    value,
                    threshold: rule.threshold.value(),
                    starts_at: alert.fired_at.unwrap_or(now),
                    repeat: alert.last_notified.is_some(),
                });
                alert.last_notified = Some(now);
                self.notified.insert(key, now);
            }
        }
        notices
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
}

/// RFC 3339 in UTC, as Alertmanager's API wants.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let days = secs.as_secs() / 86_400;
    let rem = secs.as_secs() % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        secs.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*t))
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_time(*t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::{Threshold, defaults};

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

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
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
                assert_eq!((*starts_at, *ends_at), (at(0), at(10)));
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
    fn windows_with_too_few_requests_do_not_fire() {
        let mut e = Engine::new(vec![rule(0, 300)]);
        // 1 error in 2 requests is 50 %, but 2 < 20 requests.
        assert!(e.evaluate(0, at(0), &svc(0.5, 2)).is_empty());
        assert!(e.active().is_empty());
        assert_eq!(firing(&e.evaluate(0, at(1), &svc(0.5, 20))), 1);
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

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_996_800_250)),
            "2026-11-30T00:00:00.250Z"
        );
    }
}
