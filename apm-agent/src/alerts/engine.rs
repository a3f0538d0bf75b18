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
        match reading {
            Reading::Breach(value) => self.holds(rule, key, value, now, out),
            Reading::NoData if rule.no_data == NoData::KeepFiring => {
                self.no_data(rule, key, now, out)
            }
            Reading::Clear(_) | Reading::NoData => self.stopped(rule, key, reading, now, out),
        }
    }

    /// The condition holds: pending, firing once held for `for`.
    fn holds(&mut self, rule: &Rule, key: Key, value: f64, now: Now, out: &mut Vec<Notice>) {
        let labels = &key.1;
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

    /// No data, kept firing: a pending alert clears (no evidence), a
    /// firing one stays so, marked since when.
    fn no_data(&mut self, rule: &Rule, key: Key, now: Now, out: &mut Vec<Notice>) {
        let Some(alert) = self.active.get_mut(&key) else {
            return;
        };
        if alert.state == Phase::Pending {
            self.active.remove(&key);
            tracing::debug!(alertname = %rule.name, labels = ?key.1, "pending alert cleared: no data");
            return;
        }
        if alert.no_data_since.is_none() {
            alert.no_data_since = Some(now.wall);
            tracing::info!(alertname = %rule.name, labels = ?key.1, "alert kept firing without data");
        }
        // No data is no evidence that the condition stopped.
        alert.cleared_mono = None;
        notify_if_due(rule, &key, alert, &mut self.notified, now, out);
    }

    /// The condition stopped (or no data counts as that): a pending
    /// alert clears, a firing one resolves after `keep_firing_for`.
    fn stopped(
        &mut self,
        rule: &Rule,
        key: Key,
        reading: Reading,
        now: Now,
        out: &mut Vec<Notice>,
    ) {
        let Some(alert) = self.active.get_mut(&key) else {
            return;
        };
        if let Reading::Clear(v) = reading {
            alert.value = v;
            alert.no_data_since = None;
        }
        if alert.state == Phase::Pending {
            self.active.remove(&key);
            tracing::debug!(alertname = %rule.name, labels = ?key.1, "pending alert cleared");
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
mod tests;
