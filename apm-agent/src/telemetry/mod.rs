//! Turning events and samples into numbers: the Prometheus registry,
//! request statistics, process and host sampling, and the log ring.

pub mod db;
pub mod history;
pub mod hostfs;
pub mod http_client;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod recent;
mod recorder;
pub mod rpc;
pub mod sampler;
pub mod saturation;
pub mod snapshot;
pub mod sql;
pub mod synthetic;
pub mod traces;
pub mod windows;
