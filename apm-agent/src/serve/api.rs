//! The admin API (axum): /metrics, health, statistics and logs; and the
//! metrics-only router for `--metrics-listen`.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Query, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{
    agent::{Agent, TlsLibraries},
    alerts::evaluate::Alerts,
    capture::kernel::ProbeReport,
    redact::Secret,
    serve::{auth, checks::DependencyStatus, dashboard, health},
    tasks::Tasks,
    telemetry::history::History,
    telemetry::logs::LogRing,
    telemetry::metrics::Metrics,
    telemetry::sampler::SystemSample,
    telemetry::snapshot::Published,
    telemetry::windows::SampleWindow,
};

/// The latest process and host sample and when it was taken.
pub type LatestSample = Arc<RwLock<Option<(Instant, SystemSample)>>>;

pub type Shared = Arc<Mutex<Agent>>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub agent: Shared,
    /// What the eBPF side could do (fixed at start).
    pub probes: Arc<ProbeReport>,
    /// The TLS libraries probed or skipped (as processes come and go).
    pub tls_libraries: TlsLibraries,
    /// Ring-buffer records lost in about the last minute.
    pub lost_recently: Arc<AtomicU64>,
    /// The request pipeline's latest snapshot.
    pub pipeline: Arc<Published>,
    pub metrics: Arc<Metrics>,
    pub system: LatestSample,
    pub sample_interval: Duration,
    pub dependencies: Arc<RwLock<Vec<DependencyStatus>>>,
    pub configured_dependencies: usize,
    pub logs: Arc<LogRing>,
    /// The long-running tasks readiness depends on.
    pub tasks: Arc<Tasks>,
    /// The bearer token every endpoint but the probes' requires.
    pub auth_token: Option<Arc<Secret>>,
    /// Alert rules and their state (/alerts).
    pub alerts: Arc<Alerts>,
    /// The sampler's rolling window, for host and process alert rules.
    pub samples: Arc<Mutex<SampleWindow>>,
    /// The dashboard's time series.
    pub history: Arc<Mutex<History>>,
}

/// Every endpoint: the admin listener (`--listen`).
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/stats/requests", get(stats_requests))
        .route("/stats/system", get(stats_system))
        .route("/health/detailed", get(health_detailed))
        .route("/logs/recent", get(logs_recent))
        .route("/traces/recent", get(traces_recent))
        .route("/alerts", get(alerts))
        .route("/api/dashboard", get(dashboard::data));
    with_probes(protected, state)
        // The page and its assets hold no data: no token needed to load
        // them (the page asks for one when the API answers 401).
        .route("/", get(dashboard::index))
        .route("/dashboard", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
}

/// Only /metrics (and the probes): the `--metrics-listen` listener, which
/// a DaemonSet can expose to the cluster while the rest stays on loopback.
pub fn metrics_router(state: AppState) -> Router {
    with_probes(Router::new().route("/metrics", get(metrics)), state)
}

/// `protected` behind the token, plus the unauthenticated probes, with the
/// request-size limits on everything.
fn with_probes(protected: Router<AppState>, state: AppState) -> Router {
    protected
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .layer(middleware::from_fn(auth::limit_request))
        .layer(DefaultBodyLimit::max(auth::MAX_BODY))
        .with_state(state)
}

/// Firing and pending alerts, recent resolved ones, and the rules.
async fn alerts(State(state): State<AppState>) -> Response {
    Json(state.alerts.document()).into_response()
}

/// Readiness: 503 while a task the agent needs (ring reader, sampler,
/// refresh, API) has stopped or stalled. Names the tasks, nothing else.
async fn ready(State(state): State<AppState>) -> Response {
    let tasks = state.tasks.states();
    let ready = tasks.iter().all(|t| t.alive);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": ready, "tasks": tasks }))).into_response()
}

/// The latest sample; never measures inside the request.
async fn stats_system(State(state): State<AppState>) -> Response {
    let latest = state.system.read().ok().and_then(|s| s.clone());
    match latest {
        Some((at, sample)) => Json(serde_json::json!({
            "age_seconds": at.elapsed().as_secs_f64(),
            "sample": sample,
            // Each service's ports' and destinations' TCP health.
            "network": state.metrics.saturation.network(None),
        }))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "no sample yet"})),
        )
            .into_response(),
    }
}

/// Readiness-style detail: 200 when healthy or degraded, 503 when unhealthy.
async fn health_detailed(State(state): State<AppState>) -> Response {
    let report = match detailed(&state) {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let code = if report.status == health::Status::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
}

/// The /health/detailed report (also the dashboard's health panel).
pub fn detailed(state: &AppState) -> Result<health::HealthReport, &'static str> {
    let lost = state.lost_recently.load(Ordering::Relaxed);
    let latest = state.system.read().ok().and_then(|s| s.clone());
    let deps = state
        .dependencies
        .read()
        .map(|d| d.clone())
        .unwrap_or_default();
    let tasks = state.tasks.states();
    let tls = state
        .tls_libraries
        .read()
        .map(|t| t.clone())
        .unwrap_or_default();
    Ok(health::evaluate(&health::Inputs {
        tasks: &tasks,
        probes: &state.probes,
        tls_libraries: &tls,
        lost_last_minute: lost,
        sample: latest.as_ref().map(|(at, s)| (at.elapsed(), s)),
        sample_interval: state.sample_interval,
        dependencies: &deps,
        configured_dependencies: state.configured_dependencies,
    }))
}

