//! MySQL from the wire, server side: a real MariaDB (Debian's, with
//! performance_schema keeping every statement) under PyMySQL's text
//! protocol and mysql-connector-python's prepared statements, bounded by
//! statement count. The agent's count of each (operation, error number)
//! equals what the server itself recorded (`events_statements_history_
//! long`, `prepared_statements_instances`, `Com_stmt_execute`) and what
//! the client counted, exactly, also over an MTU-1500 link that drops
//! 2 % of the packets each way (TCP retransmits them). A statement's
//! time lies between the server's and the client's, and a literal never
//! leaves the parser, not even through the server's error messages.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, Metrics, NetNs,
    databases::{self, MysqlClient, SqlCounts, by_operation},
    free_port, get,
    prod::LinkNs,
    require_root,
};

const PASSWORD: &str = "apm-e2e-mysql-pw";
const SERVER_FAMILY: &str = "apm_db_server_operation_duration_seconds";
const WAIT: Duration = Duration::from_secs(20);

/// MariaDB on `port` (in `ns`) with its statement history and the
/// workloads' tables, and the agent monitoring it; the history starts
/// empty.
fn monitored(ns: Option<&NetNs>, port: u16) -> (databases::Server, Agent) {
    monitored_by(ns, port, "packets")
}

/// [`monitored`] with the agent's `capture` (packets or syscalls).
fn monitored_by(ns: Option<&NetNs>, port: u16, capture: &str) -> (databases::Server, Agent) {
    let db = databases::mariadb_in(ns, port, PASSWORD, &databases::MARIADB_STATEMENT_HISTORY);
    databases::mariadb_shop_tables(port);
    let p = port.to_string();
    let agent =
        Agent::start(&["--capture", capture, "--port", &p, "--mysql-port", &p]).expect("agent");
    agent.wait_for_service(port, "mariadbd");
    databases::mariadb_forget_statements(port);
    (db, agent)
}

/// The agent's server-side operations of the mariadbd on `port`, by
/// (operation, table, error number).
fn served(m: &Metrics, port: u16) -> SqlCounts {
    let port = port.to_string();
    let labels = [
        ("service_name", "mariadbd"),
        ("db_system_name", "mariadb"),
        ("server_port", port.as_str()),
    ];
    databases::sql_counts(m, SERVER_FAMILY, &labels)
}

/// The successful statements of `counts`, by (operation, table).
fn succeeded(counts: &SqlCounts) -> BTreeMap<(String, String), u64> {
    counts
        .iter()
        .filter(|((_, _, code), n)| code.is_empty() && **n > 0)
        .map(|((op, table, _), n)| ((op.clone(), table.clone()), *n))
        .collect()
}

/// Commands or replies of mariadbd the agent could not pair.
fn unpaired(m: &Metrics) -> f64 {
    m.sum("apm_db_operations_unpaired_total", "mariadbd")
}

/// Waits until the agent's server-side counts by (operation, error
/// number) are `want`; returns the scrape after that (which must agree).
fn wait_served(agent: &Agent, port: u16, want: &BTreeMap<(String, String), u64>) -> Metrics {
    let m = agent
        .wait_for_metrics(WAIT, |m| by_operation(&served(m, port)) == *want)
        .unwrap_or_else(|| {
            let m = agent.metrics().expect("metrics");
            panic!(
                "the agent counted {:?}\nthe server {want:?}\n{}",
                by_operation(&served(&m, port)),
                agent.log_text()
            )
        });
    assert_eq!(by_operation(&served(&m, port)), *want, "counted more after");
    m
}

/// The agent's statements of `service` (/stats/requests) by normalised
/// text.
fn agent_statements(agent: &Agent, service: &str) -> (String, BTreeMap<String, serde_json::Value>) {
    let body = get(agent.addr, "/stats/requests").expect("stats").body;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let statements = v["statements"][service]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["statement"].as_str().unwrap_or_default().to_owned(),
                s.clone(),
            )
        })
        .collect();
    (body, statements)
}

/// Waits until /stats/requests shows `text` of mariadbd counted `count`
/// times; returns it.
fn wait_statement(agent: &Agent, text: &str, count: u64) -> serde_json::Value {
    let found = apm_e2e::wait_for(Duration::from_secs(5), || {
        let (_, s) = agent_statements(agent, "mariadbd");
        s.get(text).filter(|s| s["count"] == count).cloned()
    });
    found.unwrap_or_else(|| {
        let (_, s) = agent_statements(agent, "mariadbd");
        panic!("{text:?} not counted {count} times: {:?}", s)
    })
}

