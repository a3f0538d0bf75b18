//! Alert rules: the built-in defaults and the `[alerts]` table of the file
//! users write (`--config FILE`, TOML). An unknown key, a bad duration, an
//! unknown signal or an inconsistent rule stops startup with an error that
//! names the line.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

/// What a rule measures.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// 5xx responses over all responses of a service in the window.
    HttpErrorRatio,
    /// gRPC calls a service served that ended in a server error
    /// (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
    /// DATA_LOSS) over all its calls.
    GrpcErrorRatio,
    /// The 95th percentile of request duration of a service and route.
    HttpLatencyP95Seconds,
    /// Host memory in use over total (MemAvailable-based).
    HostMemoryRatio,
    /// Host CPU busy time over all CPU time.
    HostCpuRatio,
    /// Used space of each real filesystem.
    FilesystemUsedRatio,
    /// CPU cores a service's processes used.
    ProcessCpuCores,
    /// Resident memory of a service's processes.
    ProcessMemoryBytes,
    /// Failed SQL statements over all statements a service ran or served.
    DbErrorRatio,
    /// The 95th percentile of the duration of a service's SQL statement
    /// (normalised).
    DbStatementP95Seconds,
    /// A service that sent no request in the window (Prometheus'
    /// `absent()`): the named one, or every one seen since the agent
    /// started.
    ServiceAbsent,
    /// Seconds a service's threads waited for a CPU per second, mean.
    CpuWaitRatio,
    /// Share of its cgroups' CFS periods throttled by `cpu.max`, mean.
    CpuThrottledRatio,
    /// The largest share of its descriptor limit a process of it holds.
    FdUsageRatio,
    /// Processes of its cgroups the OOM killer took in the window.
    OomKills,
    /// Its fullest accept queue over its backlog (above 1: full).
    AcceptQueueRatio,
    /// Connection attempts its listening ports dropped in the window.
    ListenDrops,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::HttpErrorRatio => "http_error_ratio",
            Signal::GrpcErrorRatio => "grpc_error_ratio",
            Signal::HttpLatencyP95Seconds => "http_latency_p95_seconds",
            Signal::HostMemoryRatio => "host_memory_ratio",
            Signal::HostCpuRatio => "host_cpu_ratio",
            Signal::FilesystemUsedRatio => "filesystem_used_ratio",
            Signal::ProcessCpuCores => "process_cpu_cores",
            Signal::ProcessMemoryBytes => "process_memory_bytes",
            Signal::ServiceAbsent => "service_absent",
            Signal::DbErrorRatio => "db_error_ratio",
            Signal::DbStatementP95Seconds => "db_statement_p95_seconds",
            Signal::CpuWaitRatio => "cpu_wait_ratio",
            Signal::CpuThrottledRatio => "cpu_throttled_ratio",
            Signal::FdUsageRatio => "fd_usage_ratio",
            Signal::OomKills => "oom_kills",
            Signal::AcceptQueueRatio => "accept_queue_ratio",
            Signal::ListenDrops => "listen_drops",
        }
    }

    /// Measured on requests: a window needs `min_requests` of them to say
    /// anything, else it has no data.
    pub fn counts_requests(self) -> bool {
        matches!(
            self,
            Signal::HttpErrorRatio
                | Signal::GrpcErrorRatio
                | Signal::HttpLatencyP95Seconds
                | Signal::DbErrorRatio
                | Signal::DbStatementP95Seconds
        )
    }

    /// What a firing alert does while its window has no data, unless the
    /// rule says: an unmounted filesystem resolves; everything else
    /// (a service that stopped answering, a sampler that stopped) keeps
    /// firing until data returns.
    pub fn default_no_data(self) -> NoData {
        match self {
            Signal::FilesystemUsedRatio => NoData::Resolve,
            _ => NoData::KeepFiring,
        }
    }

    /// Evaluated per service (else per host or filesystem).
    pub fn per_service(self) -> bool {
        matches!(
            self,
            Signal::HttpErrorRatio
                | Signal::GrpcErrorRatio
                | Signal::HttpLatencyP95Seconds
                | Signal::ProcessCpuCores
                | Signal::ProcessMemoryBytes
                | Signal::ServiceAbsent
                | Signal::DbErrorRatio
                | Signal::DbStatementP95Seconds
                | Signal::CpuWaitRatio
                | Signal::CpuThrottledRatio
                | Signal::FdUsageRatio
                | Signal::OomKills
                | Signal::AcceptQueueRatio
                | Signal::ListenDrops
        )
    }
}

/// What a firing alert does while its window has no data: no measurement
/// at all (the service stopped, its windows were forgotten), or fewer
/// than `min_requests` requests. A pending alert is always cleared (no
/// data is no evidence), as Prometheus resets one whose series vanished.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// Stays firing (and is re-sent) until the window has data again;
    /// `no_data_since` says since when.
    KeepFiring,
    /// Counts as the condition no longer holding: resolves once
    /// `keep_firing_for` has passed (Prometheus' behaviour).
    Resolve,
}

/// Fires above or below a threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Above(f64),
    Below(f64),
}

