//! Exact on the traffic real applications send: nginx and a FastAPI app
//! under uvicorn in a network namespace whose loopback is an Ethernet-like
//! link (MTU 1500, one segment per packet, optionally losing 2 % of the
//! servers' packets each way), driven by clients that keep their own
//! counts: request heads of 1.5-8 KiB (cookies, JWT bearer tokens), JSON
//! bodies of tens of KiB (some sent after `100 Continue`), a CSV streamed
//! in chunks that end like the last chunk, multi-MiB downloads, HEAD and
//! 304 answers, and pipelined batches whose responses exceed the capture.
//!
//! The client's counts are checked against the servers' access logs and
//! the link against its packet counters first: when those checks fail,
//! the harness is wrong; every later failure is the agent's.

use std::time::Duration;

use anyhow::{Result, ensure};
use apm_e2e::prod::{
    Conn, Observed, Request, Rng, Scene, Sending, Truth, app, assert_none, bearer, browser_headers,
    cookie, exactness_failures, median_failure, static_size,
};

/// An nginx request of kind `i`: static files (200), a conditional GET
/// (304), a page that does not exist (404), and a query string.
fn nginx_request(i: usize) -> (Request, u16) {
    match i % 8 {
        0 => (Request::get("/small.txt", "/small.txt"), 200),
        1 => (Request::get("/index.html", "/index.html"), 200),
        2 => (Request::get("/static/app.js", "/static/app.js"), 200),
        3 => (Request::get("/favicon.ico", "/favicon.ico"), 200),
        4 => (Request::get("/no-such-page", "/no-such-page"), 404),
        5 => (
            Request::get("/index.html?utm_source=mail&uid=SECRET", "/index.html"),
            200,
        ),
        6 => (
            Request::get("/static/app.js", "/static/app.js")
                .with("If-Modified-Since", "Thu, 31 Dec 2099 00:00:00 GMT"),
            304,
        ),
        _ => (Request::get("/small.txt", "/small.txt"), 200),
    }
}

/// A FastAPI request of kind `i`: a sleeping route with a path id, a
/// quick one, an error and FastAPI's 404.
fn app_request(i: usize) -> (Request, u16) {
    let id = 1000 + i * 7;
    match i % 6 {
        0 | 3 => (Request::get(format!("/users/{id}"), "/users/{id}"), 200),
        1 => (Request::get("/health", "/health"), 200),
        2 => (Request::get("/fail", "/fail"), 500),
        4 => (Request::get("/nowhere", "/nowhere"), 404),
        _ => (
            Request::get(format!("/users/{id}?expand=orders"), "/users/{id}"),
            200,
        ),
    }
}

/// Checks what the client got against what the server is known to send.
fn check_reply(req: &Request, want: u16, got: &apm_e2e::prod::Reply) -> Result<()> {
    ensure!(
        got.status == want,
        "{} {}: status {}, expected {want}",
        req.method,
        req.path,
        got.status
    );
    if req.method == "GET"
        && want == 200
        && let Some(size) = static_size(req.raw_path())
    {
        ensure!(got.body_len == size, "{}: {} bytes", req.path, got.body_len);
    }
    Ok(())
}

/// Keep-alive connections whose every request head carries a 1.5-8 KiB
/// cookie or a 1.5-5 KiB bearer token besides a browser's usual headers:
/// heads of two to six segments. `per_conn` requests on each of two
/// connections to each server.
fn big_heads(nginx: u16, app: u16, per_conn: usize, seed: u64) -> Result<Truth> {
    let mut truth = Truth::default();
    let mut rng = Rng(seed);
    let cookie_sizes = [1536, 2500, 4000, 6000, 8000];
    let token_sizes = [1536, 3000, 5000];
    for (port, server) in [(nginx, 0), (nginx, 0), (app, 1), (app, 1)] {
        let mut conn = Conn::open(port)?;
        for i in 0..per_conn {
            let (req, want) = if server == 0 {
                nginx_request(i)
            } else {
                app_request(i)
            };
            let req = req.with_all(&browser_headers());
            let req = if i % 3 == 2 {
                req.with(
                    "Authorization",
                    bearer(&mut rng, token_sizes[i % token_sizes.len()]),
                )
            } else {
                req.with(
                    "Cookie",
                    cookie(&mut rng, cookie_sizes[i % cookie_sizes.len()]),
                )
            };
            let reply = conn.send(&req, &mut truth)?;
            check_reply(&req, want, &reply)?;
        }
    }
    Ok(truth)
}

