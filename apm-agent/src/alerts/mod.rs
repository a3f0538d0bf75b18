//! Threshold alerts evaluated on the agent's own rolling windows: the
//! rules (defaults and the config file), their signals, the state
//! machine on a monotonic clock, the evaluation task and delivery.

pub mod clock;
pub mod deliver;
pub mod engine;
pub mod evaluate;
pub mod rules;
pub mod signals;

#[cfg(test)]
mod tests;
