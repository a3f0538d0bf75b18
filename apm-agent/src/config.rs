//! Command-line configuration. Every flag can also be set with an `APM_*`
//! environment variable (lists are comma-separated there).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use apm_common::events::RINGBUF_BYTES;
use clap::{Parser, ValueEnum};

use crate::{
    capture::{Capture, kernel_layout::VMLINUX_BTF},
    redact::Secret,
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "apm-agent",
    version,
    about = "eBPF-assisted host and request profiler: per-service TCP and HTTP metrics without touching the services."
)]
pub struct Config {
    /// Address of the admin API (/metrics, /health).
    #[arg(long, env = "APM_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,

    /// Also serve /metrics (and the /health probes), and nothing else, on
    /// this address: a DaemonSet exposes it to the cluster while --listen
    /// stays on loopback.
    #[arg(long, env = "APM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Require `Authorization: Bearer <token>` on every endpoint except
    /// /health and /health/ready. Prefer --auth-token-file (a command line
    /// is visible to every user of the host).
    #[arg(long, env = "APM_AUTH_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub auth_token: Option<Secret>,

    /// Read the bearer token from this file (surrounding whitespace is
    /// ignored), e.g. a mounted Kubernetes Secret.
    #[arg(long, env = "APM_AUTH_TOKEN_FILE", conflicts_with = "auth_token")]
    pub auth_token_file: Option<PathBuf>,

    /// Serve both listeners over TLS with this PEM certificate chain (leaf
    /// first); plain HTTP is then refused. Needs --tls-key. The files are
    /// re-read when they change.
    #[arg(long, env = "APM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "APM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// A TOML file with the `[alerts]` table (rules and receivers; see the
    /// README). Errors in it stop startup and name the line.
    #[arg(long, env = "APM_CONFIG")]
    pub config: Option<PathBuf>,

    /// Send alerts to this Alertmanager (base URL; repeatable), besides the
    /// receivers of --config.
    #[arg(long = "alertmanager", env = "APM_ALERTMANAGER", value_delimiter = ',')]
    pub alertmanagers: Vec<String>,

