//! Traces from the wire, end to end: two monitored FastAPI services on
//! loopback (front's `/order/{id}` calls back over one keep-alive httpx
//! client, then Redis with a GET and a SET; back sleeps 50 ms on some ids
//! and fails others with 503), an OTLP/HTTP receiver built on the official
//! opentelemetry-proto package, and a bounded load. Ground truth: the
//! test's own requests and front's own counts (`/counts`), and the
//! OpenTelemetry SDK's spans when front is instrumented.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, Client, Redis, free_port, get, get_with, require_root,
    traces::{ExportedSpan, Py, traces},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(30);
/// Requests per run; ids 1..=N.
const N: u16 = 40;
const ROOT: &str = "GET /order/{id}";
/// Keep and export every trace.
const EVERY_TRACE: [&str; 4] = [
    "--trace-sample-ratio",
    "1",
    "--trace-max-spans-per-second",
    "100000",
];
/// Values the privacy tests put in paths, queries and headers.
const MARKERS: [&str; 5] = [
    "SECRETQUERY",
    "SECRETPATH",
    "SECRETHEADER",
    "SECRETCOOKIE",
    "b7f3e1a9c2",
];

struct Chain {
    _redis: Redis,
    back: Py,
    front: Py,
}

fn chain(front_env: &[(&str, String)]) -> Chain {
    let rport = free_port().expect("port");
    let redis = Redis::start(rport);
    let back = Py::uvicorn("trace_back", &[]);
    let mut env = vec![
        ("BACK_URL", format!("http://127.0.0.1:{}", back.port)),
        ("REDIS_URL", format!("redis://127.0.0.1:{rport}/0")),
    ];
    env.extend(front_env.iter().cloned());
    let front = Py::uvicorn("trace_front", &env);
    Chain {
        _redis: redis,
        back,
        front,
    }
}

/// The agent monitoring front and back under those names, with `extra`.
fn agent(c: &Chain, extra: &[&str]) -> Agent {
    let (f, b) = (c.front.port, c.back.port);
    let ports = format!("{f},{b}");
    let names = format!("{f}=front,{b}=back");
    let mut args = vec!["--port", &ports, "--service-name", &names];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args).expect("agent");
    agent.wait_for_service(f, "front");
    agent.wait_for_service(b, "back");
    agent
}

/// An OTLP receiver, the chain (front instrumented with the SDK, exporting
/// to the same receiver, with `sdk`) and an agent exporting to it with
/// `extra`.
fn traced(sdk: bool, extra: &[&str]) -> (Py, Chain, Agent) {
    let receiver = Py::receiver("ok");
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let env: Vec<(&str, String)> = if sdk {
        vec![
            ("OTEL_SDK", "1".into()),
            ("OTEL_RECEIVER", endpoint.clone()),
        ]
    } else {
        Vec::new()
    };
    let c = chain(&env);
    let mut args = vec!["--otlp-endpoint", &endpoint];
    args.extend_from_slice(extra);
    let agent = agent(&c, &args);
    (receiver, c, agent)
}

/// The status back gives id `i` (front passes it on).
fn expected_status(i: u16) -> u16 {
    if i % 10 == 7 { 503 } else { 200 }
}

/// GET /order/1..=N on one keep-alive connection; statuses checked.
fn drive(front: &Py) {
    let mut client = Client::connect(front.port).expect("connect");
    for i in 1..=N {
        let status = client.get(&format!("/order/{i}")).expect("order");
        assert_eq!(status, expected_status(i), "/order/{i}");
    }
}

