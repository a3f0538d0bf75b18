//! apm-agent: wires configuration, the eBPF side, the refresh task and the
//! admin API together, and tears them down on SIGINT/SIGTERM.

use std::{
    io::IsTerminal as _,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use apm_agent::{
    agent::Agent,
    api,
    config::{Config, LogFormat},
    metrics::Metrics,
    probes::{self, ProbeReport},
};
use clap::Parser as _;
use tokio::{signal::unix::SignalKind, sync::watch};
use tracing::{error, info, warn};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(config))
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid --log-level {:?}", config.log_level))?;
    let format = config
        .log_format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("building the metrics registry")?;
    let (kernel, report) = if config.no_ebpf {
        (
            None,
            ProbeReport {
                disabled_reason: Some("disabled by --no-ebpf".into()),
                ..Default::default()
            },
        )
    } else {
        probes::start(config.monitors_all_ports())
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
            let attached = report.probes.iter().filter(|p| p.ok).count();
            info!(
                attached,
                total = report.probes.len(),
                "eBPF programs attached"
            );
        }
    }

    let agent = Arc::new(Mutex::new(Agent::new(&config, kernel, report, metrics)));
    let (stop_tx, stop_rx) = watch::channel(false);

    let refresher = tokio::spawn(refresh_loop(
        agent.clone(),
        config.refresh_interval,
        stop_rx.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the admin API to {}", config.listen))?;
    let addr = listener.local_addr().context("admin API address")?;
    info!(url = %format!("http://{addr}/"), "admin API listening");

    let mut shutdown = stop_rx.clone();
    let server =
        axum::serve(listener, api::router(agent.clone())).with_graceful_shutdown(async move {
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
    if let Err(e) = refresher.await {
        error!(error = %e, "refresh task failed");
    }
    if agent.lock().map(|mut a| a.shutdown()).unwrap_or(false) {
        info!("eBPF programs detached");
    }
    info!("stopped");
    Ok(())
}

async fn refresh_loop(
    agent: api::Shared,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let agent = agent.clone();
        let done = tokio::task::spawn_blocking(move || {
            if let Ok(mut agent) = agent.lock() {
                agent.refresh();
            }
        })
        .await;
        if let Err(e) = done {
            error!(error = %e, "refresh panicked");
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