fn key(op: &str, code: &str) -> (String, String) {
    (op.to_owned(), code.to_owned())
}

#[test]
fn text_protocol_statements_are_counted_exactly_against_performance_schema() {
    text_protocol("packets");
}

/// The fallback: mariadbd's reads and writes, by descriptor.
#[test]
fn with_the_syscall_capture_too() {
    text_protocol("syscalls");
}

fn text_protocol(capture: &str) {
    require_root();
    let port = free_port().expect("port");
    let (_db, agent) = monitored_by(None, port, capture);
    let mut client = MysqlClient::start(None, port, PASSWORD, None);
    let ran = client.text(600, 2000, 5, 1000);
    let truth = databases::mariadb_statements(port);
    assert_eq!(
        truth,
        by_operation(&ran.counts),
        "harness: the server ran other than the client counted"
    );
    // The workload is what it says: every kind of statement and error,
    // a few thousand in all.
    for k in [
        key("SET", ""),
        key("BEGIN", ""),
        key("COMMIT", ""),
        key("DELETE", ""),
        key("INSERT", "1062"),
        key("SELECT", "1064"),
        key("SELECT", "1146"),
    ] {
        assert!(truth.get(&k).is_some_and(|&n| n > 0), "{k:?}: {truth:?}");
    }
    assert!(truth.values().sum::<u64>() > 2000, "{truth:?}");

    let m = wait_served(&agent, port, &truth);
    // Successful statements by table too (a failed one's table is
    // whatever its text names, parsed or not).
    assert_eq!(succeeded(&served(&m, port)), succeeded(&ran.counts));
    assert_eq!(unpaired(&m), 0.0, "{}", m.text);

    // Literals out, backticks and IN lists kept: ids from 1000, 600
    // rounds (every 4th with the IN list, every 10th in a transaction),
    // 30 + 5 inserts that failed.
    let by_id = wait_statement(&agent, "SELECT name, qty FROM items WHERE id = ?", 600);
    assert_eq!(by_id["errors"], 0);
    assert_eq!(by_id["db_system_name"], "mariadb");
    wait_statement(&agent, "SELECT id FROM items WHERE id IN (?, ...)", 150);
    wait_statement(&agent, "UPDATE `items` SET name = ? WHERE id = ?", 60);
    let insert = wait_statement(
        &agent,
        "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)",
        635,
    );
    assert_eq!(insert["errors"], 35);
}

#[test]
fn prepared_statements_are_counted_per_execute_against_the_servers_own() {
    require_root();
    let port = free_port().expect("port");
    let (_db, agent) = monitored(None, port);
    let mut client = MysqlClient::start(None, port, PASSWORD, None);
    let executes_before = databases::mariadb_status(port, "Com_stmt_execute");
    let ran = client.prepared(200, 1000);
    databases::assert_server_ran_prepared(port, &ran, executes_before);
    let want = by_operation(&ran.counts);
    // 600 executes, 20 more that failed at execute time, 40 of statements
    // prepared anew on a cursor, the connection's two SETs; the three
    // failed prepares are no operations.
    let executes: u64 = want
        .iter()
        .filter(|(k, _)| k.0 != "SET")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(executes, 660, "{want:?}");
    assert_eq!(want.get(&key("INSERT", "1062")), Some(&20), "{want:?}");
    assert_eq!(want.get(&key("SET", "")), Some(&2), "{want:?}");
    // Closing them (COM_STMT_CLOSE, which has no reply) adds nothing.
    client.close();
    let want = ran.counts;
    let m = wait_served(&agent, port, &by_operation(&want));
    assert_eq!(succeeded(&served(&m, port)), succeeded(&want));
    assert_eq!(unpaired(&m), 0.0, "{}", m.text);
    // A prepared statement's text is the one COM_STMT_PREPARE carried.
    for (text, (runs, errors)) in &ran.prepared {
        let s = wait_statement(&agent, text, *runs);
        assert_eq!(s["errors"], *errors, "{text}");
    }
}