/// Front's own counts of /order requests by status.
fn front_counts(front: &Py) -> BTreeMap<String, u64> {
    let r = get(front.addr(), "/counts").expect("counts");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    v["orders"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// The receiver's traces once `want` of them have a root named ROOT.
fn wait_for_roots(receiver: &Py, want: usize) -> BTreeMap<String, Vec<ExportedSpan>> {
    let roots = |t: &BTreeMap<String, Vec<ExportedSpan>>| {
        t.values()
            .filter(|spans| spans.iter().any(|s| s.name == ROOT && s.service == "front"))
            .count()
    };
    wait_for(WAIT, || {
        let t = traces(&receiver.received());
        (roots(&t) >= want).then_some(t)
    })
    .unwrap_or_else(|| {
        let t = traces(&receiver.received());
        panic!("{} of {want} traces arrived: {t:#?}", roots(&t))
    })
}

/// `child` lies inside `parent`, give or take the clocks' 1 ms.
fn inside(child: &ExportedSpan, parent: &ExportedSpan) -> bool {
    const SLACK: u64 = 1_000_000;
    child.start + SLACK >= parent.start && child.end <= parent.end + SLACK
}

/// Checks one front request's trace; returns back's status in it. The
/// request that opened front's Redis connection also holds redis-py's
/// connection setup (CLIENT SETINFO), made while it was in flight.
fn check_order_trace(all: &[ExportedSpan]) -> i64 {
    let root_id = all
        .iter()
        .find(|s| s.name == ROOT)
        .map(|s| s.span_id.clone());
    let (setup, spans): (Vec<ExportedSpan>, Vec<ExportedSpan>) = all
        .iter()
        .cloned()
        .partition(|s| s.name == "CLIENT SETINFO");
    for s in &setup {
        assert_eq!(Some(&s.parent), root_id.as_ref(), "{all:#?}");
    }
    let dump = || format!("{all:#?}");
    assert_eq!(spans.len(), 5, "{}", dump());
    let one = |f: &dyn Fn(&ExportedSpan) -> bool| {
        let found: Vec<&ExportedSpan> = spans.iter().filter(|s| f(s)).collect();
        assert_eq!(found.len(), 1, "{}", dump());
        found[0]
    };
    let root = one(&|s| s.name == ROOT);
    assert_eq!((root.kind, &*root.service), (2, "front"), "{}", dump());
    assert_eq!(root.attr_str("apm.trace.join"), "root");
    assert_eq!(root.attr_str("http.route"), "/order/{id}");
    let call = one(&|s| s.kind == 3 && s.attr("http.request.method").is_some());
    let back = one(&|s| s.service == "back");
    let redis_get = one(&|s| s.name == "GET" && s.attr_str("db.system.name") == "redis");
    let redis_set = one(&|s| s.name == "SET");
    for (child, parent, join) in [
        (call, root, "nesting"),
        (back, call, "connection"),
        (redis_get, root, "nesting"),
        (redis_set, root, "nesting"),
    ] {
        assert_eq!(child.parent, parent.span_id, "{}", dump());
        assert_eq!(child.attr_str("apm.trace.join"), join, "{}", dump());
        assert!(inside(child, parent), "{child:?} outside {parent:?}");
    }
    assert_eq!((back.kind, back.name.as_str()), (2, "GET /stock/{id}"));
    // The same exchange at both ends: the same status.
    let status = back
        .attr("http.response.status_code")
        .and_then(|v| v.as_i64());
    assert_eq!(
        call.attr("http.response.status_code")
            .and_then(|v| v.as_i64()),
        status,
        "{}",
        dump()
    );
    assert_eq!(
        root.attr("http.response.status_code")
            .and_then(|v| v.as_i64()),
        status
    );
    assert_eq!(root.error, status == Some(503), "{}", dump());
    status.unwrap_or(0)
}

#[test]
fn every_front_request_is_one_trace_of_its_calls_and_backs_request() {
    require_root();
    let (receiver, c, agent) = traced(false, &EVERY_TRACE);
    drive(&c.front);
    let truth = front_counts(&c.front);
    assert_eq!(
        truth,
        BTreeMap::from([("200".to_owned(), 36), ("503".to_owned(), 4)])
    );
    let all = wait_for_roots(&receiver, usize::from(N));
    let mut statuses: BTreeMap<i64, u64> = BTreeMap::new();
    let mut order_traces = 0;
    for spans in all.values() {
        if spans.iter().any(|s| s.name == ROOT) {
            order_traces += 1;
            *statuses.entry(check_order_trace(spans)).or_default() += 1;
        } else {
            // Nothing of back's or of front's calls outside its traces.
            assert!(
                spans.iter().all(|s| s.service != "back" && s.kind != 3),
                "{spans:#?}"
            );
        }
    }
    assert_eq!(order_traces, usize::from(N));
    // The resource names each service's process and the host.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    for s in all.values().flatten() {
        let pid = if s.service == "back" {
            c.back.pid()
        } else {
            c.front.pid()
        };
        assert_eq!(s.pid, Some(u64::from(pid)), "{s:?}");
        assert_eq!(s.host, host.trim(), "{s:?}");
    }
    // Every export decoded with the official definitions.
    let doc = receiver.received();
    assert_eq!(doc["bad_requests"], 0, "{doc}");
    assert!(doc["requests"].as_u64().unwrap_or(0) > 0, "{doc}");
    assert_eq!(statuses, BTreeMap::from([(200, 36), (503, 4)]));
    // The client side as metrics: front's calls to back, by status.
    let port = c.back.port.to_string();
    let m = agent.metrics().expect("metrics");
    let calls = |status: &str| {
        m.value(
            "http_client_request_duration_seconds_count",
            &[
                ("service_name", "front"),
                ("server_port", &port),
                ("http_response_status_code", status),
            ],
        )
    };
    assert_eq!(
        (calls("200"), calls("503")),
        (Some(36.0), Some(4.0)),
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("apm_trace_calls_unplaced_total", "front"),
        0.0,
        "{}",
        m.text
    );
    // /traces/recent lists the failed ones first, whole: the 503s, and
    // the request whose Redis connection setup failed where Redis is
    // older than 7.2 (CLIENT SETINFO is an unknown command there).
    let failed = all
        .values()
        .filter(|spans| spans.iter().any(|s| s.name == ROOT) && spans.iter().any(|s| s.error))
        .count();
    assert!((4..=5).contains(&failed), "{all:#?}");
    let recent = get(agent.addr, "/traces/recent?service=front&limit=6").expect("recent");
    let doc: serde_json::Value = serde_json::from_str(&recent.body).expect("json");
    let listed = doc["traces"].as_array().expect("traces");
    assert_eq!(listed.len(), 6, "{doc}");
    assert!(listed[..failed].iter().all(|t| t["error"] == true), "{doc}");
    assert!(
        listed[failed..].iter().all(|t| t["error"] == false),
        "{doc}"
    );
    assert!(
        listed
            .iter()
            .all(|t| t["spans"].as_array().map(Vec::len) >= Some(5)),
        "{doc}"
    );
}

#[test]
fn apps_own_spans_and_the_agents_form_one_trace() {
    require_root();
    let (receiver, c, _agent) = traced(true, &["--trace-sample-ratio", "1"]);
    // The callers' spans: trace and parent ids the test makes up.
    let ids: Vec<(String, String)> = (1..=10u16)
        .map(|i| {
            (
                format!("{:032x}", 0xabc0_0000 + u64::from(i)),
                format!("{:016x}", 0x5000 + u64::from(i)),
            )
        })
        .collect();
    for (i, (trace, parent)) in (1..=10u16).zip(&ids) {
        let tp = format!("00-{trace}-{parent}-01");
        let r = get_with(
            c.front.addr(),
            &format!("/order/{i}"),
            &[("traceparent", tp.as_str())],
        )
        .expect("order");
        assert_eq!(r.status, expected_status(i));
    }
    let all = wait_for(WAIT, || {
        let t = traces(&receiver.received());
        ids.iter()
            .all(|(trace, _)| {
                t.get(trace).is_some_and(|s| {
                    s.iter().any(|s| s.service == "front-sdk")
                        && s.iter().filter(|s| s.service != "front-sdk").count() >= 5
                })
            })
            .then_some(t)
    })
    .unwrap_or_else(|| panic!("{:#?}", traces(&receiver.received())));
    for (trace, parent) in &ids {
        let spans = &all[trace];
        let ours: Vec<ExportedSpan> = spans
            .iter()
            .filter(|s| s.service != "front-sdk")
            .cloned()
            .collect();
        check_order_trace_with_parent(&ours, parent);
        let sdk: Vec<&ExportedSpan> = spans.iter().filter(|s| s.service == "front-sdk").collect();
        assert_eq!(sdk.len(), 1, "{spans:#?}");
        // Both server spans of front hang off the caller's span.
        assert_eq!(&sdk[0].parent, parent);
    }
}

/// As [`check_order_trace`], for a root whose caller sent `parent`.
fn check_order_trace_with_parent(spans: &[ExportedSpan], parent: &str) {
    let root = spans.iter().find(|s| s.name == ROOT).expect("root");
    assert_eq!(root.parent, parent);
    assert_eq!(root.attr_str("apm.trace.join"), "traceparent");
    let mut local: Vec<ExportedSpan> = spans.to_vec();
    for s in &mut local {
        if s.name == ROOT {
            s.parent.clear();
            s.attributes["apm.trace.join"] = "root".into();
        }
    }
    check_order_trace(&local);
}

#[test]
fn with_no_ratio_exactly_the_slow_and_failed_traces_arrive() {
    require_root();
    let (receiver, c, agent) = traced(
        false,
        &["--trace-sample-ratio", "0", "--trace-slow", "40ms"],
    );
    drive(&c.front);
    // Slow: back sleeps 50 ms on ids divisible by 4; failed: 503.
    let (slow, failed) = (10, 4);
    let all = wait_for_roots(&receiver, slow + failed);
    let m = agent
        .wait_for_metrics(WAIT, |m| {
            m.matching("apm_traces_total", &[])
                .map(|s| s.value)
                .sum::<f64>()
                >= f64::from(N)
        })
        .expect("every trace decided");
    let decided = |d: &str| {
        m.value("apm_traces_total", &[("decision", d)])
            .unwrap_or(0.0) as u64
    };
    let (mut arrived, mut slept, mut errors) = (0, 0, 0);
    for spans in all.values() {
        let Some(root) = spans.iter().find(|s| s.name == ROOT) else {
            continue;
        };
        arrived += 1;
        let error = spans.iter().any(|s| s.error);
        errors += u64::from(error);
        let slowest = spans.iter().map(|s| s.end - s.start).max().unwrap_or(0);
        assert!(
            error || slowest >= 40_000_000,
            "neither slow nor failed: {spans:#?}"
        );
        let back = spans.iter().find(|s| s.service == "back").expect("back");
        slept += u64::from(back.end - back.start >= 50_000_000);
        assert!(root.end - root.start >= back.end - back.start);
    }
    // Every slow and every failed request's trace arrived...
    assert_eq!(slept, slow as u64, "{all:#?}");
    assert!(errors >= failed as u64, "{all:#?}");
    // ... as the decisions say, and every other one was counted out.
    assert_eq!(decided("error"), errors, "{}", m.text);
    assert_eq!(decided("error") + decided("slow"), arrived, "{}", m.text);
    assert_eq!(arrived + decided("sampled_out"), u64::from(N), "{}", m.text);
    assert_eq!(
        decided("sampled") + decided("rate_limited") + decided("parent_sampled"),
        0,
        "{}",
        m.text
    );
}

#[test]
fn a_dead_collector_costs_spans_not_capture_and_no_marker_leaves() {
    require_root();
    let c = chain(&[]);
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port().expect("port"));
    let agent = agent(&c, &["--otlp-endpoint", &dead, "--trace-sample-ratio", "1"]);
    drive(&c.front);
    // Marker values in a path, a query and headers.
    for path in ["/order/5?token=SECRETQUERY", "/SECRETPATH-b7f3e1a9c2/x"] {
        let r = get_with(
            c.front.addr(),
            path,
            &[("X-Api-Key", "SECRETHEADER"), ("Cookie", "s=SECRETCOOKIE")],
        )
        .expect("get");
        assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
    }
    let m = agent
        .wait_for_metrics(WAIT, |m| {
            m.value(
                "apm_trace_spans_dropped_total",
                &[("reason", "export_failed")],
            )
            .unwrap_or(0.0)
                > 0.0
        })
        .expect("export failures counted");
    // Capture and metrics went on, exactly.
    let served = m.sum("http_server_request_duration_seconds_count", "front");
    assert_eq!(served, f64::from(N) + 2.0, "{}", m.text);
    assert!(m.value("apm_trace_export_queue_traces", &[]).unwrap_or(0.0) <= 2048.0);
    let recent = get(agent.addr, "/traces/recent?limit=100").expect("recent");
    assert!(recent.body.contains(ROOT), "{}", recent.body);
    for text in [&recent.body, &m.text, &agent.log_text()] {
        for marker in MARKERS {
            assert!(!text.contains(marker), "{marker} leaked: {text}");
        }
    }
}

