//! Production-like traffic for the end-to-end tests: a network namespace
//! whose loopback behaves like an Ethernet link (MTU 1500, one MSS per
//! packet, optionally losing packets), real nginx and a FastAPI app under
//! uvicorn inside it, an HTTP/1.1 client that keeps its own ground truth,
//! and the agent's numbers compared with that truth.
//!
//! Ground truth is what the client sent and read back, per (server port,
//! method, route template, status); it is itself checked against the
//! servers' access logs, so a mistake of the harness fails as one.

mod client;
mod conn;
mod link;
mod scene;
mod servers;
mod verdict;

pub use client::{Key, Request, Rng, Sending, Truth, bearer, browser_headers, cookie};
pub use conn::{BODY_KEPT, Conn, Reply};
pub use link::{LinkCounters, LinkNs, MTU};
pub use scene::Scene;
pub use servers::{App, Nginx, STATIC_FILES, app, py_app_bin, static_size};
pub use verdict::{
    Observed, ServiceView, assert_none, check_packet_capture, exactness_failures, median,
    median_failure, report,
};
