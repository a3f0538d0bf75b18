//! apm's userspace agent as a library: `main.rs` only wires configuration,
//! tasks and shutdown together. Modules that need neither root nor a kernel
//! (config, discovery, agent bookkeeping, metrics, api) are unit-tested.

pub mod agent;
pub mod api;
pub mod config;
pub mod discovery;
pub mod events;
pub mod health;
pub mod http;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod pairing;
pub mod probes;
pub mod requests;
pub mod routes;
pub mod sampler;
