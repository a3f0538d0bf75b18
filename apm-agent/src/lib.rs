//! apm's userspace agent as a library: `main.rs` only wires configuration,
//! tasks and shutdown together.
//!
//! The folders read in the order data flows, and a module imports only
//! from folders before its own:
//! `capture` (kernel programs, ring reader) → `streams` (per-connection
//! byte streams, pairing) → `protocols` (HTTP parsing, route templates) →
//! `services` (who listens where, what a service is called) → `telemetry`
//! (metrics, request statistics, rolling windows, sampling, logs) →
//! `alerts` (rules, state machine, evaluation, delivery) → `serve` (admin
//! API, health). `config` and `agent` at the root wire the stages together;
//! `redact` (credentials out of URLs), `post` (POSTs with retries) and `tasks` (which tasks are alive)
//! are leaves any stage may use; `seccomp` is the agent's own syscall
//! filter, installed first.
//! Everything but `capture::kernel` and `capture::reader` runs without root
//! and is unit-tested.

pub mod agent;
pub mod alerts;
pub mod capture;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod post;
pub mod protocols;
pub mod redact;
pub mod seccomp;
pub mod serve;
pub mod services;
pub mod streams;
pub mod tasks;
pub mod telemetry;