/// A JSON order of about `size` bytes.
fn order_json(rng: &mut Rng, size: usize) -> (Vec<u8>, usize) {
    let mut items = Vec::new();
    let mut len = 64;
    while len < size {
        let item = format!(
            "{{\"sku\":\"SKU-{}\",\"qty\":{},\"note\":\"{}\"}}",
            rng.next_u64() % 100_000,
            1 + rng.next_u64() % 9,
            rng.token(180)
        );
        len += item.len() + 1;
        items.push(item);
    }
    let body = format!(
        "{{\"customer\":\"{}\",\"items\":[{}]}}",
        rng.token(24),
        items.join(",")
    );
    (body.into_bytes(), items.len())
}

/// Segment payload on the link: MTU 1500 less the IP and TCP headers
/// and the timestamp option.
const MSS: usize = 1448;

/// A body of `n` raw HTTP requests as a request-recording tool uploads
/// them, each exactly [`MSS`] bytes: sent after its head, every segment
/// of it starts like a request.
fn recorded_requests(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let start = format!("GET /phantom/{i} HTTP/1.1\r\nHost: shop.example\r\nX-Pad: ");
            let pad = MSS - start.len() - 4;
            format!("{start}{}\r\n\r\n", "p".repeat(pad)).into_bytes()
        })
        .collect()
}

/// POST /orders with JSON bodies of 20-50 KiB (14-35 segments): written
/// with the head, after it, or after `100 Continue`; some heads with a
/// cookie; every fourth a POST /captures whose head (with a 3 KiB cookie)
/// spans three segments and whose body's segments each start like a
/// request; a GET between posts.
fn post_bodies(app_port: u16, posts: usize, seed: u64) -> Result<Truth> {
    let mut truth = Truth::default();
    let mut rng = Rng(seed);
    let mut conn = Conn::open(app_port)?;
    for i in 0..posts {
        if i % 4 == 3 {
            let req = Request::post(
                "/captures",
                "/captures",
                recorded_requests(20),
                "message/http",
                Sending::HeadThenBody,
            )
            .with("Cookie", cookie(&mut rng, 3000));
            let reply = conn.send(&req, &mut truth)?;
            let text = String::from_utf8_lossy(&reply.body);
            ensure!(
                reply.status == 202 && text.contains("\"requests\":20"),
                "POST /captures: {} {text}",
                reply.status
            );
        } else {
            post_order(&mut conn, &mut rng, i, posts, &mut truth)?;
        }
        let (req, want) = app_request(i % 3);
        let reply = conn.send(&req, &mut truth)?;
        check_reply(&req, want, &reply)?;
    }
    Ok(truth)
}

/// POST /orders number `i` of `posts`.
fn post_order(
    conn: &mut Conn,
    rng: &mut Rng,
    i: usize,
    posts: usize,
    truth: &mut Truth,
) -> Result<()> {
    let size = 20 * 1024 + (i * 30 * 1024 / posts.max(1));
    let (body, items) = order_json(rng, size);
    let sending = [
        Sending::Whole,
        Sending::HeadThenBody,
        Sending::ExpectContinue,
    ][i % 3];
    let mut req = Request::post_json("/orders", "/orders", body, sending);
    if i % 2 == 1 {
        req = req.with("Cookie", cookie(rng, 2048));
    }
    let reply = conn.send(&req, truth)?;
    ensure!(reply.status == 201, "POST /orders: {}", reply.status);
    let text = String::from_utf8_lossy(&reply.body);
    ensure!(
        text.contains(&format!("\"accepted\":{items}")),
        "POST /orders answered {text}"
    );
    Ok(())
}

