//! The built-in live dashboard: `GET /` (and `/dashboard`) serves one page
//! and its assets, all embedded in the binary (uPlot vendored, no CDN, no
//! web font); the page polls `GET /api/dashboard` every 2 s, a small JSON
//! document built from the agent's own rolling windows (never /metrics).
//! The page and its assets carry no data and need no token; the data
//! endpoint is behind the token like every admin endpoint.

use axum::{
    Json,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::api::AppState;
use crate::services::directory::is_ownerless;
use crate::telemetry::{
    history::STEP,
    snapshot::{RequestStats, RouteSummary},
};

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
const UPLOT_JS: &str = include_str!("dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("dashboard/vendor/uPlot.min.css");

/// Routes listed per table.
const ROUTES_SHOWN: usize = 10;
/// Warnings shown.
const WARNINGS_SHOWN: usize = 10;
/// Slowest SQL statements of the selected service shown.
const STATEMENTS_SHOWN: usize = 10;

pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing outside the agent: scripts, styles and data only from
            // this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
            ),
        ],
        INDEX,
    )
        .into_response()
}

pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript"),
        "style.css" => (STYLE, "text/css"),
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct Selected {
    service: Option<String>,
}

/// The dashboard's data: every service's latest values, the selected
/// service's series and routes, the host, health, firing alerts and the
/// newest warnings.
pub async fn data(State(state): State<AppState>, Query(q): Query<Selected>) -> Response {
    let history = state.history.lock().unwrap_or_else(|p| p.into_inner());
    let latest = history.latest();
    let mut services: Vec<Value> = latest
        .iter()
        .map(|(name, p)| {
            let p = p.unwrap_or_default();
            json!({
                "name": name,
                "rps": p.rps,
                "error_ratio": p.error_ratio,
                "p95": p.p95,
                "cpu_cores": p.cpu_cores,
                "memory_bytes": p.memory_bytes,
            })
        })
        .collect();
    // Busiest first; listeners named by their port alone (no owner
    // found) after every named service.
    let ownerless = |s: &Value| s["name"].as_str().is_some_and(is_ownerless);
    services.sort_by(|a, b| {
        ownerless(a)
            .cmp(&ownerless(b))
            .then_with(|| {
                b["rps"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .total_cmp(&a["rps"].as_f64().unwrap_or(0.0))
            })
            .then_with(|| a["name"].as_str().cmp(&b["name"].as_str()))
    });
    let selected = q
        .service
        .filter(|s| latest.iter().any(|(n, _)| n == s))
        .or_else(|| {
            services
                .first()
                .and_then(|s| s["name"].as_str().map(str::to_owned))
        });
    let series = selected.as_deref().and_then(|s| history.service(s));
    let host_series = history.host();
    drop(history);

    let snapshot = state.pipeline.load();
    let (routes, commands, statements) = match &selected {
        Some(name) => {
            let stats = &snapshot.stats;
            let commands = stats.databases.get(name).cloned().unwrap_or_default();
            let mut statements = stats.statements.get(name).cloned().unwrap_or_default();
            statements.sort_by(|a, b| b.p99_seconds.total_cmp(&a.p99_seconds));
            statements.truncate(STATEMENTS_SHOWN);
            (routes_of(stats, name), commands, statements)
        }
        None => (
            json!({ "slowest": [], "errors": [] }),
            Vec::new(),
            Vec::new(),
        ),
    };
    let outbound: Vec<Value> = selected
        .as_deref()
        .map(|s| state.metrics.outbound_of(s))
        .unwrap_or_default()
        .into_iter()
        .map(|(destination, active)| json!({ "destination": destination, "active": active }))
        .collect();
    let sample = state.system.read().ok().and_then(|s| s.clone());
    // The selected service's saturation now, and its network's health.
    let saturation = selected.as_deref().map(|name| {
        let now = sample
            .as_ref()
            .and_then(|(_, s)| s.services.get(name))
            .map(|s| s.saturation.clone());
        let network = state.metrics.saturation.network(Some(name)).remove(name);
        json!({ "now": now, "network": network.unwrap_or_default() })
    });
    let host = sample.map(|(_, s)| {
        json!({
            "cpu_count": s.host.cpu_count,
            "cpu_busy_ratio": s.host.cpu_busy_ratio,
            "memory_used_ratio": s.host.memory_used_ratio,
            "memory_total_bytes": s.host.memory_total_bytes,
            "load_average": s.host.load_average,
            "filesystems": s.host.filesystems.iter().map(|f| json!({
                "mountpoint": f.mountpoint,
                "used_ratio": f.used_ratio,
                "size_bytes": f.size_bytes,
            })).collect::<Vec<_>>(),
            "pressure": s.host.pressure,
        })
    });
    let health = super::api::detailed(&state).map(|r| {
        json!({
            "status": r.status,
            "failing": r.checks.iter()
                .filter(|c| c.status != super::health::Status::Healthy)
                .map(|c| json!({ "name": c.name, "status": c.status, "detail": c.detail }))
                .collect::<Vec<_>>(),
        })
    });
    let alerts = state.alerts.document();
    let warnings = state.logs.recent(WARNINGS_SHOWN, tracing::Level::WARN);
    Json(json!({
        "step_seconds": STEP.as_secs_f64(),
        "services": services,
        "selected": selected,
        "series": series,
        "routes": routes,
        "commands": commands,
        "statements": statements,
        "outbound": outbound,
        "saturation": saturation,
        "host": { "now": host, "series": host_series },
        "health": health.ok(),
        "alerts": { "firing": alerts["firing"], "pending": alerts["pending"] },
        "warnings": warnings,
    }))
    .into_response()
}

/// The slowest and the most error-prone routes of `service`, ranked over
/// all its routes in the recent window.
fn routes_of(stats: &RequestStats, service: &str) -> Value {
    let Some(s) = stats.services.get(service) else {
        return json!({ "slowest": [], "errors": [] });
    };
    let row = |r: &RouteSummary| {
        json!({
            "method": r.method,
            "route": r.route,
            "count": r.recent_count,
            "errors_5xx": r.recent_errors_5xx,
            "p50_seconds": r.p50_seconds,
            "p99_seconds": r.p99_seconds,
        })
    };
    json!({
        "slowest": s.slowest.iter().take(ROUTES_SHOWN).map(row).collect::<Vec<_>>(),
        "errors": s.most_errors.iter().take(ROUTES_SHOWN).map(row).collect::<Vec<_>>(),
    })
}
