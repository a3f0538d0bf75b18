//! Every metric the agent exports, in one registry owned by [`Metrics`]
//! (no global registry). docs/metrics.md lists them; a test checks that the
//! two agree.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every `reason` of `apm_agent_drops_total`, exported from the start at 0.
pub const AGENT_DROP_REASONS: [&str; 2] = ["ports_map_full", "pids_map_full"];

pub const SERVICE: &str = "service_name";
pub const PORT: &str = "server_port";

pub struct Metrics {
    registry: Registry,
    pub build_info: IntGaugeVec,
    pub ebpf_up: IntGauge,
    pub probe_attached: IntGaugeVec,
    pub conns_accepted: IntCounterVec,
    pub conns_closed: IntCounterVec,
    pub conns_active: IntGaugeVec,
    pub accepted_sockets: IntCounterVec,
    pub accepted_sockets_closed: IntCounterVec,
    pub ebpf_drops: IntCounterVec,
    pub agent_drops: IntCounterVec,
    pub monitored_ports: IntGauge,
    pub tracked_processes: IntGauge,
    pub discovery_errors: IntCounterVec,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric: {0}")]
    Register(#[from] prometheus::Error),
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let metrics = Self {
            build_info: gauge_vec(
                "apm_build_info",
                "Always 1; the labels say which apm build is running.",
                &["version"],
            )?,
            ebpf_up: gauge(
                "apm_ebpf_up",
                "1 when the eBPF programs are loaded and connection counting is attached, 0 in procfs-only mode.",
            )?,
            probe_attached: gauge_vec(
                "apm_ebpf_probe_attached",
                "1 when the eBPF program for this tracepoint is attached, 0 when it was skipped.",
                &["probe"],
            )?,
            conns_accepted: counter(
                "apm_tcp_connections_accepted_total",
                "Server-side TCP connections established on the port (SYN_RECV to ESTABLISHED).",
                &[SERVICE, PORT],
            )?,
            conns_closed: counter(
                "apm_tcp_connections_closed_total",
                "Server-side TCP connections that left ESTABLISHED/CLOSE_WAIT (closed or reset).",
                &[SERVICE, PORT],
            )?,
            conns_active: gauge_vec(
                "apm_tcp_connections_active",
                "Server-side TCP connections currently ESTABLISHED or CLOSE_WAIT on the port.",
                &[SERVICE, PORT],
            )?,
            accepted_sockets: counter(
                "apm_accepted_sockets_total",
                "Sockets returned by accept()/accept4() in the service's processes.",
                &[SERVICE],
            )?,
            accepted_sockets_closed: counter(
                "apm_accepted_sockets_closed_total",
                "close() calls by the service's processes on a socket that accept() returned.",
                &[SERVICE],
            )?,
            ebpf_drops: counter(
                "apm_ebpf_drops_total",
                "Events the kernel side could not record, by reason (a full BPF map, a lost ring-buffer record).",
                &["reason"],
            )?,
            agent_drops: counter(
                "apm_agent_drops_total",
                "Things the agent had to give up on, by reason (a full BPF map when adding a port or process).",
                &["reason"],
            )?,
            monitored_ports: gauge(
                "apm_monitored_ports",
                "Local TCP ports whose connections are counted.",
            )?,
            tracked_processes: gauge(
                "apm_tracked_processes",
                "Processes whose accept/close syscalls are traced.",
            )?,
            discovery_errors: counter(
                "apm_discovery_errors_total",
                "Failed procfs scans for listeners and their processes, by stage.",
                &["stage"],
            )?,
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in AGENT_DROP_REASONS {
            metrics.agent_drops.with_label_values(&[reason]).inc_by(0);
        }
        metrics
            .discovery_errors
            .with_label_values(&["scan"])
            .inc_by(0);
        for reason in apm_common::Drop::ALL {
            metrics
                .ebpf_drops
                .with_label_values(&[reason.reason()])
                .inc_by(0);
        }
        Ok(metrics)
    }

    /// The registry in Prometheus text exposition format 0.0.4.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// The Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
