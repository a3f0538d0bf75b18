//! Who may read the admin API, and how much a request may send.
//!
//! With a token (`--auth-token`, `APM_AUTH_TOKEN` or `--auth-token-file`),
//! every endpoint but the probes' (`/health`, `/health/ready`, which say
//! only up/ready) needs `Authorization: Bearer <token>`. The comparison
//! takes the same time whatever the bytes (subtle's constant-time
//! equality); only the token's length could be learnt from timing.

use axum::{
    Json,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;
use subtle::ConstantTimeEq as _;

use super::api::AppState;

/// Longest query string accepted.
pub const MAX_QUERY: usize = 1024;
/// Largest request body accepted (no endpoint takes one yet).
pub const MAX_BODY: usize = 16 * 1024;

/// Rejects a request without the configured bearer token (401, JSON).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.auth_token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.expose().as_bytes())));
    if ok {
        return next.run(req).await;
    }
    let detail = if given.is_some() {
        "wrong bearer token"
    } else {
        "missing bearer token: send Authorization: Bearer <token>"
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": "unauthorized", "detail": detail })),
    )
        .into_response()
}

/// Rejects a query string longer than [`MAX_QUERY`] (414, JSON) and a
/// declared body larger than [`MAX_BODY`] (413, JSON); no endpoint reads a
/// body, and a chunked one is capped by DefaultBodyLimit where one would.
pub async fn limit_request(req: Request, next: Next) -> Response {
    let body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if body > MAX_BODY as u64 {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({
                "error": "body too large",
                "detail": format!("{body} bytes; at most {MAX_BODY}"),
            })),
        )
            .into_response();
    }
    let len = req.uri().query().map_or(0, str::len);
    if len > MAX_QUERY {
        return (
            StatusCode::URI_TOO_LONG,
            Json(json!({
                "error": "query too long",
                "detail": format!("{len} bytes; at most {MAX_QUERY}"),
            })),
        )
            .into_response();
    }
    next.run(req).await
}
