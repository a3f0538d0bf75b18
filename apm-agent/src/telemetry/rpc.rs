//! gRPC calls of monitored servers, `rpc_server_call_duration_seconds`
//! per (service, method, status), and of monitored clients,
//! `rpc_client_call_duration_seconds` per (service, method, status,
//! server); and the calls that could not be paired. The series count
//! against `--max-series` like HTTP's and expire with them.

use std::{net::IpAddr, sync::Arc};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    metrics::{HTTP_DURATION_BUCKETS, Metrics, MetricsError, PORT, SERVICE},
    recorder::{Recorder, Series, SeriesBudget},
};
use crate::{
    protocols::{http::Method, http2::grpc_code_name},
    streams::{
        http2::{RpcCall, RpcSink},
        pairing::{Origin, Unpaired},
    },
};

/// Distinct gRPC methods per service; the rest are `{overflow}`.
pub const MAX_METHODS: usize = 256;

impl RpcSink for Recorder<'_> {
    fn rpc_method(&mut self, origin: Origin, path: &str) -> Arc<str> {
        let (name, _) = self.service(origin, 0);
        self.rpc.method(&name, origin.is_client(), path)
    }

    fn rpc_completed(&mut self, call: RpcCall) {
        let (name, port) = self.service(call.origin, call.port);
        let (metrics, now_ns) = (self.metrics, self.now_ns);
        let server = match call.origin {
            Origin::Client { server, .. } => Some(server),
            _ => None,
        };
        self.rpc
            .completed(metrics, self.budget, (&name, port, server), &call, now_ns);
        if server.is_some() {
            // The route views and alert windows are of calls served.
            return;
        }
        // In the route views and alert windows as a POST whose server
        // errors (OpenTelemetry's for gRPC) count as 500s.
        let status = if server_error(call.code) { 500 } else { 200 };
        let seconds = call.duration_ns as f64 / 1e9;
        self.call_windows
            .record(now_ns / 1_000_000_000, &name, &call.method, status, seconds);
        self.route_done(&name, Method::Post, call.method, status, seconds);
    }

    fn rpc_unpaired(&mut self, origin: Origin, port: u16, reason: Unpaired) {
        let (name, _) = self.service(origin, port);
        let client = origin.is_client();
        self.rpc.unpaired(&self.metrics.rpc, &name, client, reason);
        if !client && self.tracer.enabled() {
            // Its calls can no longer be told from another request's.
            self.tracer.request_lost(&name, self.now_ns);
        }
    }
}

/// The RPC families, registered with the agent's registry.
pub struct RpcMetrics {
    pub duration: HistogramVec,
    pub unpaired: IntCounterVec,
    pub client_duration: HistogramVec,
    pub client_unpaired: IntCounterVec,
}

impl RpcMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rpc_server_call_duration_seconds",
                "Duration of gRPC calls served, from the first byte of the request's HEADERS to the END_STREAM of the response, trailers included (OpenTelemetry rpc.server.call.duration).",
            )
            .buckets(HTTP_DURATION_BUCKETS.to_vec()),
            &[
                "rpc_system_name",
                "rpc_method",
                "rpc_response_status_code",
                SERVICE,
                PORT,
            ],
        )?;
        let unpaired = IntCounterVec::new(
            Opts::new(
                "apm_rpc_calls_unpaired_total",
                "gRPC calls that could not be paired with their end, by reason.",
            ),
            &[SERVICE, "reason"],
        )?;
        let client_duration = HistogramVec::new(
            HistogramOpts::new(
                "rpc_client_call_duration_seconds",
                "Duration of monitored clients' gRPC calls, from the first byte of the request's HEADERS sent to the END_STREAM of the response received, trailers included (OpenTelemetry rpc.client.call.duration).",
            )
            .buckets(HTTP_DURATION_BUCKETS.to_vec()),
            &[
                "rpc_system_name",
                "rpc_method",
                "rpc_response_status_code",
                "server_address",
                PORT,
                SERVICE,
            ],
        )?;
        let client_unpaired = IntCounterVec::new(
            Opts::new(
                "apm_rpc_client_calls_unpaired_total",
                "Monitored clients' gRPC calls that could not be paired with their end, by reason.",
            ),
            &[SERVICE, "reason"],
        )?;
        for family in [&duration, &client_duration] {
            registry.register(Box::new(family.clone()))?;
        }
        for family in [&unpaired, &client_unpaired] {
            registry.register(Box::new(family.clone()))?;
        }
        Ok(Self {
            duration,
            unpaired,
            client_duration,
            client_unpaired,
        })
    }

    /// The unpaired counters of calls served, or of a `client`'s.
    fn unpaired(&self, client: bool) -> &IntCounterVec {
        if client {
            &self.client_unpaired
        } else {
            &self.unpaired
        }
    }

    /// The labels of a served call's series, or (with its server) a
    /// client's.
    fn labels<'a>(
        method: &'a str,
        code: u16,
        service: &'a str,
        port: &'a str,
        server: Option<&'a str>,
    ) -> Vec<&'a str> {
        let code = grpc_code_name(code);
        match server {
            Some(server) => vec!["grpc", method, code, server, port, service],
            None => vec!["grpc", method, code, service, port],
        }
    }

    fn duration(&self, client: bool) -> &HistogramVec {
        if client {
            &self.client_duration
        } else {
            &self.duration
        }
    }
}

/// (service, method, status code, port, the server of a client's call).
type Key = (Arc<str>, Arc<str>, u16, u16, Option<IpAddr>);

