//! apm-agent: wires configuration, the eBPF side, the refresh task and the
//! admin API together, and tears them down on SIGINT/SIGTERM.

use std::{
    io::IsTerminal as _,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apm_agent::{
    agent::Agent,
    alerts::{deliver, evaluate, evaluate::Alerts},
    capture::kernel::{self, ProbeReport, StartOptions},
    config::{Config, LogFormat, TestFault},
    protocols::routes::RouteConfig,
    serve::api::{self, AppState},
    serve::checks,
    tasks::{Beat, Tasks},
    telemetry::logs::{LogRing, RingLayer},
    telemetry::metrics::Metrics,
    telemetry::requests::{Requests, monotonic_ns},
    telemetry::sampler::Sampler,
    telemetry::{history::History, windows::SampleWindow},
};
use clap::Parser as _;
use tokio::{signal::unix::SignalKind, sync::watch};
use tracing::{error, info, warn};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(name) = checks::duplicate_name(&config.checks) {
        anyhow::bail!(
            "two --check URLs show as {name} once credentials are removed: give each dependency its own host, port or database"
        );
    }
    let logs = init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(config, logs))
}

/// JSON or text on stdout, plus the ring behind /logs/recent.
fn init_logging(config: &Config) -> anyhow::Result<Arc<LogRing>> {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid --log-level {:?}", config.log_level))?;
    let format = config
        .log_format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
    let output = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let ring = Arc::new(LogRing::new(config.log_buffer as usize));
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .with(RingLayer(ring.clone()))
        .try_init()
        .context("installing the log subscriber")?;
    Ok(ring)
}

