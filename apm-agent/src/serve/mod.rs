//! What the agent serves: the axum admin API and health checks.

pub mod api;
pub mod auth;
pub mod checks;
pub mod dashboard;
pub mod health;
pub mod tls;