#[derive(Default)]
pub struct RpcStats {
    series: FxHashMap<Key, Series>,
    /// Services (and whether as clients) whose unpaired counters are
    /// exported (from zero).
    services: FxHashSet<(Arc<str>, bool)>,
    /// Each service's method labels, served or (true) called, at most
    /// [`MAX_METHODS`] each.
    methods: FxHashMap<(Arc<str>, bool), FxHashSet<Arc<str>>>,
}

impl RpcStats {
    /// The label of method `path` served by `service` (or called, as a
    /// `client`): the path when it has the shape of a gRPC method
    /// (`/package.Service/Method`, identifier characters), among the
    /// service's first [`MAX_METHODS`] of that side; else `{invalid}` or
    /// `{overflow}`.
    fn method(&mut self, service: &Arc<str>, client: bool, path: &str) -> Arc<str> {
        if !is_method(path) {
            return Arc::from("{invalid}");
        }
        let known = self.methods.entry((service.clone(), client)).or_default();
        if let Some(m) = known.get(path) {
            return m.clone();
        }
        if known.len() >= MAX_METHODS {
            return Arc::from("{overflow}");
        }
        let m: Arc<str> = Arc::from(path);
        known.insert(m.clone());
        m
    }

    /// Records a call served by `service` on `port`, or (with `server`)
    /// one it made to `server`:`port`.
    pub(super) fn completed(
        &mut self,
        all: &Metrics,
        budget: &mut SeriesBudget,
        (service, port, server): (&Arc<str>, u16, Option<IpAddr>),
        call: &RpcCall,
        now_ns: u64,
    ) {
        let client = server.is_some();
        self.known(&all.rpc, service, client);
        let seconds = call.duration_ns as f64 / 1e9;
        let key = (
            service.clone(),
            call.method.clone(),
            call.code,
            port,
            server,
        );
        budget.observe(
            &mut self.series,
            key,
            (seconds, now_ns),
            &all.http_series_over_budget,
            || {
                let (port, server) = (port.to_string(), server.map(|s| s.to_string()));
                let labels =
                    RpcMetrics::labels(&call.method, call.code, service, &port, server.as_deref());
                all.rpc.duration(client).with_label_values(&labels)
            },
        );
    }

    /// One call of `service` (as a `client`, or served) not paired.
    pub(super) fn unpaired(
        &mut self,
        metrics: &RpcMetrics,
        service: &Arc<str>,
        client: bool,
        reason: Unpaired,
    ) {
        self.known(metrics, service, client);
        metrics
            .unpaired(client)
            .with_label_values(&[service, reason.as_str()])
            .inc();
    }

    /// A new service: every reason from zero, so rate() works.
    fn known(&mut self, metrics: &RpcMetrics, service: &Arc<str>, client: bool) {
        if self.services.insert((service.clone(), client)) {
            for reason in Unpaired::REQUEST {
                metrics
                    .unpaired(client)
                    .with_label_values(&[service, reason.as_str()])
                    .inc_by(0);
            }
        }
    }

    /// Removes series unused since `cutoff`; returns how many went.
    pub(super) fn expire(
        &mut self,
        cutoff: u64,
        budget: &mut SeriesBudget,
        metrics: &RpcMetrics,
    ) -> usize {
        let before = self.series.len();
        self.series
            .retain(|(service, method, code, port, server), s| {
                let keep = s.last_ns >= cutoff;
                if !keep {
                    let (port, server) = (port.to_string(), server.map(|s| s.to_string()));
                    let labels =
                        RpcMetrics::labels(method, *code, service, &port, server.as_deref());
                    let _ = metrics
                        .duration(server.is_some())
                        .remove_label_values(&labels);
                }
                keep
            });
        let removed = before - self.series.len();
        budget.used = budget.used.saturating_sub(removed);
        removed
    }
}

/// A gRPC status that is the server's error (OpenTelemetry's
/// `rpc.server` error statuses): UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
pub fn server_error(code: u16) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// `/package.Service/Method`: two non-empty parts of identifier
/// characters (and dots in the service), at most 256 bytes.
fn is_method(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    let word = |s: &str, dots: bool| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
    };
    path.len() <= 256 && word(service, true) && word(method, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_grpc_shaped_and_bounded() {
        assert!(is_method("/shop.Cart/Get"));
        assert!(is_method("/grpc.health.v1.Health/Check"));
        for bad in [
            "/", "/a", "/a/", "//b", "/a/b/c", "/a b/c", "/a/b?x", "x/a/b",
        ] {
            assert!(!is_method(bad), "{bad}");
        }
        let mut stats = RpcStats::default();
        let service: Arc<str> = Arc::from("cart");
        for i in 0..MAX_METHODS + 5 {
            let label = stats.method(&service, false, &format!("/shop.Cart/M{i}"));
            if i < MAX_METHODS {
                assert_eq!(&*label, format!("/shop.Cart/M{i}"));
            } else {
                assert_eq!(&*label, "{overflow}");
            }
        }
        assert_eq!(
            &*stats.method(&service, false, "/shop.Cart/M0"),
            "/shop.Cart/M0"
        );
        assert_eq!(
            &*stats.method(&service, false, "/etc/passwd?x"),
            "{invalid}"
        );
        // The methods it calls have their own budget.
        assert_eq!(
            &*stats.method(&service, true, "/other.Api/X"),
            "/other.Api/X"
        );
    }
}