/// GET /reports/export (a CSV streamed as one chunk per row, every chunk
/// ending in "0\r\n\r\n", for at least 100 ms) between plain requests on
/// one connection.
fn streamed_csv(app_port: u16, exports: usize) -> Result<Truth> {
    let mut truth = Truth::default();
    let mut conn = Conn::open(app_port)?;
    for i in 0..exports {
        let req = Request::get("/reports/export", "/reports/export");
        let reply = conn.send(&req, &mut truth)?;
        ensure!(reply.status == 200, "export: {}", reply.status);
        let text = String::from_utf8_lossy(&reply.body);
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        ensure!(
            lines.len() == app::ROWS + 1
                && lines[0] == "id,item,amount"
                && lines[app::ROWS] == format!("{0},item-{0},{1}", app::ROWS, app::ROWS * 10),
            "export body: {text:?}"
        );
        for j in 0..2 {
            let (req, want) = app_request(i * 2 + j);
            let reply = conn.send(&req, &mut truth)?;
            check_reply(&req, want, &reply)?;
        }
    }
    Ok(truth)
}

/// nginx's 4 MiB file (sendfile) and FastAPI's 3 MiB response, each
/// between small requests on a keep-alive connection, and HEAD requests
/// whose responses declare 4 MiB and carry nothing.
fn downloads(nginx: u16, app_port: u16, rounds: usize) -> Result<Truth> {
    let mut truth = Truth::default();
    let mut conn = Conn::open(nginx)?;
    for _ in 0..rounds {
        for (req, want) in [
            (Request::get("/media/intro.mp4", "/media/intro.mp4"), 200),
            (Request::get("/small.txt", "/small.txt"), 200),
            (
                Request::head_request("/media/intro.mp4", "/media/intro.mp4"),
                200,
            ),
            (Request::get("/index.html", "/index.html"), 200),
        ] {
            let reply = conn.send(&req, &mut truth)?;
            check_reply(&req, want, &reply)?;
        }
    }
    let mut conn = Conn::open(app_port)?;
    for _ in 0..rounds {
        let req = Request::get("/download", "/download");
        let reply = conn.send(&req, &mut truth)?;
        ensure!(
            reply.status == 200 && reply.body_len == app::DOWNLOAD_BYTES,
            "download: {} with {} bytes",
            reply.status,
            reply.body_len
        );
        let (req, want) = app_request(1);
        let reply = conn.send(&req, &mut truth)?;
        check_reply(&req, want, &reply)?;
    }
    Ok(truth)
}

/// Every kind of traffic at once, each on its own connections.
fn mix(nginx: u16, app_port: u16) -> Result<Truth> {
    std::thread::scope(|s| {
        let jobs = [
            s.spawn(move || big_heads(nginx, app_port, 40, 7)),
            s.spawn(move || post_bodies(app_port, 24, 11)),
            s.spawn(move || streamed_csv(app_port, 10)),
            s.spawn(move || downloads(nginx, app_port, 3)),
        ];
        let mut truth = Truth::default();
        for job in jobs {
            truth.merge(job.join().expect("client thread")?);
        }
        Ok(truth)
    })
}

/// The latency checks of the timed routes the client exercised: the
/// sleeping `/users/{id}` and the streamed CSV.
fn median_failures(scene: &Scene, truth: &Truth, obs: &Observed) -> Vec<String> {
    let app = ("uvicorn", scene.app.port);
    let timings = scene.app.timings().expect("server timings");
    let mut failures = Vec::new();
    for (route, floor) in [
        ("/users/{id}", app::SLEEP),
        ("/reports/export", app::ROW_SLEEP * app::ROWS as u32),
    ] {
        if truth.median(app.1, "GET", route).is_none() {
            continue;
        }
        let server: Vec<f64> = timings
            .iter()
            .filter(|(m, path, _, _)| {
                m == "GET"
                    && truth.routes.get(&(app.1, path.clone())).map(String::as_str) == Some(route)
            })
            .map(|t| t.3)
            .collect();
        failures.extend(median_failure(
            truth,
            obs,
            app,
            ("GET", route),
            &server,
            floor,
        ));
    }
    failures
}

fn assert_exact(scene: &Scene, what: &str, truth: &Truth, packets: u64) {
    let (obs, text) = scene.observe(truth, packets);
    let mut failures = exactness_failures(truth, &obs, &scene.services());
    failures.extend(median_failures(scene, truth, &obs));
    assert_none(what, &failures, &text);
}

