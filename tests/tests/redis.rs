//! Redis from the wire, end to end: a real redis-server driven by
//! redis-benchmark (with and without pipelining), whose own
//! `INFO commandstats` is the ground truth for the agent's per-command
//! counts; and a monitored client (this test process, through the redis
//! crate) whose own counts of what it sent are the ground truth for the
//! client side and its connection pools.

use std::{collections::BTreeMap, process::Command, time::Duration};

use apm_e2e::{
    Agent, Redis, cache, client_counts, commandstats, commandstats_delta, free_port, get, pool,
    require_root, server_counts, shop, wait_for, wait_for_client_counts,
};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn server_side_counts_equal_redis_commandstats_with_and_without_pipelining() {
    require_root();
    let port = free_port().expect("port");
    let _redis = Redis::start(port);
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "redis-server");
    let before = commandstats(port, false);
    for pipeline in ["1", "16"] {
        // A fixed number of requests per test: bounded in count; the
        // LRANGE tests' replies are longer than the capture.
        let out = Command::new("timeout")
            .args(["120", "redis-benchmark", "-p", &port.to_string()])
            .args(["-n", "2000", "-c", "4", "-P", pipeline, "-q"])
            .args([
                "-t",
                "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange,mset",
            ])
            .output()
            .expect("redis-benchmark");
        assert!(out.status.success(), "redis-benchmark: {out:?}");
    }
    let after = commandstats(port, false);
    let mut expected = commandstats_delta(&after, &before);
    // The agent also saw the INFO that read `after` (not in its own count).
    *expected.entry("INFO".into()).or_default() += 1;
    assert!(expected["SET"] >= 4000, "{expected:?}");

    let got = agent.wait_for_metrics(WAIT, |m| server_counts(m, "redis-server") == expected);
    let m = match got {
        Some(m) => m,
        None => {
            let m = agent.metrics().expect("metrics");
            panic!(
                "agent {:?}\nredis {expected:?}\n{}",
                server_counts(&m, "redis-server"),
                m.text
            );
        }
    };
    assert_eq!(
        m.sum("apm_db_operations_unpaired_total", "redis-server"),
        0.0,
        "{}",
        m.text
    );
    // Every GET found its key (redis-benchmark SETs it first).
    let gets = expected["GET"] as f64;
    let hits = m
        .value(
            "apm_cache_operations_total",
            &[
                ("service_name", "redis-server"),
                ("operation", "GET"),
                ("result", "hit"),
            ],
        )
        .unwrap_or(0.0);
    assert_eq!(hits, gets, "{}", m.text);
}

