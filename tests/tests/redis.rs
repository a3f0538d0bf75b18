//! Redis from the wire, end to end: a real redis-server driven by
//! redis-benchmark (with and without pipelining), whose own
//! `INFO commandstats` is the ground truth for the agent's per-command
//! counts; and a monitored client (this test process, through the redis
//! crate) whose own counts of what it sent are the ground truth for the
//! client side and its connection pools.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use apm_e2e::{Agent, Metrics, Redis, free_port, get, require_root, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// `INFO commandstats` as command → calls, with names as the agent labels
/// them (`cmdstat_config|get` → `CONFIG GET`).
fn commandstats(port: u16) -> BTreeMap<String, u64> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_uppercase().replace('|', " "), calls.parse().ok()?))
        })
        .collect()
}

/// Server-side operations per command, from the duration histogram.
fn server_counts(m: &Metrics, service: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in m.matching(
        "apm_db_server_operation_duration_seconds_count",
        &[("service_name", service), ("db_system_name", "redis")],
    ) {
        *out.entry(s.labels["db_operation_name"].clone())
            .or_default() += s.value as u64;
    }
    out
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[test]
fn server_side_counts_equal_redis_commandstats_with_and_without_pipelining() {
    require_root();
    let port = free_port().expect("port");
    let _redis = Redis::start(port);
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "redis-server");
    let before = commandstats(port);
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
    let after = commandstats(port);
    let mut expected = delta(&after, &before);
    // The agent also saw the INFO that read `after` (not in its own count).
    *expected.entry("INFO".into()).or_default() += 1;
    assert!(expected["SET"] >= 4000, "{expected:?}");

    let got = wait_for(WAIT, || {
        let m = agent.metrics().ok()?;
        let got = server_counts(&m, "redis-server");
        (got == expected).then_some(m)
    });
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

/// Client-side operations per command of `service` to the server at
/// 127.0.0.1:`port`, from the duration histogram.
fn client_counts(m: &Metrics, service: &str, addr: &str, port: u16) -> BTreeMap<String, u64> {
    let port = port.to_string();
    let mut out = BTreeMap::new();
    for s in m.matching(
        "db_client_operation_duration_seconds_count",
        &[
            ("service_name", service),
            ("db_system_name", "redis"),
            ("server_address", addr),
            ("server_port", &port),
        ],
    ) {
        *out.entry(s.labels["db_operation_name"].clone())
            .or_default() += s.value as u64;
    }
    out
}

/// This test process as the monitored service "shop" (it listens), with
/// the agent's Redis destination arguments `redis`.
fn shop(redis: &[&str]) -> (TcpListener, Agent) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let lport = listener.local_addr().expect("addr").port();
    let (port, name) = (lport.to_string(), format!("{lport}=shop"));
    let mut args = vec!["--port", &port, "--service-name", &name];
    args.extend_from_slice(redis);
    let agent = Agent::start(&args).expect("agent");
    agent.wait_for_service(lport, "shop");
    agent.wait_for_process("shop");
    (listener, agent)
}

/// Waits until shop's client-side counts to `addr:port` are `expected`;
/// panics with what the agent has otherwise.
fn wait_for_client_counts(
    agent: &Agent,
    addr: &str,
    port: u16,
    expected: &BTreeMap<String, u64>,
) -> Metrics {
    wait_for(WAIT, || {
        let m = agent.metrics().ok()?;
        (client_counts(&m, "shop", addr, port) == *expected).then_some(m)
    })
    .unwrap_or_else(|| {
        let m = agent.metrics().expect("metrics");
        panic!(
            "agent {:?}\nclient {expected:?}\n{}",
            client_counts(&m, "shop", addr, port),
            m.text
        )
    })
}

/// shop's active outbound connections to `addr:port`.
fn pool(agent: &Agent, addr: &str, port: u16) -> Option<f64> {
    agent.metrics().ok()?.value(
        "apm_outbound_connections_active",
        &[
            ("service_name", "shop"),
            ("server_address", addr),
            ("server_port", &port.to_string()),
        ],
    )
}

