//! What the request pipeline publishes for everyone else to read: an
//! immutable [`PipelineSnapshot`], replaced every [`PUBLISH_EVERY`] by the
//! pipeline's thread. Readers (the API, the dashboard history, the alert
//! evaluation) take the latest with one atomic load and never wait for
//! capture, nor capture for them.

use std::{collections::HashMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::{
    db::CommandSummary, sql::StatementSummary, traces::recent::RecentTraces, windows::Windows,
};

/// How often the pipeline publishes a snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// The pipeline's state as of one moment.
pub struct PipelineSnapshot {
    /// When it was taken (kernel clock, ns).
    pub at_ns: u64,
    /// The /stats/requests document.
    pub stats: RequestStats,
    /// The rolling windows the alert rules and the dashboard read.
    pub windows: Windows,
    /// The same for SQL statements: per service and normalised statement,
    /// an error counting as a 5xx.
    pub statements: Windows,
    /// gRPC calls per service, a server error counting as a 5xx.
    pub calls: Windows,
    /// /traces/recent's list (shared until it changes).
    pub traces: Arc<RecentTraces>,
}

impl PipelineSnapshot {
    /// Before the first publication: nothing seen, windows of `keep`.
    pub fn empty(keep: Duration) -> Self {
        Self {
            at_ns: 0,
            stats: RequestStats::default(),
            windows: Windows::new(keep),
            statements: Windows::new(keep),
            calls: Windows::new(keep),
            traces: Arc::default(),
        }
    }
}

/// The latest snapshot, shared between its one writer and any readers.
pub struct Published(ArcSwap<PipelineSnapshot>);

impl Published {
    pub fn new(first: PipelineSnapshot) -> Self {
        Self(ArcSwap::from_pointee(first))
    }

    /// The latest snapshot.
    pub fn load(&self) -> Arc<PipelineSnapshot> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: PipelineSnapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

#[derive(Serialize, Debug, Default)]
pub struct RequestStats {
    /// Requests read and not yet answered, across services.
    pub in_flight_total: usize,
    /// The oldest of them (at most `MAX_IN_FLIGHT_SHOWN`).
    pub in_flight: Vec<InFlightRequest>,
    pub services: HashMap<String, ServiceSummary>,
    /// Redis commands per service (as client or server), busiest first.
    pub databases: HashMap<String, Vec<CommandSummary>>,
    /// SQL statements per service (as client or server), normalised,
    /// busiest first.
    pub statements: HashMap<String, Vec<StatementSummary>>,
}

#[derive(Serialize, Debug)]
pub struct InFlightRequest {
    pub service_name: String,
    pub server_port: u16,
    pub method: &'static str,
    pub route: String,
    pub age_seconds: f64,
}

#[derive(Serialize, Debug)]
pub struct ServiceSummary {
    pub requests_seen: u64,
    pub requests_paired: u64,
    /// Requests seen and not paired, by reason: `requests_seen` is
    /// `requests_paired` plus these plus `in_flight`.
    pub unpaired: HashMap<String, u64>,
    /// Times framing was lost and pairing resynced, by reason.
    pub resyncs: HashMap<String, u64>,
    pub in_flight: u64,
    pub route_count: usize,
    /// What the `recent_*` and quantile fields of the routes cover: the
    /// last five to ten minutes.
    pub recent_window_seconds: f64,
    /// The busiest routes of the recent window (at most
    /// `MAX_ROUTES_SHOWN`).
    pub routes: Vec<RouteSummary>,
    /// The slowest routes by recent p99, ranked over every route.
    pub slowest: Vec<RouteSummary>,
    /// The routes with the highest recent 5xx ratio, over every route.
    pub most_errors: Vec<RouteSummary>,
}

#[derive(Clone, Serialize, Debug)]
pub struct RouteSummary {
    pub method: &'static str,
    pub route: String,
    /// Requests since the route was first seen.
    pub count: u64,
    pub errors_5xx: u64,
    /// Requests and 5xx responses in the recent window, and the latency
    /// quantiles of its requests (1 % relative accuracy).
    pub recent_count: u64,
    pub recent_errors_5xx: u64,
    pub p50_seconds: f64,
    pub p90_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}