#[test]
fn big_request_heads_on_keep_alive_connections_pair_exactly() {
    let scene = Scene::start("heads", 0);
    let (nginx, app_port) = (scene.nginx.port, scene.app.port);
    let truth = scene
        .run(|| big_heads(nginx, app_port, 40, 1))
        .expect("clients");
    assert_eq!(truth.total(nginx) + truth.total(app_port), 160);
    assert_exact(&scene, "1.5-8 KiB request heads", &truth, 300);
}

#[test]
fn request_bodies_of_many_segments_pair_exactly() {
    let scene = Scene::start("bodies", 0);
    let app_port = scene.app.port;
    let truth = scene.run(|| post_bodies(app_port, 30, 2)).expect("clients");
    assert_eq!(truth.total(app_port), 60);
    assert_exact(&scene, "20-50 KiB request bodies", &truth, 150);
}

#[test]
fn a_streamed_csv_is_timed_to_its_last_chunk() {
    let scene = Scene::start("csv", 0);
    let app_port = scene.app.port;
    let truth = scene.run(|| streamed_csv(app_port, 12)).expect("clients");
    assert_eq!(truth.total(app_port), 36);
    assert_exact(&scene, "streamed CSV", &truth, 100);
}

#[test]
fn multi_mib_downloads_pair_exactly() {
    let scene = Scene::start("downloads", 0);
    let (nginx, app_port) = (scene.nginx.port, scene.app.port);
    let truth = scene
        .run(|| downloads(nginx, app_port, 3))
        .expect("clients");
    assert_eq!(truth.total(nginx) + truth.total(app_port), 18);
    assert_exact(&scene, "multi-MiB downloads", &truth, 2000);
}

#[test]
fn the_whole_mix_pairs_exactly_on_an_mtu_1500_link() {
    let scene = Scene::start("mix", 0);
    let (nginx, app_port) = (scene.nginx.port, scene.app.port);
    let truth = scene.run(|| mix(nginx, app_port)).expect("clients");
    assert_eq!(
        truth.total(nginx) + truth.total(app_port),
        160 + 48 + 30 + 18
    );
    assert_exact(&scene, "the mix at MTU 1500", &truth, 2000);
}

/// One connection per request pair: a head of 2-4 segments (a 4 KiB
/// cookie), then a plain request.
fn fresh_connections(nginx: u16, app_port: u16, conns: usize) -> Result<Truth> {
    let mut truth = Truth::default();
    let mut rng = Rng(7);
    for i in 0..conns {
        for (port, server) in [(nginx, 0), (app_port, 1)] {
            let mut conn = Conn::open(port)?;
            let pick = |k| {
                if server == 0 {
                    nginx_request(k)
                } else {
                    app_request(k)
                }
            };
            let (req, want) = pick(i);
            let req = req.with("Cookie", cookie(&mut rng, 4000));
            check_reply(&req, want, &conn.send(&req, &mut truth)?)?;
            let (req, want) = pick(i + 1);
            check_reply(&req, want, &conn.send(&req, &mut truth)?)?;
        }
    }
    Ok(truth)
}

#[test]
fn first_requests_whose_handshake_ack_was_lost_pair_exactly() {
    let scene = Scene::start("handshake", 0);
    scene.link.lose_handshake_acks().expect("nft rule");
    let (nginx, app_port) = (scene.nginx.port, scene.app.port);
    let truth = scene
        .run(|| fresh_connections(nginx, app_port, 12))
        .expect("clients");
    assert_eq!(truth.total(nginx) + truth.total(app_port), 48);
    let lost = scene.link.counters().expect("counters").lost_handshake_acks;
    assert!(lost >= 24, "{lost} handshake ACKs dropped, 24 expected");
    assert_exact(
        &scene,
        "first requests after a lost handshake ACK",
        &truth,
        100,
    );
}

#[test]
fn the_whole_mix_pairs_exactly_with_2_percent_loss_each_way() {
    let scene = Scene::start("lossy", 2);
    let (nginx, app_port) = (scene.nginx.port, scene.app.port);
    let truth = scene.run(|| mix(nginx, app_port)).expect("clients");
    assert_eq!(
        truth.total(nginx) + truth.total(app_port),
        160 + 48 + 30 + 18
    );
    let lost = scene.link.check_loss().expect("loss");
    eprintln!("lossy link: {lost:?}");
    assert_exact(&scene, "the mix with 2 % loss", &truth, 2000);
}

