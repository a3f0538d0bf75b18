//! Monitored clients' HTTP calls: `http_client_request_duration_seconds`
//! per (service, method, status, destination), and the calls that could
//! not be paired. The series count against `--max-series` like the
//! server's and expire with them.

use std::{net::IpAddr, sync::Arc};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    metrics::{HTTP_DURATION_BUCKETS, Metrics, MetricsError, PORT, SERVICE},
    recorder::{Series, SeriesBudget},
};
use crate::{
    protocols::{http::Method, routes::Route},
    streams::pairing::{Completed, Unpaired, Version},
};

/// The client families, registered with the agent's registry.
pub struct ClientMetrics {
    pub duration: HistogramVec,
    pub unpaired: IntCounterVec,
}

impl ClientMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_client_request_duration_seconds",
                "Duration of monitored clients' HTTP calls, from the first byte of the request sent to the last byte of the response received (OpenTelemetry http.client.request.duration); an HTTP/2 call's last byte is its stream's END_STREAM.",
            )
            .buckets(HTTP_DURATION_BUCKETS.to_vec()),
            &[
                "http_request_method",
                "http_response_status_code",
                "server_address",
                PORT,
                SERVICE,
                "network_protocol_version",
            ],
        )?;
        let unpaired = IntCounterVec::new(
            Opts::new(
                "apm_http_client_requests_unpaired_total",
                "Monitored clients' HTTP calls that could not be paired with a response, and resyncs of their connections, by reason (as apm_http_requests_unpaired_total and apm_http_stream_resyncs_total for servers).",
            ),
            &[SERVICE, "reason"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(unpaired.clone()))?;
        Ok(Self { duration, unpaired })
    }
}

/// (service, method, status, server address, server port, version).
type Key = (Arc<str>, Method, u16, IpAddr, u16, Version);

#[derive(Default)]
pub struct ClientStats {
    series: FxHashMap<Key, Series>,
    /// Services whose unpaired counters are exported (from zero).
    services: FxHashSet<Arc<str>>,
    /// Every call's route: clients' paths are not templated.
    route: Arc<str>,
}

impl ClientStats {
    /// The route of a call: none (the path goes no further).
    pub(super) fn route(&self) -> Route {
        Route {
            template: self.route.clone(),
            overflow: false,
        }
    }

    /// Records a completed call of `service` to `server`.
    pub(super) fn completed(
        &mut self,
        all: &Metrics,
        budget: &mut SeriesBudget,
        service: &Arc<str>,
        server: IpAddr,
        done: &Completed,
        now_ns: u64,
    ) {
        let seconds = done.duration_ns as f64 / 1e9;
        if !self.services.contains(service) {
            // A new client: every reason from zero, so rate() works.
            for reason in Unpaired::ALL {
                all.http_client
                    .unpaired
                    .with_label_values(&[service, reason.as_str()])
                    .inc_by(0);
            }
            self.services.insert(service.clone());
        }
        let key = (
            service.clone(),
            done.method,
            done.status,
            server,
            done.port,
            done.version,
        );
        budget.observe(
            &mut self.series,
            key,
            (seconds, now_ns),
            &all.http_series_over_budget,
            || {
                all.http_client.duration.with_label_values(&[
                    done.method.as_str(),
                    &done.status.to_string(),
                    &server.to_string(),
                    &done.port.to_string(),
                    service,
                    done.version.as_str(),
                ])
            },
        );
    }

    /// One call unpaired, or one resync, of `service`'s connections.
    pub(super) fn unpaired(metrics: &ClientMetrics, service: &str, reason: Unpaired) {
        metrics
            .unpaired
            .with_label_values(&[service, reason.as_str()])
            .inc();
    }

    /// Removes series unused since `cutoff`; returns how many went.
    pub(super) fn expire(
        &mut self,
        cutoff: u64,
        budget: &mut SeriesBudget,
        metrics: &ClientMetrics,
    ) -> usize {
        let before = self.series.len();
        self.series
            .retain(|(service, method, status, server, port, version), s| {
                let keep = s.last_ns >= cutoff;
                if !keep {
                    let _ = metrics.duration.remove_label_values(&[
                        method.as_str(),
                        &status.to_string(),
                        &server.to_string(),
                        &port.to_string(),
                        service,
                        version.as_str(),
                    ]);
                }
                keep
            });
        let removed = before - self.series.len();
        budget.used = budget.used.saturating_sub(removed);
        let live: FxHashSet<&Arc<str>> = self.series.keys().map(|(s, ..)| s).collect();
        self.services.retain(|s| {
            let keep = live.contains(s);
            if !keep {
                for reason in Unpaired::ALL {
                    let _ = metrics.unpaired.remove_label_values(&[s, reason.as_str()]);
                }
            }
            keep
        });
        removed
    }
}
