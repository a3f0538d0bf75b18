//! Threshold alerts evaluated on the agent's own rolling windows: the
//! rules (defaults and the config file), their signals, the state
//! machine, the evaluation task and delivery.

pub mod deliver;
pub mod engine;
pub mod evaluate;
pub mod rules;
pub mod signals;