#[derive(serde::Deserialize)]
struct LogQuery {
    limit: Option<usize>,
    level: Option<String>,
}

/// The newest log records (oldest first), optionally at least `level`.
async fn logs_recent(State(state): State<AppState>, Query(q): Query<LogQuery>) -> Response {
    let level = match q.level.as_deref() {
        None => tracing::Level::TRACE,
        Some(l) => match crate::telemetry::logs::parse_level(l) {
            Some(level) => level,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({"error": format!("unknown level {l:?}: use error, warn, info, debug or trace")})),
                )
                    .into_response();
            }
        },
    };
    let limit = q.limit.unwrap_or(100).min(state.logs.capacity());
    Json(state.logs.recent(limit, level)).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct TraceQuery {
    service: Option<String>,
    /// A root span's name, e.g. `GET /orders/{id}`.
    operation: Option<String>,
    limit: Option<usize>,
}

/// Traces listed at most by one /traces/recent.
const MAX_TRACES_SHOWN: usize = 100;

/// The failed and the slowest traces of the last five minutes, whole
/// (JSON, bounded).
async fn traces_recent(State(state): State<AppState>, Query(q): Query<TraceQuery>) -> Response {
    let limit = q.limit.unwrap_or(20).min(MAX_TRACES_SHOWN);
    let traces = state.pipeline.load().traces.clone();
    Json(traces.to_json(
        q.service.as_deref(),
        q.operation.as_deref(),
        limit,
        crate::telemetry::traces::export::unix_offset_ns(),
    ))
    .into_response()
}

/// Requests in flight and per-service totals (JSON, bounded in size).
async fn stats_requests(State(state): State<AppState>) -> Response {
    Json(&state.pipeline.load().stats).into_response()
}

