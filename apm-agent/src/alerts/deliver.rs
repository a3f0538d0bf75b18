//! Delivery of alert notices, in its own task behind a bounded queue, so a
//! slow or dead receiver never holds evaluation up: Alertmanager's v2 API
//! (`POST /api/v2/alerts`, firing alerts re-sent every RESEND as it
//! expects, a resolve with `endsAt`) and webhooks in Alertmanager's
//! webhook JSON. Each send is retried with backoff, then counted as
//! failed. Receiver URLs appear in labels and logs without credentials.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::{
    engine::{Active, Labels, Notice, Phase, format_time},
    rules::Receiver,
};
use crate::{redact, telemetry::metrics::Metrics};

/// Notices waiting for delivery at most; more are dropped and counted.
pub const QUEUE: usize = 256;
/// Firing alerts are re-sent to Alertmanager this often.
pub const RESEND: Duration = Duration::from_secs(60);
/// Attempts per send, and the wait before the first retry (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the delivery task is asked to send.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Notice(Notice),
    /// Every firing alert, for Alertmanager only (it forgets alerts not
    /// re-sent within its resolve timeout).
    Resend(Vec<Active>),
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub async fn run(
    receivers: Vec<Receiver>,
    mut queue: mpsc::Receiver<Outgoing>,
    metrics: std::sync::Arc<Metrics>,
    generator_url: String,
    mut stop: watch::Receiver<bool>,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let message = tokio::select! {
            m = queue.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        for receiver in &receivers {
            let (url, body) = match (receiver, &message) {
                (Receiver::Alertmanager(base), Outgoing::Notice(n)) => (
                    alertmanager_url(base),
                    json!([alertmanager_alert(n, &generator_url)]),
                ),
                (Receiver::Alertmanager(base), Outgoing::Resend(active)) if !active.is_empty() => (
                    alertmanager_url(base),
                    Value::Array(
                        active
                            .iter()
                            .filter(|a| a.state == Phase::Firing)
                            .map(|a| alertmanager_alert(&resend_notice(a), &generator_url))
                            .collect(),
                    ),
                ),
                (Receiver::Webhook(url), Outgoing::Notice(n)) => {
                    (url.clone(), webhook_body(n, &generator_url))
                }
                _ => continue,
            };
            let shown = redact::url(match receiver {
                Receiver::Alertmanager(u) | Receiver::Webhook(u) => u,
            });
            let result = send(&client, &url, &body).await;
            let outcome = if result.is_ok() { "sent" } else { "failed" };
            metrics
                .alert_notifications
                .with_label_values(&[&shown, outcome])
                .inc();
            if let Err(e) = result {
                tracing::warn!(receiver = %shown, error = %e, "alert notification failed");
            }
        }
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
        repeat: true,
    }
}

/// POSTs `body` as JSON, with retries and backoff.
async fn send(client: &HttpClient, url: &str, body: &Value) -> Result<(), String> {
    let bytes = Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?);
    let mut wait = FIRST_RETRY;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes.clone()))
            .map_err(|e| redact_error(&e.to_string(), url))?;
        match tokio::time::timeout(TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok(()),
            Ok(Ok(response)) => last = format!("HTTP {}", response.status()),
            Ok(Err(e)) => last = redact_error(&format!("{e:?}"), url),
            Err(_) => last = format!("no answer within {TIMEOUT:?}"),
        }
    }
    Err(format!("{last} (after {ATTEMPTS} attempts)"))
}

/// An error text without the URL's credentials.
fn redact_error(text: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let mut text = text.to_owned();
            for secret in [u.password().unwrap_or_default(), u.username()] {
                if secret.len() >= 3 {
                    text = text.replace(secret, "<redacted>");
                }
            }
            text
        }
        Err(_) => text.to_owned(),
    }
}

fn all_labels(alertname: &str, severity: &str, labels: &Labels) -> Labels {
    let mut all = labels.clone();
    all.insert("alertname".into(), alertname.into());
    all.insert("severity".into(), severity.into());
    all
}

/// One alert in Alertmanager's v2 format.
fn alertmanager_alert(n: &Notice, generator_url: &str) -> Value {
    match n {
        Notice::Firing {
            alertname,
            severity,
            labels,
            value,
            threshold,
            starts_at,
            ..
        } => json!({
            "labels": all_labels(alertname, severity, labels),
            "annotations": {
                "summary": format!("{alertname}: {value:.4} against a threshold of {threshold}"),
                "value": value.to_string(),
                "threshold": threshold.to_string(),
            },
            "startsAt": format_time(*starts_at),
            "generatorURL": generator_url,
        }),
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

/// Alertmanager's webhook JSON (version 4) for one notice.
fn webhook_body(n: &Notice, generator_url: &str) -> Value {
    let (alertname, status) = match n {
        Notice::Firing { alertname, .. } => (alertname, "firing"),
        Notice::Resolved { alertname, .. } => (alertname, "resolved"),
    };
    let mut alert = alertmanager_alert(n, generator_url);
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
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn firing() -> Notice {
        Notice::Firing {
            alertname: "Errors".into(),
            severity: "critical".into(),
            labels: [("service_name".to_owned(), "shop".to_owned())].into(),
            value: 0.2,
            threshold: 0.05,
            starts_at: SystemTime::UNIX_EPOCH,
            repeat: false,
        }
    }

    #[test]
    fn alertmanager_and_webhook_formats() {
        let a = alertmanager_alert(&firing(), "http://agent/alerts");
        assert_eq!(a["labels"]["alertname"], "Errors");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["service_name"], "shop");
        assert_eq!(a["startsAt"], "1970-01-01T00:00:00.000Z");
        assert!(a.get("endsAt").is_none());
        let w = webhook_body(&firing(), "http://agent/alerts");
        assert_eq!(w["version"], "4");
        assert_eq!(w["status"], "firing");
        assert_eq!(w["alerts"][0]["status"], "firing");
        let resolved = Notice::Resolved {
            alertname: "Errors".into(),
            severity: "critical".into(),
            labels: Labels::new(),
            starts_at: SystemTime::UNIX_EPOCH,
            ends_at: SystemTime::UNIX_EPOCH + Duration::from_secs(60),
        };
        assert_eq!(
            alertmanager_alert(&resolved, "x")["endsAt"],
            "1970-01-01T00:01:00.000Z"
        );
        assert_eq!(
            alertmanager_url("http://am:9093/"),
            "http://am:9093/api/v2/alerts"
        );
    }

    #[tokio::test]
    async fn a_dead_receiver_fails_after_its_retries_without_leaking_credentials() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let url = format!("http://bob:s3cretpw@127.0.0.1:{port}/hook");
        let err = send(&client, &url, &json!({})).await.expect_err("refused");
        assert!(err.contains("after 4 attempts"), "{err}");
        assert!(!err.contains("s3cretpw"), "{err}");
    }
}
