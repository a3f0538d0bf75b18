//! Alerts against the real agent, a real HTTP server and a real
//! Alertmanager (Debian's prometheus-alertmanager, started here on
//! loopback): error-ratio and latency rules fire, are delivered, are not
//! re-notified inside their cooldown and resolve; a service that stops
//! while failing keeps its alert firing and raises ServiceAbsent; a dead
//! receiver leaves evaluation on schedule, delays no other receiver and
//! no shutdown; a mistake in the config file stops startup.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use apm_e2e::{Agent, Client, Server, agent_bin, free_port, get, require_root, wait_for};
use serde_json::Value;

/// A real Alertmanager on loopback, stopped when dropped.
struct Alertmanager {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Alertmanager {
    fn start() -> Self {
        let port = free_port().expect("port");
        let dir = std::env::temp_dir().join(format!("apm-e2e-am-{port}"));
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        std::fs::write(
            dir.join("am.yml"),
            "route:\n  receiver: default\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: default\n",
        )
        .expect("config");
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", dir.join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (installed by cargo xtask test)");
        let am = Self { child, port, dir };
        let addr = am.addr();
        let ready = wait_for(Duration::from_secs(20), || {
            get(addr, "/-/ready").ok().filter(|r| r.status == 200)
        });
        assert!(ready.is_some(), "alertmanager did not become ready");
        am
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("addr")
    }

    /// Active alerts named `name`.
    fn alerts(&self, name: &str) -> Vec<Value> {
        let Ok(r) = get(self.addr(), "/api/v2/alerts") else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["labels"]["alertname"] == name)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A webhook receiver that keeps every body it is sent.
struct Webhook {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let keep = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut r = BufReader::new(stream);
                let mut len = 0;
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    keep.lock().expect("bodies").push(v);
                }
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self { port, bodies }
    }

    /// Bodies with this status ("firing" or "resolved").
    fn count(&self, status: &str) -> usize {
        self.bodies
            .lock()
            .expect("bodies")
            .iter()
            .filter(|b| b["status"] == status)
            .count()
    }
}