    /// Send alerts to this URL in Alertmanager's webhook JSON (repeatable).
    #[arg(
        long = "alert-webhook",
        env = "APM_ALERT_WEBHOOK",
        value_delimiter = ','
    )]
    pub alert_webhooks: Vec<String>,

    /// Break the agent on purpose, for tests of its own health reporting:
    /// `poison-pipeline` panics the request pipeline's thread a second
    /// after start (or once the first scan is in, if that is later);
    /// `slow-pipeline` makes every record cost the pipeline 100 µs more, so
    /// a few thousand requests a second saturate it;
    /// `discard-records` reads the ring buffer and drops every record
    /// unparsed (`cargo xtask bench` measures the kernel side alone so).
    #[arg(long, hide = true, value_enum)]
    pub test_fault: Option<TestFault>,

    /// Monitor this local TCP port (repeatable). With no --port, --pid or
    /// --comm, every TCP listener on the host is monitored.
    #[arg(long = "port", env = "APM_PORT", value_delimiter = ',')]
    pub ports: Vec<u16>,

    /// Monitor the TCP listeners of this process id (repeatable).
    #[arg(long = "pid", env = "APM_PID", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Monitor the TCP listeners of processes with this name, as in
    /// /proc/PID/comm (repeatable).
    #[arg(long = "comm", env = "APM_COMM", value_delimiter = ',')]
    pub comms: Vec<String>,

    /// Ports Redis servers listen on (repeatable): a monitored server on one
    /// of these, or any whose process is named like redis-server, valkey or
    /// keydb, has its segments captured up to 16 KiB deep (pipelines); a
    /// monitored client's connections to them are timed.
    #[arg(
        long = "redis-port",
        env = "APM_REDIS_PORT",
        value_delimiter = ',',
        default_value = "6379"
    )]
    pub redis_ports: Vec<u16>,

    /// A Redis server by address, HOST:PORT (repeatable): monitored
    /// services' connections to it are timed as Redis clients, but not
    /// their connections to other hosts on that port. A host name is
    /// resolved once, when the agent starts.
    #[arg(long = "redis-addr", env = "APM_REDIS_ADDR", value_delimiter = ',', value_parser = parse_host_port)]
    pub redis_addrs: Vec<(String, u16)>,

    /// PostgreSQL server ports (repeatable): a monitored service's
    /// connections to these are timed as PostgreSQL clients from their
    /// first byte, and a server listening on one gets the deep capture.
    /// Connections to other ports are timed too when their first bytes are
    /// a startup message (unless --no-redis-detect, which turns off all
    /// recognition by first bytes).
    #[arg(
        long = "postgres-port",
        env = "APM_POSTGRES_PORT",
        value_delimiter = ',',
        default_value = "5432"
    )]
    pub postgres_ports: Vec<u16>,

    /// A PostgreSQL server by address, HOST:PORT (repeatable), as
    /// --redis-addr.
    #[arg(long = "postgres-addr", env = "APM_POSTGRES_ADDR", value_delimiter = ',', value_parser = parse_host_port)]
    pub postgres_addrs: Vec<(String, u16)>,

    /// MySQL and MariaDB server ports (repeatable): a monitored service's
    /// connections to these are timed as MySQL clients, and a server
    /// listening on one gets the deep capture. Connections to other ports
    /// are timed too when the server's first bytes are a MySQL greeting.
    #[arg(
        long = "mysql-port",
        env = "APM_MYSQL_PORT",
        value_delimiter = ',',
        default_value = "3306"
    )]
    pub mysql_ports: Vec<u16>,

    /// A MySQL or MariaDB server by address, HOST:PORT (repeatable), as
    /// --redis-addr.
    #[arg(long = "mysql-addr", env = "APM_MYSQL_ADDR", value_delimiter = ',', value_parser = parse_host_port)]
    pub mysql_addrs: Vec<(String, u16)>,

    /// Do not look for clients on other ports. By default a monitored
    /// service's connection to a port not listed above is watched until
    /// its first bytes, and timed as an HTTP client's call or a Redis
    /// client's when the client sends first and that is an HTTP/1.x
    /// request line or a RESP command (and as PostgreSQL's or MySQL's).
    #[arg(long, env = "APM_NO_REDIS_DETECT")]
    pub no_redis_detect: bool,

    /// Read TLS plaintext: uprobes on the OpenSSL libraries and Go
    /// crypto/tls of monitored processes, so their HTTPS and TLS Redis
    /// are timed. Costs each of their SSL calls a uprobe trap, and with
    /// packets adds the accept, close and connect tracepoints and the read
    /// family's entries (every syscall on the host then takes the tracing
    /// path): off by default.
    #[arg(long = "capture-tls", env = "APM_CAPTURE_TLS")]
    pub capture_tls: bool,

    /// Name the service on a port, PORT=NAME (repeatable). Default: the name
    /// of the process that owns the listener.
    #[arg(long = "service-name", env = "APM_SERVICE_NAME", value_delimiter = ',', value_parser = parse_service_name)]
    pub service_names: Vec<(u16, String)>,

    /// Route templates per service; requests beyond go to the `{overflow}`
    /// route.
    #[arg(long, env = "APM_MAX_ROUTES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_routes: u32,

    /// Distinct lower-case words a path position below the root keeps
    /// verbatim (`/users/alice`); one more makes every word there `{var}`
    /// and retires the routes they made.
    #[arg(long, env = "APM_MAX_ROUTE_WORDS", default_value_t = crate::protocols::routes::DEFAULT_MAX_WORDS as u32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_route_words: u32,

    /// Duration-histogram series across all services; requests of a new
    /// series beyond it are counted (apm_http_series_over_budget_total)
    /// but not recorded in the histogram.
    #[arg(long, env = "APM_MAX_SERIES", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_series: u32,

    /// A series (and route) without a request for this long is removed, and
    /// so is everything of a service that is gone.
    #[arg(long, env = "APM_SERIES_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub series_ttl: Duration,

    /// An OTLP/HTTP collector's base URL, e.g. http://otel-collector:4318:
    /// kept traces go to URL/v1/traces as protobuf. Else
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
    /// OTEL_EXPORTER_OTLP_ENDPOINT; with none, traces are only listed at
    /// /traces/recent.
    #[arg(long, env = "APM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Keep every trace with a span at least this slow (and every trace
    /// with an error).
    #[arg(long, env = "APM_TRACE_SLOW", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub trace_slow: Duration,

    /// The share of the other traces kept, 0 to 1, chosen by trace id;
    /// a trace whose caller sampled it (traceparent) is kept too.
    #[arg(long, env = "APM_TRACE_SAMPLE_RATIO", default_value_t = 0.05, value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,

    /// Spans per second that the ratio and callers' sampling keep, at most
    /// (slow and failed traces are always kept).
    #[arg(long, env = "APM_TRACE_MAX_SPANS_PER_SECOND", default_value_t = 1000)]
    pub trace_max_spans_per_second: u32,

    /// Make no spans (no traces at /traces/recent or to a collector).
    #[arg(long, env = "APM_NO_TRACES")]
    pub no_traces: bool,

    /// A route pattern that takes precedence over automatic templating,
    /// e.g. `/users/{name}/profile` or `/static/{*path}` (repeatable).
    #[arg(long = "route", env = "APM_ROUTE", value_delimiter = ',', value_parser = parse_route)]
    pub routes: Vec<crate::protocols::routes::Pattern>,

    /// Connections whose HTTP requests (and, as many again, Redis
    /// commands) are paired at once; beyond that, the least recently seen
    /// idle one is evicted, else a new one is not tracked (counted as
    /// table_full).
    #[arg(long, env = "APM_MAX_CONNECTIONS", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_connections: u32,

    /// How often processes and the host are sampled.
    #[arg(long, env = "APM_SAMPLE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,

    /// A dependency whose health /health/detailed reports:
    /// `redis://host:port` (PING), `postgres://user@host:port/db` or
    /// `mysql://user@host:port/db` (`SELECT 1`; the password in the URL, or
    /// `?password_file=PATH` or `?password_env=VAR`) or `tcp://host:port`
    /// (connect) (repeatable).
    /// A URL's user and password are used to connect and shown nowhere.
    #[arg(long = "check", env = "APM_CHECK", value_delimiter = ',', value_parser = crate::serve::checks::DependencyParser)]
    pub checks: Vec<crate::serve::checks::Dependency>,

    /// How often dependencies are checked.
    #[arg(long, env = "APM_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// Log records kept in memory for /logs/recent.
    #[arg(long, env = "APM_LOG_BUFFER", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub log_buffer: u32,

    /// How often listeners and their processes are rediscovered from procfs.
    #[arg(long, env = "APM_REFRESH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub refresh_interval: Duration,

    /// How often ports that monitored services' connections no longer use
    /// stop being watched for Redis (a pass over the kernel's 65 536 port
    /// flags).
    #[arg(long, env = "APM_WATCHED_PORTS_PRUNE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watched_ports_prune_interval: Duration,

    /// Where procfs is mounted (the host's /proc when running in a container).
    #[arg(long, env = "APM_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Count connections but do not time HTTP requests: leaves out the
    /// packet (or read/write syscall) probes.
    #[arg(long, env = "APM_NO_HTTP")]
    pub no_http: bool,

    /// Where HTTP bytes come from: `packets` (cgroup_skb programs on the
    /// cgroup-v2 root; no syscall is slowed) or `syscalls` (read/write
    /// tracepoints, for hosts without cgroup v2; every syscall on the host
    /// pays for them). Without cgroup v2, packets fall back to syscalls.
    #[arg(long, env = "APM_CAPTURE", value_enum, default_value_t = Capture::Packets)]
    pub capture: Capture,

    /// The cgroup-v2 root the packet programs attach to (e.g. the host's
    /// cgroup2 mounted into a container). Default: the cgroup2 mount found
    /// in mountinfo, or one the agent mounts on /run/apm/cgroup2.
    #[arg(long, env = "APM_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// The kernel's BTF: where the TLS probes learn how to find a
    /// descriptor's socket, so that with packets they key plaintext by
    /// socket and need no syscall tracepoint. Unreadable: TLS is keyed by
    /// descriptor, through the accept, close and connect tracepoints.
    #[arg(long, env = "APM_KERNEL_BTF", default_value = VMLINUX_BTF)]
    pub kernel_btf: PathBuf,

    /// Size of the kernel's ring buffer of records, in bytes: a power of
    /// two, at least a page (4096). Records that do not fit are lost and
    /// counted.
    #[arg(long, env = "APM_RING_BUFFER_BYTES", default_value_t = RINGBUF_BYTES, value_parser = parse_ring_bytes)]
    pub ring_buffer_bytes: u32,

    /// Do not load eBPF programs (procfs-only mode).
    #[arg(long, env = "APM_NO_EBPF")]
    pub no_ebpf: bool,

    /// Log format; default: json when stdout is not a terminal, text otherwise.
    #[arg(long, env = "APM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, in tracing-subscriber's EnvFilter syntax.
    #[arg(long, env = "APM_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TestFault {
    PoisonPipeline,
    DiscardRecords,
    SlowPipeline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl Config {
    /// The bearer token from --auth-token or --auth-token-file.
    pub fn auth_token(&self) -> Result<Option<Secret>, String> {
        if let Some(token) = &self.auth_token {
            if token.expose().trim().is_empty() {
                return Err("--auth-token is empty".into());
            }
            return Ok(Some(token.clone()));
        }
        let Some(path) = &self.auth_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading --auth-token-file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("--auth-token-file {} is empty", path.display()));
        }
        Ok(Some(Secret::new(token)))
    }

    /// The TLS server configuration of --tls-cert and --tls-key, if given.
    pub fn tls(
        &self,
    ) -> Result<Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::serve::tls::server_config(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// The alert rules and receivers: the built-in defaults, or those of
    /// --config.
    pub fn alerts(&self) -> Result<crate::alerts::rules::AlertConfig, String> {
        use crate::alerts::rules::{self, Receiver};
        let mut alerts = match &self.config {
            None => rules::AlertConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading --config {}: {e}", path.display()))?;
                rules::parse(&text, &path.display().to_string())?
            }
        };
        for url in &self.alertmanagers {
            let url = rules::receiver_url(url).map_err(|e| format!("--alertmanager: {e}"))?;
            alerts.receivers.push(Receiver::Alertmanager(url));
        }
        for url in &self.alert_webhooks {
            let url = rules::receiver_url(url).map_err(|e| format!("--alert-webhook: {e}"))?;
            alerts.receivers.push(Receiver::Webhook(url));
        }
        Ok(alerts)
    }

    /// Where kept traces are POSTed, if anywhere: --otlp-endpoint, or the
    /// OpenTelemetry SDK's variables.
    pub fn traces_url(&self) -> Result<Option<String>, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = match (
            &self.otlp_endpoint,
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ) {
            (Some(base), _) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, Some(url)) => url,
            (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
                None => return Ok(None),
            },
        };
        match url::Url::parse(&url) {
            Ok(u) if u.scheme() == "http" && u.has_host() => Ok(Some(url)),
            Ok(u) if u.scheme() == "https" => Err(format!(
                "the OTLP endpoint {} is https, which the exporter does not speak yet: use an http:// collector (a local one, or a sidecar)",
                crate::redact::url(&url)
            )),
            _ => Err(format!(
                "the OTLP endpoint {} is not an http:// URL",
                crate::redact::url(&url)
            )),
        }
    }

    /// True when the user named no service: count every listener on the host.
    pub fn monitors_all_ports(&self) -> bool {
        self.ports.is_empty() && self.pids.is_empty() && self.comms.is_empty()
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{s:?} is not a ratio from 0 to 1"))
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// `HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`.
fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{s:?} has no host name or address"));
    }
    Ok((host.to_owned(), port))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two of at least 4096 (a page)"
        ));
    }
    Ok(n)
}

