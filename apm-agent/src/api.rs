//! The admin API (axum): /metrics and /health.

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{agent::Agent, requests::Requests};

pub type Shared = Arc<Mutex<Agent>>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub agent: Shared,
    pub requests: Arc<Mutex<Requests>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/stats/requests", get(stats_requests))
        .with_state(state)
}

/// Requests in flight and per-service totals (JSON, bounded in size).
async fn stats_requests(State(state): State<AppState>) -> Response {
    let now = crate::requests::monotonic_ns();
    match state.requests.lock() {
        Ok(requests) => Json(requests.snapshot(now)).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "request state poisoned").into_response(),
    }
}

/// Prometheus text format. Kernel counters are read at scrape time, so a
/// scrape reflects every connection the kernel has seen up to now.
async fn metrics(State(state): State<AppState>) -> Response {
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
        Ok(Ok(body)) => {
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
        }
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
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let report = crate::probes::ProbeReport {
            disabled_reason: Some("test".into()),
            ..Default::default()
        };
        let agent = Agent::new(&config, None, report, metrics);
        let requests = Requests::new(Default::default(), 16, agent.directory.clone());
        AppState {
            agent: Arc::new(Mutex::new(agent)),
            requests: Arc::new(Mutex::new(requests)),
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
        assert_eq!(ctype.as_deref(), Some(crate::metrics::CONTENT_TYPE));
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
