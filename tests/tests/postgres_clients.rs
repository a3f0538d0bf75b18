//! PostgreSQL from the wire, client side: a monitored FastAPI application
//! (uvicorn, tests/servers/db_app.py) using SQLAlchemy's async engine over
//! asyncpg, and over psycopg, runs a known mix of SELECT, INSERT and
//! UPDATE statements and a unique violation against a real PostgreSQL.
//! The agent times each from the application's side of its connections
//! (`db_client_operation_duration_seconds`): counts per operation and
//! table exact against the mix the test sent, the violation with SQLSTATE
//! 23505, `pg_sleep(0.05)`'s median within 10 % of 50 ms, and the values
//! the application wrote nowhere in what the agent serves. asyncpg's
//! server port is listed (`--postgres-port`) and its pool connection is
//! older than the agent (joined at its next request); psycopg's is
//! recognised by the first bytes of a connection opened after the agent
//! (its SSLRequest and startup).

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use apm_e2e::{
    Agent, Client, databases, free_port, get,
    process::{Scratch, stop},
    prod::py_app_bin,
    require_root, wait_for,
};

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers");

/// uvicorn serving db_app.py on a free port, stopped when dropped.
struct App {
    child: Child,
    port: u16,
    _dir: Scratch,
}

impl Drop for App {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGTERM);
    }
}

