//! What the clients send and the ground truth they keep: deterministic
//! filler, browser-like headers, requests, and per-key counts and
//! durations of what was sent and answered.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, ensure};

use super::verdict::median;

/// xorshift64: deterministic filler for cookies, tokens and bodies.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `n` characters of the base64url alphabet.
    pub fn token(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..n)
            .map(|_| ALPHABET[(self.next_u64() % 64) as usize] as char)
            .collect()
    }
}

/// A browser's Cookie value of about `len` bytes: an analytics id, a
/// session and a preferences blob.
pub fn cookie(rng: &mut Rng, len: usize) -> String {
    let mut c = format!(
        "_ga=GA1.2.{}.{}; session={}",
        rng.next_u64() % 1_000_000_000,
        1_700_000_000 + rng.next_u64() % 100_000_000,
        rng.token(43)
    );
    let rest = len.saturating_sub(c.len() + 8);
    c.push_str("; prefs=");
    c.push_str(&rng.token(rest));
    c
}

/// An `Authorization` value: a JWT-like bearer token of about `len` bytes.
pub fn bearer(rng: &mut Rng, len: usize) -> String {
    let header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
    let payload = rng.token(len.saturating_sub(header.len() + 43 + 9).max(16));
    format!("Bearer {header}.{payload}.{}", rng.token(43))
}

/// The headers a browser sends besides its cookie.
pub fn browser_headers() -> Vec<(String, String)> {
    [
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36",
        ),
        (
            "Accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        ("Accept-Language", "en-GB,en;q=0.9,de;q=0.8"),
        ("Accept-Encoding", "identity"),
        ("Referer", "http://127.0.0.1/index.html"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// How a request's bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
    /// Head and body in one write.
    Whole,
    /// The head, then the body in a second write (as most HTTP client
    /// libraries do).
    HeadThenBody,
    /// The head with `Expect: 100-continue`, the body once the server
    /// said 100 Continue (or after 1 s), as curl does for large bodies.
    ExpectContinue,
}

/// One request and the route template the agent should file it under.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    /// The raw target, query string included.
    pub path: String,
    pub route: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub sending: Sending,
}

impl Request {
    pub fn get(path: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            route: route.into(),
            headers: Vec::new(),
            body: Vec::new(),
            sending: Sending::Whole,
        }
    }

    /// A HEAD request (a bodyless response that declares a length).
    pub fn head_request(path: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            method: "HEAD",
            ..Self::get(path, route)
        }
    }

    pub fn post_json(
        path: impl Into<String>,
        route: impl Into<String>,
        body: Vec<u8>,
        sending: Sending,
    ) -> Self {
        Self::post(path, route, body, "application/json", sending)
    }

    pub fn post(
        path: impl Into<String>,
        route: impl Into<String>,
        body: Vec<u8>,
        content_type: &str,
        sending: Sending,
    ) -> Self {
        Self {
            method: "POST",
            body,
            sending,
            ..Self::get(path, route)
        }
        .with("Content-Type", content_type)
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn with_all(mut self, headers: &[(String, String)]) -> Self {
        self.headers.extend_from_slice(headers);
        self
    }

    /// The path without its query string.
    pub fn raw_path(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }

    pub(super) fn head(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if self.method == "POST" || !self.body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if self.sending == Sending::ExpectContinue {
            head.push_str("Expect: 100-continue\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = self.head();
        b.extend_from_slice(&self.body);
        b
    }
}

/// (server port, method, route template or raw path, status).
pub type Key = (u16, String, String, u16);

/// What the clients sent and got back.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    /// Requests per (port, method, route template, status).
    pub counts: BTreeMap<Key, u64>,
    /// Requests per (port, method, raw path without query, status), for
    /// the servers' access logs.
    pub raw: BTreeMap<Key, u64>,
    /// Seconds from the request's first write to its response's last
    /// byte, per (port, method, route), for requests sent one at a time.
    pub durations: BTreeMap<(u16, String, String), Vec<f64>>,
    /// The route template of each raw path, per port.
    pub routes: BTreeMap<(u16, String), String>,
}

impl Truth {
    pub(super) fn record(
        &mut self,
        port: u16,
        req: &Request,
        status: u16,
        elapsed: Option<Duration>,
    ) {
        let method = req.method.to_owned();
        *self
            .counts
            .entry((port, method.clone(), req.route.clone(), status))
            .or_default() += 1;
        *self
            .raw
            .entry((port, method.clone(), req.raw_path().to_owned(), status))
            .or_default() += 1;
        self.routes
            .insert((port, req.raw_path().to_owned()), req.route.clone());
        if let Some(elapsed) = elapsed {
            self.durations
                .entry((port, method, req.route.clone()))
                .or_default()
                .push(elapsed.as_secs_f64());
        }
    }

    pub fn merge(&mut self, other: Self) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        for (k, v) in other.raw {
            *self.raw.entry(k).or_default() += v;
        }
        for (k, mut v) in other.durations {
            self.durations.entry(k).or_default().append(&mut v);
        }
        self.routes.extend(other.routes);
    }

    /// Requests to `port`.
    pub fn total(&self, port: u16) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|(_, v)| v)
            .sum()
    }

    /// The median duration of `method` `route` on `port` as the client
    /// measured it.
    pub fn median(&self, port: u16, method: &str, route: &str) -> Option<f64> {
        median(
            self.durations
                .get(&(port, method.to_owned(), route.to_owned()))?
                .clone(),
        )
    }

    /// Fails unless the client's counts equal the server's access log
    /// (`log`: (method, raw path, status) → count) for `port`: the ground
    /// truth is right.
    pub fn check_server_log(
        &self,
        port: u16,
        server: &str,
        log: &BTreeMap<(String, String, u16), u64>,
    ) -> Result<()> {
        let mine: BTreeMap<(String, String, u16), u64> = self
            .raw
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|((_, m, p, s), v)| ((m.clone(), p.clone(), *s), *v))
            .collect();
        ensure!(
            &mine == log,
            "harness error: the client's counts for {server} differ from its access log\n\
             client: {mine:?}\n{server}: {log:?}"
        );
        Ok(())
    }
}