/// Requests of the pipelined batches: responses of 1.2-3.3 KiB each (all
/// but the 404s beyond the 1 KiB capture), statuses mixed so a response
/// paired with the wrong request shows.
fn batch() -> Vec<(Request, u16)> {
    [
        ("/static/app.js", 200),
        ("/favicon.ico", 200),
        ("/static/app.js", 200),
        ("/static/gone.js", 404),
        ("/favicon.ico", 200),
        ("/static/app.js", 200),
        ("/static/gone.js", 404),
        ("/favicon.ico", 200),
    ]
    .into_iter()
    .map(|(p, s)| (Request::get(p, p), s))
    .collect()
}

/// Requests sent one at a time after each batch, on routes no batch uses.
fn after_batch(i: usize) -> (Request, u16) {
    if i % 3 == 2 {
        (Request::get("/no-such-page", "/no-such-page"), 404)
    } else {
        (Request::get("/small.txt", "/small.txt"), 200)
    }
}

#[test]
fn a_pipelined_batch_beyond_the_capture_is_counted_and_the_connection_recovers() {
    let scene = Scene::start("pipelined", 0);
    let nginx = scene.nginx.port;
    let rounds = 4;
    let truth = scene
        .run(|| -> Result<Truth> {
            let mut truth = Truth::default();
            // A slow reader: its small window makes nginx queue the
            // batch's responses, so they leave in full segments with
            // response boundaries (and heads) anywhere in them.
            let mut conn = Conn::open_slow_reader(nginx, 4096)?;
            for _ in 0..rounds {
                let (reqs, wants): (Vec<Request>, Vec<u16>) = batch().into_iter().unzip();
                let replies = conn.pipeline(&reqs, Duration::from_millis(300), &mut truth)?;
                for ((req, want), reply) in reqs.iter().zip(wants).zip(&replies) {
                    check_reply(req, want, reply)?;
                }
                for i in 0..12 {
                    let (req, want) = after_batch(i);
                    let reply = conn.send(&req, &mut truth)?;
                    check_reply(&req, want, &reply)?;
                }
            }
            Ok(truth)
        })
        .expect("client");
    let sent = truth.total(nginx);
    assert_eq!(sent, rounds * (8 + 12));
    let (obs, text) = scene.observe(&truth, 50);
    let v = obs.services.get("nginx").cloned().unwrap_or_default();
    let mut failures = Vec::new();
    if obs.ringbuf_full > 0 {
        failures.push(format!("the ring buffer lost {} records", obs.ringbuf_full));
    }
    // Every batch fits in one segment well within the capture: each
    // request is seen, and each is either paired or counted unpaired.
    if v.seen != sent {
        failures.push(format!("seen {}, client sent {sent}", v.seen));
    }
    if v.in_flight != 0 {
        failures.push(format!("{} still in flight", v.in_flight));
    }
    if v.seen != v.paired + v.unpaired_total() {
        failures.push(format!(
            "seen {} != paired {} + unpaired {:?}",
            v.seen, v.paired, v.unpaired
        ));
    }
    // What the agent paired, it paired right: never more of a (route,
    // status) than the client got, nothing the client never got.
    for (k, a) in obs.counts.iter().filter(|(k, _)| k.0 == nginx) {
        let c = truth.counts.get(k).copied().unwrap_or(0);
        if *a > c {
            failures.push(format!("{} {} {}: agent {a}, client {c}", k.1, k.2, k.3));
        }
    }
    // The requests after each batch, on the same connection, are exact.
    for (k, c) in truth
        .counts
        .iter()
        .filter(|(k, _)| k.0 == nginx && (k.2 == "/small.txt" || k.2 == "/no-such-page"))
    {
        let a = obs.counts.get(k).copied().unwrap_or(0);
        if a != *c {
            failures.push(format!(
                "after the batches: {} {} {}: agent {a}, client {c}",
                k.1, k.2, k.3
            ));
        }
    }
    assert_none("pipelined batches beyond the capture", &failures, &text);
}
