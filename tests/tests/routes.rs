//! Route cardinality end to end: a thousand distinct lower-case user names
//! in paths sent to a real server (Python's http.server) give at most
//! `--max-route-words` name routes before the position becomes `{var}`,
//! the agent's counts equal the client's, a production API's vocabulary,
//! versions and static files stay verbatim, and the name routes' series
//! expire while `{var}` lives on.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use apm_e2e::{Agent, Client, Metrics, Server, free_port, require_root, wait_for};

/// The agent's default `--max-route-words`.
const MAX_WORDS: usize = 10;
const SERVICE: &str = "python3";
/// Short enough to watch the retired series expire, long enough that
/// nothing expires before the first check.
const TTL_SECS: u64 = 10;

/// The `i`th of 1000 distinct lower-case names that read like words
/// (`kakaka`, `resuta`).
fn name(i: usize) -> String {
    const SYLLABLES: [&str; 10] = ["ka", "lo", "mi", "re", "su", "ta", "ne", "vi", "do", "pa"];
    let s = |n: usize| SYLLABLES[n % 10];
    format!("{}{}{}", s(i / 100), s(i / 10), s(i))
}

/// The production API's fixed routes: versions, a resource vocabulary,
/// numeric ids, a static file and hashed bundles (path, route).
fn vocabulary(round: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in 1..=3 {
        for res in ["health", "orders", "carts"] {
            out.push((format!("/api/v{v}/{res}"), format!("/api/v{v}/{res}")));
        }
        out.push((
            format!("/api/v{v}/orders/{}", 1000 + round),
            format!("/api/v{v}/orders/{{id}}"),
        ));
    }
    out.push(("/static/app.js".into(), "/static/app.js".into()));
    out.push((
        format!(
            "/static/app.{:08x}.js",
            (round as u32).wrapping_mul(2_654_435_761)
        ),
        "/static/{var}.js".into(),
    ));
    out
}

/// Sends `paths` on `client` pipelined by 10, counting (route, status).
fn send(
    client: &mut Client,
    paths: &[(String, String)],
    counts: &mut BTreeMap<(String, u16), u64>,
) {
    for batch in paths.chunks(10) {
        let raw: Vec<&str> = batch.iter().map(|(p, _)| p.as_str()).collect();
        let statuses = client.pipeline(&raw).expect("pipelined batch");
        assert_eq!(statuses.len(), batch.len());
        for ((_, route), status) in batch.iter().zip(statuses) {
            assert_eq!(status, 200, "{route}");
            *counts.entry((route.clone(), status)).or_default() += 1;
        }
    }
}

/// The `http_route` values of the service's user routes in `m`.
fn user_routes(m: &Metrics) -> BTreeSet<String> {
    m.route_counts(SERVICE)
        .into_keys()
        .map(|(route, _)| route)
        .filter(|r| r.starts_with("/users/"))
        .collect()
}

#[test]
fn a_thousand_user_names_become_at_most_max_words_routes_then_var() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::python(port).expect("python3 http.server");
    let ttl = format!("{TTL_SECS}s");
    let agent = Agent::start(&["--port", &port.to_string(), "--series-ttl", &ttl]).expect("agent");
    agent.wait_for_service(port, SERVICE);

    // One keep-alive connection, so the agent sees the names in the order
    // they were sent: the first ten are the ones kept.
    let mut client = Client::connect(port).expect("connect");
    let mut counts = BTreeMap::new();
    send(&mut client, &vocabulary(0), &mut counts);
    let users: Vec<(String, String)> = (0..1000)
        .map(|i| {
            let n = name(i);
            let route = if i < MAX_WORDS {
                format!("/users/{n}/orders")
            } else {
                "/users/{var}/orders".to_owned()
            };
            (format!("/users/{n}/orders"), route)
        })
        .collect();
    assert_eq!(
        users.iter().map(|(p, _)| p).collect::<BTreeSet<_>>().len(),
        1000
    );
    let users_sent = Instant::now();
    send(&mut client, &users, &mut counts);
    send(&mut client, &vocabulary(1), &mut counts);
    let total: u64 = counts.values().sum();
    assert_eq!(total, 1000 + 2 * 14);

    let m = agent.wait_for_paired(SERVICE, total, Duration::from_secs(30));
    // Every request where the client says, and nothing else.
    assert_eq!(m.route_counts(SERVICE), counts, "{}", m.text);
    assert_eq!(
        m.sum("apm_http_requests_paired_total", SERVICE),
        total as f64
    );
    assert_eq!(m.sum("apm_http_requests_seen_total", SERVICE), total as f64);
    let users_seen = user_routes(&m);
    assert!(users_seen.len() <= MAX_WORDS + 1, "{users_seen:?}");
    assert_eq!(users_seen.len(), MAX_WORDS + 1);
    assert_eq!(
        counts[&("/users/{var}/orders".to_owned(), 200)],
        1000 - MAX_WORDS as u64
    );
    // The ten name routes left the table: four API routes per version,
    // `/static/app.js`, `/static/{var}.js` and `/users/{var}/orders`.
    let table = 3 * 4 + 2 + 1;
    let labels = [("service_name", SERVICE)];
    assert_eq!(m.value("apm_http_routes", &labels), Some(table as f64));
    assert_eq!(
        m.value("apm_http_route_collapses_total", &labels),
        Some(1.0)
    );
    assert!(m.text.contains("http_route=\"/api/v2/health\""));

    // The name routes' series get nothing more and expire; `{var}` and the
    // vocabulary, kept busy, stay.
    let mut round = 2;
    let retired = wait_for(Duration::from_secs(3 * TTL_SECS), || {
        let mut busy = vocabulary(round);
        busy.push((
            format!("/users/{}/orders", name(round)),
            "/users/{var}/orders".to_owned(),
        ));
        send(&mut client, &busy, &mut counts);
        round += 1;
        std::thread::sleep(Duration::from_millis(450));
        let m = agent.metrics().ok()?;
        (user_routes(&m).len() == 1).then_some(m)
    })
    .unwrap_or_else(|| panic!("{}", agent.metrics().expect("metrics").text));
    eprintln!(
        "{total} requests: {} user routes at the first check, collapses 1, \
         route table {table}; name series expired {:?} after they were sent",
        users_seen.len(),
        users_sent.elapsed()
    );
    // Retired by expiry, not removed at the collapse.
    assert!(
        users_sent.elapsed() >= Duration::from_secs(TTL_SECS),
        "expired after {:?}",
        users_sent.elapsed()
    );
    assert_eq!(
        user_routes(&retired),
        BTreeSet::from(["/users/{var}/orders".to_owned()])
    );
    assert_eq!(
        retired.value("apm_http_series_expired_total", &[]),
        Some(10.0)
    );
    assert_eq!(
        retired.value("apm_http_routes", &labels),
        Some(table as f64)
    );
    // What is left counts exactly what the client sent to the routes that
    // stayed, before and after the collapse.
    let total: u64 = counts.values().sum();
    let m = agent.wait_for_paired(SERVICE, total - MAX_WORDS as u64, Duration::from_secs(30));
    let mut left = counts.clone();
    left.retain(|(route, _), _| !route.starts_with("/users/") || route == "/users/{var}/orders");
    assert_eq!(m.route_counts(SERVICE), left, "{}", m.text);
    assert_eq!(
        m.sum("apm_http_requests_paired_total", SERVICE),
        total as f64
    );
    drop(server);
}
