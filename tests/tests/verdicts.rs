//! The packet programs' protocol verdict, end to end: in the default
//! every-port mode, a real TLS listener and an SSH-like one (the server
//! speaks first) under load put no record in the ring, each connection is
//! counted under its verdict and each segment as not copied, and an HTTP
//! listener beside them stays exact.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::Duration,
};

use apm_e2e::{Agent, Server, free_port, python_client, require_root, wait_for};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// Connections per listener, and round trips per connection.
const CONNS: usize = 20;
const ROUNDS: usize = 50;
/// Bytes the client sends and the server answers per round trip.
const ASK: usize = 512;
const ANSWER: usize = 2048;
const BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n";

/// A CA and a certificate for 127.0.0.1 signed by it: (CA PEM, chain, key).
fn certificate() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (ca, cert, key) = apm_e2e::https::certificate().expect("certificate");
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
    (ca, chain, key)
}

/// Serves `CONNS` connections on `listener` with `serve`, one thread each.
fn serve_all(
    listener: TcpListener,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) -> std::thread::JoinHandle<()> {
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        let mut threads = Vec::new();
        for stream in listener.incoming().take(CONNS).flatten() {
            let serve = serve.clone();
            threads.push(std::thread::spawn(move || serve(stream)));
        }
        threads
            .into_iter()
            .for_each(|t| t.join().expect("server thread"));
    })
}

/// Round trips over `s`: read ASK bytes, answer ANSWER, until the client
/// closes.
fn echo(mut s: impl std::io::Read + std::io::Write) {
    let mut ask = [0u8; ASK];
    let answer = [0x5au8; ANSWER];
    while s.read_exact(&mut ask).is_ok() {
        if s.write_all(&answer).and_then(|()| s.flush()).is_err() {
            return;
        }
    }
}

fn ssh_like(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    if s.write_all(BANNER).is_err() {
        return;
    }
    let mut theirs = [0u8; BANNER.len()];
    if s.read_exact(&mut theirs).is_ok() {
        echo(s);
    }
}

fn tls(s: TcpStream, config: &Arc<rustls::ServerConfig>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(session) = rustls::ServerConnection::new(config.clone()) else {
        return;
    };
    echo(rustls::StreamOwned::new(session, s));
}

/// The client's side of the round trips.
fn ask_all(mut s: impl std::io::Read + std::io::Write) {
    let ask = [0xa5u8; ASK];
    let mut answer = [0u8; ANSWER];
    for _ in 0..ROUNDS {
        s.write_all(&ask).expect("ask");
        s.flush().expect("flush");
        s.read_exact(&mut answer).expect("answer");
    }
}

fn load(addr: SocketAddr, client_tls: Option<&Arc<rustls::ClientConfig>>) {
    for _ in 0..CONNS {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        match client_tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
                let session = rustls::ClientConnection::new(config.clone(), name).expect("TLS");
                ask_all(rustls::StreamOwned::new(session, tcp));
            }
            None => {
                let mut banner = [0u8; BANNER.len()];
                tcp.read_exact(&mut banner).expect("banner");
                tcp.write_all(BANNER).expect("banner");
                ask_all(tcp);
            }
        }
    }
}

fn delta(after: &apm_e2e::Metrics, before: &apm_e2e::Metrics, name: &str, verdict: &str) -> f64 {
    let v = |m: &apm_e2e::Metrics| m.value(name, &[("verdict", verdict)]).unwrap_or(0.0);
    v(after) - v(before)
}

