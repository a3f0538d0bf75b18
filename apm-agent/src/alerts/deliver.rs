//! Delivery of alert notices: one task per receiver, each behind its own
//! bounded queue, so a slow or dead receiver never holds evaluation or
//! another receiver up. Alertmanager's v2 API (`POST /api/v2/alerts`:
//! firing alerts re-sent every RESEND as it expects, with `endsAt` a few
//! resends ahead as Prometheus sets it; a resolve with `endsAt` now;
//! whatever queued while a send was under way goes in one batch) and
//! webhooks in Alertmanager's webhook JSON. Each notice has a deadline for
//! all its attempts; at shutdown what is under way or queued gets DRAIN
//! more, then is dropped, so stopping stays well inside a pod's grace
//! period. Every outcome is counted per receiver; receiver URLs appear in
//! labels and logs without credentials.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    clock::format_time,
    engine::{Active, Labels, Notice, Phase},
    rules::Receiver,
};
use crate::{
    post::{self, Failure, HttpClient, Retry},
    redact,
    telemetry::metrics::Metrics,
};

const JSON: &str = "application/json";

/// Notices waiting for one receiver at most; more are dropped and counted.
pub const QUEUE: usize = 256;
/// Firing alerts are re-sent to Alertmanager this often.
pub const RESEND: Duration = Duration::from_secs(60);
/// A firing alert sent to Alertmanager ends this long after it was sent,
/// unless re-sent (Prometheus: four resends), so an agent that died does
/// not leave its alerts firing for ever.
const VALID_FOR: Duration = Duration::from_secs(4 * 60);
/// Attempts per notice, the wait before the first retry (doubling), and
/// one attempt's limit.
const RETRY: Retry = Retry {
    attempts: 4,
    first_wait: Duration::from_millis(500),
    timeout: Duration::from_secs(5),
};
/// All of a notice's attempts' limit.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// After the stop signal, what is under way or queued has this long.
pub const DRAIN: Duration = Duration::from_secs(3);

/// What a receiver's task is asked to send.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Notice(Notice),
    /// Every firing alert, for Alertmanager only (it forgets alerts not
    /// re-sent within their `endsAt`).
    Resend(Vec<Active>),
}

/// The evaluation task's side: offers each message to every receiver's
/// queue without waiting.
#[derive(Clone)]
pub struct Dispatch {
    queues: Vec<Queue>,
    metrics: std::sync::Arc<Metrics>,
}

#[derive(Clone)]
struct Queue {
    shown: String,
    alertmanager: bool,
    tx: mpsc::Sender<Outgoing>,
}

impl Dispatch {
    /// True when some receiver is an Alertmanager (it wants resends).
    pub fn wants_resend(&self) -> bool {
        self.queues.iter().any(|q| q.alertmanager)
    }

    /// Queues `message` for every receiver it concerns; a full queue
    /// drops it for that receiver alone, counted.
    pub fn offer(&self, message: &Outgoing) {
        for q in &self.queues {
            if matches!(message, Outgoing::Resend(_)) && !q.alertmanager {
                continue;
            }
            let reason = match q.tx.try_send(message.clone()) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => "queue_full",
                Err(mpsc::error::TrySendError::Closed(_)) => "shutdown",
            };
            tracing::warn!(receiver = %q.shown, reason, "alert notice dropped");
            self.metrics
                .alert_notifications_dropped
                .with_label_values(&[&q.shown, reason])
                .inc();
        }
    }
}