impl Threshold {
    pub fn breached(self, value: f64) -> bool {
        match self {
            Threshold::Above(t) => value > t,
            Threshold::Below(t) => value < t,
        }
    }

    pub fn value(self) -> f64 {
        match self {
            Threshold::Above(t) | Threshold::Below(t) => t,
        }
    }
}

/// One rule, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub signal: Signal,
    pub threshold: Threshold,
    /// The rolling window the signal is computed over.
    pub window: Duration,
    /// How long the condition must hold before the alert fires.
    pub hold: Duration,
    /// How long a firing alert stays firing after the condition stopped
    /// holding (Prometheus' `keep_firing_for`).
    pub keep_firing_for: Duration,
    pub no_data: NoData,
    /// Repeat notifications of one alert are at least this far apart.
    pub cooldown: Duration,
    pub severity: String,
    pub service: Option<String>,
    pub route: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Request-based windows (error ratio, latency) with fewer requests
    /// have no data: they neither fire nor resolve.
    pub min_requests: u64,
}

/// The cooldown between repeats of one alert, by default.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);
/// Error-ratio and latency windows need this many requests, by default:
/// below 20 the 95th percentile is the slowest request itself, so one
/// slow request would be the p95.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// The longest window a rule may ask for (the agent keeps this much).
pub const MAX_WINDOW: Duration = Duration::from_secs(900);

/// The built-in rules: what a hand-instrumented service checks.
pub fn defaults() -> Vec<Rule> {
    let rule = |name: &str, signal, above: f64, hold: u64| Rule {
        name: name.into(),
        signal,
        threshold: Threshold::Above(above),
        window: Duration::from_secs(60),
        hold: Duration::from_secs(hold),
        keep_firing_for: Duration::ZERO,
        no_data: signal.default_no_data(),
        cooldown: DEFAULT_COOLDOWN,
        severity: "warning".into(),
        service: None,
        route: None,
        labels: BTreeMap::new(),
        min_requests: DEFAULT_MIN_REQUESTS,
    };
    vec![
        rule("HostMemoryHigh", Signal::HostMemoryRatio, 0.85, 60),
        rule("HostCpuHigh", Signal::HostCpuRatio, 0.80, 60),
        rule(
            "FilesystemAlmostFull",
            Signal::FilesystemUsedRatio,
            0.90,
            60,
        ),
        rule("HttpErrorRatioHigh", Signal::HttpErrorRatio, 0.05, 60),
        rule("HttpLatencyP95High", Signal::HttpLatencyP95Seconds, 2.0, 60),
        // Saturation whose threshold needs no knowledge of the service:
        // descriptors nearly exhausted, a process OOM-killed, a CPU limit
        // holding the service back a quarter of the time (as
        // kube-prometheus' CPUThrottlingHigh), clients' connections
        // dropped at its listeners for a minute.
        rule("ServiceFdsAlmostExhausted", Signal::FdUsageRatio, 0.9, 30),
        rule("ServiceOomKilled", Signal::OomKills, 0.0, 0),
        rule("ServiceCpuThrottled", Signal::CpuThrottledRatio, 0.25, 300),
        rule("ServiceDroppingConnections", Signal::ListenDrops, 0.0, 60),
    ]
}

/// Where notifications go.
#[derive(Clone, PartialEq, Eq)]
pub enum Receiver {
    /// Alertmanager's base URL (`POST {url}/api/v2/alerts`).
    Alertmanager(String),
    /// A URL that takes Alertmanager's webhook JSON.
    Webhook(String),
}

impl std::fmt::Debug for Receiver {
    /// Without credentials, like everywhere else a URL is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Receiver::Alertmanager(u) => write!(f, "Alertmanager({})", crate::redact::url(u)),
            Receiver::Webhook(u) => write!(f, "Webhook({})", crate::redact::url(u)),
        }
    }
}

