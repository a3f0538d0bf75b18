use super::*;
use crate::services::directory::ServiceInfo;
use crate::telemetry::synthetic::record;
use apm_common::events::{EventKind, direction, tcp_flags};

fn setup() -> (Pipeline, Metrics) {
    let dir = Arc::new(Directory::default());
    dir.replace(Services {
        by_pid: [(
            7,
            ServiceInfo {
                name: "api".into(),
                ports: vec![8080],
            },
        )]
        .into_iter()
        .collect(),
        by_socket: [((42, 8080), "web".into())].into_iter().collect(),
        ..Default::default()
    });
    (
        Pipeline::new(RouteConfig::default(), 1024, dir),
        Metrics::new().expect("metrics"),
    )
}

#[test]
fn records_become_histograms_and_stats_without_the_query() {
    let (mut r, m) = setup();
    let ms = 1_000_000;
    r.handle_record(&record(EventKind::Accept, 0, 7, 4, 8080, b""), &m);
    r.handle_record(
        &record(
            EventKind::Read,
            10 * ms,
            7,
            4,
            8080,
            b"GET /users/42?token=hunter2 HTTP/1.1\r\n\r\n",
        ),
        &m,
    );
    let mid = r.snapshot(15 * ms);
    assert_eq!(mid.in_flight_total, 1);
    assert_eq!(mid.in_flight[0].route, "/users/{id}");
    assert!((mid.in_flight[0].age_seconds - 0.005).abs() < 1e-9);
    r.handle_record(
        &record(
            EventKind::Write,
            30 * ms,
            7,
            4,
            8080,
            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        ),
        &m,
    );
    let text = m.encode().expect("encode");
    assert!(text.contains(
        r#"http_server_request_duration_seconds_bucket{http_request_method="GET",http_response_status_code="500",http_route="/users/{id}",network_protocol_version="1.1",server_port="8080",service_name="api",le="0.025"} 1"#
    ), "{text}");
    assert!(!text.contains("hunter2"));
    let s = r.snapshot(40 * ms);
    let json = serde_json::to_string(&s).expect("json");
    assert!(!json.contains("hunter2"));
    let api = &s.services["api"];
    assert_eq!(
        (api.requests_seen, api.requests_paired, api.in_flight),
        (1, 1, 0)
    );
    assert_eq!(api.routes[0].errors_5xx, 1);
    assert!((api.routes[0].p50_seconds - 0.020).abs() < 0.0003, "{json}");
}

/// A packet record of port 8080.
fn packet(
    ts_ns: u64,
    cookie: u64,
    netns: u64,
    direction: u8,
    seq: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let header = apm_common::events::PacketHeader {
        ts_ns,
        cookie,
        netns,
        port: 8080,
        direction,
        seq,
        flags,
        ..Default::default()
    };
    crate::telemetry::synthetic::packet(header, data)
}

#[test]
fn packets_pair_by_cookie_and_name_their_service_by_namespace() {
    let (mut r, m) = setup();
    let ms = 1_000_000;
    let get = b"GET /orders/7 HTTP/1.1\r\nHost: x\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    r.handle_record(&packet(10 * ms, 1, 42, i, 100, 0, get), &m);
    // A retransmission of the request changes nothing.
    r.handle_record(&packet(11 * ms, 1, 42, i, 100, 0, get), &m);
    r.handle_record(&packet(25 * ms, 1, 42, e, 900, 0, ok), &m);
    // The same port in another namespace is another service.
    r.handle_record(&packet(30 * ms, 2, 43, i, 5, 0, get), &m);
    r.handle_record(&packet(32 * ms, 2, 43, e, 5, 0, ok), &m);
    let s = r.snapshot(40 * ms);
    let web = &s.services["web"];
    assert_eq!((web.requests_seen, web.requests_paired), (1, 1));
    assert!((web.routes[0].p50_seconds - 0.015).abs() < 0.0003);
    assert_eq!(s.services["unknown"].requests_paired, 1);
    // The server's FIN ends the connection.
    r.handle_record(
        &packet(
            50 * ms,
            1,
            42,
            e,
            900 + ok.len() as u32,
            tcp_flags::FIN,
            b"",
        ),
        &m,
    );
    r.handle_record(
        &packet(50 * ms, 2, 43, i, 5 + get.len() as u32, tcp_flags::RST, b""),
        &m,
    );
    assert_eq!(m.http_connections.get(), 0);
}

