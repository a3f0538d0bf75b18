//! MySQL from the wire, client side: a monitored Python service
//! (tests/servers/mysql_client.py, listening on a port the agent watches,
//! named "shop") runs a known mix of statements against a real MariaDB,
//! over PyMySQL's text protocol and over mysql-connector-python's
//! prepared statements. The agent times each from the service's side of
//! its connections (`db_client_operation_duration_seconds`): counts per
//! (operation, error number) exact against what the client counted and
//! the server recorded itself (performance_schema, `Com_stmt_execute`),
//! with the server's address and port. PyMySQL's server port is listed
//! (`--mysql-port`); mysql-connector's is recognised by the greeting the
//! server sends first on a connection opened after the agent.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, Metrics,
    databases::{self, MysqlClient, SqlCounts, by_operation},
    free_port, require_root, shop_args,
};

const PASSWORD: &str = "apm-e2e-mysql-pw";
const CLIENT_FAMILY: &str = "db_client_operation_duration_seconds";

/// The agent's client-side operations of "shop" to 127.0.0.1:`port`, by
/// (operation, table, error number).
fn sent(m: &Metrics, port: u16) -> SqlCounts {
    let port = port.to_string();
    let labels = [
        ("service_name", "shop"),
        ("db_system_name", "mariadb"),
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
    ];
    databases::sql_counts(m, CLIENT_FAMILY, &labels)
}

/// Waits until the agent's client-side counts by (operation, error
/// number) are `want`; returns the scrape after that (which must agree).
fn wait_sent(agent: &Agent, port: u16, want: &BTreeMap<(String, String), u64>) -> Metrics {
    let m = agent
        .wait_for_metrics(Duration::from_secs(20), |m| {
            by_operation(&sent(m, port)) == *want
        })
        .unwrap_or_else(|| {
            let m = agent.metrics().expect("metrics");
            panic!(
                "the agent counted {:?}\nthe client {want:?}\n{}\n{}",
                by_operation(&sent(&m, port)),
                m.text,
                agent.log_text()
            )
        });
    assert_eq!(by_operation(&sent(&m, port)), *want, "counted more after");
    m
}

fn succeeded(counts: &SqlCounts) -> BTreeMap<(String, String), u64> {
    counts
        .iter()
        .filter(|((_, _, code), n)| code.is_empty() && **n > 0)
        .map(|((op, table, _), n)| ((op.clone(), table.clone()), *n))
        .collect()
}

fn one_driver(prepared: bool) {
    let port = free_port().expect("port");
    let _db = databases::mariadb_in(None, port, PASSWORD, &databases::MARIADB_STATEMENT_HISTORY);
    databases::mariadb_shop_tables(port);
    let lport = free_port().expect("port");
    let mut client = MysqlClient::start(None, port, PASSWORD, Some(lport));
    let (lport_s, port_s) = (lport.to_string(), port.to_string());
    let mut args = shop_args(&lport_s);
    if !prepared {
        args.extend(["--mysql-port".to_owned(), port_s]);
    }
    let agent = Agent::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).expect("agent");
    agent.wait_for_service(lport, "shop");
    agent.wait_for_process("shop");
    databases::mariadb_forget_statements(port);
    let ran = if prepared {
        let before = databases::mariadb_status(port, "Com_stmt_execute");
        let ran = client.prepared(100, 1000);
        databases::assert_server_ran_prepared(port, &ran, before);
        client.close();
        ran
    } else {
        let ran = client.text(300, 2000, 3, 1000);
        assert_eq!(
            databases::mariadb_statements(port),
            by_operation(&ran.counts),
            "harness: the server ran other than the client counted"
        );
        ran
    };
    let want = by_operation(&ran.counts);
    let m = wait_sent(&agent, port, &want);
    assert_eq!(succeeded(&sent(&m, port)), succeeded(&ran.counts));
    assert_eq!(
        m.sum("apm_db_operations_unpaired_total", "shop"),
        0.0,
        "{}",
        m.text
    );
}

#[test]
fn pymysql_text_protocol_is_timed_client_side_exactly_on_a_listed_port() {
    require_root();
    one_driver(false);
}

#[test]
fn mysql_connector_prepared_statements_are_timed_client_side_on_a_recognised_port() {
    require_root();
    one_driver(true);
}

/// A monitored client's connections older than the agent: joined at
/// their next command, named MariaDB by a newer connection's greeting.
#[test]
fn connections_older_than_the_agent_are_timed_client_side_from_their_next_command() {
    require_root();
    let port = free_port().expect("port");
    let _db = databases::mariadb_in(None, port, PASSWORD, &databases::MARIADB_STATEMENT_HISTORY);
    databases::mariadb_shop_tables(port);
    let lport = free_port().expect("port");
    let mut client = MysqlClient::start(None, port, PASSWORD, Some(lport));
    client.open();
    let (lport_s, port_s) = (lport.to_string(), port.to_string());
    let mut args = shop_args(&lport_s);
    args.extend(["--mysql-port".to_owned(), port_s]);
    let agent = Agent::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).expect("agent");
    agent.wait_for_service(lport, "shop");
    agent.wait_for_process("shop");
    let mut ran = client.sql(1, "SELECT 1", "SELECT", "", 0);
    for (k, n) in client.reuse(200, 1000).counts {
        *ran.counts.entry(k).or_default() += n;
    }
    let want = by_operation(&ran.counts);
    let m = wait_sent(&agent, port, &want);
    assert_eq!(succeeded(&sent(&m, port)), succeeded(&ran.counts));
    assert_eq!(
        m.sum("apm_db_operations_unpaired_total", "shop"),
        0.0,
        "{}",
        m.text
    );
}