async fn run(config: Config, logs: Arc<LogRing>) -> anyhow::Result<()> {
    let auth_token = config.auth_token().map_err(anyhow::Error::msg)?;
    let alerts = config.alerts().map_err(anyhow::Error::msg)?;
    info!(
        rules = alerts.rules.len(),
        receivers = alerts.receivers.len(),
        evaluation_interval = ?alerts.evaluation_interval,
        "alert rules loaded"
    );
    let tasks = Arc::new(Tasks::default());
    let metrics = Arc::new(Metrics::new().context("building the metrics registry")?);
    let (mut kernel, report) = if config.no_ebpf {
        (
            None,
            ProbeReport {
                disabled_reason: Some("disabled by --no-ebpf".into()),
                ..Default::default()
            },
        )
    } else {
        kernel::start(&StartOptions {
            all_ports: config.monitors_all_ports(),
            http: !config.no_http,
            capture: config.capture,
            ring_bytes: config.ring_buffer_bytes,
            detect_resp: !config.no_redis_detect,
            cgroup_root: config.cgroup_root.clone(),
            proc_root: config.proc_root.clone(),
        })
    };
    match &report.disabled_reason {
        Some(reason) => error!(
            reason = %reason,
            "eBPF disabled, connection and request metrics are unavailable; serving procfs-only data"
        ),
        None => {
            for probe in report.probes.iter().filter(|p| !p.ok) {
                warn!(probe = %probe.name, reason = %probe.detail, "probe skipped");
            }
            let off = report.off.len();
            let attached = report.probes.iter().filter(|p| p.ok).count() - off;
            if let Some(reason) = &report.capture_fallback {
                warn!(
                    reason = %reason,
                    "packet capture unavailable; timing HTTP from syscalls instead (slower for the whole host)"
                );
            }
            info!(
                attached,
                off,
                total = report.probes.len(),
                capture = report.capture,
                "eBPF programs attached"
            );
        }
    }

    let events = kernel.as_mut().and_then(|k| k.take_events());
    let agent = Agent::new(&config, kernel, report, metrics.clone());
    let routes = RouteConfig {
        max_routes: config.max_routes as usize,
        max_words: config.max_route_words as usize,
        patterns: config.routes.clone(),
        ..Default::default()
    };
    // Rolling windows as long as the longest rule's, and at least the
    // minute the dashboard's latency quantiles need.
    let keep =
        apm_agent::alerts::signals::longest_window(&alerts.rules).max(Duration::from_secs(60));
    let requests = Arc::new(Mutex::new(
        Requests::new(
            routes,
            config.max_connections as usize,
            agent.directory.clone(),
        )
        .with_max_series(config.max_series as usize)
        .with_windows(keep),
    ));
    let agent = Arc::new(Mutex::new(agent));
    let (stop_tx, stop_rx) = watch::channel(false);

    let reader = events.map(|ring| {
        tokio::spawn(apm_agent::capture::reader::run(
            ring,
            requests.clone(),
            metrics.clone(),
            stop_rx.clone(),
            tasks.watch("ring reader", Duration::from_secs(5)),
            config.test_fault == Some(TestFault::DiscardRecords),
        ))
    });
    if config.test_fault == Some(TestFault::PoisonPipeline) {
        poison_after(requests.clone(), Duration::from_secs(1));
    }

    let state = AppState {
        agent: agent.clone(),
        requests: requests.clone(),
        metrics: metrics.clone(),
        system: Arc::new(RwLock::new(None)),
        sample_interval: config.sample_interval,
        dependencies: Arc::new(RwLock::new(Vec::new())),
        configured_dependencies: config.checks.len(),
        logs,
        tasks: tasks.clone(),
        auth_token: auth_token.map(Arc::new),
        alerts: Arc::new(Alerts::new(alerts)),
        samples: Arc::new(Mutex::new(SampleWindow::new(keep))),
        history: Arc::new(Mutex::new(History::default())),
    };
    let historian = tokio::spawn(history_loop(
        state.clone(),
        stop_rx.clone(),
        tasks.watch("dashboard history", Duration::from_secs(10)),
    ));
    let (queue, outgoing) = tokio::sync::mpsc::channel(deliver::QUEUE);
    let evaluation_interval = state.alerts.config.evaluation_interval;
    let evaluator = tokio::spawn(evaluate::run(
        evaluate::Context {
            alerts: state.alerts.clone(),
            requests: requests.clone(),
            samples: state.samples.clone(),
            metrics: metrics.clone(),
            queue,
        },
        stop_rx.clone(),
        tasks.watch(
            "alert evaluation",
            evaluate::allowed_silence(evaluation_interval),
        ),
    ));
    let delivery = tokio::spawn(deliver::run(
        state.alerts.config.receivers.clone(),
        outgoing,
        metrics.clone(),
        format!("http://{}/alerts", config.listen),
        stop_rx.clone(),
    ));
    // Allowed silence: a few intervals, and at least what a slow procfs
    // walk on a busy host may take.
    let allowed = |every: Duration| (every * 3).max(Duration::from_secs(10));
    let refresher = tokio::spawn(refresh_loop(
        state.clone(),
        config.refresh_interval,
        config.series_ttl,
        stop_rx.clone(),
        tasks.watch("refresh", allowed(config.refresh_interval)),
    ));
    let sampler = tokio::spawn(sample_loop(
        state.clone(),
        Sampler::new(&config.proc_root),
        stop_rx.clone(),
        tasks.watch("sampler", allowed(config.sample_interval)),
    ));
    let checker = tokio::spawn(checks::run_checks(
        config.checks.clone(),
        config.check_interval,
        state.dependencies.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the admin API to {}", config.listen))?;
    let addr = listener.local_addr().context("admin API address")?;
    info!(url = %format!("http://{addr}/"), "admin API listening");

    let metrics_listener = match config.metrics_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding --metrics-listen to {at}"))?;
            info!(url = %format!("http://{}/metrics", listener.local_addr().context("metrics address")?), "metrics listening");
            Some(listener)
        }
        None => None,
    };
    let metrics_server = metrics_listener.map(|listener| {
        serve(
            listener,
            api::metrics_router(state.clone()),
            stop_rx.clone(),
            tasks.watch("metrics API", Duration::MAX),
        )
    });
    let server = serve(
        listener,
        api::router(state),
        stop_rx.clone(),
        tasks.watch("admin API", Duration::MAX),
    );

    let signal = wait_for_signal().await?;
    info!(signal, "shutting down");
    let _ = stop_tx.send(true);
    for server in std::iter::once(server).chain(metrics_server) {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "admin API stopped with an error"),
            Err(e) => error!(error = %e, "admin API task failed"),
        }
    }
    for (name, task) in [
        ("refresh", refresher),
        ("sampler", sampler),
        ("dependency checks", checker),
        ("alert evaluation", evaluator),
        ("dashboard history", historian),
        ("alert delivery", delivery),
    ] {
        if let Err(e) = task.await {
            error!(task = name, error = %e, "task failed");
        }
    }
    if let Some(reader) = reader
        && let Err(e) = reader.await
    {
        error!(error = %e, "ring buffer reader failed");
    }
    if agent.lock().map(|mut a| a.shutdown()).unwrap_or(false) {
        info!("eBPF programs detached");
    }
    info!("stopped");
    Ok(())
}

