//! Threshold alerts evaluated on the agent's own rolling windows: the
//! rules (defaults and the config file), the state machine.

pub mod engine;
pub mod rules;