/// Starts one delivery task per receiver. The handle ends when all have:
/// once the queues are closed, or at most DRAIN after `stop`.
pub fn start(
    receivers: Vec<Receiver>,
    metrics: std::sync::Arc<Metrics>,
    generator_url: String,
    stop: watch::Receiver<bool>,
) -> (Dispatch, tokio::task::JoinHandle<()>) {
    let client = post::client();
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for receiver in receivers {
        let shown = redact::url(match &receiver {
            Receiver::Alertmanager(u) | Receiver::Webhook(u) => u,
        });
        // Exported from the start at 0, as counters should be.
        for result in ["sent", "failed", "timeout"] {
            metrics
                .alert_notifications
                .with_label_values(&[&shown, result]);
        }
        for reason in ["queue_full", "shutdown"] {
            metrics
                .alert_notifications_dropped
                .with_label_values(&[&shown, reason]);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        queues.push(Queue {
            shown: shown.clone(),
            alertmanager: matches!(receiver, Receiver::Alertmanager(_)),
            tx,
        });
        let worker = Worker {
            receiver,
            shown,
            client: client.clone(),
            metrics: metrics.clone(),
            generator_url: generator_url.clone(),
        };
        tasks.push(tokio::spawn(worker.run(rx, stop.clone())));
    }
    let joined = tokio::spawn(async move {
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "alert delivery task failed");
            }
        }
    });
    (Dispatch { queues, metrics }, joined)
}

/// One receiver's task.
struct Worker {
    receiver: Receiver,
    shown: String,
    client: HttpClient,
    metrics: std::sync::Arc<Metrics>,
    generator_url: String,
}

impl Worker {
    async fn run(self, mut queue: mpsc::Receiver<Outgoing>, mut stop: watch::Receiver<bool>) {
        // Set by the stop signal: when what is left is abandoned.
        let mut closing: Option<Instant> = None;
        loop {
            let first = match closing {
                None => tokio::select! {
                    m = queue.recv() => match m {
                        Some(m) => m,
                        None => return,
                    },
                    _ = stop.wait_for(|s| *s) => {
                        closing = Some(Instant::now() + DRAIN);
                        continue;
                    }
                },
                Some(at) if Instant::now() >= at => break,
                Some(_) => match queue.try_recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            let mut batch = vec![first];
            if matches!(self.receiver, Receiver::Alertmanager(_)) {
                while let Ok(m) = queue.try_recv() {
                    batch.push(m);
                }
            }
            let Some((url, body)) = self.request(&batch) else {
                continue;
            };
            let deadline = Instant::now() + DEADLINE;
            let deadline = closing.map_or(deadline, |c| c.min(deadline));
            let sending = post::send(&self.client, &url, JSON, &body, deadline, RETRY);
            let stopping = post::Stop {
                signal: &mut stop,
                closing: &mut closing,
                drain: DRAIN,
            };
            let result = post::or_stop(sending, stopping).await;
            let outcome = post::outcome(&result);
            self.metrics
                .alert_notifications
                .with_label_values(&[&self.shown, outcome])
                .inc_by(batch.len() as u64);
            if let Err(Failure::Failed(e) | Failure::Timeout(e)) = result {
                tracing::warn!(receiver = %self.shown, error = %e, notices = batch.len(), "alert notification {outcome}");
            }
        }
        // The drain is over: what is still queued is dropped.
        let mut left = 0;
        while queue.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            tracing::warn!(receiver = %self.shown, notices = left, "alert notices dropped at shutdown");
            self.metrics
                .alert_notifications_dropped
                .with_label_values(&[&self.shown, "shutdown"])
                .inc_by(left);
        }
    }

    /// The URL and body for `batch` (None: nothing for this receiver).
    fn request(&self, batch: &[Outgoing]) -> Option<(String, Bytes)> {
        let now = SystemTime::now();
        let body = match &self.receiver {
            Receiver::Alertmanager(base) => {
                let alerts: Vec<Value> = batch
                    .iter()
                    .flat_map(|m| match m {
                        Outgoing::Notice(n) => {
                            vec![alertmanager_alert(n, &self.generator_url, now)]
                        }
                        Outgoing::Resend(active) => active
                            .iter()
                            .filter(|a| a.state == Phase::Firing)
                            .map(|a| {
                                alertmanager_alert(&resend_notice(a), &self.generator_url, now)
                            })
                            .collect(),
                    })
                    .collect();
                if alerts.is_empty() {
                    return None;
                }
                (alertmanager_url(base), Value::Array(alerts))
            }
            Receiver::Webhook(url) => match batch {
                [Outgoing::Notice(n)] => (url.clone(), webhook_body(n, &self.generator_url)),
                _ => return None,
            },
        };
        let bytes = serde_json::to_vec(&body.1).ok()?;
        Some((body.0, Bytes::from(bytes)))
    }
}