#[test]
fn literals_stay_inside_even_when_the_server_quotes_them_in_errors() {
    require_root();
    let port = free_port().expect("port");
    let (_db, agent) = monitored(None, port);
    let mut client = MysqlClient::start(None, port, PASSWORD, None);
    let insert = "INSERT INTO items (id, name, qty) VALUES (987654321, 'hunter2-SECRET', 1)";
    let runs = [
        (1, insert, "INSERT", 0),
        // "Duplicate entry '987654321' for key 'PRIMARY'"
        (2, insert, "INSERT", 1062),
        (
            3,
            "SELECT id FROM items WHERE name = 'hunter2-SECRET'",
            "SELECT",
            0,
        ),
        (
            2,
            "UPDATE items SET qty = 987654321 WHERE name = 'hunter2-SECRET'",
            "UPDATE",
            0,
        ),
        // "... near '= 'hunter2-SECRET'' at line 1"
        (
            2,
            "SELECT id FROM items WHERE name == 'hunter2-SECRET'",
            "SELECT",
            1064,
        ),
        // A string in double quotes, a card number in a # comment.
        (
            1,
            "SELECT id FROM items WHERE name = \"alice@example.com\" # 4111111111111111",
            "SELECT",
            0,
        ),
        // An escaped quote, a token in a -- comment.
        (
            1,
            r"SELECT id FROM items WHERE name = 'it\'s tok_live_SECRET' -- tok_live_SECRET",
            "SELECT",
            0,
        ),
        // An executable comment's code, and its literal.
        (
            1,
            "/*!40101 SELECT id FROM items WHERE name = 'exec-SECRET' */",
            "SELECT",
            0,
        ),
    ];
    let mut ran = SqlCounts::new();
    for (n, sql, op, code) in runs {
        for (k, v) in client.sql(n, sql, op, "items", code).counts {
            *ran.entry(k).or_default() += v;
        }
    }
    let truth = databases::mariadb_statements(port);
    assert_eq!(truth, by_operation(&ran), "harness");
    let m = wait_served(&agent, port, &truth);
    assert_eq!(unpaired(&m), 0.0, "{}", m.text);
    wait_statement(&agent, "SELECT id FROM items WHERE name = ?", 6);
    wait_statement(&agent, "UPDATE items SET qty = ? WHERE name = ?", 2);
    let mut seen = vec![agent.metrics().expect("metrics").text, agent.log_text()];
    for path in [
        "/stats/requests",
        "/stats/system",
        "/logs/recent",
        "/alerts",
        "/api/dashboard",
        "/health/detailed",
    ] {
        seen.push(get(agent.addr, path).expect(path).body);
    }
    for text in seen {
        for secret in [
            "hunter2",
            "987654321",
            "alice",
            "4111111111111111",
            "tok_live",
            "exec-SECRET",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}

#[test]
fn sleep_is_timed_between_the_servers_time_and_the_clients() {
    require_root();
    let port = free_port().expect("port");
    let (_db, agent) = monitored(None, port);
    let mut client = MysqlClient::start(None, port, PASSWORD, None);
    let n = 5;
    let ran = client.sql(n, "SELECT SLEEP(0.2)", "SELECT", "", 0);
    // The server's own time of each (TIMER_WAIT, picoseconds).
    let rows = databases::mariadb_rows(
        port,
        "SELECT COUNT(*), SUM(TIMER_WAIT) FROM performance_schema.events_statements_history_long \
         WHERE SQL_TEXT = 'SELECT SLEEP(0.2)'",
    );
    assert_eq!(rows[0][0], n.to_string(), "{rows:?}");
    let server_s = rows[0][1].parse::<f64>().expect("TIMER_WAIT") / 1e12;
    let labels = [
        ("service_name", "mariadbd"),
        ("db_operation_name", "SELECT"),
        ("db_collection_name", ""),
        ("db_response_status_code", ""),
    ];
    let count = format!("{SERVER_FAMILY}_count");
    let m = agent
        .wait_for_metrics(WAIT, |m| m.value(&count, &labels) == Some(f64::from(n)))
        .unwrap_or_else(|| panic!("{}", agent.metrics().expect("metrics").text));
    assert_eq!(m.value(&count, &labels), Some(f64::from(n)));
    let sum = m
        .value(&format!("{SERVER_FAMILY}_sum"), &labels)
        .expect("sum");
    // Seen from the wire: after the command arrived and before the
    // client read the reply (1 ms of slack each for the clocks).
    let slack = 0.001 * f64::from(n);
    assert!(
        server_s - slack <= sum && sum <= ran.seconds + slack,
        "server {server_s} s <= agent {sum} s <= client {} s",
        ran.seconds
    );
    let mean = sum / f64::from(n);
    assert!((0.2..0.25).contains(&mean), "SLEEP(0.2) took {mean} s");
    let sleep = wait_statement(&agent, "SELECT SLEEP(?)", u64::from(n));
    let p50 = sleep["p50_seconds"].as_f64().expect("p50");
    assert!((p50 - 0.2).abs() < 0.02, "SLEEP(0.2)'s median: {p50} s");
}

#[test]
fn text_protocol_over_an_mtu_1500_link_losing_2_percent_each_way_is_exact() {
    require_root();
    let port = free_port().expect("port");
    let link = LinkNs::create("my-lossy", &[port], 2).expect("link");
    let ns = Some(&link.ns);
    let (_db, agent) = monitored(ns, port);
    let mut client = MysqlClient::start(ns, port, PASSWORD, None);
    // Results of 500 rows of ~210 bytes (~100 KiB, 1448-byte segments).
    let ran = client.text(120, 500, 3, 1000);
    let truth = databases::mariadb_statements(port);
    assert_eq!(truth, by_operation(&ran.counts), "harness");
    let lost = link.check_loss().expect("loss");
    eprintln!("lossy link: {lost:?}");
    let m = wait_served(&agent, port, &truth);
    assert_eq!(succeeded(&served(&m, port)), succeeded(&ran.counts));
    assert_eq!(unpaired(&m), 0.0, "{}", m.text);
    link.check_link(500).expect("an MTU-1500 link");
}

/// A pool older than the agent: its connections are joined at their next
/// command, a statement prepared before counts as UNKNOWN (its text was
/// never seen), and a newer connection's greeting names the server.
#[test]
fn connections_older_than_the_agent_are_joined_at_their_next_command() {
    require_root();
    let port = free_port().expect("port");
    let _db = databases::mariadb_in(None, port, PASSWORD, &databases::MARIADB_STATEMENT_HISTORY);
    databases::mariadb_shop_tables(port);
    let mut client = MysqlClient::start(None, port, PASSWORD, None);
    client.open();
    let p = port.to_string();
    let agent = Agent::start(&["--port", &p, "--mysql-port", &p]).expect("agent");
    agent.wait_for_service(port, "mariadbd");
    databases::mariadb_forget_statements(port);
    let mut ran = client.sql(1, "SELECT 1", "SELECT", "", 0);
    for (k, n) in client.reuse(200, 1000).counts {
        *ran.counts.entry(k).or_default() += n;
    }
    let mut truth = databases::mariadb_statements(port);
    let executes: u64 = databases::mariadb_executes(port).values().sum();
    assert_eq!(executes, 200);
    truth.insert(key("UNKNOWN", ""), executes);
    assert_eq!(truth, by_operation(&ran.counts), "harness");
    let m = wait_served(&agent, port, &truth);
    assert_eq!(succeeded(&served(&m, port)), succeeded(&ran.counts));
    assert_eq!(unpaired(&m), 0.0, "{}", m.text);
}

/// TLS sessions: the packets carry ciphertext after the client's
/// SSLRequest, and stop being copied then; mariadbd's libssl gives the
/// plaintext, counted as exactly as in the clear.
#[test]
fn tls_sessions_are_read_from_the_servers_libssl_exactly() {
    require_root();
    let port = free_port().expect("port");
    let (_dir, cert, key) = apm_e2e::tls::certified("mysql-tls", port);
    let mut options = databases::MARIADB_STATEMENT_HISTORY.to_vec();
    let (cert, key) = (format!("--ssl-cert={cert}"), format!("--ssl-key={key}"));
    options.extend([cert.as_str(), key.as_str()]);
    let _db = databases::mariadb_in(None, port, PASSWORD, &options);
    databases::mariadb_shop_tables(port);
    let p = port.to_string();
    let agent = Agent::start(&["--capture-tls", "--port", &p, "--mysql-port", &p]).expect("agent");
    agent.wait_for_service(port, "mariadbd");
    apm_e2e::tls::wait_probed(&agent, "libssl");
    databases::mariadb_forget_statements(port);
    let mut client = MysqlClient::start_tls(port, PASSWORD);
    let ran = client.text(200, 2000, 3, 1000);
    let truth = databases::mariadb_statements(port);
    assert_eq!(truth, by_operation(&ran.counts), "harness");
    let ssl = databases::mariadb_status(port, "Ssl_accepts");
    assert!(ssl >= 2, "{ssl} TLS sessions");
    let m = wait_served(&agent, port, &truth);
    assert_eq!(succeeded(&served(&m, port)), succeeded(&ran.counts));
    assert_eq!(unpaired(&m), 0.0, "{}", m.text);
    // The ciphertext after the SSLRequest was not copied.
    let skipped = m
        .value("apm_capture_skipped_segments_total", &[("verdict", "tls")])
        .unwrap_or(0.0);
    assert!(skipped > 0.0, "{}", m.text);
}