impl App {
    fn start(driver: &str, pg_port: u16, fresh_pool: bool) -> Self {
        let port = free_port().expect("port");
        let dir = Scratch::new("db-app", port).expect("scratch");
        let log = std::fs::File::create(dir.0.join("uvicorn.log")).expect("log");
        let child = Command::new(py_app_bin().join("uvicorn"))
            .args(["--app-dir", SERVERS, "db_app:app"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1", "--log-level", "warning"])
            .env(
                "DATABASE_URL",
                format!("postgresql+{driver}://apm@127.0.0.1:{pg_port}/postgres"),
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("FRESH_POOL", if fresh_pool { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("uvicorn (installed by cargo xtask test)");
        let app = Self {
            child,
            port,
            _dir: dir,
        };
        // Listening (no request yet: it would open the pool).
        let up = wait_for(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(
            up.is_some(),
            "db_app did not start: {}",
            std::fs::read_to_string(app._dir.0.join("uvicorn.log")).unwrap_or_default()
        );
        app
    }
}

/// The agent's client-side operation counts of `service`, by (operation,
/// table, SQLSTATE).
fn client_counts(agent: &Agent, service: &str) -> BTreeMap<(String, String, String), u64> {
    let Ok(m) = agent.metrics() else {
        return BTreeMap::new();
    };
    m.matching(
        "db_client_operation_duration_seconds_count",
        &[("db_system_name", "postgresql"), ("service_name", service)],
    )
    .map(|s| {
        (
            (
                s.labels["db_operation_name"].clone(),
                s.labels["db_collection_name"].clone(),
                s.labels["db_response_status_code"].clone(),
            ),
            s.value as u64,
        )
    })
    .collect()
}

fn one_driver(driver: &str, listed: bool) {
    let pg_port = free_port().expect("port");
    let _pg = databases::postgres(pg_port, "unused", "trust", &[]);
    // The listed port's pool is older than the agent; the other's opens
    // after it.
    let app = App::start(driver, pg_port, !listed);
    let (app_port, pg) = (app.port.to_string(), pg_port.to_string());
    let mut args = vec!["--port", &app_port];
    if listed {
        args.extend(["--postgres-port", &pg]);
    }
    let agent = Agent::start(&args).expect("agent");
    agent.wait_for_service(app.port, "uvicorn");
    let mut client = Client::connect(app.port).expect("connect");
    let (gets, inserts, updates, sleeps) = (40u64, 20u64, 15u64, 20u64);
    let base = 1000 + u64::from(listed) * 1000;
    for i in 0..inserts {
        assert_eq!(
            client
                .send("POST", &format!("/items/{}", base + i))
                .expect("post"),
            201
        );
    }
    assert_eq!(
        client.send("POST", &format!("/items/{base}")).expect("dup"),
        409
    );
    for i in 0..gets {
        assert_eq!(
            client
                .get(&format!("/items/{}", base + i % inserts))
                .expect("get"),
            200
        );
    }
    for i in 0..updates {
        assert_eq!(
            client
                .send("PUT", &format!("/items/{}", base + i))
                .expect("put"),
            200
        );
    }
    for _ in 0..sleeps {
        assert_eq!(client.get("/slow").expect("slow"), 200);
    }
    let want: BTreeMap<(String, String, String), u64> = [
        (("SELECT", "items", ""), gets),
        (("INSERT", "items", ""), inserts),
        (("INSERT", "items", "23505"), 1),
        (("UPDATE", "items", ""), updates),
    ]
    .into_iter()
    .map(|((o, t, c), n)| ((o.to_owned(), t.to_owned(), c.to_owned()), n))
    .collect();
    // Only the application's own statements are compared: SQLAlchemy's
    // BEGIN/COMMIT/ROLLBACK and its dialect's first queries (version,
    // schema: SELECTs of no table, like pg_sleep's) are timed too.
    let mine = || {
        let got = client_counts(&agent, "uvicorn");
        want.keys()
            .map(|k| (k.clone(), got.get(k).copied().unwrap_or(0)))
            .collect::<BTreeMap<_, _>>()
    };
    let settled = wait_for(Duration::from_secs(20), || (mine() == want).then_some(()));
    assert!(
        settled.is_some(),
        "{driver}: the agent counted {:?}\nthe app ran {want:?}\nall: {:?}\n{}",
        mine(),
        client_counts(&agent, "uvicorn"),
        agent.log_text()
    );
    // /stats/requests is a snapshot published every 200 ms.
    let sleep_stats = || -> Option<(String, serde_json::Value)> {
        let r = get(agent.addr, "/stats/requests").ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let sleep = v["statements"]["uvicorn"]
            .as_array()?
            .iter()
            .find(|s| s["statement"] == "SELECT pg_sleep($1)")?
            .clone();
        Some((r.body, sleep))
    };
    let (body, sleep) = wait_for(Duration::from_secs(5), || {
        sleep_stats().filter(|(_, s)| s["count"].as_u64() == Some(sleeps))
    })
    .unwrap_or_else(|| {
        panic!(
            "{driver}: pg_sleep not counted {sleeps} times: {:?}",
            sleep_stats()
        )
    });
    let p50 = sleep["p50_seconds"].as_f64().expect("p50");
    assert!(
        (p50 - 0.05).abs() < 0.005,
        "{driver}: pg_sleep(0.05)'s median: {p50} s"
    );
    // Each statement is a span of the request that ran it: the slowest
    // GETs' traces hold their SELECT, and the failed INSERT's trace its
    // unique violation, normalised.
    let traces = get(agent.addr, "/traces/recent?service=uvicorn&limit=100").expect("traces");
    let doc: serde_json::Value = serde_json::from_str(&traces.body).expect("json");
    let of = |name: &str| -> Vec<serde_json::Value> {
        doc["traces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["name"] == name)
            .cloned()
            .collect()
    };
    let child = |t: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        let root = t["spans"][0]["span_id"].clone();
        t["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name && s["parent_span_id"] == root && s["join"] == "nesting")
            .cloned()
    };
    let selects = of("GET /items/{id}");
    assert!(!selects.is_empty(), "{driver}: {doc}");
    for t in &selects {
        let sql = child(t, "SELECT items").unwrap_or_else(|| panic!("{driver}: {t}"));
        assert_eq!(sql["attributes"]["db.system.name"], "postgresql");
        assert_eq!(
            sql["attributes"]["db.query.text"],
            "SELECT name FROM items WHERE id = $1"
        );
    }
    let failed = of("POST /items/{id}");
    let violation = failed
        .iter()
        .filter(|t| t["error"] == true)
        .find_map(|t| child(t, "INSERT items"))
        .unwrap_or_else(|| panic!("{driver}: no failed INSERT span: {doc}"));
    assert_eq!(violation["attributes"]["db.response.status_code"], "23505");
    assert_eq!(violation["error"], true);
    for text in [
        agent.metrics().expect("metrics").text,
        body,
        traces.body.clone(),
        get(agent.addr, "/logs/recent").expect("logs").body,
        agent.log_text(),
    ] {
        assert!(
            !text.contains("secret-item"),
            "{driver}: a value leaked: {text}"
        );
    }
}

#[test]
fn sqlalchemy_over_asyncpg_is_timed_client_side_exactly() {
    require_root();
    one_driver("asyncpg", true);
}

#[test]
fn sqlalchemy_over_psycopg_is_timed_client_side_exactly_on_a_recognised_port() {
    require_root();
    one_driver("psycopg", false);
}
