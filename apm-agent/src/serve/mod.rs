//! What the agent serves: the axum admin API and health checks.

pub mod api;
pub mod health;
