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
    capture::kernel::{self, ProbeReport, StartOptions},
    config::{Config, LogFormat},
    protocols::routes::RouteConfig,
    serve::api::{self, AppState},
    serve::health,
    telemetry::logs::{LogRing, RingLayer},
    telemetry::metrics::Metrics,
    telemetry::requests::{Requests, monotonic_ns},
    telemetry::sampler::Sampler,
};
use clap::Parser as _;
use tokio::{signal::unix::SignalKind, sync::watch};
use tracing::{error, info, warn};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
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
        patterns: config.routes.clone(),
        ..Default::default()
    };
    let requests = Arc::new(Mutex::new(Requests::new(
        routes,
        config.max_connections as usize,
        agent.directory.clone(),
    )));
    let agent = Arc::new(Mutex::new(agent));
    let (stop_tx, stop_rx) = watch::channel(false);

    let reader = events.map(|ring| {
        tokio::spawn(apm_agent::capture::reader::run(
            ring,
            requests.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ))
    });

    let state = AppState {
        agent: agent.clone(),
        requests: requests.clone(),
        metrics: metrics.clone(),
        system: Arc::new(RwLock::new(None)),
        sample_interval: config.sample_interval,
        dependencies: Arc::new(RwLock::new(Vec::new())),
        configured_dependencies: config.checks.len(),
        logs,
    };
    let refresher = tokio::spawn(refresh_loop(
        state.clone(),
        config.refresh_interval,
        stop_rx.clone(),
    ));
    let sampler = tokio::spawn(sample_loop(
        state.clone(),
        Sampler::new(&config.proc_root),
        stop_rx.clone(),
    ));
    let checker = tokio::spawn(health::run_checks(
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

    let mut shutdown = stop_rx.clone();
    let server = axum::serve(listener, api::router(state)).with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });

    let signal = wait_for_signal().await?;
    info!(signal, "shutting down");
    let _ = stop_tx.send(true);
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "admin API stopped with an error"),
        Err(e) => error!(error = %e, "admin API task failed"),
    }
    for (name, task) in [
        ("refresh", refresher),
        ("sampler", sampler),
        ("dependency checks", checker),
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

/// Connections silent for this long are forgotten by the request pipeline.
const IDLE_CONNECTION: Duration = Duration::from_secs(300);

async fn refresh_loop(state: AppState, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let state = state.clone();
        let done = tokio::task::spawn_blocking(move || {
            if let Ok(mut agent) = state.agent.lock() {
                agent.refresh();
            }
            if let Ok(mut requests) = state.requests.lock() {
                let idle = u64::try_from(IDLE_CONNECTION.as_nanos()).unwrap_or(u64::MAX);
                requests.sweep(monotonic_ns(), idle, &state.metrics);
            }
        })
        .await;
        if let Err(e) = done {
            error!(error = %e, "refresh panicked");
        }
    }
}

/// Samples processes and the host every --sample-interval; /stats/system
/// serves the latest sample.
async fn sample_loop(state: AppState, sampler: Sampler, mut stop: watch::Receiver<bool>) {
    let sampler = Arc::new(Mutex::new(sampler));
    let mut ticker = tokio::time::interval(state.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let (state, sampler) = (state.clone(), sampler.clone());
        let done = tokio::task::spawn_blocking(move || {
            let services = state
                .agent
                .lock()
                .map(|a| a.directory.snapshot())
                .unwrap_or_default();
            let Ok(mut sampler) = sampler.lock() else {
                return;
            };
            let sample = sampler.sample(&services.by_pid, &state.metrics);
            if let Ok(mut slot) = state.system.write() {
                *slot = Some((Instant::now(), sample));
            }
        })
        .await;
        if let Err(e) = done {
            error!(error = %e, "sampling panicked");
        }
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