#[test]
fn exported_bytes_carry_no_marker() {
    require_root();
    let (receiver, c, _agent) = traced(false, &["--trace-sample-ratio", "1"]);
    for path in [
        "/order/5?token=SECRETQUERY",
        "/SECRETPATH-b7f3e1a9c2/x",
        "/order/6",
    ] {
        get_with(
            c.front.addr(),
            path,
            &[("X-Api-Key", "SECRETHEADER"), ("Cookie", "s=SECRETCOOKIE")],
        )
        .expect("get");
    }
    wait_for_roots(&receiver, 2);
    let raw = receiver.raw();
    assert!(!raw.is_empty());
    for marker in MARKERS {
        assert!(
            !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{marker} was exported"
        );
    }
}

#[test]
fn concurrent_requests_never_get_another_requests_calls() {
    require_root();
    let (receiver, c, agent) = traced(false, &EVERY_TRACE);
    // Four clients at once: front's event loop interleaves their requests,
    // so most of its calls cannot be placed and must be counted instead.
    let port = c.front.port;
    let clients: Vec<_> = (1..=4u16)
        .map(|k| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port).expect("connect");
                for j in 1..=10 {
                    let i = k * 100 + j;
                    let status = client.get(&format!("/order/{i}")).expect("order");
                    assert_eq!(status, expected_status(i), "/order/{i}");
                }
            })
        })
        .collect();
    for t in clients {
        t.join().expect("client");
    }
    let all = wait_for_roots(&receiver, 40);
    let (mut placed, mut roots) = (0u64, 0u64);
    for spans in all.values() {
        // The receiver keeps spans in the order they came, not root first.
        let root = spans.iter().find(|s| s.parent.is_empty()).expect("a root");
        let calls: Vec<&ExportedSpan> = spans
            .iter()
            .filter(|s| s.kind == 3 && s.service == "front")
            .collect();
        if spans.iter().any(|s| s.name == ROOT) {
            let root = spans.iter().find(|s| s.name == ROOT).expect("root");
            placed += calls.len() as u64;
            // A request's own calls only: at most one of each kind, inside
            // it, and the back end's answer is the one it passed on.
            let http: Vec<_> = calls
                .iter()
                .filter(|s| s.attr("http.request.method").is_some())
                .collect();
            assert!(http.len() <= 1, "{spans:#?}");
            for name in ["GET", "SET"] {
                let n = calls
                    .iter()
                    .filter(|s| s.name == name && s.attr_str("db.system.name") == "redis")
                    .count();
                assert!(n <= 1, "{spans:#?}");
            }
            for s in &calls {
                assert!(inside(s, root), "{spans:#?}");
            }
            if let Some(call) = http.first() {
                assert_eq!(
                    call.attr("http.response.status_code"),
                    root.attr("http.response.status_code"),
                    "{spans:#?}"
                );
            }
        } else if root.kind == 3 && root.service == "front" {
            // A call that started a trace of its own.
            roots += 1;
        }
    }
    let setup = all
        .values()
        .flatten()
        .filter(|s| s.name == "CLIENT SETINFO")
        .count() as u64;
    assert_eq!(placed + roots, 40 + 80 + setup, "every call exported once");
    let m = agent
        .wait_for_metrics(WAIT, |m| {
            m.sum("apm_trace_calls_unplaced_total", "front") >= roots as f64
        })
        .unwrap_or_else(|| agent.metrics().expect("metrics"));
    assert_eq!(
        m.sum("apm_trace_calls_unplaced_total", "front"),
        roots as f64,
        "every call not placed is counted: {}",
        m.text
    );
    eprintln!("concurrent: {placed} calls placed, {roots} counted as unplaced");
}