/// The `[alerts]` table of a config file, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertConfig {
    pub evaluation_interval: Duration,
    pub rules: Vec<Rule>,
    pub receivers: Vec<Receiver>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            evaluation_interval: Duration::from_secs(10),
            rules: defaults(),
            receivers: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    alerts: Option<AlertsSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsSpec {
    #[serde(default, deserialize_with = "duration")]
    evaluation_interval: Option<Duration>,
    #[serde(default)]
    defaults: Option<bool>,
    #[serde(default)]
    rules: Vec<toml::Spanned<RuleSpec>>,
    #[serde(default)]
    receivers: Vec<toml::Spanned<ReceiverSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    signal: Signal,
    above: Option<f64>,
    below: Option<f64>,
    #[serde(default, deserialize_with = "duration")]
    window: Option<Duration>,
    #[serde(default, rename = "for", deserialize_with = "duration")]
    hold: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    keep_firing_for: Option<Duration>,
    no_data: Option<NoData>,
    #[serde(default, deserialize_with = "duration")]
    cooldown: Option<Duration>,
    severity: Option<String>,
    service: Option<String>,
    route: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    min_requests: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiverSpec {
    alertmanager: Option<String>,
    webhook: Option<String>,
}

/// A humantime duration ("30s", "5m"); the error names the bad value.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// Parses a config file's text. `path` names it in errors.
pub fn parse(text: &str, path: &str) -> Result<AlertConfig, String> {
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" (line {})", line_of(text, s.start)))
            .unwrap_or_default();
        format!("{path}{at}: {}", e.message())
    })?;
    let Some(alerts) = spec.alerts else {
        return Ok(AlertConfig::default());
    };
    let mut rules = if alerts.defaults.unwrap_or(true) {
        defaults()
    } else {
        Vec::new()
    };
    for spanned in alerts.rules {
        let line = line_of(text, spanned.span().start);
        let rule =
            resolve(spanned.into_inner()).map_err(|e| format!("{path} (line {line}): {e}"))?;
        rules.retain(|r| r.name != rule.name || r.service != rule.service);
        rules.push(rule);
    }
    let mut receivers = Vec::new();
    for spanned in alerts.receivers {
        let line = line_of(text, spanned.span().start);
        let r = spanned.into_inner();
        let receiver = match (r.alertmanager, r.webhook) {
            (Some(url), None) => Receiver::Alertmanager(check_url(&url, line, path)?),
            (None, Some(url)) => Receiver::Webhook(check_url(&url, line, path)?),
            _ => {
                return Err(format!(
                    "{path} (line {line}): a receiver has exactly one of alertmanager = \"URL\" or webhook = \"URL\""
                ));
            }
        };
        receivers.push(receiver);
    }
    let evaluation_interval = alerts
        .evaluation_interval
        .unwrap_or(AlertConfig::default().evaluation_interval);
    if evaluation_interval < Duration::from_millis(100) {
        return Err(format!(
            "{path}: evaluation_interval must be at least 100ms"
        ));
    }
    Ok(AlertConfig {
        evaluation_interval,
        rules,
        receivers,
    })
}

fn check_url(url: &str, line: usize, path: &str) -> Result<String, String> {
    receiver_url(url).map_err(|e| format!("{path} (line {line}): {e}"))
}

/// A receiver URL: plain http (the agent has no TLS client; put
/// Alertmanager behind a local proxy for https). Errors show it without
/// credentials.
pub fn receiver_url(url: &str) -> Result<String, String> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "http" && u.has_host() => Ok(url.to_owned()),
        Ok(u) if u.scheme() == "https" => Err(format!(
            "receiver URL {:?}: https is not supported yet (no TLS client); use http",
            crate::redact::url(url)
        )),
        _ => Err(format!(
            "receiver URL {:?} is not an http(s) URL",
            crate::redact::url(url)
        )),
    }
}

fn resolve(r: RuleSpec) -> Result<Rule, String> {
    let threshold = match (r.signal, r.above, r.below) {
        // Absent: fewer than one request in the window.
        (Signal::ServiceAbsent, None, None) => Threshold::Below(1.0),
        (Signal::ServiceAbsent, _, _) => {
            return Err(format!(
                "rule {:?}: service_absent takes no above or below (it fires on no request in the window)",
                r.name
            ));
        }
        (_, Some(t), None) => Threshold::Above(t),
        (_, None, Some(t)) => Threshold::Below(t),
        _ => {
            return Err(format!(
                "rule {:?} needs exactly one of above or below",
                r.name
            ));
        }
    };
    if r.min_requests.is_some() && !r.signal.counts_requests() {
        return Err(format!(
            "rule {:?}: min_requests applies to the http_ and db_ signals only",
            r.name
        ));
    }
    if r.no_data.is_some() && r.signal == Signal::ServiceAbsent {
        return Err(format!(
            "rule {:?}: service_absent has no no_data (no data is what it fires on)",
            r.name
        ));
    }
    if r.route.is_some() && r.signal != Signal::HttpLatencyP95Seconds {
        return Err(format!(
            "rule {:?}: route applies to http_latency_p95_seconds only",
            r.name
        ));
    }
    if r.service.is_some() && !r.signal.per_service() {
        return Err(format!(
            "rule {:?}: {} is not per service",
            r.name,
            r.signal.as_str()
        ));
    }
    let window = r.window.unwrap_or(Duration::from_secs(60));
    if window.is_zero() || window > MAX_WINDOW {
        return Err(format!(
            "rule {:?}: window must be between 1s and {}",
            r.name,
            humantime::format_duration(MAX_WINDOW)
        ));
    }
    if r.name.is_empty()
        || !r
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!(
            "rule name {:?} must be letters, digits or _",
            r.name
        ));
    }
    Ok(Rule {
        name: r.name,
        signal: r.signal,
        threshold,
        window,
        hold: r.hold.unwrap_or(Duration::ZERO),
        keep_firing_for: r.keep_firing_for.unwrap_or(Duration::ZERO),
        no_data: r.no_data.unwrap_or(r.signal.default_no_data()),
        cooldown: r.cooldown.unwrap_or(DEFAULT_COOLDOWN),
        severity: r.severity.unwrap_or_else(|| "warning".into()),
        service: r.service,
        route: r.route,
        labels: r.labels,
        min_requests: r.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
    })
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests;