fn alerts_json(agent: &Agent) -> Value {
    let r = get(agent.addr, "/alerts").expect("/alerts");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("apm-e2e-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn a_bad_config_stops_startup_naming_the_line() {
    require_root();
    let path = write(
        "bad",
        "[alerts]\n\n[[alerts.rules]]\nname = \"A\"\nsignal = \"http_error_ratio\"\nabove = 0.1\nwindow = \"a while\"\n",
    );
    let out = Command::new(agent_bin())
        .args(["--no-ebpf", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("agent");
    assert!(!out.status.success(), "started with a bad config");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("line 7") && text.contains("invalid duration"),
        "{text}"
    );
    std::fs::remove_file(path).ok();
}

#[test]
fn a_good_config_starts_and_says_how_many_rules() {
    require_root();
    let path = write(
        "good",
        "[alerts]\nevaluation_interval = \"1s\"\n\n[[alerts.rules]]\nname = \"CheckoutErrors\"\nsignal = \"http_error_ratio\"\nabove = 0.05\n",
    );
    let agent =
        Agent::start(&["--no-ebpf", "--config", path.to_str().expect("path")]).expect("agent");
    std::thread::sleep(Duration::from_millis(200));
    let log = agent.log_text();
    assert!(
        log.contains("alert rules loaded") && log.contains("\"rules\":10"),
        "{log}"
    );
    std::fs::remove_file(path).ok();
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    write(name, text)
}

/// The agent selecting the Python server on `port`, with `config`.
fn agent_for(port: u16, config: &std::path::Path) -> Agent {
    let agent = Agent::start(&[
        "--port",
        &port.to_string(),
        "--config",
        config.to_str().expect("path"),
    ])
    .expect("agent");
    agent.wait_for_service(port, "python3");
    agent
}

#[test]
fn an_error_ratio_alert_reaches_alertmanager_once_and_resolves() {
    require_root();
    let am = Alertmanager::start();
    let hook = Webhook::start();
    let port = free_port().expect("port");
    let _server = Server::python(port).expect("server");
    let config = write_config(
        "errors",
        &format!(
            "[alerts]\nevaluation_interval = \"500ms\"\ndefaults = false\n\n\
             [[alerts.rules]]\nname = \"ShopErrors\"\nsignal = \"http_error_ratio\"\nabove = 0.1\n\
             window = \"10s\"\nfor = \"2s\"\ncooldown = \"5m\"\nseverity = \"critical\"\n\n\
             [[alerts.receivers]]\nalertmanager = \"http://127.0.0.1:{}\"\n\n\
             [[alerts.receivers]]\nwebhook = \"http://127.0.0.1:{}/hook\"\n",
            am.port, hook.port
        ),
    );
    let agent = agent_for(port, &config);

    // 20 % of requests answer 500, about 50 requests a second.
    let mut client = Client::connect(port).expect("connect");
    let start = Instant::now();
    let mut sent = 0u64;
    let mut detected = None;
    while start.elapsed() < Duration::from_secs(20) {
        for i in 0..5 {
            client
                .get(if i == 0 { "/error" } else { "/ok" })
                .expect("request");
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
        if detected.is_none() && !am.alerts("ShopErrors").is_empty() {
            detected = Some(start.elapsed());
            break;
        }
    }
    let detected =
        detected.unwrap_or_else(|| panic!("no alert in Alertmanager: {}", alerts_json(&agent)));
    // `for` is 2 s; the window needs 20 requests first (0.4 s here), then
    // delivery within 5 s of `for` elapsing.
    eprintln!(
        "error-ratio alert in Alertmanager {:.2} s after the errors began ({sent} requests)",
        detected.as_secs_f64()
    );
    assert!(
        detected >= Duration::from_secs(2),
        "fired before `for`: {detected:?}"
    );
    assert!(detected <= Duration::from_secs(8), "too slow: {detected:?}");
    let alert = &am.alerts("ShopErrors")[0];
    assert_eq!(alert["labels"]["service_name"], "python3");
    assert_eq!(alert["labels"]["severity"], "critical");

    // Errors go on for 3 s more: still one notification (cooldown 5 m).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for i in 0..5 {
            client
                .get(if i == 0 { "/error" } else { "/ok" })
                .expect("request");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        hook.count("firing"),
        1,
        "{:?}",
        hook.bodies.lock().expect("bodies")
    );
    let doc = alerts_json(&agent);
    assert_eq!(doc["firing"][0]["alertname"], "ShopErrors", "{doc}");

    // The errors stop: the window's ratio falls under 10 %, the alert
    // resolves here, in the webhook and in Alertmanager.
    let resolved = wait_for(Duration::from_secs(25), || {
        for _ in 0..5 {
            client.get("/ok").ok()?;
        }
        std::thread::sleep(Duration::from_millis(100));
        (am.alerts("ShopErrors").is_empty() && hook.count("resolved") == 1).then_some(())
    });
    assert!(resolved.is_some(), "not resolved: {}", alerts_json(&agent));
    let doc = alerts_json(&agent);
    assert_eq!(doc["resolved"][0]["alertname"], "ShopErrors", "{doc}");
    assert!(doc["firing"].as_array().is_some_and(Vec::is_empty), "{doc}");
    std::fs::remove_file(config).ok();
}

#[test]
fn a_latency_alert_fires_for_the_slow_route_only() {
    require_root();
    let port = free_port().expect("port");
    let _server = Server::python(port).expect("server");
    let config = write_config(
        "latency",
        "[alerts]\nevaluation_interval = \"500ms\"\ndefaults = false\n\n\
         [[alerts.rules]]\nname = \"SlowRoute\"\nsignal = \"http_latency_p95_seconds\"\nabove = 0.2\n\
         window = \"10s\"\nfor = \"1s\"\n",
    );
    let agent = agent_for(port, &config);
    let mut slow = Client::connect(port).expect("connect");
    let mut fast = Client::connect(port).expect("connect");
    // About 3 slow requests a second: the default min_requests (20) is
    // there after some 7 s, then `for`.
    let fired = wait_for(Duration::from_secs(25), || {
        slow.get("/sleep/300").ok()?;
        for _ in 0..10 {
            fast.get("/ok").ok()?;
        }
        let doc = alerts_json(&agent);
        let firing = doc["firing"].as_array()?.clone();
        (!firing.is_empty()).then_some(firing)
    })
    .unwrap_or_else(|| panic!("no latency alert: {}", alerts_json(&agent)));
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["labels"]["http_route"], "/sleep/{id}");
    let p95 = fired[0]["value"].as_f64().expect("value");
    assert!((0.25..0.45).contains(&p95), "p95 {p95}");
    std::fs::remove_file(config).ok();
}

#[test]
fn a_dead_receiver_leaves_evaluation_on_schedule_and_is_counted() {
    require_root();
    let dead = free_port().expect("port");
    let config = write_config(
        "dead",
        &format!(
            "[alerts]\nevaluation_interval = \"200ms\"\ndefaults = false\n\n\
             [[alerts.rules]]\nname = \"Always\"\nsignal = \"host_memory_ratio\"\nbelow = 2.0\nwindow = \"5s\"\n\n\
             [[alerts.receivers]]\nwebhook = \"http://user:hunter2pw@127.0.0.1:{dead}/hook\"\n"
        ),
    );
    let agent =
        Agent::start(&["--no-ebpf", "--config", config.to_str().expect("path")]).expect("agent");
    let failed = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics().ok()?;
        let n = m.value(
            "apm_alert_notifications_total",
            &[
                ("receiver", &format!("http://127.0.0.1:{dead}/hook")),
                ("result", "failed"),
            ],
        )?;
        (n >= 1.0).then_some(n)
    });
    assert!(
        failed.is_some(),
        "no failed notification counted: {}",
        agent.log_text()
    );
    // Meanwhile evaluation kept its 200 ms schedule.
    let doc = alerts_json(&agent);
    let times: Vec<String> = doc["recent_evaluations"]
        .as_array()
        .expect("evaluations")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    assert!(times.len() >= 15, "{doc}");
    let ms = |t: &str| -> f64 {
        // ...THH:MM:SS.mmmZ
        let clock = &t[11..23];
        let (h, rest) = clock.split_at(2);
        let m: f64 = rest[1..3].parse().expect("m");
        let s: f64 = rest[4..].parse().expect("s");
        (h.parse::<f64>().expect("h") * 3600.0 + m * 60.0 + s) * 1000.0
    };
    let gaps: Vec<f64> = times.windows(2).map(|w| ms(&w[1]) - ms(&w[0])).collect();
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    assert!(worst < 600.0, "evaluation stalled {worst} ms: {gaps:?}");
    assert!(
        !agent.log_text().contains("hunter2pw"),
        "the receiver's password was logged"
    );
    std::fs::remove_file(config).ok();
}

