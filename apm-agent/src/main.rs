//! apm-agent: wires configuration, the eBPF side, the refresh task and the
//! admin API together, and tears them down on SIGINT/SIGTERM.

use std::{
    io::IsTerminal as _,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apm_agent::{
    agent::Agent,
    alerts::{clock::SystemClock, deliver, evaluate, evaluate::Alerts},
    capture::kernel::{self, ProbeReport, StartOptions},
    config::{Config, LogFormat, TestFault},
    protocols::routes::RouteConfig,
    serve::api::{self, AppState},
    serve::checks,
    services::directory::Directory,
    tasks::{Beat, Tasks},
    telemetry::logs::{LogRing, RingLayer},
    telemetry::metrics::Metrics,
    telemetry::pipeline::{Pipeline, monotonic_ns, run},
    telemetry::sampler::Sampler,
    telemetry::snapshot::{PipelineSnapshot, Published},
    telemetry::traces::{self, sample::SampleConfig, tracer::TraceConfig},
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
    apm_agent::seccomp::install_logged();
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
    let tls = config.tls().map_err(anyhow::Error::msg)?;
    if auth_token.is_some() && tls.is_none() {
        for at in std::iter::once(config.listen).chain(config.metrics_listen) {
            if !at.ip().is_loopback() {
                warn!(
                    listen = %at,
                    "a bearer token is required on a non-loopback listener served without TLS: it crosses the network in clear; give --tls-cert and --tls-key"
                );
            }
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
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
            tls: config.capture_tls,
            cgroup_root: config.cgroup_root.clone(),
            kernel_btf: config.kernel_btf.clone(),
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
    let agent = Agent::new(&config, kernel, &report, metrics.clone());
    let probes = Arc::new(report);
    let directory = agent.directory.clone();
    let lost_recently = agent.lost_recently.clone();
    let tls_libraries = agent.tls_libraries.clone();
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
    let traces_url = config.traces_url().map_err(anyhow::Error::msg)?;
    let (export_queue, export_rx) = match &traces_url {
        Some(_) => {
            let (queue, rx) = traces::export::Queue::new();
            (Some(queue), Some(rx))
        }
        None => (None, None),
    };
    let trace_config = TraceConfig {
        enabled: !config.no_traces,
        sample: SampleConfig {
            slow_ns: u64::try_from(config.trace_slow.as_nanos()).unwrap_or(u64::MAX),
            ratio: config.trace_sample_ratio,
            max_spans_per_second: config.trace_max_spans_per_second,
        },
        ..TraceConfig::default()
    };
    let pipeline = Pipeline::new(
        routes,
        config.max_connections as usize,
        agent.directory.clone(),
    )
    .with_max_series(config.max_series as usize)
    .with_windows(keep)
    .with_traces(trace_config, export_queue);
    let published = Arc::new(Published::new(PipelineSnapshot::empty(keep)));
    let agent = Arc::new(Mutex::new(agent));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_pipeline = Arc::new(AtomicBool::new(false));
    let pipeline_thread = run::spawn(
        pipeline,
        events,
        metrics.clone(),
        published.clone(),
        stop_pipeline.clone(),
        tasks.watch("request pipeline", Duration::from_secs(5)),
        run::Options {
            housekeeping_every: config.refresh_interval,
            idle_connection: IDLE_CONNECTION,
            series_ttl: config.series_ttl,
            discard: config.test_fault == Some(TestFault::DiscardRecords),
            panic_after: (config.test_fault == Some(TestFault::PoisonPipeline))
                .then_some(Duration::from_secs(1)),
            slow_by: (config.test_fault == Some(TestFault::SlowPipeline))
                .then_some(Duration::from_micros(100)),
        },
    )
    .context("starting the request pipeline's thread")?;

    let state = AppState {
        agent: agent.clone(),
        probes,
        tls_libraries,
        lost_recently,
        pipeline: published.clone(),
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
    // One delivery task per receiver; at most deliver::DRAIN after the
    // stop signal, whatever a dead receiver is doing.
    let (delivery, deliveries) = deliver::start(
        state.alerts.config.receivers.clone(),
        metrics.clone(),
        format!("{scheme}://{}/alerts", config.listen),
        stop_rx.clone(),
    );
    let evaluation_interval = state.alerts.config.evaluation_interval;
    let evaluator = tokio::spawn(evaluate::run(
        evaluate::Context {
            alerts: state.alerts.clone(),
            pipeline: published.clone(),
            samples: state.samples.clone(),
            metrics: metrics.clone(),
            delivery,
            clock: Arc::new(SystemClock),
        },
        stop_rx.clone(),
        tasks.watch(
            "alert evaluation",
            evaluate::allowed_silence(evaluation_interval),
        ),
    ));
    // Allowed silence: a few intervals, and at least a minute: /proc reads
    // can block for seconds behind a process in D state, and a restart
    // would not unblock them.
    let allowed = |every: Duration| (every * 3).max(Duration::from_secs(60));
    let refresher = tokio::spawn(refresh_loop(
        state.clone(),
        config.refresh_interval,
        stop_rx.clone(),
        tasks.watch("refresh", allowed(config.refresh_interval)),
    ));
    let sampler = tokio::spawn(sample_loop(
        state.clone(),
        directory,
        Sampler::new(&config.proc_root),
        stop_rx.clone(),
        tasks.watch("sampler", allowed(config.sample_interval)),
    ));
    let exporter = match (traces_url, export_rx) {
        (Some(url), Some(rx)) => {
            info!(collector = %apm_agent::redact::url(&url), "exporting kept traces over OTLP/HTTP");
            tokio::spawn(traces::export::run(
                rx,
                url,
                metrics.clone(),
                stop_rx.clone(),
                tasks.watch("span export", Duration::from_secs(60)),
            ))
        }
        _ => tokio::spawn(async {}),
    };
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
    info!(url = %format!("{scheme}://{addr}/"), "admin API listening");

    let metrics_listener = match config.metrics_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding --metrics-listen to {at}"))?;
            info!(url = %format!("{scheme}://{}/metrics", listener.local_addr().context("metrics address")?), "metrics listening");
            Some(listener)
        }
        None => None,
    };
    let metrics_server = metrics_listener.map(|listener| {
        serve(
            listener,
            api::metrics_router(state.clone()),
            tls.clone(),
            stop_rx.clone(),
            tasks.watch("metrics API", Duration::MAX),
        )
    });
    let server = serve(
        listener,
        api::router(state),
        tls,
        stop_rx.clone(),
        tasks.watch("admin API", Duration::MAX),
    );

    apm_agent::tasks::spawn_watchdog(tasks.clone(), Duration::from_secs(1))
        .context("starting the watchdog")?;
    let signal = wait_for_signal().await?;
    info!(signal, "shutting down");
    tasks.stop();
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
        ("alert delivery", deliveries),
        ("span export", exporter),
    ] {
        if let Err(e) = task.await {
            error!(task = name, error = %e, "task failed");
        }
    }
    stop_pipeline.store(true, Ordering::Relaxed);
    if pipeline_thread.join().is_err() {
        error!("the request pipeline's thread panicked");
    }
    if agent.lock().map(|mut a| a.shutdown()).unwrap_or(false) {
        info!("eBPF programs detached");
    }
    info!("stopped");
    Ok(())
}

/// Serves `router` on `listener` (over TLS with `tls`) until stop; the beat
/// ends with the server.
fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
    beat: Beat,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let _beat = beat;
        apm_agent::serve::tls::serve(listener, router, tls, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
    })
}

/// Connections silent for this long are forgotten by the request pipeline.
const IDLE_CONNECTION: Duration = Duration::from_secs(300);

async fn refresh_loop(
    state: AppState,
    every: Duration,
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
    directory: Arc<Directory>,
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
        let (state, sampler, directory) = (state.clone(), sampler.clone(), directory.clone());
        let done = tokio::task::spawn_blocking(move || {
            let services = directory.snapshot();
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
            let pipeline = state.pipeline.load();
            let samples = state.samples.lock().unwrap_or_else(|p| p.into_inner());
            apm_agent::telemetry::history::points(&pipeline, &samples, &connections, now_s)
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