#[test]
fn series_are_bounded_expire_when_idle_and_go_with_their_service() {
    let (r, m) = setup();
    let mut r = r.with_max_series(2);
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let sec = 1_000_000_000u64;
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\n\r\n").into_bytes();
    r.now_ns = 100 * sec;
    for (conn, path) in [(1u64, "/a"), (2, "/b"), (3, "/c")] {
        r.handle_record(&packet(1, conn, 42, i, 0, 0, &get(path)), &m);
        r.handle_record(&packet(2, conn, 42, e, 0, 0, ok), &m);
    }
    // Two series at most: /c was paired but is not in the histogram.
    assert_eq!(m.http_series_over_budget.get(), 1);
    assert_eq!(r.snapshot(0).services["web"].requests_paired, 3);
    let series = |m: &Metrics, route: &str| {
        m.encode()
            .expect("encode")
            .contains(&format!("http_route=\"{route}\""))
    };
    assert!(series(&m, "/a") && series(&m, "/b") && !series(&m, "/c"));
    // /a again ten minutes later; /b stays silent.
    r.now_ns = 700 * sec;
    let a = get("/a");
    r.handle_record(&packet(3, 1, 42, i, a.len() as u32, 0, &a), &m);
    r.handle_record(&packet(4, 1, 42, e, ok.len() as u32, 0, ok), &m);
    r.expire(701 * sec, 600 * sec, &m);
    assert!(series(&m, "/a") && !series(&m, "/b"));
    assert_eq!(m.http_series_expired.get(), 1);
    // The freed budget takes a new series.
    r.handle_record(
        &packet(5, 3, 42, i, get("/c").len() as u32, 0, &get("/c")),
        &m,
    );
    r.handle_record(&packet(6, 3, 42, e, ok.len() as u32, 0, ok), &m);
    assert!(series(&m, "/c"));
    // The service goes away; once its series are idle too, nothing of
    // it is left.
    r.directory.replace(Services::default());
    r.refresh_services();
    r.expire(u64::MAX, 600 * sec, &m);
    let text = m.encode().expect("encode");
    assert!(!text.contains("service_name=\"web\""), "{text}");
    assert!(!r.snapshot(0).services.contains_key("web"));
    assert_eq!(r.routes.count("web"), 0);
}

#[test]
fn a_lost_packet_resyncs_instead_of_shifting_responses() {
    let (mut r, m) = setup();
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    let req = |p: &str| format!("GET {p} HTTP/1.1\r\n\r\n").into_bytes();
    let resp = |code: u16| format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").into_bytes();
    let (a, b, c) = (req("/a"), req("/b"), req("/c"));
    let (r200, r404, r500) = (resp(200), resp(404), resp(500));
    // Each side's next sequence number; every segment acknowledges
    // all the other side sent (the server did receive /b).
    let mut seq = [0u32; 2];
    let mut send = |r: &mut Pipeline, dir: u8, bytes: &[u8], lost: bool| {
        let d = usize::from(dir);
        let header = apm_common::events::PacketHeader {
            ts_ns: u64::from(seq[0] + seq[1]) + 1,
            cookie: 9,
            netns: 42,
            port: 8080,
            direction: dir,
            seq: seq[d],
            ack: seq[1 - d],
            flags: tcp_flags::ACK,
            ..Default::default()
        };
        if !lost {
            r.handle_record(&crate::telemetry::synthetic::packet(header, bytes), &m);
        }
        seq[d] += bytes.len() as u32;
    };
    send(&mut r, i, &a, false);
    send(&mut r, e, &r200, false);
    // /b's request record is lost from the ring; its 404 must not pair
    // with /c, and the 404's acknowledgment says /b will not come.
    send(&mut r, i, &b, true);
    send(&mut r, e, &r404, false);
    send(&mut r, i, &c, false);
    send(&mut r, e, &r500, false);
    let s = r.snapshot(0);
    let web = &s.services["web"];
    let route = |p: &str| {
        web.routes
            .iter()
            .find(|x| x.route == p)
            .map(|x| (x.count, x.errors_5xx))
    };
    assert_eq!(route("/a"), Some((1, 0)));
    assert_eq!(route("/c"), Some((1, 1)), "{web:?}");
    assert_eq!(web.resyncs.get("gap"), Some(&1), "{web:?}");
    assert_eq!(web.resyncs.get("response_without_request"), Some(&1));
    assert_eq!(web.requests_seen, 2);
}

