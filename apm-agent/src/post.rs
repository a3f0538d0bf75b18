//! POSTs to receivers (Alertmanager and webhooks, OTLP collectors) with
//! retries and doubling backoff under one deadline; errors are shown
//! without the URL's credentials. A leaf any stage may use.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{sync::watch, time::Instant};

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A plain-HTTP client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// How often and how long to try.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    /// The wait before the first retry; it doubles.
    pub first_wait: Duration,
    /// One attempt's limit.
    pub timeout: Duration,
}

/// Why a body was not delivered.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// Every attempt failed (or the receiver refused the body).
    Failed(String),
    /// The deadline came first.
    Timeout(String),
}

/// The most of a receiver's answer that is read (an OTLP collector's
/// partial success, a webhook's text).
const MAX_ANSWER: usize = 64 * 1024;

/// POSTs `body` as `content_type`, retrying with backoff until `deadline`;
/// the successful answer's body (its first [`MAX_ANSWER`] bytes, empty if
/// it did not come by the deadline). A 4xx answer but 429 is final: the
/// receiver refused it.
pub async fn send(
    client: &HttpClient,
    url: &str,
    content_type: &str,
    body: &Bytes,
    deadline: Instant,
    retry: Retry,
) -> Result<Bytes, Failure> {
    let Retry {
        attempts,
        first_wait,
        timeout,
    } = retry;
    let mut wait = first_wait;
    let mut last = String::from("no attempt");
    for attempt in 0..attempts {
        if attempt > 0 {
            if Instant::now() + wait >= deadline {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body.clone()))
            .map_err(|e| Failure::Failed(redact_error(&e.to_string(), url)))?;
        match tokio::time::timeout(timeout.min(left), client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                use http_body_util::BodyExt as _;
                let answer = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
                let read = tokio::time::timeout_at(deadline, answer.collect()).await;
                return Ok(match read {
                    Ok(Ok(collected)) => collected.to_bytes(),
                    _ => Bytes::new(),
                });
            }
            // 429 asks to come back later; any other 4xx refuses the body.
            Ok(Ok(response))
                if response.status().is_client_error()
                    && response.status() != hyper::StatusCode::TOO_MANY_REQUESTS =>
            {
                return Err(Failure::Failed(format!("HTTP {}", response.status())));
            }
            Ok(Ok(response)) => last = format!("HTTP {}", response.status()),
            Ok(Err(e)) => last = redact_error(&format!("{e:?}"), url),
            Err(_) => last = format!("no answer within {:?}", timeout.min(left)),
        }
        if attempt + 1 == attempts {
            return Err(Failure::Failed(format!(
                "{last} (after {attempts} attempts)"
            )));
        }
    }
    Err(Failure::Timeout(format!(
        "{last}; no success by the deadline"
    )))
}

/// A sender's view of the agent's stop signal: once it comes, what is
/// under way or queued has until `closing` (set to now + `drain`).
pub struct Stop<'a> {
    pub signal: &'a mut watch::Receiver<bool>,
    pub closing: &'a mut Option<Instant>,
    pub drain: Duration,
}

/// Runs `sending` (a [`send`] whose deadline already respects `closing`),
/// racing the stop signal: when it comes, the send gets the drain, and is
/// abandoned as a timeout when the drain ends.
pub async fn or_stop(
    sending: impl Future<Output = Result<Bytes, Failure>>,
    stop: Stop<'_>,
) -> Result<Bytes, Failure> {
    tokio::pin!(sending);
    loop {
        // (The drain's end is waited on only once the signal came.)
        let end = stop.closing.unwrap_or_else(Instant::now);
        tokio::select! {
            r = &mut sending => return r,
            _ = stop.signal.wait_for(|s| *s), if stop.closing.is_none() => {
                *stop.closing = Some(Instant::now() + stop.drain);
            }
            _ = tokio::time::sleep_until(end), if stop.closing.is_some() => {
                return Err(Failure::Timeout("the agent is stopping".into()));
            }
        }
    }
}

/// A send's result as a metric label: sent, failed or timeout.
pub fn outcome<T>(result: &Result<T, Failure>) -> &'static str {
    match result {
        Ok(_) => "sent",
        Err(Failure::Failed(_)) => "failed",
        Err(Failure::Timeout(_)) => "timeout",
    }
}

/// An error text without the URL's credentials.
fn redact_error(text: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let mut text = text.to_owned();
            for secret in [u.password().unwrap_or_default(), u.username()] {
                if secret.len() >= 3 {
                    text = text.replace(secret, "<redacted>");
                }
            }
            text
        }
        Err(_) => text.to_owned(),
    }
}