fn cache(m: &Metrics, service: &str, op: &str, result: &str) -> f64 {
    m.value(
        "apm_cache_operations_total",
        &[
            ("service_name", service),
            ("operation", op),
            ("result", result),
        ],
    )
    .unwrap_or(0.0)
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
    let stats: serde_json::Value =
        serde_json::from_str(&get(agent.addr, "/stats/requests").expect("stats").body)
            .expect("json");
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
            .contains("capturing client connections to this Redis server"),
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

#[test]
fn a_client_sending_resp_to_an_unlisted_port_is_recognised_and_nothing_else_is() {
    require_root();
    let rport = free_port().expect("port");
    let _redis = Redis::start(rport);
    // Nothing names this server: --redis-port keeps its default, 6379.
    let (listener, agent) = shop(&[]);

    // Two other conversations of the same process, to another port: one
    // where the client sends first but not RESP (an HTTP request), and one
    // where the server speaks first, with what reads like a RESP reply,
    // before the client sends a RESP command. Neither is Redis to watch.
    let other = TcpListener::bind("127.0.0.1:0").expect("listen");
    let oport = other.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let (mut http, _) = other.accept().expect("accept");
        http.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = http.read(&mut buf).expect("request");
        http.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("response");
        let (mut greeter, _) = other.accept().expect("accept");
        greeter.set_read_timeout(Some(WAIT)).expect("timeout");
        greeter.write_all(b"+OK\r\n").expect("greeting");
        let _ = greeter.read(&mut buf).expect("command");
        greeter.write_all(b"+PONG\r\n").expect("reply");
    });
    let mut buf = [0u8; 64];
    let mut http = TcpStream::connect(("127.0.0.1", oport)).expect("connect");
    http.set_read_timeout(Some(WAIT)).expect("timeout");
    http.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("request");
    assert!(http.read(&mut buf).expect("response") > 0);
    let mut greeted = TcpStream::connect(("127.0.0.1", oport)).expect("connect");
    greeted.set_read_timeout(Some(WAIT)).expect("timeout");
    assert!(greeted.read(&mut buf).expect("greeting") > 0);
    greeted.write_all(b"*1\r\n$4\r\nPING\r\n").expect("command");
    assert!(greeted.read(&mut buf).expect("reply") > 0);
    server.join().expect("server thread");

    // Redis through the crate, first command included.
    let client = redis::Client::open(format!("redis://127.0.0.1:{rport}/")).expect("client");
    let mut con = client.get_connection().expect("connect");
    for i in 0..3 {
        let _: () = redis::cmd("SET")
            .arg(format!("seenkey{i}"))
            .arg(i)
            .query(&mut con)
            .expect("SET");
    }
    for key in ["seenkey0", "seenkey1", "unseenkey"] {
        let _: Option<i64> = redis::cmd("GET").arg(key).query(&mut con).expect("GET");
    }
    let expected: BTreeMap<String, u64> = [("CLIENT SETINFO", 2), ("SET", 3), ("GET", 3)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let m = wait_for_client_counts(&agent, "127.0.0.1", rport, &expected);
    assert_eq!(cache(&m, "shop", "GET", "hit"), 2.0, "{}", m.text);
    assert_eq!(cache(&m, "shop", "GET", "miss"), 1.0, "{}", m.text);
    assert_eq!(
        client_counts(&m, "shop", "127.0.0.1", oport),
        BTreeMap::new(),
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("apm_db_operations_unpaired_total", "shop"),
        0.0,
        "{}",
        m.text
    );
    drop((con, http, greeted, listener));
}