fn alertmanager_url(base: &str) -> String {
    format!("{}/api/v2/alerts", base.trim_end_matches('/'))
}

fn resend_notice(a: &Active) -> Notice {
    Notice::Firing {
        alertname: a.alertname.clone(),
        severity: a.severity.clone(),
        labels: a.labels.clone(),
        value: a.value,
        threshold: a.threshold,
        starts_at: a.fired_at.unwrap_or(a.since),
        no_data_since: a.no_data_since,
        repeat: true,
    }
}

fn all_labels(alertname: &str, severity: &str, labels: &Labels) -> Labels {
    let mut all = labels.clone();
    all.insert("alertname".into(), alertname.into());
    all.insert("severity".into(), severity.into());
    all
}

/// One alert as both formats carry it: labels, annotations, `startsAt`,
/// and `endsAt` for a resolve.
fn alert_json(n: &Notice, generator_url: &str) -> Value {
    match n {
        Notice::Firing {
            alertname,
            severity,
            labels,
            value,
            threshold,
            starts_at,
            no_data_since,
            ..
        } => {
            let mut annotations = json!({
                "summary": format!("{alertname}: {value:.4} against a threshold of {threshold}"),
                "value": value.to_string(),
                "threshold": threshold.to_string(),
            });
            if let Some(t) = no_data_since {
                annotations["summary"] = json!(format!(
                    "{alertname}: no data since {} (last {value:.4} against a threshold of {threshold})",
                    format_time(*t)
                ));
                annotations["no_data_since"] = json!(format_time(*t));
            }
            json!({
                "labels": all_labels(alertname, severity, labels),
                "annotations": annotations,
                "startsAt": format_time(*starts_at),
                "generatorURL": generator_url,
            })
        }
        Notice::Resolved {
            alertname,
            severity,
            labels,
            starts_at,
            ends_at,
        } => json!({
            "labels": all_labels(alertname, severity, labels),
            "annotations": { "summary": format!("{alertname}: resolved") },
            "startsAt": format_time(*starts_at),
            "endsAt": format_time(*ends_at),
            "generatorURL": generator_url,
        }),
    }
}

/// One alert in Alertmanager's v2 format, sent at `now`: a firing one
/// ends VALID_FOR later unless re-sent.
fn alertmanager_alert(n: &Notice, generator_url: &str, now: SystemTime) -> Value {
    let mut alert = alert_json(n, generator_url);
    if alert.get("endsAt").is_none() {
        alert["endsAt"] = json!(format_time(now + VALID_FOR));
    }
    alert
}

/// Alertmanager's webhook JSON (version 4) for one notice.
fn webhook_body(n: &Notice, generator_url: &str) -> Value {
    let (alertname, status) = match n {
        Notice::Firing { alertname, .. } => (alertname, "firing"),
        Notice::Resolved { alertname, .. } => (alertname, "resolved"),
    };
    let mut alert = alert_json(n, generator_url);
    alert["status"] = json!(status);
    if alert.get("endsAt").is_none() {
        alert["endsAt"] = json!("0001-01-01T00:00:00Z");
    }
    let labels = alert["labels"].clone();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "apm",
        "groupLabels": { "alertname": alertname },
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"].clone(),
        "externalURL": generator_url,
        "alerts": [alert],
    })
}

#[cfg(test)]
mod tests;
