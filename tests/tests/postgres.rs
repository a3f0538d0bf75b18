//! PostgreSQL from the wire, server side: a real PostgreSQL (Debian's,
//! with `pg_stat_statements` preloaded) under pgbench's built-in TPC-B-like
//! script in each of its query modes (simple, extended, prepared), bounded
//! by transaction count. The agent's count of each normalised statement
//! equals the delta of `pg_stat_statements.calls` for the same text,
//! exactly, also over an MTU-1500 link that drops 2 % of the packets each
//! way (TCP retransmits them). An error carries its SQLSTATE, a
//! statement's time is the server's, and a literal never leaves the
//! parser.

use std::{collections::BTreeMap, time::Duration};

use apm_e2e::{
    Agent, NetNs,
    databases::{self, psql},
    free_port, get,
    prod::LinkNs,
    require_root, wait_for,
};

/// Runs pgbench; returns the transactions it says it processed.
fn pgbench(port: u16, args: &[&str]) -> u64 {
    pgbench_in(None, port, args)
}

/// [`pgbench`] in network namespace `ns`.
fn pgbench_in(ns: Option<&NetNs>, port: u16, args: &[&str]) -> u64 {
    let out = databases::in_ns(ns, &databases::postgres_bin("pgbench").to_string_lossy())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "apm"])
        .args(args)
        .arg("postgres")
        .output()
        .expect("pgbench");
    assert!(out.status.success(), "pgbench {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// pg_stat_statements' calls of pgbench's statements, by text.
fn pg_calls(port: u16) -> BTreeMap<String, u64> {
    pg_calls_in(None, port)
}

fn pg_calls_in(ns: Option<&NetNs>, port: u16) -> BTreeMap<String, u64> {
    let (ok, out) = databases::psql_in(
        ns,
        port,
        &["SELECT calls, query FROM pg_stat_statements \
           WHERE query LIKE '%pgbench_%' OR query IN ('BEGIN', 'END')"],
    );
    assert!(ok, "{out}");
    out.lines()
        .filter_map(|l| l.split_once('|'))
        .filter(|(_, q)| !q.contains("pg_stat_statements"))
        .map(|(n, q)| (q.to_owned(), n.parse().expect("calls")))
        .collect()
}

/// The agent's statements of `service` (/stats/requests): count and
/// errors, and the p50 in seconds, by normalised text.
fn agent_statements(agent: &Agent, service: &str) -> BTreeMap<String, (u64, u64, f64)> {
    let Ok(r) = get(agent.addr, "/stats/requests") else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    v["statements"][service]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    (
                        s["statement"].as_str().unwrap_or_default().to_owned(),
                        (
                            s["count"].as_u64().unwrap_or(0),
                            s["errors"].as_u64().unwrap_or(0),
                            s["p50_seconds"].as_f64().unwrap_or(0.0),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A cluster with pg_stat_statements and `setup` run, then the agent
/// monitoring it.
fn cluster(setup: &[&str]) -> (databases::Server, u16, Agent) {
    let port = free_port().expect("port");
    let pg = databases::postgres(
        port,
        "unused",
        "trust",
        &["shared_preload_libraries=pg_stat_statements"],
    );
    let (ok, out) = psql(port, &["CREATE EXTENSION pg_stat_statements"]);
    assert!(ok, "{out}");
    if !setup.is_empty() {
        pgbench(port, setup);
    }
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "postgres");
    (pg, port, agent)
}

#[test]
fn pgbench_statements_are_counted_exactly_against_pg_stat_statements() {
    require_root();
    let (_pg, port, agent) = cluster(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let before = agent_statements(&agent, "postgres");
        let (ok, out) = psql(port, &["SELECT pg_stat_statements_reset()"]);
        assert!(ok, "{out}");
        let done = pgbench(port, &["-M", mode, "-c", "2", "-t", "150", "-n"]);
        assert_eq!(done, 300, "{mode}");
        let mut want = pg_calls(port);
        // The TPC-B-like script's seven, and pgbench's own check of the
        // tables (`select count(*) from pgbench_branches`).
        assert_eq!(want.len(), 8, "{mode}: pg_stat_statements shows {want:?}");
        if mode == "prepared" {
            // pg_stat_statements counts a utility statement run from a
            // prepared statement once per connection (at its first run,
            // when it is analysed): there the truth is pgbench's own
            // count of the transactions, each one BEGIN and one END.
            assert_eq!((want["BEGIN"], want["END"]), (2, 2), "{want:?}");
            want.insert("BEGIN".into(), done);
            want.insert("END".into(), done);
        }
        assert_eq!(want["BEGIN"], done, "{mode}: {want:?}");
        let delta = || {
            let now = agent_statements(&agent, "postgres");
            want.keys()
                .map(|q| {
                    let n = now.get(q).map_or(0, |s| s.0);
                    let b = before.get(q).map_or(0, |s| s.0);
                    (q.clone(), n - b)
                })
                .collect::<BTreeMap<_, _>>()
        };
        let settled = wait_for(Duration::from_secs(20), || (delta() == want).then_some(()));
        assert!(
            settled.is_some(),
            "{mode}: the agent counted {:?}\npg_stat_statements {want:?}\nall: {:?}",
            delta(),
            agent_statements(&agent, "postgres")
                .keys()
                .collect::<Vec<_>>()
        );
    }
    let m = agent.metrics().expect("metrics");
    let updates = m.value(
        "apm_db_server_operation_duration_seconds_count",
        &[
            ("db_system_name", "postgresql"),
            ("db_operation_name", "UPDATE"),
            ("db_collection_name", "pgbench_accounts"),
            ("db_response_status_code", ""),
        ],
    );
    assert!(updates.is_some_and(|n| n >= 900.0), "{}", m.text);
}

#[test]
fn errors_carry_their_sqlstate_times_are_the_servers_and_literals_stay_inside() {
    require_root();
    let (_pg, port, agent) = cluster(&[]);
    let marker = "alice.marker@example.com";
    let insert = format!("INSERT INTO shop_users VALUES (1, '{marker}')");
    let (ok, out) = psql(
        port,
        &[
            "CREATE TABLE shop_users (id int PRIMARY KEY, email text)",
            &insert,
        ],
    );
    assert!(ok, "{out}");
    // The same row again: a unique violation.
    let (ok, _) = psql(port, &[&insert]);
    assert!(!ok, "the second insert must fail");
    let sleeps = vec!["SELECT pg_sleep(0.05)"; 10];
    assert!(psql(port, &sleeps).0);
    // Results of ~100 KiB, past the capture: their framing is lost and
    // found again at the ReadyForQuery that ends each, and the statements
    // after them on the same connection pair as usual.
    let big = "SELECT g, repeat('x', 40) FROM generate_series(1, 2000) g";
    let mut mixed = vec![big; 3];
    mixed.extend(["SELECT 'after'"; 3]);
    assert!(psql(port, &mixed).0);

    let failed = wait_for(Duration::from_secs(20), || {
        let m = agent.metrics().ok()?;
        m.value(
            "apm_db_server_operation_duration_seconds_count",
            &[
                ("db_operation_name", "INSERT"),
                ("db_collection_name", "shop_users"),
                ("db_response_status_code", "23505"),
            ],
        )
        .filter(|&n| n == 1.0)
    });
    assert!(
        failed.is_some(),
        "{}",
        agent.metrics().expect("metrics").text
    );
    let (sleep_text, big_text) = (
        "SELECT pg_sleep($1)",
        "SELECT g, repeat($1, $2) FROM generate_series($3, $4) g",
    );
    let stats = wait_for(Duration::from_secs(20), || {
        let stats = agent_statements(&agent, "postgres");
        let n = |text: &str| stats.get(text).map_or(0, |s| s.0);
        (n(sleep_text) >= 10 && n(big_text) >= 3 && n("SELECT $1") >= 3).then_some(stats)
    })
    .unwrap_or_else(|| panic!("{:?}", agent_statements(&agent, "postgres")));
    let insert = &stats["INSERT INTO shop_users VALUES ($1, $2)"];
    assert_eq!((insert.0, insert.1), (2, 1), "{stats:?}");
    let big = &stats[big_text];
    assert_eq!(big.0, 3, "{stats:?}");
    assert_eq!(stats["SELECT $1"].0, 3, "{stats:?}");
    let sleep = &stats[sleep_text];
    assert_eq!(sleep.0, 10, "{stats:?}");
    assert!(
        (sleep.2 - 0.05).abs() < 0.005,
        "pg_sleep(0.05)'s median: {} s",
        sleep.2
    );
    for text in [
        agent.metrics().expect("metrics").text,
        get(agent.addr, "/stats/requests").expect("stats").body,
        get(agent.addr, "/logs/recent").expect("logs").body,
        agent.log_text(),
    ] {
        assert!(!text.contains("alice.marker"), "a literal leaked: {text}");
    }
}

#[test]
fn a_hundred_thousand_distinct_statements_stay_bounded() {
    require_root();
    let (_pg, port, agent) = cluster(&[]);
    let pid = agent.pid().expect("agent pid");
    let rss_before = apm_e2e::rss_bytes(pid).expect("rss");
    // 100 000 statements, each its own (an alias no literal can hide),
    // one simple query each on one connection.
    let file = std::env::temp_dir().join(format!("apm-e2e-flood-{port}.sql"));
    let text: String = (0..100_000)
        .map(|i| format!("SELECT 1 AS c{i};\n"))
        .collect();
    std::fs::write(&file, text).expect("flood.sql");
    let out = databases::psql_command(port)
        .args(["-o", "/dev/null", "-f"])
        .arg(&file)
        .output()
        .expect("psql");
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(&file).ok();
    let selects = [
        ("db_system_name", "postgresql"),
        ("db_operation_name", "SELECT"),
        ("db_collection_name", ""),
        ("db_response_status_code", ""),
    ];
    let m = agent
        .wait_for_metrics(Duration::from_secs(60), |m| {
            m.value("apm_db_server_operation_duration_seconds_count", &selects)
                .is_some_and(|n| n >= 100_000.0)
        })
        .unwrap_or_else(|| panic!("{}", agent.metrics().expect("metrics").text));
    // Every statement counted, once: psql sends nothing else.
    assert_eq!(
        m.value("apm_db_server_operation_duration_seconds_count", &selects),
        Some(100_000.0)
    );
    // One series for all of them; 500 statements kept, the rest counted
    // as overflow.
    let series = m
        .matching("apm_db_server_operation_duration_seconds_count", &[])
        .count();
    assert!(series <= 2, "{series} series");
    assert_eq!(
        m.value(
            "apm_db_statement_overflow_total",
            &[("service_name", "postgres")]
        ),
        Some(99_500.0)
    );
    // /stats/requests is a snapshot published every 200 ms.
    let other = |s: &BTreeMap<String, (u64, u64, f64)>| s.get("(other statements)").map(|o| o.0);
    let stats = wait_for(Duration::from_secs(5), || {
        let s = agent_statements(&agent, "postgres");
        (other(&s) == Some(99_500)).then_some(s)
    })
    .unwrap_or_else(|| panic!("{:?}", other(&agent_statements(&agent, "postgres"))));
    assert!(stats.len() <= 50, "{} statements shown", stats.len());
    let rss_after = apm_e2e::rss_bytes(pid).expect("rss");
    let grown = rss_after.saturating_sub(rss_before);
    println!("agent RSS {rss_before} -> {rss_after} bytes");
    assert!(grown < 32 << 20, "the agent grew by {grown} bytes");
}

#[test]
fn pgbench_over_an_mtu_1500_link_losing_2_percent_each_way_is_exact() {
    require_root();
    let port = free_port().expect("port");
    let link = LinkNs::create("pg-lossy", &[port], 2).expect("link");
    let ns = Some(&link.ns);
    let _pg = databases::postgres_in(
        ns,
        port,
        "unused",
        "trust",
        &["shared_preload_libraries=pg_stat_statements"],
    );
    assert!(databases::psql_in(ns, port, &["CREATE EXTENSION pg_stat_statements"]).0);
    pgbench_in(ns, port, &["-i", "-s", "1", "-q"]);
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "postgres");
    assert!(databases::psql_in(ns, port, &["SELECT pg_stat_statements_reset()"]).0);
    // Batches of several segments each way (TPC-B over the extended
    // protocol), and results of ~100 KiB in 1448-byte segments.
    let done = pgbench_in(ns, port, &["-M", "extended", "-c", "2", "-t", "100", "-n"]);
    assert_eq!(done, 200);
    let big = "SELECT g, repeat('x', 40) FROM generate_series(1, 2000) g";
    assert!(databases::psql_in(ns, port, &[big, big, big]).0);
    let want = pg_calls_in(ns, port);
    assert_eq!(want.len(), 8, "{want:?}");
    let lost = link.check_loss().expect("loss");
    eprintln!("lossy link: {lost:?}");
    let delta = || {
        let now = agent_statements(&agent, "postgres");
        let mut got: BTreeMap<String, u64> = want
            .keys()
            .map(|q| (q.clone(), now.get(q).map_or(0, |s| s.0)))
            .collect();
        let big_text = "SELECT g, repeat($1, $2) FROM generate_series($3, $4) g";
        got.insert("big".into(), now.get(big_text).map_or(0, |s| s.0));
        got
    };
    let mut expected = want.clone();
    expected.insert("big".into(), 3);
    let settled = wait_for(Duration::from_secs(30), || {
        (delta() == expected).then_some(())
    });
    assert!(
        settled.is_some(),
        "the agent counted {:?}\nthe server {expected:?}\nlink {lost:?}",
        delta()
    );
    link.check_link(1000).expect("an MTU-1500 link");
}
