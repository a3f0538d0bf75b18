//! Redis clients found without being listed, end to end: a monitored
//! client (this test process) whose connection to a port nothing names is
//! recognised from its first RESP command, connections opened before the
//! agent, and the watched ports given back once nothing uses them. The
//! client's own counts are the ground truth.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use apm_e2e::{
    Agent, Redis, cache, client_counts, free_port, pool, require_root, shop, wait_for,
    wait_for_client_counts,
};

const WAIT: Duration = Duration::from_secs(20);

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
    // The HTTP request is a call of shop's, timed as its client.
    let oport = oport.to_string();
    let calls = |m: &apm_e2e::Metrics| {
        m.value(
            "http_client_request_duration_seconds_count",
            &[
                ("service_name", "shop"),
                ("http_request_method", "GET"),
                ("http_response_status_code", "204"),
                ("server_address", "127.0.0.1"),
                ("server_port", &oport),
            ],
        )
    };
    let m = agent
        .wait_for_metrics(WAIT, |m| calls(m).is_some())
        .unwrap_or_else(|| agent.metrics().expect("metrics"));
    assert_eq!(calls(&m), Some(1.0), "{}", m.text);
    assert_eq!(
        m.sum("apm_http_client_requests_unpaired_total", "shop"),
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
    // shop's active connections to each server.
    let now = |agent: &Agent| {
        (
            pool(agent, "127.0.0.1", listed),
            pool(agent, "127.0.0.1", unlisted),
        )
    };
    // The same once both are counted (a refresh after the watch).
    let pools = |agent: &Agent| {
        wait_for(WAIT, || {
            let (a, b) = now(agent);
            (a.is_some() && b.is_some()).then_some((a, b))
        })
        .unwrap_or_else(|| now(agent))
    };
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
        // Counted in the pools whether timed or not: one connection each.
        assert_eq!(pools(&agent), (Some(1.0), Some(1.0)));
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
    // With it (the default), both, though neither port is listed now;
    // their ports stay watched across prunes while they are open.
    let (listener, agent) = shop(&["--watched-ports-prune-interval", "1s"]);
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
    assert_eq!(pools(&agent), (Some(1.0), Some(1.0)));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        watched_port(listed) && watched_port(unlisted),
        "an open connection's port was pruned"
    );
    run(&mut a, 2);
    wait_for_client_counts(
        &agent,
        "127.0.0.1",
        listed,
        &[("SET".to_owned(), 6), ("GET".to_owned(), 2)].into(),
    );
    // Closed: no longer in the pool (its series goes with it), and its
    // port no longer watched; the other one's still is.
    drop(a);
    let closed = wait_for(WAIT, || {
        let (a, b) = now(&agent);
        (a.unwrap_or(0.0) == 0.0 && b == Some(1.0)).then_some(())
    });
    assert!(closed.is_some(), "pools after a close: {:?}", now(&agent));
    assert!(
        wait_for(WAIT, || (!watched_port(listed)).then_some(())).is_some(),
        "port {listed} is still watched after its connection closed"
    );
    assert!(
        watched_port(unlisted),
        "an open connection's port was pruned"
    );
    drop((b, listener));
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
