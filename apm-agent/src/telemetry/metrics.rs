//! Every metric the agent exports, in one registry owned by [`Metrics`]
//! (no global registry). docs/metrics.md lists them; a test checks that the
//! two agree.

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every `reason` of `apm_agent_drops_total`, exported from the start at 0.
pub const AGENT_DROP_REASONS: [&str; 6] = [
    "ports_map_full",
    "pids_map_full",
    "conns_map_full",
    "clients_map_full",
    "preexisting_full",
    "tls_untied",
];

/// OpenTelemetry's recommended buckets for http.server.request.duration.
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Buckets of the database operation histograms: OpenTelemetry's
/// recommendation for db.client.operation.duration starts at 1 ms, and a
/// Redis command takes tens of microseconds, so finer buckets come first.
pub const DB_DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

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
    pub capture_connections: IntCounterVec,
    pub capture_skipped: IntCounterVec,
    pub agent_drops: IntCounterVec,
    pub monitored_ports: IntGauge,
    pub tracked_processes: IntGauge,
    pub discovery_errors: IntCounterVec,
    pub http_duration: HistogramVec,
    pub db_client_duration: HistogramVec,
    pub db_server_duration: HistogramVec,
    pub cache_operations: IntCounterVec,
    pub db_unpaired: IntCounterVec,
    pub db_statement_overflow: IntCounterVec,
    pub outbound_active: IntGaugeVec,
    pub http_seen: IntCounterVec,
    pub http_paired: IntCounterVec,
    pub http_unpaired: IntCounterVec,
    pub http_resyncs: IntCounterVec,
    pub http_routes: IntGaugeVec,
    pub http_route_overflow: IntCounterVec,
    pub http_route_collapses: IntCounterVec,
    pub http_series_over_budget: IntCounter,
    pub ports_expired: IntCounter,
    pub alerts_active: IntGaugeVec,
    pub alert_notifications: IntCounterVec,
    pub alert_notifications_dropped: IntCounterVec,
    pub alerts_without_data: IntGauge,
    pub alert_evaluations: IntCounter,
    pub alert_evaluation_seconds: Histogram,
    pub http_series_expired: IntCounter,
    pub http_connections: IntGauge,
    pub ringbuf_records: IntCounter,
    pub ringbuf_decode_errors: IntCounter,
    pub process_cpu_seconds: CounterVec,
    pub process_cpu_cores: GaugeVec,
    pub process_rss: GaugeVec,
    pub process_count: IntGaugeVec,
    pub node_cpu_seconds: CounterVec,
    pub host_cpu_busy: Gauge,
    pub host_memory_total: Gauge,
    pub host_memory_available: Gauge,
    pub host_memory_used: Gauge,
    pub node_load1: Gauge,
    pub node_load5: Gauge,
    pub node_load15: Gauge,
    pub node_fs_size: GaugeVec,
    pub node_fs_avail: GaugeVec,
    pub node_fs_free: GaugeVec,
    pub host_pressure_avg10: GaugeVec,
    pub host_pressure_seconds: CounterVec,
    pub sample_age: Gauge,
    pub dependency_up: IntGaugeVec,
    pub dependency_seconds: GaugeVec,
    pub log_records_evicted: IntCounter,
    pub service_info: IntGaugeVec,
    pub http_client: super::http_client::ClientMetrics,
    pub rpc: super::rpc::RpcMetrics,
    pub saturation: super::saturation::SaturationMetrics,
    pub traces: super::traces::metrics::TraceMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric: {0}")]
    Register(#[from] prometheus::Error),
}