#[test]
fn tls_and_server_first_listeners_put_nothing_in_the_ring() {
    require_root();
    let (ca, chain, key) = certificate();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let client_config = apm_e2e::https::client(&ca).expect("client config");

    let agent = Agent::start(&[]).expect("agent");
    let tls_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ssh_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (tls_addr, ssh_addr) = (
        tls_listener.local_addr().expect("addr"),
        ssh_listener.local_addr().expect("addr"),
    );
    let http_port = free_port().expect("port");
    let http = Server::python(http_port).expect("python3 http.server");
    // Every listener found and captured before the load starts.
    let monitored = |port: u16| format!("\"monitoring port\",\"port\":{port},");
    let found = wait_for(Duration::from_secs(20), || {
        let log = agent.log_text();
        [tls_addr.port(), ssh_addr.port(), http_port]
            .iter()
            .all(|&p| log.contains(&monitored(p)))
            .then_some(())
    });
    assert!(
        found.is_some(),
        "listeners not monitored: {}",
        agent.log_text()
    );

    let before = agent.metrics().expect("metrics");
    let config = Arc::new(server_config);
    let tls_server = serve_all(tls_listener, move |s| tls(s, &config));
    let ssh_server = serve_all(ssh_listener, ssh_like);
    load(tls_addr, Some(&client_config));
    load(ssh_addr, None);
    tls_server.join().expect("TLS server");
    ssh_server.join().expect("SSH-like server");
    // HTTP beside them, in the same mode, still paired exactly.
    let paths = vec!["/"; 20];
    let expected = python_client(None, "127.0.0.1", http_port, &paths).expect("client");

    // The kernel's counters reach /metrics at the next refresh (200 ms).
    std::thread::sleep(Duration::from_secs(1));
    let after = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics().ok()?;
        let conns = |v| delta(&m, &before, "apm_capture_connections_total", v);
        (conns("tls") >= CONNS as f64 && conns("server_first") >= CONNS as f64).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "verdicts never counted: {}",
            agent.metrics().expect("m").text
        )
    });
    let conns = |v| delta(&after, &before, "apm_capture_connections_total", v);
    let skipped = |v| delta(&after, &before, "apm_capture_skipped_segments_total", v);
    assert_eq!(conns("tls"), CONNS as f64);
    assert_eq!(conns("server_first"), CONNS as f64);
    assert_eq!(conns("other") + conns("http2") + conns("resp"), 0.0);
    // At least one segment each way per round trip, none of them copied.
    for v in ["tls", "server_first"] {
        assert!(
            skipped(v) >= (2 * CONNS * ROUNDS) as f64,
            "{v}: {} segments not copied",
            skipped(v)
        );
    }
    // What the ring carried meanwhile: the python server's 20 requests and
    // the scrapes of /metrics (in every-port mode the admin port is
    // captured too), a few records each; the 4 000 round trips, none.
    let records = after.value("apm_ringbuf_records_total", &[]).unwrap_or(0.0)
        - before
            .value("apm_ringbuf_records_total", &[])
            .unwrap_or(0.0);
    assert!(records < 200.0, "{records} records in the ring");
    let m = agent.wait_for_paired("python3", 20, Duration::from_secs(20));
    assert_eq!(m.route_counts("python3"), expected);
    // Its one keep-alive connection, and the scrapes'.
    assert!(conns("http") >= 1.0, "http connections: {}", conns("http"));
    eprintln!(
        "verdicts: tls {} conns / {} segments not copied, server_first {} / {}, ring records {records}",
        conns("tls"),
        skipped("tls"),
        conns("server_first"),
        skipped("server_first")
    );
    drop(http);
}

/// Redis inline commands (a load balancer's `PING\r\n` health check) start
/// with a word, not a RESP array: the kernel copies such connections and
/// the agent times them, on a Redis-protocol server nobody declared and
/// whose process name does not say Redis (a fork, a proxy, a copy).
#[test]
fn inline_redis_commands_on_an_undeclared_port_are_timed() {
    require_root();
    let agent = Agent::start(&[]).expect("agent");
    let port = free_port().expect("port");
    let _redis = apm_e2e::Redis::start_renamed(port, "kvstore");
    let found = wait_for(Duration::from_secs(20), || {
        agent
            .log_text()
            .contains(&format!("\"monitoring port\",\"port\":{port},"))
            .then_some(())
    });
    assert!(found.is_some(), "redis not monitored: {}", agent.log_text());
    const CHECKS: usize = 5;
    for _ in 0..CHECKS {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"PING\r\n").expect("inline PING");
        let mut reply = [0u8; 7];
        s.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply, b"+PONG\r\n");
    }
    let timed = wait_for(Duration::from_secs(15), || {
        let m = agent.metrics().ok()?;
        let n = m.value(
            "apm_db_server_operation_duration_seconds_count",
            &[("db_operation_name", "PING")],
        )?;
        (n >= CHECKS as f64).then_some(n)
    });
    assert_eq!(
        timed,
        Some(CHECKS as f64),
        "{}",
        agent.metrics().expect("metrics").text
    );
}
