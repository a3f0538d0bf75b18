//! The Rust HTTP server of the end-to-end tests (axum on hyper, keep-alive
//! and pipelining as hyper does them): `apm-httpd PORT`.
//!
//! Routes: `/ok` 200, `/missing` 404, `/error` 500, `/sleep/MS` sleeps MS
//! milliseconds then 200, `/users/ID` 200, anything else 200 (for the
//! route-cardinality test). Every response has a Content-Length.

use std::time::Duration;

use axum::{Router, extract::Path, http::StatusCode, routing::get, serve::ListenerExt as _};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: apm-httpd PORT"))?
        .parse()?;
    let app = Router::new()
        .route("/ok", get(|| async { "ok\n" }))
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "missing\n") }),
        )
        .route(
            "/error",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "error\n") }),
        )
        .route(
            "/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
                "slept\n"
            }),
        )
        .route("/users/{id}", get(|| async { "user\n" }))
        .fallback(|| async { "any\n" });
    // TCP_NODELAY, as production servers set it: pipelined responses are
    // separate writes, which Nagle would hold back for the client's ACK.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    println!("listening");
    axum::serve(listener, app).await?;
    Ok(())
}
