use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::Arc,
};

use super::*;

fn firing() -> Notice {
    Notice::Firing {
        alertname: "Errors".into(),
        severity: "critical".into(),
        labels: [("service_name".to_owned(), "shop".to_owned())].into(),
        value: 0.2,
        threshold: 0.05,
        starts_at: SystemTime::UNIX_EPOCH,
        no_data_since: None,
        repeat: false,
    }
}

#[test]
fn alertmanager_and_webhook_formats() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
    let a = alertmanager_alert(&firing(), "http://agent/alerts", now);
    assert_eq!(a["labels"]["alertname"], "Errors");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["service_name"], "shop");
    assert_eq!(a["startsAt"], "1970-01-01T00:00:00.000Z");
    // Firing: ends four resends on unless re-sent, as Prometheus sets.
    assert_eq!(a["endsAt"], "1970-01-01T00:05:00.000Z");
    let w = webhook_body(&firing(), "http://agent/alerts");
    assert_eq!(w["version"], "4");
    assert_eq!(w["status"], "firing");
    assert_eq!(w["alerts"][0]["status"], "firing");
    assert_eq!(w["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let resolved = Notice::Resolved {
        alertname: "Errors".into(),
        severity: "critical".into(),
        labels: Labels::new(),
        starts_at: SystemTime::UNIX_EPOCH,
        ends_at: SystemTime::UNIX_EPOCH + Duration::from_secs(60),
    };
    assert_eq!(
        alertmanager_alert(&resolved, "x", now + VALID_FOR)["endsAt"],
        "1970-01-01T00:01:00.000Z"
    );
    assert_eq!(
        alertmanager_url("http://am:9093/"),
        "http://am:9093/api/v2/alerts"
    );
    let mut quiet = firing();
    if let Notice::Firing { no_data_since, .. } = &mut quiet {
        *no_data_since = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(30));
    }
    let a = alertmanager_alert(&quiet, "x", now);
    assert_eq!(
        a["annotations"]["no_data_since"],
        "1970-01-01T00:00:30.000Z"
    );
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("no data since")),
        "{a}"
    );
}

fn send(
    client: &HttpClient,
    url: &str,
    body: &Bytes,
    deadline: Instant,
) -> impl Future<Output = Result<Bytes, Failure>> {
    post::send(client, url, JSON, body, deadline, RETRY)
}

#[tokio::test]
async fn a_dead_receiver_fails_after_its_retries_without_leaking_credentials() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let url = format!("http://bob:s3cretpw@127.0.0.1:{port}/hook");
    let deadline = Instant::now() + DEADLINE;
    match send(&post::client(), &url, &Bytes::from_static(b"{}"), deadline).await {
        Err(Failure::Failed(e)) => {
            assert!(e.contains("after 4 attempts"), "{e}");
            assert!(!e.contains("s3cretpw"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// A port that takes connections (the kernel completes them) and
/// never answers: the worst a receiver can do.
fn silent() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://127.0.0.1:{}/hook",
        l.local_addr().expect("addr").port()
    );
    (l, url)
}

#[tokio::test]
async fn a_silent_receiver_stops_at_the_deadline() {
    let (_listener, url) = silent();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(1500);
    let r = send(&post::client(), &url, &Bytes::from_static(b"{}"), deadline).await;
    assert!(matches!(r, Err(Failure::Timeout(_))), "{r:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1700), "{took:?}");
}

/// A webhook that answers 200 and says when each body arrived.
fn live() -> (String, std::sync::mpsc::Receiver<std::time::Instant>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://127.0.0.1:{}/hook",
        l.local_addr().expect("addr").port()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let (mut line, mut len) = (String::new(), 0);
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok() {
                let _ = tx.send(std::time::Instant::now());
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_delays_neither_a_live_one_nor_shutdown() {
    let (_dead, dead_url) = silent();
    let (live_url, arrivals) = live();
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (stop_tx, stop) = watch::channel(false);
    let (dispatch, joined) = start(
        vec![
            Receiver::Webhook(dead_url.clone()),
            Receiver::Webhook(live_url.clone()),
        ],
        metrics.clone(),
        "http://agent/alerts".into(),
        stop,
    );
    let offered = std::time::Instant::now();
    for _ in 0..3 {
        dispatch.offer(&Outgoing::Notice(firing()));
    }
    let late = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| {
                arrivals
                    .recv_timeout(Duration::from_secs(5))
                    .expect("the live receiver got every notice")
                    - offered
            })
            .max()
    })
    .await
    .expect("arrivals")
    .unwrap_or_default();
    assert!(late < Duration::from_secs(1), "{late:?}");
    // The dead one is still on its first notice; the stop signal ends
    // it within the drain.
    let stopping = std::time::Instant::now();
    stop_tx.send(true).expect("stop");
    tokio::time::timeout(DRAIN + Duration::from_secs(2), joined)
        .await
        .expect("delivery ended within the drain")
        .expect("joined");
    let took = stopping.elapsed();
    assert!(took <= DRAIN + Duration::from_millis(500), "{took:?}");
    let count = |family: &prometheus::IntCounterVec, url: &str, what: &str| {
        family.with_label_values(&[url, what]).get()
    };
    let n = &metrics.alert_notifications;
    assert_eq!(count(n, &live_url, "sent"), 3);
    assert_eq!(count(n, &dead_url, "timeout"), 1);
    assert_eq!(
        count(&metrics.alert_notifications_dropped, &dead_url, "shutdown"),
        2
    );
}
