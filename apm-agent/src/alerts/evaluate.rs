//! The evaluation task: every `evaluation_interval`, every rule's signal is
//! measured on the rolling windows, the state machine advances, the
//! gauges follow, and notices go to the delivery queue without waiting.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::{
    deliver::{Outgoing, RESEND},
    engine::{Engine, Phase, format_time},
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
                "cooldown_seconds": r.cooldown.as_secs_f64(),
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
    pub queue: mpsc::Sender<Outgoing>,
}

pub async fn run(cx: Context, mut stop: watch::Receiver<bool>, beat: Beat) {
    let mut tick = tokio::time::interval(cx.alerts.config.evaluation_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wants_resend = cx
        .alerts
        .config
        .receivers
        .iter()
        .any(|r| matches!(r, super::rules::Receiver::Alertmanager(_)));
    let mut last_resend = Instant::now();
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
        if wants_resend && last_resend.elapsed() >= RESEND {
            last_resend = Instant::now();
            let firing = cx
                .alerts
                .engine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .active();
            if cx.queue.try_send(Outgoing::Resend(firing)).is_err() {
                cx.metrics.alert_notices_dropped.inc();
            }
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
    let now = SystemTime::now();
    let mut engine = cx.alerts.engine.lock().unwrap_or_else(|p| p.into_inner());
    let mut notices = Vec::new();
    for (i, m) in measured.iter().enumerate() {
        notices.extend(engine.evaluate(i, now, m));
    }
    cx.metrics.alerts_active.reset();
    for a in engine.active() {
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
        if cx.queue.try_send(Outgoing::Notice(n)).is_err() {
            cx.metrics.alert_notices_dropped.inc();
        }
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
    evaluations.push_back(now);
    Ok(())
}

/// How long the evaluation task may stay silent before readiness fails.
pub fn allowed_silence(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(10))
}
