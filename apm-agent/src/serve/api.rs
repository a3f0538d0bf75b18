//! The admin API (axum): /metrics and /health.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{
    agent::Agent,
    serve::health::{self, DependencyStatus},
    telemetry::logs::LogRing,
    telemetry::metrics::Metrics,
    telemetry::requests::Requests,
    telemetry::sampler::SystemSample,
};

/// The latest process and host sample and when it was taken.
pub type LatestSample = Arc<RwLock<Option<(Instant, SystemSample)>>>;

pub type Shared = Arc<Mutex<Agent>>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub agent: Shared,
    pub requests: Arc<Mutex<Requests>>,
    pub metrics: Arc<Metrics>,
    pub system: LatestSample,
    pub sample_interval: Duration,
    pub dependencies: Arc<RwLock<Vec<DependencyStatus>>>,
    pub configured_dependencies: usize,
    pub logs: Arc<LogRing>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/stats/requests", get(stats_requests))
        .route("/stats/system", get(stats_system))
        .route("/health/detailed", get(health_detailed))
        .route("/logs/recent", get(logs_recent))
        .with_state(state)
}

/// The latest sample; never measures inside the request.
async fn stats_system(State(state): State<AppState>) -> Response {
    let latest = state.system.read().ok().and_then(|s| s.clone());
    match latest {
        Some((at, sample)) => Json(serde_json::json!({
            "age_seconds": at.elapsed().as_secs_f64(),
            "sample": sample,
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
    let (probes, lost) = match state.agent.lock() {
        Ok(a) => (a.report.clone(), a.lost_last_minute()),
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "agent state poisoned").into_response();
        }
    };
    let latest = state.system.read().ok().and_then(|s| s.clone());
    let deps = state
        .dependencies
        .read()
        .map(|d| d.clone())
        .unwrap_or_default();
    let report = health::evaluate(&health::Inputs {
        probes: &probes,
        lost_last_minute: lost,
        sample: latest.as_ref().map(|(at, s)| (at.elapsed(), s)),
        sample_interval: state.sample_interval,
        dependencies: &deps,
        configured_dependencies: state.configured_dependencies,
    });
    let code = if report.status == health::Status::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
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

/// Requests in flight and per-service totals (JSON, bounded in size).
async fn stats_requests(State(state): State<AppState>) -> Response {
    let now = crate::telemetry::requests::monotonic_ns();
    match state.requests.lock() {
        Ok(requests) => Json(requests.snapshot(now)).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "request state poisoned").into_response(),
    }
}

/// Prometheus text format. Kernel counters are read at scrape time, so a
/// scrape reflects every connection the kernel has seen up to now.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Some((at, _)) = state.system.read().ok().and_then(|s| s.clone()) {
        state.metrics.sample_age.set(at.elapsed().as_secs_f64());
    }
    let evicted = state.logs.evicted();
    let exported = state.metrics.log_records_evicted.get();
    state
        .metrics
        .log_records_evicted
        .inc_by(evicted.saturating_sub(exported));
    let agent = state.agent;
    let rendered = tokio::task::spawn_blocking(move || {
        let mut agent = agent
            .lock()
            .map_err(|_| "agent state poisoned".to_owned())?;
        agent.collect_for_scrape();
        agent.metrics.encode().map_err(|e| e.to_string())
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

/// Liveness: answers as long as the agent's server runs. It depends on
/// nothing else (not on eBPF, procfs or any dependency).
async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
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
        let agent = Agent::new(&config, None, report, metrics.clone());
        let requests = Requests::new(Default::default(), 16, agent.directory.clone());
        AppState {
            agent: Arc::new(Mutex::new(agent)),
            requests: Arc::new(Mutex::new(requests)),
            metrics,
            system: Arc::new(RwLock::new(None)),
            sample_interval: Duration::from_secs(1),
            dependencies: Arc::new(RwLock::new(Vec::new())),
            configured_dependencies: 0,
            logs: Arc::new(LogRing::new(10)),
        }
    }

    async fn get(path: &str) -> (StatusCode, Option<String>, String) {
        let response = router(degraded_agent())
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
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
}