/// Prometheus text format. Kernel counters are read at scrape time, so a
/// scrape reflects every connection the kernel has seen up to now.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Some((at, _)) = state.system.read().ok().and_then(|s| s.clone()) {
        state.metrics.sample_age.set(at.elapsed().as_secs_f64());
    }
    state
        .metrics
        .log_records_evicted
        .inc_by(state.logs.take_uncounted_evictions());
    let agent = state.agent;
    let rendered = tokio::task::spawn_blocking(move || {
        // The kernel's counters are read now, unless a refresh holds the
        // agent for longer than a scrape should wait: then they are as of
        // that refresh, which collects them as it ends.
        match lock_within(&agent, SCRAPE_WAIT) {
            Some(Ok(mut agent)) => agent.collect_for_scrape(),
            Some(Err(_)) => return Err("agent state poisoned".to_owned()),
            None => {}
        }
        state.metrics.encode().map_err(|e| e.to_string())
    })
    .await;
    match rendered {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                crate::telemetry::metrics::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// How long a scrape waits for the agent's lock at most.
const SCRAPE_WAIT: Duration = Duration::from_millis(20);

/// The lock of `m` if it comes free within `wait`.
fn lock_within<T>(
    m: &Mutex<T>,
    wait: Duration,
) -> Option<Result<std::sync::MutexGuard<'_, T>, ()>> {
    let until = Instant::now() + wait;
    loop {
        match m.try_lock() {
            Ok(guard) => return Some(Ok(guard)),
            Err(std::sync::TryLockError::Poisoned(_)) => return Some(Err(())),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// Liveness: 200 while every task the agent runs is alive, whatever the
/// host gives it (eBPF, procfs, dependencies); 503 naming the dead ones
/// when one stopped or stalled (the watchdog ends the agent moments later).
async fn health(State(state): State<AppState>) -> Response {
    let dead = state.tasks.dead();
    if dead.is_empty() {
        return Json(json!({ "status": "ok" })).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "dead", "tasks": dead })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use clap::Parser as _;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    fn degraded_agent() -> AppState {
        let config =
            crate::config::Config::try_parse_from(["apm-agent", "--port", "8080"]).expect("config");
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new().expect("metrics"));
        let report = crate::capture::kernel::ProbeReport {
            disabled_reason: Some("test".into()),
            ..Default::default()
        };
        let agent = Agent::new(&config, None, &report, metrics.clone());
        AppState {
            probes: Arc::new(report),
            lost_recently: agent.lost_recently.clone(),
            tls_libraries: agent.tls_libraries.clone(),
            agent: Arc::new(Mutex::new(agent)),
            pipeline: Arc::new(Published::new(
                crate::telemetry::snapshot::PipelineSnapshot::empty(Duration::from_secs(60)),
            )),
            metrics,
            system: Arc::new(RwLock::new(None)),
            sample_interval: Duration::from_secs(1),
            dependencies: Arc::new(RwLock::new(Vec::new())),
            configured_dependencies: 0,
            logs: Arc::new(LogRing::new(10)),
            tasks: Arc::new(Tasks::default()),
            auth_token: None,
            alerts: Arc::new(Alerts::new(Default::default())),
            samples: Arc::new(Mutex::new(SampleWindow::new(Duration::from_secs(60)))),
            history: Arc::new(Mutex::new(History::default())),
        }
    }

    async fn get(path: &str) -> (StatusCode, Option<String>, String) {
        send(router(degraded_agent()), path, None).await
    }

    async fn send(
        router: Router,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Option<String>, String) {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = router
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let ctype = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, ctype, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn metrics_are_served_in_text_format_without_ebpf() {
        let (status, ctype, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            ctype.as_deref(),
            Some(crate::telemetry::metrics::CONTENT_TYPE)
        );
        assert!(body.contains("\napm_ebpf_up 0\n"), "{body}");
        assert!(body.contains("apm_build_info{version="), "{body}");
    }

    #[tokio::test]
    async fn stats_requests_is_json_even_when_empty() {
        let (status, ctype, body) = get("/stats/requests").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["in_flight_total"], 0);
    }

    #[tokio::test]
    async fn health_is_up_without_ebpf() {
        let (status, _, body) = get("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"status":"ok"}"#);
    }

    #[tokio::test]
    async fn a_token_guards_everything_but_the_probes() {
        let mut state = degraded_agent();
        state.auth_token = Some(Arc::new(Secret::new("s3cret-token")));
        let app = router(state.clone());
        for path in [
            "/metrics",
            "/stats/requests",
            "/stats/system",
            "/health/detailed",
            "/logs/recent",
            "/alerts",
        ] {
            let (status, _, body) = send(app.clone(), path, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(body.contains("missing bearer token"), "{body}");
            let (status, _, body) = send(app.clone(), path, Some("s3cret-tokex")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(body.contains("wrong bearer token"), "{body}");
            let (status, _, _) = send(app.clone(), path, Some("s3cret-token")).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert_ne!(status, StatusCode::NOT_FOUND, "{path}");
        }
        for path in ["/health", "/health/ready"] {
            let (status, _, _) = send(app.clone(), path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        let metrics_only = metrics_router(state);
        let (status, _, _) = send(metrics_only.clone(), "/metrics", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = send(metrics_only.clone(), "/logs/recent", Some("s3cret-token")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn long_queries_and_large_bodies_are_refused() {
        let (status, _, body) = get(&format!("/logs/recent?level={}", "a".repeat(2000))).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert!(body.contains("query too long"), "{body}");
        let response = router(degraded_agent())
            .oneshot(
                Request::get("/metrics")
                    .header(header::CONTENT_LENGTH, "100000")
                    .body(Body::from(vec![b'x'; 100_000]))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn readiness_and_liveness_follow_the_tasks() {
        let state = degraded_agent();
        let beat = state.tasks.watch("ring reader", Duration::from_secs(60));
        let app = router(state);
        let (status, _, body) = send(app.clone(), "/health/ready", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        drop(beat);
        let (status, _, body) = send(app.clone(), "/health/ready", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("ring reader"), "{body}");
        // A dead task fails liveness too: the agent must be restarted.
        let (status, _, body) = send(app.clone(), "/health", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("ring reader") && body.contains("stopped"),
            "{body}"
        );
        let (_, _, body) = send(app, "/health/detailed", None).await;
        assert!(body.contains("\"unhealthy\""), "{body}");
    }

    #[tokio::test]
    async fn the_dashboard_feed_stays_small_with_200_services_and_says_when_empty() {
        let state = degraded_agent();
        let app = router(state.clone());
        let (status, _, body) = send(app.clone(), "/api/dashboard", None).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["services"], serde_json::json!([]));
        assert!(v["selected"].is_null());
        let (_, _, page) = send(app.clone(), "/", None).await;
        assert!(
            page.contains("--port") && page.contains("--comm"),
            "empty state"
        );
        {
            let mut history = state.history.lock().expect("history");
            for step in 0..crate::telemetry::history::POINTS {
                let points = (0..200)
                    .map(|i| {
                        (
                            format!("svc-{i:03}"),
                            crate::telemetry::history::ServicePoint {
                                rps: f64::from(i),
                                ..Default::default()
                            },
                        )
                    })
                    .collect();
                history.push(step as f64, points, (0.5, 0.5));
            }
        }
        let (status, _, body) = send(app, "/api/dashboard", None).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["services"].as_array().map(Vec::len), Some(200));
        // Busiest first, and only its series is sent.
        assert_eq!(v["selected"], "svc-199");
        assert_eq!(v["series"]["rps"].as_array().map(Vec::len), Some(450));
        assert!(body.len() < 200_000, "{} bytes", body.len());
    }
}
