//! The evaluation task: every `evaluation_interval`, every rule's signal is
//! measured on the rolling windows, the state machine advances on the
//! context's clock, the gauges follow, and notices go to the receivers'
//! queues without waiting.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    clock::{Clock, format_time},
    deliver::{Dispatch, Outgoing, RESEND},
    engine::{Engine, Phase},
    rules::AlertConfig,
    signals::{Inputs, measure},
};
use crate::{
    tasks::Beat,
    telemetry::{
        metrics::Metrics, pipeline::monotonic_ns, snapshot::Published, windows::SampleWindow,
    },
};

/// Evaluation times kept for /alerts.
const EVALUATIONS_SHOWN: usize = 20;

/// What /alerts shows, shared with the evaluation task.
pub struct Alerts {
    pub config: AlertConfig,
    engine: Mutex<Engine>,
    evaluations: Mutex<VecDeque<SystemTime>>,
}

impl Alerts {
    pub fn new(config: AlertConfig) -> Self {
        Self {
            engine: Mutex::new(Engine::new(config.rules.clone())),
            config,
            evaluations: Mutex::new(VecDeque::new()),
        }
    }

    /// The /alerts document.
    pub fn document(&self) -> Value {
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let active = engine.active();
        let (firing, pending): (Vec<_>, Vec<_>) =
            active.into_iter().partition(|a| a.state == Phase::Firing);
        let evaluations: Vec<String> = self
            .evaluations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| format_time(*t))
            .collect();
        json!({
            "firing": firing,
            "pending": pending,
            "resolved": engine.history(),
            "rules": engine.rules().iter().map(|r| json!({
                "name": r.name,
                "signal": r.signal.as_str(),
                "threshold": r.threshold.value(),
                "above": matches!(r.threshold, super::rules::Threshold::Above(_)),
                "window_seconds": r.window.as_secs_f64(),
                "for_seconds": r.hold.as_secs_f64(),
                "keep_firing_for_seconds": r.keep_firing_for.as_secs_f64(),
                "cooldown_seconds": r.cooldown.as_secs_f64(),
                "min_requests": r.signal.counts_requests().then_some(r.min_requests),
                "no_data": (r.signal != super::rules::Signal::ServiceAbsent).then_some(r.no_data),
                "severity": r.severity,
                "service": r.service,
                "route": r.route,
            })).collect::<Vec<_>>(),
            "evaluation_interval_seconds": self.config.evaluation_interval.as_secs_f64(),
            "recent_evaluations": evaluations,
        })
    }
}

/// What the evaluation task reads and writes.
pub struct Context {
    pub alerts: Arc<Alerts>,
    /// The request pipeline's latest snapshot.
    pub pipeline: Arc<Published>,
    pub samples: Arc<Mutex<SampleWindow>>,
    pub metrics: Arc<Metrics>,
    pub delivery: Dispatch,
    /// Monotonic time for `for`, cooldowns and resends; wall time for
    /// the timestamps shown and sent.
    pub clock: Arc<dyn Clock>,
}

pub async fn run(cx: Context, mut stop: watch::Receiver<bool>, beat: Beat) {
    let mut tick = tokio::time::interval(cx.alerts.config.evaluation_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wants_resend = cx.delivery.wants_resend();
    let mut last_resend = cx.clock.now().mono;
    loop {
        beat.beat();
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(what) = evaluate_once(&cx) {
            tracing::error!(
                state = what,
                "poisoned; alert evaluation stopped (not ready)"
            );
            return;
        }
        let mono = cx.clock.now().mono;
        if wants_resend && mono.saturating_sub(last_resend) >= RESEND {
            last_resend = mono;
            let firing = cx
                .alerts
                .engine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .active();
            cx.delivery.offer(&Outgoing::Resend(firing));
        }
    }
}

/// One evaluation of every rule. Errs when a pipeline lock is poisoned.
pub fn evaluate_once(cx: &Context) -> Result<(), &'static str> {
    let started = Instant::now();
    let now_s = monotonic_ns() / 1_000_000_000;
    let measured: Vec<_> = {
        let pipeline = cx.pipeline.load();
        let samples = cx.samples.lock().unwrap_or_else(|p| p.into_inner());
        let inputs = Inputs {
            requests: &pipeline.windows,
            statements: &pipeline.statements,
            calls: &pipeline.calls,
            samples: &samples,
            now_s,
        };
        cx.alerts
            .config
            .rules
            .iter()
            .map(|r| measure(r, &inputs))
            .collect()
    };
    let now = cx.clock.now();
    let mut engine = cx.alerts.engine.lock().unwrap_or_else(|p| p.into_inner());
    let mut notices = Vec::new();
    for (i, m) in measured.iter().enumerate() {
        notices.extend(engine.evaluate(i, now, m));
    }
    cx.metrics.alerts_active.reset();
    let active = engine.active();
    let without_data = active.iter().filter(|a| a.no_data_since.is_some()).count();
    cx.metrics
        .alerts_without_data
        .set(i64::try_from(without_data).unwrap_or(i64::MAX));
    for a in active {
        let state = match a.state {
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        };
        cx.metrics
            .alerts_active
            .with_label_values(&[&a.alertname, &a.severity, state])
            .inc();
    }
    drop(engine);
    for n in notices {
        cx.delivery.offer(&Outgoing::Notice(n));
    }
    cx.metrics.alert_evaluations.inc();
    cx.metrics
        .alert_evaluation_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut evaluations = cx
        .alerts
        .evaluations
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if evaluations.len() == EVALUATIONS_SHOWN {
        evaluations.pop_front();
    }
    evaluations.push_back(now.wall);
    Ok(())
}

/// How long the evaluation task may stay silent before readiness fails.
pub fn allowed_silence(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(10))
}
