//! Which of the agent's long-running tasks are alive: the basis of
//! liveness and readiness (`/health`, `/health/ready`), and of the
//! watchdog that ends the agent when one of them has died, so its
//! supervisor (the kubelet, systemd) starts a fresh one.
//!
//! Each task holds a [`Beat`]: it calls [`Beat::beat`] every loop, and the
//! beat marks the task stopped when it is dropped, which happens when the
//! task returns, panics or is aborted. A task is alive while it has not
//! stopped and its last beat is younger than its allowed gap.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

#[derive(Debug)]
struct Slot {
    name: &'static str,
    /// Milliseconds since the registry's start at the last beat.
    last_ms: AtomicU64,
    max_gap: Duration,
    stopped: AtomicBool,
}

/// The registry of watched tasks.
#[derive(Debug)]
pub struct Tasks {
    start: Instant,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Set at shutdown: tasks ending then are not dying.
    stopping: AtomicBool,
}

/// A task's handle on its slot; dropping it marks the task stopped.
#[derive(Debug)]
pub struct Beat {
    start: Instant,
    slot: Arc<Slot>,
}

/// One task's state, as /health/ready and /health/detailed show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskState {
    pub name: &'static str,
    pub alive: bool,
    /// Why not: "stopped", or how long since its last beat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            slots: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Tasks {
    /// Watches a task that beats at least every `max_gap`.
    pub fn watch(&self, name: &'static str, max_gap: Duration) -> Beat {
        let slot = Arc::new(Slot {
            name,
            last_ms: AtomicU64::new(self.elapsed_ms()),
            max_gap,
            stopped: AtomicBool::new(false),
        });
        // A poisoned registry is still a list of slots: recover it.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.push(slot.clone());
        Beat {
            start: self.start,
            slot,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn states(&self) -> Vec<TaskState> {
        let now = self.elapsed_ms();
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|s| {
                let silent =
                    Duration::from_millis(now.saturating_sub(s.last_ms.load(Ordering::Relaxed)));
                let reason = if s.stopped.load(Ordering::Relaxed) {
                    Some("stopped".to_owned())
                } else if silent > s.max_gap {
                    Some(format!("no progress for {:.1} s", silent.as_secs_f64()))
                } else {
                    None
                };
                TaskState {
                    name: s.name,
                    alive: reason.is_none(),
                    reason,
                }
            })
            .collect()
    }

    pub fn all_alive(&self) -> bool {
        self.states().iter().all(|s| s.alive)
    }

    /// The tasks that stopped or stalled (none once shutting down).
    pub fn dead(&self) -> Vec<TaskState> {
        if self.stopping.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.states().into_iter().filter(|s| !s.alive).collect()
    }

    /// The agent is shutting down: tasks may end.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// Checks the tasks every `every` on a thread of its own (independent of
/// the async runtime, which a stuck task could starve); when one has been
/// dead at two checks in a row (so /health answers 503 for at least
/// `every` first), logs one ERROR line naming it and exits the process
/// with status 70 (EX_SOFTWARE). A restart loses no counter (the kernel's
/// are cumulative; Prometheus treats the agent's as reset) but does lose
/// alert state: firing alerts fire again after their `for`, and those kept
/// firing without data are re-sent only once data returns.
pub fn spawn_watchdog(tasks: Arc<Tasks>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("apm-watchdog".into())
        .spawn(move || {
            let mut dead_before = false;
            loop {
                std::thread::sleep(every);
                let dead = tasks.dead();
                if dead.is_empty() {
                    dead_before = false;
                    continue;
                }
                if !dead_before {
                    dead_before = true;
                    continue;
                }
                let what: Vec<String> = dead
                    .iter()
                    .map(|t| format!("{} ({})", t.name, t.reason.as_deref().unwrap_or("dead")))
                    .collect();
                tracing::error!(
                    tasks = %what.join(", "),
                    "a critical task died; exiting so the supervisor restarts the agent"
                );
                std::process::exit(EXIT_TASK_DIED);
            }
        })
        .map(drop)
}

/// The exit status when a task died (EX_SOFTWARE).
pub const EXIT_TASK_DIED: i32 = 70;

impl Beat {
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.slot.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.slot.stopped.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_or_silent_task_is_not_alive() {
        let tasks = Tasks::default();
        let a = tasks.watch("a", Duration::from_millis(50));
        let b = tasks.watch("b", Duration::from_secs(60));
        assert!(tasks.all_alive());
        drop(b);
        let states = tasks.states();
        assert_eq!(states[1].reason.as_deref(), Some("stopped"));
        assert!(!tasks.all_alive());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!tasks.states()[0].alive);
        a.beat();
        assert!(tasks.states()[0].alive);
    }

    #[tokio::test]
    async fn an_aborted_or_panicking_task_is_stopped() {
        let tasks = Tasks::default();
        let beat = tasks.watch("aborted", Duration::from_secs(60));
        let handle = tokio::spawn(async move {
            let _beat = beat;
            std::future::pending::<()>().await;
        });
        handle.abort();
        let _ = handle.await;
        let beat = tasks.watch("panics", Duration::from_secs(60));
        let _ = tokio::spawn(async move {
            let _beat = beat;
            panic!("deliberate");
        })
        .await;
        assert!(
            tasks.states().iter().all(|s| !s.alive),
            "{:?}",
            tasks.states()
        );
    }
}