/// Serves `router` on `listener` until stop; the beat ends with the server.
fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    beat: Beat,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let _beat = beat;
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    })
}

/// `--test-fault poison-pipeline`: a thread panics while holding the
/// request pipeline's lock, as a bug in the pipeline would.
fn poison_after(requests: Arc<Mutex<Requests>>, after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let _guard = requests.lock();
        panic!("test fault: poisoning the request pipeline");
    });
}

/// Connections silent for this long are forgotten by the request pipeline.
const IDLE_CONNECTION: Duration = Duration::from_secs(300);

async fn refresh_loop(
    state: AppState,
    every: Duration,
    series_ttl: Duration,
    mut stop: watch::Receiver<bool>,
    beat: Beat,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.beat();
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let state = state.clone();
        let done = tokio::task::spawn_blocking(move || {
            let Ok(mut agent) = state.agent.lock() else {
                return Err("agent state");
            };
            agent.refresh();
            drop(agent);
            let Ok(mut requests) = state.requests.lock() else {
                return Err("request pipeline state");
            };
            let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let now = monotonic_ns();
            requests.sweep(now, nanos(IDLE_CONNECTION), &state.metrics);
            requests.expire(now, nanos(series_ttl), &state.metrics);
            Ok(())
        })
        .await;
        // A panic in a refresh leaves the task running (the next one may
        // work); a poisoned lock stops it, and readiness with it.
        match done {
            Ok(Ok(())) => {}
            Ok(Err(what)) => {
                error!(state = what, "poisoned; refresh stopped (not ready)");
                return;
            }
            Err(e) => error!(error = %e, "refresh panicked"),
        }
    }
}

/// Samples processes and the host every --sample-interval; /stats/system
/// serves the latest sample.
async fn sample_loop(
    state: AppState,
    sampler: Sampler,
    mut stop: watch::Receiver<bool>,
    beat: Beat,
) {
    let sampler = Arc::new(Mutex::new(sampler));
    let mut ticker = tokio::time::interval(state.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.beat();
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let (state, sampler) = (state.clone(), sampler.clone());
        let done = tokio::task::spawn_blocking(move || {
            let Ok(agent) = state.agent.lock() else {
                return Err("agent state");
            };
            let services = agent.directory.snapshot();
            drop(agent);
            let Ok(mut sampler) = sampler.lock() else {
                return Err("sampler state");
            };
            let sample = sampler.sample(&services.by_pid, &state.metrics);
            state
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(monotonic_ns() / 1_000_000_000, &sample);
            // The slot only ever holds a whole sample: recover it.
            *state.system.write().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), sample));
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(what)) => {
                error!(state = what, "poisoned; sampling stopped (not ready)");
                return;
            }
            Err(e) => error!(error = %e, "sampling panicked"),
        }
    }
}

/// One dashboard point per service and for the host every history::STEP.
async fn history_loop(state: AppState, mut stop: watch::Receiver<bool>, beat: Beat) {
    let mut ticker = tokio::time::interval(apm_agent::telemetry::history::STEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.beat();
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now_s = monotonic_ns() / 1_000_000_000;
        let connections = state.metrics.connections_by_service();
        let points = {
            let Ok(requests) = state.requests.lock() else {
                error!("request pipeline state poisoned; dashboard history stopped (not ready)");
                return;
            };
            let samples = state.samples.lock().unwrap_or_else(|p| p.into_inner());
            apm_agent::telemetry::history::points(&requests, &samples, &connections, now_s)
        };
        let host = state
            .system
            .read()
            .ok()
            .and_then(|s| {
                s.as_ref()
                    .map(|(_, s)| (s.host.cpu_busy_ratio, s.host.memory_used_ratio))
            })
            .unwrap_or_default();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        state
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t, points, host);
    }
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