fn parse_route(s: &str) -> Result<crate::protocols::routes::Pattern, String> {
    crate::protocols::routes::Pattern::parse(s)
}

/// Longest service name accepted on the command line (it becomes a label).
const MAX_SERVICE_NAME: usize = 64;

fn parse_service_name(s: &str) -> Result<(u16, String), String> {
    let (port, name) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PORT=NAME, got {s:?}"))?;
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|e| format!("invalid port {port:?}: {e}"))?;
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Err(format!(
            "service name must be 1 to {MAX_SERVICE_NAME} bytes, got {name:?}"
        ));
    }
    Ok((port, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_monitor_every_port_on_loopback_admin() {
        let c = Config::try_parse_from(["apm-agent"]).expect("defaults parse");
        assert_eq!(c.listen, "127.0.0.1:9464".parse().expect("addr"));
        assert!(c.monitors_all_ports());
        assert_eq!(c.refresh_interval, Duration::from_secs(1));
        assert_eq!(c.max_route_words, 10);
    }

    #[test]
    fn repeatable_and_comma_separated_selection() {
        let c = Config::try_parse_from([
            "apm-agent",
            "--port",
            "80",
            "--port=443,8080",
            "--comm",
            "nginx",
            "--service-name",
            "8080=api",
        ])
        .expect("parse");
        assert_eq!(c.ports, vec![80, 443, 8080]);
        assert_eq!(c.comms, vec!["nginx".to_owned()]);
        assert_eq!(c.service_names, vec![(8080, "api".to_owned())]);
        assert!(!c.monitors_all_ports());
    }

    #[test]
    fn bad_values_are_rejected_with_a_reason() {
        let err = Config::try_parse_from(["apm-agent", "--port", "70000"]).expect_err("port");
        assert!(err.to_string().contains("70000"), "{err}");
        let err =
            Config::try_parse_from(["apm-agent", "--service-name", "80"]).expect_err("no name");
        assert!(err.to_string().contains("PORT=NAME"), "{err}");
        let err = Config::try_parse_from(["apm-agent", "--bogus"]).expect_err("unknown");
        assert!(err.to_string().contains("--bogus"), "{err}");
    }

    #[test]
    fn redis_addresses_are_host_and_port() {
        let c = Config::try_parse_from([
            "apm-agent",
            "--redis-addr",
            "10.0.0.5:6380,cache.internal:6379",
            "--redis-addr=[::1]:7000",
        ])
        .expect("parse");
        assert_eq!(
            c.redis_addrs,
            vec![
                ("10.0.0.5".to_owned(), 6380),
                ("cache.internal".to_owned(), 6379),
                ("::1".to_owned(), 7000)
            ]
        );
        for bad in ["10.0.0.5", ":6379", "host:0", "host:http", "a b:1"] {
            let err = Config::try_parse_from(["apm-agent", "--redis-addr", bad]).expect_err(bad);
            assert!(err.to_string().contains("--redis-addr"), "{bad}: {err}");
        }
    }
}
