//! Dependencies given with `--check`: what a hand-written /health/detailed
//! would run against its database or cache, checked on a timer.
//!
//! A check URL may carry credentials (`redis://:password@host:6379`). They
//! are used to connect and nowhere else: every label, JSON field, log line
//! and error shows [`Dependency::name`], the URL without them.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use clap::builder::TypedValueParser;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    redact::{self, Secret},
    telemetry::metrics::Metrics,
};

mod db_url;
mod mysql;
mod postgres;

/// A dependency given with `--check`.
#[derive(Clone, PartialEq, Eq)]
pub struct Dependency {
    target: Target,
    /// What is shown: the URL without credentials.
    name: String,
    /// The URL as given, credentials included: for connecting only.
    url: Secret,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// `redis://[:password@]host:port[/db]`: PING through the redis crate.
    Redis,
    /// `postgres://user@host:port/db`: `SELECT 1` through tokio-postgres.
    Postgres,
    /// `mysql://user@host:port/db`: `SELECT 1` through mysql_async.
    Mysql,
    /// `tcp://host:port`: TCP connect time.
    Tcp { addr: String },
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("target", &self.target)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Dependency {
    /// The URL without credentials, query or fragment.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses a check URL. Errors name the URL without its credentials.
    pub fn parse(s: &str) -> Result<Self, String> {
        let name = redact::url(s);
        let url = Secret::new(s);
        if let Some(rest) = s.strip_prefix("tcp://") {
            if rest
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("expected tcp://host:port, got {name:?}"));
            }
            let target = Target::Tcp {
                addr: rest.to_owned(),
            };
            return Ok(Self { target, name, url });
        }
        if s.starts_with("redis://") {
            let dep = Self {
                target: Target::Redis,
                name,
                url,
            };
            redis::Client::open(s)
                .map_err(|e| dep.scrub(format!("invalid redis URL {:?}: {e}", dep.name)))?;
            return Ok(dep);
        }
        let database = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Some((
                Target::Postgres,
                postgres::validate as fn(&str) -> Result<(), String>,
            ))
        } else if s.starts_with("mysql://") {
            Some((
                Target::Mysql,
                mysql::validate as fn(&str) -> Result<(), String>,
            ))
        } else {
            None
        };
        if let Some((target, validate)) = database {
            let dep = Self { target, name, url };
            validate(s).map_err(|e| dep.scrub(format!("{:?}: {e}", dep.name)))?;
            return Ok(dep);
        }
        Err(format!(
            "unsupported check {name:?}: use redis://host:port, postgres://user@host:port/db, mysql://user@host:port/db or tcp://host:port"
        ))
    }

    /// `text` with the URL's user and password replaced, in case a
    /// library's error message quotes them.
    fn scrub(&self, text: String) -> String {
        let Ok(u) = url::Url::parse(self.url.expose()) else {
            return text;
        };
        let mut text = text;
        for secret in [u.password().unwrap_or_default(), u.username()] {
            if secret.len() >= 3 {
                text = text.replace(secret, "<redacted>");
            }
        }
        text
    }
}

/// clap's parser for `--check`: its errors go through [`Dependency::parse`]
/// (clap's own would quote the value, credentials and all).
#[derive(Clone, Copy, Debug)]
pub struct DependencyParser;

impl TypedValueParser for DependencyParser {
    type Value = Dependency;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Dependency, clap::Error> {
        let invalid = |msg: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for --check: {msg}\n"),
            )
        };
        let text = value.to_str().ok_or_else(|| invalid("not UTF-8".into()))?;
        Dependency::parse(text).map_err(invalid)
    }
}