#[test]
fn garbage_records_are_counted_not_fatal() {
    let (mut r, m) = setup();
    r.handle_record(&[1, 2, 3], &m);
    let mut bad = record(EventKind::Read, 0, 7, 4, 8080, b"x");
    bad[0] = 99;
    r.handle_record(&bad, &m);
    assert_eq!(m.ringbuf_decode_errors.get(), 2);
}

#[test]
fn a_collapsed_position_drops_the_route_count_and_its_word_series_expire() {
    let (mut r, m) = setup();
    let sec = 1_000_000_000u64;
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let mut ts = 0;
    let mut send = |r: &mut Pipeline, path: &str| {
        let get = format!("GET {path} HTTP/1.1\r\n\r\n");
        ts += 1_000_000;
        r.handle_record(&record(EventKind::Read, ts, 7, 4, 8080, get.as_bytes()), &m);
        r.handle_record(&record(EventKind::Write, ts + 1000, 7, 4, 8080, ok), &m);
    };
    let name = |i: usize| {
        format!(
            "{}{}",
            ["ka", "lo", "mi", "re"][i / 4],
            ["su", "ta", "ne", "vi"][i % 4]
        )
    };
    r.handle_record(&record(EventKind::Accept, 0, 7, 4, 8080, b""), &m);
    r.now_ns = 100 * sec;
    for i in 0..11 {
        send(&mut r, &format!("/users/{}/orders", name(i)));
    }
    let routes = |m: &Metrics| {
        let text = m.encode().expect("encode");
        let mut found: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("http_server_request_duration_seconds_count{"))
            .filter_map(|l| {
                let route = l.split("http_route=\"").nth(1)?.split('"').next()?;
                let n = l.rsplit(' ').next()?.parse().ok()?;
                Some((route.to_owned(), n))
            })
            .collect();
        found.sort();
        found
    };
    // Ten word routes, then the eleventh name collapses the position: one
    // route left in the table, eleven series with every request in them.
    let found = routes(&m);
    assert_eq!(found.len(), 11, "{found:?}");
    assert_eq!(found.iter().map(|(_, n)| n).sum::<u64>(), 11);
    assert!(found.contains(&("/users/{var}/orders".to_owned(), 1)));
    assert_eq!(m.http_routes.with_label_values(&["api"]).get(), 1);
    assert_eq!(m.http_route_collapses.with_label_values(&["api"]).get(), 1);
    // The first name files under `{var}` now; its series gets nothing.
    r.now_ns = 700 * sec;
    send(&mut r, &format!("/users/{}/orders", name(0)));
    r.expire(701 * sec, 600 * sec, &m);
    assert_eq!(routes(&m), vec![("/users/{var}/orders".to_owned(), 2)]);
    assert_eq!(m.http_series_expired.get(), 10);
    assert_eq!(m.http_routes.with_label_values(&["api"]).get(), 1);
    let s = r.snapshot(0);
    let api = &s.services["api"];
    assert_eq!((api.route_count, api.requests_paired), (1, 12));
}