impl Metrics {
    /// Open server-side connections per service (the sum of
    /// `apm_tcp_connections_active` over its ports).
    pub fn connections_by_service(&self) -> std::collections::HashMap<String, f64> {
        use prometheus::core::Collector as _;
        let mut out = std::collections::HashMap::new();
        for family in self.conns_active.collect() {
            for m in family.get_metric() {
                let service = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "service_name")
                    .map(|l| l.value().to_owned());
                if let Some(service) = service {
                    *out.entry(service).or_insert(0.0) += m.get_gauge().get_value();
                }
            }
        }
        out
    }

    /// Open outbound connections of `service`: (destination, active).
    pub fn outbound_of(&self, service: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> =
            super::saturation::tcp::series(&self.outbound_active, Some(service))
                .into_iter()
                .map(|(l, v)| {
                    let at = |name: &str| l.get(name).cloned().unwrap_or_default();
                    (format!("{}:{}", at("server_address"), at(PORT)), v)
                })
                .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

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
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, MetricsError> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(HTTP_DURATION_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let db_histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, MetricsError> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(DB_DURATION_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let plain_histogram = |name: &str, help: &str| -> Result<Histogram, MetricsError> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let plain_counter = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let fcounter =
            |name: &str, help: &str, labels: &[&str]| -> Result<CounterVec, MetricsError> {
                let c = CounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let fgauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, MetricsError> {
                let g = GaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let fgauge = |name: &str, help: &str| -> Result<Gauge, MetricsError> {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let fs = ["device", "fstype", "mountpoint"];
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
                "1 when the eBPF program for this hook (tracepoint or cgroup_skb) is attached, 0 when it was skipped or is off.",
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
            capture_connections: counter(
                "apm_capture_connections_total",
                "Server connections by the protocol the packet programs saw in their first bytes; only http and resp are copied to the agent.",
                &["verdict"],
            )?,
            capture_skipped: counter(
                "apm_capture_skipped_segments_total",
                "Payload segments of server connections not copied to the agent because no parser reads their protocol.",
                &["verdict"],
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
            http_duration: histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, from the first byte read to the last byte of the response written (OpenTelemetry http.server.request.duration).",
                &[
                    "http_request_method",
                    "http_route",
                    "http_response_status_code",
                    "network_protocol_version",
                    SERVICE,
                    PORT,
                ],
            )?,
            db_client_duration: db_histogram(
                "db_client_operation_duration_seconds",
                "Duration of database operations of monitored clients, from the first byte of the command sent to the last byte of its reply received (OpenTelemetry db.client.operation.duration); its _count is the operation count.",
                &[
                    "db_system_name",
                    "db_operation_name",
                    "db_collection_name",
                    "db_response_status_code",
                    "server_address",
                    PORT,
                    SERVICE,
                ],
            )?,
            db_server_duration: db_histogram(
                "apm_db_server_operation_duration_seconds",
                "Duration of operations served by a monitored database server, from the first byte of the command received to the last byte of its reply sent.",
                &[
                    "db_system_name",
                    "db_operation_name",
                    "db_collection_name",
                    "db_response_status_code",
                    SERVICE,
                    PORT,
                ],
            )?,
            cache_operations: counter(
                "apm_cache_operations_total",
                "Cache (Redis) operations by command and result: hit or miss for reads (a nil or empty reply is a miss), ok or error for the rest; counted on both sides of a monitored connection.",
                &[SERVICE, "operation", "result"],
            )?,
            db_statement_overflow: counter(
                "apm_db_statement_overflow_total",
                "SQL statements counted under `(other statements)` in /stats/requests: their service already had the most distinct statements kept (500).",
                &[SERVICE, "db_system_name"],
            )?,
            db_unpaired: counter(
                "apm_db_operations_unpaired_total",
                "Database commands or replies that could not be paired, by reason.",
                &[SERVICE, "db_system_name", "reason"],
            )?,
            outbound_active: gauge_vec(
                "apm_outbound_connections_active",
                "Outbound TCP connections the service's processes have open (connecting, established or closed by the peer but not by them), per destination: their connection pools.",
                &[SERVICE, "server_address", PORT],
            )?,
            http_seen: counter(
                "apm_http_requests_seen_total",
                "HTTP requests parsed from reads on monitored connections.",
                &[SERVICE],
            )?,
            http_paired: counter(
                "apm_http_requests_paired_total",
                "HTTP requests paired with their response (all in the duration histogram unless apm_http_series_over_budget_total counted some).",
                &[SERVICE],
            )?,
            http_unpaired: counter(
                "apm_http_requests_unpaired_total",
                "HTTP requests seen that could not be paired with their response, by reason.",
                &[SERVICE, "reason"],
            )?,
            http_resyncs: counter(
                "apm_http_stream_resyncs_total",
                "Times HTTP framing was lost on a connection and pairing resynced, by reason.",
                &[SERVICE, "reason"],
            )?,
            http_routes: gauge_vec(
                "apm_http_routes",
                "Distinct route templates of the service (bounded by --max-routes).",
                &[SERVICE],
            )?,
            http_route_overflow: counter(
                "apm_http_route_overflow_total",
                "Requests filed under the {overflow} route because the service reached --max-routes.",
                &[SERVICE],
            )?,
            http_route_collapses: counter(
                "apm_http_route_collapses_total",
                "Path positions that took more than --max-route-words distinct words and became {var}, their word routes retired.",
                &[SERVICE],
            )?,
            http_series_over_budget: plain_counter(
                "apm_http_series_over_budget_total",
                "Paired requests left out of the duration histogram because --max-series duration series already existed (across services).",
            )?,
            alerts_active: gauge_vec(
                "apm_alerts_active",
                "Alerts pending or firing now, by rule, severity and state.",
                &["alertname", "severity", "state"],
            )?,
            alert_notifications: counter(
                "apm_alert_notifications_total",
                "Alert notices by receiver (its URL without credentials) and result: sent, failed (every attempt failed), timeout (its deadline or shutdown came first).",
                &["receiver", "result"],
            )?,
            alert_notifications_dropped: counter(
                "apm_alert_notifications_dropped_total",
                "Alert notices never attempted, by receiver and reason: queue_full (the receiver too slow for too long), shutdown (still queued when the agent stopped).",
                &["receiver", "reason"],
            )?,
            alerts_without_data: gauge(
                "apm_alerts_without_data",
                "Firing alerts kept firing while their window has no data (a service that stopped sending).",
            )?,
            alert_evaluations: plain_counter(
                "apm_alert_evaluations_total",
                "Evaluations of every alert rule (one per evaluation interval).",
            )?,
            alert_evaluation_seconds: plain_histogram(
                "apm_alert_evaluation_duration_seconds",
                "Time one evaluation of every alert rule took.",
            )?,
            ports_expired: plain_counter(
                "apm_ports_expired_total",
                "Monitored ports forgotten after --series-ttl without a listener or a connection (kernel entries and series removed).",
            )?,
            http_series_expired: plain_counter(
                "apm_http_series_expired_total",
                "Duration series removed after --series-ttl without a request (their budget is freed).",
            )?,
            http_connections: gauge(
                "apm_http_connections_tracked",
                "Connections whose requests are being paired right now.",
            )?,
            ringbuf_records: plain_counter(
                "apm_ringbuf_records_total",
                "Records read from the kernel's ring buffer.",
            )?,
            ringbuf_decode_errors: plain_counter(
                "apm_ringbuf_decode_errors_total",
                "Ring-buffer records that could not be decoded (and were skipped).",
            )?,
            process_cpu_seconds: fcounter(
                "apm_process_cpu_seconds_total",
                "CPU time used by the service's processes (all of them summed), in seconds.",
                &[SERVICE],
            )?,
            process_cpu_cores: fgauge_vec(
                "apm_process_cpu_cores",
                "CPU cores the service's processes used over the last sample interval.",
                &[SERVICE],
            )?,
            process_rss: fgauge_vec(
                "apm_process_resident_memory_bytes",
                "Resident memory of the service's processes, summed, in bytes.",
                &[SERVICE],
            )?,
            process_count: gauge_vec(
                "apm_service_processes",
                "Processes of the service (every holder of its listening sockets).",
                &[SERVICE],
            )?,
            node_cpu_seconds: fcounter(
                "node_cpu_seconds_total",
                "Seconds the CPUs spent in each mode (as node_exporter).",
                &["cpu", "mode"],
            )?,
            host_cpu_busy: fgauge(
                "apm_host_cpu_busy_ratio",
                "Share of host CPU time not idle or waiting for I/O over the last sample interval.",
            )?,
            // node_exporter's node_memory_MemTotal_bytes and
            // node_memory_MemAvailable_bytes fail promtool's snake_case lint.
            host_memory_total: fgauge(
                "apm_host_memory_total_bytes",
                "Host memory in bytes (node_exporter: node_memory_MemTotal_bytes).",
            )?,
            host_memory_available: fgauge(
                "apm_host_memory_available_bytes",
                "Host memory available for new work without swapping, in bytes (node_exporter: node_memory_MemAvailable_bytes).",
            )?,
            host_memory_used: fgauge(
                "apm_host_memory_used_bytes",
                "Host memory in use (total minus available), in bytes.",
            )?,
            node_load1: fgauge("node_load1", "1-minute load average (as node_exporter).")?,
            node_load5: fgauge("node_load5", "5-minute load average (as node_exporter).")?,
            node_load15: fgauge("node_load15", "15-minute load average (as node_exporter).")?,
            node_fs_size: fgauge_vec(
                "node_filesystem_size_bytes",
                "Filesystem size in bytes (as node_exporter).",
                &fs,
            )?,
            node_fs_avail: fgauge_vec(
                "node_filesystem_avail_bytes",
                "Filesystem space available to non-root users in bytes (as node_exporter).",
                &fs,
            )?,
            node_fs_free: fgauge_vec(
                "node_filesystem_free_bytes",
                "Filesystem free space in bytes (as node_exporter).",
                &fs,
            )?,
            host_pressure_avg10: fgauge_vec(
                "apm_host_pressure_avg10_ratio",
                "Pressure stall information: share of the last 10 s in which some (or all) tasks stalled on the resource.",
                &["resource", "kind"],
            )?,
            host_pressure_seconds: fcounter(
                "apm_host_pressure_stalled_seconds_total",
                "Pressure stall information: total stall time, in seconds.",
                &["resource", "kind"],
            )?,
            sample_age: fgauge(
                "apm_sample_age_seconds",
                "Age of the latest process and host sample.",
            )?,
            dependency_up: gauge_vec(
                "apm_dependency_up",
                "1 when the last check of a configured dependency (--check) succeeded.",
                &["dependency"],
            )?,
            dependency_seconds: fgauge_vec(
                "apm_dependency_check_duration_seconds",
                "Duration of the last check of a configured dependency (PING or TCP connect).",
                &["dependency"],
            )?,
            log_records_evicted: plain_counter(
                "apm_log_records_evicted_total",
                "Log records pushed out of the in-memory ring behind /logs/recent.",
            )?,
            service_info: gauge_vec(
                "apm_service_info",
                "Always 1: the container and Kubernetes pod of each service (from its lowest pid's cgroup), empty when on the host. Join on service_name.",
                &[SERVICE, "container_id", "pod_uid"],
            )?,
            http_client: super::http_client::ClientMetrics::register(&registry)?,
            rpc: super::rpc::RpcMetrics::register(&registry)?,
            saturation: super::saturation::SaturationMetrics::register(&registry)?,
            traces: super::traces::metrics::TraceMetrics::register(&registry)?,
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
        for reason in apm_common::DropReason::ALL {
            metrics
                .ebpf_drops
                .with_label_values(&[reason.reason()])
                .inc_by(0);
        }
        for verdict in apm_common::Verdict::ALL {
            metrics.count_verdict(verdict, 0, 0);
        }
        Ok(metrics)
    }

    /// Adds `connections` decided as `verdict` and `skipped` segments not
    /// copied for it. Undecided is no verdict to count connections under;
    /// only a verdict whose bytes are not copied skips segments.
    pub fn count_verdict(&self, verdict: apm_common::Verdict, connections: u64, skipped: u64) {
        let label = [verdict.label()];
        if verdict != apm_common::Verdict::Undecided {
            self.capture_connections
                .with_label_values(&label)
                .inc_by(connections);
        }
        if !verdict.captured() {
            self.capture_skipped
                .with_label_values(&label)
                .inc_by(skipped);
        }
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