/// A name two checks share (they would overwrite each other's series).
pub fn duplicate_name(deps: &[Dependency]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    deps.iter().map(Dependency::name).find(|n| !seen.insert(*n))
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DependencyStatus {
    pub name: String,
    pub ok: bool,
    /// "PONG", "SELECT 1", "connected", or the error.
    pub detail: String,
    pub response_time_seconds: f64,
}

/// Checks one dependency, bounded by `timeout`.
pub async fn check(dep: &Dependency, timeout: Duration) -> DependencyStatus {
    let start = Instant::now();
    let probe = async {
        match &dep.target {
            Target::Tcp { addr } => tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map(|_| "connected".to_owned())
                .map_err(|e| format!("connect: {e}")),
            Target::Postgres => postgres::select_one(dep.url.expose(), timeout).await,
            Target::Mysql => mysql::select_one(dep.url.expose()).await,
            Target::Redis => {
                let client = redis::Client::open(dep.url.expose()).map_err(|e| e.to_string())?;
                let mut con = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .map_err(|e| format!("PING: {e}"))
            }
        }
    };
    let result = match tokio::time::timeout(timeout, probe).await {
        Ok(r) => r,
        Err(_) => {
            let stage = if matches!(dep.target, Target::Tcp { .. }) {
                "connect: "
            } else {
                ""
            };
            Err(format!("{stage}timed out after {timeout:?}"))
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let result = result.map_err(|e| dep.scrub(e));
    match result {
        Ok(detail) => DependencyStatus {
            name: dep.name().to_owned(),
            ok: true,
            detail,
            response_time_seconds: elapsed,
        },
        Err(detail) => DependencyStatus {
            name: dep.name().to_owned(),
            ok: false,
            detail,
            response_time_seconds: elapsed,
        },
    }
}

/// Checks every dependency each `every`, keeping the latest results.
pub async fn run_checks(
    deps: Vec<Dependency>,
    every: Duration,
    results: Arc<RwLock<Vec<DependencyStatus>>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    if deps.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = every.min(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut statuses = Vec::with_capacity(deps.len());
        let previous: Vec<bool> = results
            .read()
            .map(|r| r.iter().map(|s| s.ok).collect())
            .unwrap_or_default();
        for (i, dep) in deps.iter().enumerate() {
            let status = check(dep, timeout).await;
            metrics
                .dependency_up
                .with_label_values(&[&status.name])
                .set(i64::from(status.ok));
            metrics
                .dependency_seconds
                .with_label_values(&[&status.name])
                .set(status.response_time_seconds);
            // Log changes, not every failing check.
            match (previous.get(i).copied(), status.ok) {
                (Some(true) | None, false) => {
                    tracing::warn!(dependency = %status.name, error = %status.detail, "dependency check failed")
                }
                (Some(false), true) => {
                    tracing::info!(dependency = %status.name, "dependency recovered")
                }
                _ => {}
            }
            statuses.push(status);
        }
        if let Ok(mut slot) = results.write() {
            *slot = statuses;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_targets_parse_or_explain() {
        let tcp = Dependency::parse("tcp://127.0.0.1:5432").expect("tcp");
        assert_eq!(
            tcp.target,
            Target::Tcp {
                addr: "127.0.0.1:5432".into()
            }
        );
        assert_eq!(tcp.name(), "tcp://127.0.0.1:5432");
        let redis = Dependency::parse("redis://127.0.0.1:6379").expect("redis");
        assert_eq!(redis.target, Target::Redis);
        assert!(Dependency::parse("tcp://nohost").is_err());
        let twice = [
            Dependency::parse("postgres://a:x@h/db").expect("pg"),
            Dependency::parse("postgres://b:y@h/db").expect("pg"),
        ];
        assert_eq!(duplicate_name(&twice), Some("postgres://h/db"));
        assert_eq!(duplicate_name(&twice[..1]), None);
        assert!(
            Dependency::parse("http://x")
                .expect_err("http is not a check")
                .contains("unsupported")
        );
    }

    /// Every place a check URL is printed: its name (labels, JSON, logs),
    /// Debug, parse errors, clap errors and check failures.
    #[tokio::test]
    async fn credentials_in_check_urls_are_never_printed() {
        const PW: &str = "hunter2pw";
        let dep = Dependency::parse(&format!("redis://:{PW}@127.0.0.1:1/0")).expect("parse");
        assert_eq!(dep.name(), "redis://127.0.0.1:1/0");
        assert!(!format!("{dep:?}").contains(PW));
        let status = check(&dep, Duration::from_millis(500)).await;
        assert!(!status.ok);
        let json = serde_json::to_string(&status).expect("json");
        assert!(!json.contains(PW), "{json}");

        for bad in [
            format!("tcp://bob:{PW}@host"),
            format!("http://bob:{PW}@host/"),
            format!("redis://bob:{PW}@[::1"),
        ] {
            let err = Dependency::parse(&bad).expect_err("invalid");
            assert!(!err.contains(PW), "{err}");
            let cmd = clap::Command::new("t");
            let err = DependencyParser
                .parse_ref(&cmd, None, std::ffi::OsStr::new(&bad))
                .expect_err("invalid")
                .to_string();
            assert!(!err.contains(PW), "{err}");
            assert!(err.contains("--check"), "{err}");
        }
        let scrubbed = dep.scrub(format!("AUTH {PW} failed"));
        assert!(!scrubbed.contains(PW), "{scrubbed}");
    }

    #[tokio::test]
    async fn a_refused_tcp_dependency_reports_the_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let dep = Dependency::parse(&format!("tcp://127.0.0.1:{port}")).expect("dep");
        let s = check(&dep, Duration::from_secs(1)).await;
        assert!(!s.ok);
        assert!(s.detail.contains("refused"), "{}", s.detail);
    }
}