#[test]
fn connections_opened_before_the_agent_are_timed_from_their_next_command() {
    require_root();
    let (listed, unlisted) = (free_port().expect("port"), free_port().expect("port"));
    let (_a, _b) = (Redis::start(listed), Redis::start(unlisted));
    let connect = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection())
            .expect("connect")
    };
    // Opened (and their handshakes done) before any agent runs.
    let (mut a, mut b) = (connect(listed), connect(unlisted));
    let run = |con: &mut redis::Connection, n: usize| {
        for i in 0..n {
            let _: () = redis::cmd("SET")
                .arg(format!("earlykey{i}"))
                .arg(i)
                .query(con)
                .expect("SET");
        }
        let _: Option<i64> = redis::cmd("GET").arg("earlykey0").query(con).expect("GET");
    };
    let counts =
        |n: u64| -> BTreeMap<String, u64> { [("SET".to_owned(), n), ("GET".to_owned(), 1)].into() };
    let watching = |agent: &Agent| {
        wait_for(WAIT, || {
            let log = agent.log_text();
            log.contains("watching connections opened before")
                .then_some(log)
        })
        .unwrap_or_else(|| panic!("no watch logged: {}", agent.log_text()))
    };

    // Without recognition, only the connection to a listed port.
    {
        let (listener, agent) = shop(&["--redis-port", &listed.to_string(), "--no-redis-detect"]);
        assert!(
            watching(&agent).contains("\"connections\":1"),
            "{}",
            agent.log_text()
        );
        run(&mut b, 2);
        run(&mut a, 3);
        let m = wait_for_client_counts(&agent, "127.0.0.1", listed, &counts(3));
        assert_eq!(
            client_counts(&m, "shop", "127.0.0.1", unlisted),
            BTreeMap::new(),
            "{}",
            m.text
        );
        drop(listener);
    }
    // With it (the default), both, though neither port is listed now.
    let (listener, agent) = shop(&[]);
    // Both, and whatever else this process holds open (the harness's
    // connections to the agent's API among them).
    watching(&agent);
    run(&mut a, 4);
    run(&mut b, 5);
    wait_for_client_counts(&agent, "127.0.0.1", listed, &counts(4));
    let m = wait_for_client_counts(&agent, "127.0.0.1", unlisted, &counts(5));
    assert_eq!(
        m.sum("apm_db_operations_unpaired_total", "shop"),
        0.0,
        "{}",
        m.text
    );
    drop((a, b, listener));
}

/// Whether the kernel's WATCHED_PORTS flag of `port` is set (bpftool).
fn watched_port(port: u16) -> bool {
    let key = u32::from(port).to_le_bytes().map(|b| b.to_string());
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "name", "WATCHED_PORTS", "key"])
        .args(key)
        .output()
        .expect("bpftool (installed by cargo xtask test)");
    assert!(out.status.success(), "bpftool: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .any(|b| b != "0x00")
}

#[test]
fn ports_no_connection_uses_stop_being_watched_and_open_ones_stay() {
    require_root();
    let rport = free_port().expect("port");
    let _redis = Redis::start(rport);
    let (listener, agent) = shop(&["--watched-ports-prune-interval", "1s"]);
    // An HTTP exchange with another port: watched until its first bytes,
    // then nothing on that port is watched any more.
    let other = TcpListener::bind("127.0.0.1:0").expect("listen");
    let oport = other.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut http, _) = other.accept().expect("accept");
        http.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = http.read(&mut [0u8; 256]).expect("request");
        http.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("response");
    });
    let mut http = TcpStream::connect(("127.0.0.1", oport)).expect("connect");
    assert!(watched_port(oport), "a new connection's port is watched");
    http.set_read_timeout(Some(WAIT)).expect("timeout");
    http.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("request");
    assert!(http.read(&mut [0u8; 64]).expect("response") > 0);
    server.join().expect("server thread");
    drop(http);
    // A Redis connection that stays open across prunes is still timed.
    let client = redis::Client::open(format!("redis://127.0.0.1:{rport}/")).expect("client");
    let mut con = client.get_connection().expect("connect");
    let set = |con: &mut redis::Connection, n: u64| {
        for i in 0..n {
            let _: () = redis::cmd("SET").arg("k").arg(i).query(con).expect("SET");
        }
    };
    set(&mut con, 2);
    let expected = |sets: u64| -> BTreeMap<String, u64> {
        [("CLIENT SETINFO", 2), ("SET", sets)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    };
    wait_for_client_counts(&agent, "127.0.0.1", rport, &expected(2));
    assert!(
        wait_for(WAIT, || (!watched_port(oport)).then_some(())).is_some(),
        "port {oport} is still watched after its connection closed"
    );
    // Two more prune intervals: the open connection's port stays.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        watched_port(rport),
        "an open Redis connection's port was pruned"
    );
    set(&mut con, 3);
    wait_for_client_counts(&agent, "127.0.0.1", rport, &expected(5));
    drop(con);
    assert!(
        wait_for(WAIT, || (!watched_port(rport)).then_some(())).is_some(),
        "port {rport} is still watched after its connection closed"
    );
    drop(listener);
}