#[test]
fn a_monitored_clients_commands_hits_misses_and_pool_match_its_own_counts() {
    require_root();
    let rport = free_port().expect("port");
    let _redis = Redis::start(rport);
    let (listener, agent) = shop(&["--redis-port", &rport.to_string()]);

    let client = redis::Client::open(format!("redis://127.0.0.1:{rport}/")).expect("client");
    let mut con = client.get_connection().expect("connect");
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = |op: &str, n: u64| *expected.entry(op.to_owned()).or_default() += n;
    // The crate's handshake: CLIENT SETINFO LIB-NAME and LIB-VER, which
    // Redis 7.0 answers with errors (unknown subcommand) that it ignores.
    count("CLIENT SETINFO", 2);
    for i in 0..5 {
        let _: () = redis::cmd("SET")
            .arg(format!("cachekey{i}"))
            .arg("v")
            .query(&mut con)
            .expect("SET");
        let hit: Option<String> = redis::cmd("GET")
            .arg(format!("cachekey{i}"))
            .query(&mut con)
            .expect("GET");
        assert!(hit.is_some());
    }
    count("SET", 5);
    count("GET", 5);
    for i in 0..3 {
        let miss: Option<String> = redis::cmd("GET")
            .arg(format!("absentkey{i}"))
            .query(&mut con)
            .expect("GET");
        assert!(miss.is_none());
    }
    count("GET", 3);
    // MULTI, GET (hit), GET (miss), SET, EXEC in one write.
    let (a, b): (Option<String>, Option<String>) = redis::pipe()
        .atomic()
        .get("cachekey0")
        .get("absentkey-tx")
        .set("t", "1")
        .ignore()
        .query(&mut con)
        .expect("MULTI/EXEC");
    assert_eq!((a.is_some(), b.is_none()), (true, true));
    count("MULTI", 1);
    count("GET", 2);
    count("SET", 1);
    count("EXEC", 1);
    // A pipeline of 100 commands in one write: 50 SETs, 50 GETs (hits).
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.set(format!("pipekey{i}"), i).ignore();
    }
    for i in 0..50 {
        pipe.get(format!("pipekey{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut con).expect("pipeline");
    assert_eq!(got.len(), 50);
    count("SET", 50);
    count("GET", 50);

    let m = wait_for_client_counts(&agent, "127.0.0.1", rport, &expected);
    assert_eq!(cache(&m, "shop", "GET", "hit"), (5 + 1 + 50) as f64);
    assert_eq!(cache(&m, "shop", "GET", "miss"), (3 + 1) as f64);
    assert_eq!(cache(&m, "shop", "SET", "ok"), (5 + 1 + 50) as f64);
    assert_eq!(cache(&m, "shop", "CLIENT SETINFO", "error"), 2.0);
    assert_eq!(
        m.sum("apm_db_operations_unpaired_total", "shop"),
        0.0,
        "{}",
        m.text
    );
    // /stats/requests and the dashboard's feed show the same, and no key
    // or value the client sent appears anywhere.
    let stats = agent.stats_requests().expect("stats");
    let get_row = stats["databases"]["shop"]
        .as_array()
        .expect("shop's commands")
        .iter()
        .find(|c| c["operation"] == "GET")
        .cloned()
        .expect("GET");
    assert_eq!(
        (get_row["hits"].as_u64(), get_row["misses"].as_u64()),
        (Some(56), Some(4))
    );
    // The page lists a service once its first 2 s point exists.
    let feed = wait_for(WAIT, || {
        let body = get(agent.addr, "/api/dashboard?service=shop").ok()?.body;
        body.contains("\"operation\":\"GET\"").then_some(body)
    })
    .expect("the dashboard feed shows shop's commands");
    for text in [m.text.clone(), stats.to_string(), feed, agent.log_text()] {
        for secret in ["cachekey", "absentkey", "pipekey"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    drop(con);

    // The pool: 7 connections held open, then closed.
    let pool = |agent: &Agent| pool(agent, "127.0.0.1", rport);
    let held: Vec<redis::Connection> = (0..7)
        .map(|_| client.get_connection().expect("connect"))
        .collect();
    let seven = wait_for(WAIT, || (pool(&agent) == Some(7.0)).then_some(()));
    assert!(seven.is_some(), "pool: {:?}", pool(&agent));
    drop(held);
    let zero = wait_for(WAIT, || (pool(&agent) == Some(0.0)).then_some(()));
    assert!(zero.is_some(), "pool: {:?}", pool(&agent));
    drop(listener);
}

#[test]
fn a_redis_addr_times_that_server_and_not_another_host_on_its_port() {
    require_root();
    let rport = free_port().expect("port");
    let (_a, _b) = (
        Redis::start_at("127.0.0.1", rport),
        Redis::start_at("127.0.0.2", rport),
    );
    // Without recognition, which would find the other server's RESP too.
    let (listener, agent) = shop(&[
        "--redis-addr",
        &format!("127.0.0.1:{rport}"),
        "--no-redis-detect",
    ]);

    let connect = |host: &str| {
        redis::Client::open(format!("redis://{host}:{rport}/"))
            .and_then(|c| c.get_connection())
            .expect("connect")
    };
    let (mut a, mut b) = (connect("127.0.0.1"), connect("127.0.0.2"));
    let run = |con: &mut redis::Connection, cmd: &str, n: usize| {
        for i in 0..n {
            let _: Option<String> = redis::cmd(cmd)
                .arg(format!("addrkey{i}"))
                .arg("v")
                .query(con)
                .expect(cmd);
        }
    };
    // 127.0.0.2's commands go out between 127.0.0.1's: once the agent
    // has all of the latter, it has read past the former.
    run(&mut a, "SET", 4);
    run(&mut b, "SET", 6);
    run(&mut a, "APPEND", 3);
    let expected: BTreeMap<String, u64> = [("CLIENT SETINFO", 2), ("SET", 4), ("APPEND", 3)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let m = wait_for_client_counts(&agent, "127.0.0.1", rport, &expected);
    assert_eq!(
        client_counts(&m, "shop", "127.0.0.2", rport),
        BTreeMap::new(),
        "{}",
        m.text
    );
    assert!(
        agent
            .log_text()
            .contains("capturing client connections to this database server"),
        "{}",
        agent.log_text()
    );
    // Pools count every destination, captured or not.
    let pool = |addr: &str| pool(&agent, addr, rport);
    let both = wait_for(WAIT, || {
        (pool("127.0.0.1") == Some(1.0) && pool("127.0.0.2") == Some(1.0)).then_some(())
    });
    assert!(
        both.is_some(),
        "pools: {:?} {:?}",
        pool("127.0.0.1"),
        pool("127.0.0.2")
    );
    drop((a, b, listener));
}