/// A port that takes connections (the kernel completes the handshake) and
/// never answers: a receiver that hangs, the worst kind of dead.
fn silent_receiver() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

#[test]
fn a_hanging_webhook_first_delays_neither_alertmanager_nor_shutdown() {
    require_root();
    let am = Alertmanager::start();
    let (_hanging, dead) = silent_receiver();
    let config = apm_e2e::always_firing_config(
        "HangingFirst",
        &format!(
            "[[alerts.receivers]]\nwebhook = \"http://127.0.0.1:{dead}/hook\"\n\n\
             [[alerts.receivers]]\nalertmanager = \"http://127.0.0.1:{}\"\n",
            am.port
        ),
    );
    let mut agent =
        Agent::start(&["--no-ebpf", "--config", config.to_str().expect("path")]).expect("agent");
    let started = Instant::now();
    let fired = wait_for(Duration::from_secs(10), || {
        let doc = alerts_json(&agent);
        let firing = doc["firing"].as_array()?;
        (!firing.is_empty()).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("not firing: {}", alerts_json(&agent)));
    let received = wait_for(Duration::from_secs(15), || {
        (!am.alerts("HangingFirst").is_empty()).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("Alertmanager got nothing: {}", agent.log_text()));
    let after_firing = received.saturating_duration_since(fired);
    eprintln!(
        "with a hanging webhook first: firing {:.2} s after start, in Alertmanager {:.2} s after firing",
        (fired - started).as_secs_f64(),
        after_firing.as_secs_f64()
    );
    assert!(
        received - started < Duration::from_secs(10),
        "Alertmanager waited {:?}",
        received - started
    );
    let m = agent.metrics().expect("metrics");
    // As redact::url shows it.
    let am_url = format!("http://127.0.0.1:{}/", am.port);
    assert_eq!(
        m.value(
            "apm_alert_notifications_total",
            &[("receiver", am_url.as_str()), ("result", "sent")]
        )
        .map(|n| n >= 1.0),
        Some(true),
        "{}",
        m.text
    );
    // The hanging webhook still holds its notice (10 s deadline): SIGTERM
    // ends delivery within its 3 s drain, well inside the DaemonSet's
    // 15 s grace period.
    let hook = format!("http://127.0.0.1:{dead}/hook");
    assert_eq!(
        m.value(
            "apm_alert_notifications_total",
            &[("receiver", hook.as_str()), ("result", "timeout")]
        ),
        Some(0.0),
        "{}",
        m.text
    );
    let stopping = Instant::now();
    let status = agent.terminate(Duration::from_secs(15)).expect("exit");
    let took = stopping.elapsed();
    eprintln!(
        "SIGTERM to exit with a hanging receiver: {:.2} s",
        took.as_secs_f64()
    );
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    std::fs::remove_file(config).ok();
}

#[test]
fn a_service_that_stops_while_failing_stays_firing_and_raises_service_absent() {
    require_root();
    let am = Alertmanager::start();
    let port = free_port().expect("port");
    let server = Server::python(port).expect("server");
    let config = write_config(
        "stops",
        &format!(
            "[alerts]\nevaluation_interval = \"500ms\"\ndefaults = false\n\n\
             [[alerts.rules]]\nname = \"ShopErrors\"\nsignal = \"http_error_ratio\"\nabove = 0.1\n\
             window = \"5s\"\nfor = \"1s\"\n\n\
             [[alerts.rules]]\nname = \"ServiceAbsent\"\nsignal = \"service_absent\"\n\
             window = \"5s\"\nfor = \"1s\"\n\n\
             [[alerts.receivers]]\nalertmanager = \"http://127.0.0.1:{}\"\n",
            am.port
        ),
    );
    let agent = agent_for(port, &config);
    let mut client = Client::connect(port).expect("connect");
    // Half the requests fail until the alert fires.
    let fired = wait_for(Duration::from_secs(20), || {
        for path in ["/error", "/ok", "/error", "/ok", "/error"] {
            client.get(path).ok()?;
        }
        std::thread::sleep(Duration::from_millis(50));
        (!am.alerts("ShopErrors").is_empty()).then_some(())
    });
    assert!(fired.is_some(), "not firing: {}", alerts_json(&agent));
    // The service dies.
    drop(client);
    drop(server);
    let stopped = Instant::now();
    let absent = wait_for(Duration::from_secs(20), || {
        (!am.alerts("ServiceAbsent").is_empty()).then_some(())
    });
    assert!(
        absent.is_some(),
        "no ServiceAbsent: {}",
        alerts_json(&agent)
    );
    eprintln!(
        "ServiceAbsent in Alertmanager {:.2} s after the service stopped",
        stopped.elapsed().as_secs_f64()
    );
    // Three windows on, the error alert is still firing, without data,
    // here and in Alertmanager.
    std::thread::sleep(Duration::from_secs(15).saturating_sub(stopped.elapsed()));
    let doc = alerts_json(&agent);
    let errors: Vec<&Value> = doc["firing"]
        .as_array()
        .expect("firing")
        .iter()
        .filter(|a| a["alertname"] == "ShopErrors")
        .collect();
    assert_eq!(errors.len(), 1, "{doc}");
    assert!(errors[0]["no_data_since"].is_string(), "{doc}");
    assert!(
        doc["resolved"].as_array().is_some_and(Vec::is_empty),
        "{doc}"
    );
    // No resolve reached Alertmanager either.
    let in_am = am.alerts("ShopErrors");
    assert_eq!(in_am.len(), 1, "{in_am:?}");
    assert_eq!(in_am[0]["status"]["state"], "active", "{in_am:?}");
    let m = agent.metrics().expect("metrics");
    assert_eq!(m.value("apm_alerts_without_data", &[]), Some(1.0));
    std::fs::remove_file(config).ok();
}
