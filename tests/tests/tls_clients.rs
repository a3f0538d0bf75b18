//! TLS client connections (`--capture-tls`): a monitored Python service
//! calling redis-server over TLS with redis-py (Python's ssl module on a
//! socket BIO), or with redis.asyncio (memory BIOs: the object is tied to
//! its socket as its first command is sent). Its connect() ties the
//! socket to the Redis server, so the plaintext its SSL calls move is
//! timed as its client-side commands: per command exactly what the
//! client sent and what INFO commandstats counted.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use apm_e2e::{
    Agent, Redis, commandstats, commandstats_delta, free_port,
    process::stop,
    prod::py_app_bin,
    require_root, shop_args,
    tls::{agent_drops, certified, drops, wait_probed},
    wait_for_client_counts,
};

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers");

#[test]
fn a_python_client_over_tls_is_timed_per_command_with_packets() {
    python_client_over_tls("packets", false);
}

#[test]
fn a_python_client_over_tls_is_timed_per_command_with_syscalls() {
    python_client_over_tls("syscalls", false);
}

#[test]
fn an_asyncio_client_over_tls_is_timed_per_command_from_its_first() {
    python_client_over_tls("packets", true);
}

fn python_client_over_tls(capture: &str, asyncio: bool) {
    require_root();
    let rport = free_port().expect("port");
    let (_dir, cert, key) = certified("tls-redis-client", rport);
    let _redis = Redis::with_tls(rport, &cert, &key);
    let lport = free_port().expect("port");
    let mut child = Command::new(py_app_bin().join("python"))
        .arg(Path::new(SERVERS).join("redis_tls_client.py"))
        .args([lport.to_string(), rport.to_string()])
        .args(asyncio.then_some("asyncio"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with redis-py (installed by cargo xtask test)");
    let mut input: ChildStdin = child.stdin.take().expect("stdin");
    let mut output = BufReader::new(child.stdout.take().expect("stdout"));
    assert_eq!(line(&mut output), "ready");

    let (lport_s, rport_s) = (lport.to_string(), rport.to_string());
    let mut args = shop_args(&lport_s);
    let more = [
        "--capture-tls",
        "--capture",
        capture,
        "--redis-port",
        &rport_s,
    ];
    args.extend(more.map(str::to_owned));
    let agent = Agent::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).expect("agent");
    agent.wait_for_service(lport, "shop");
    agent.wait_for_process("shop");
    wait_probed(&agent, "libssl");

    let before = commandstats(rport, true);
    writeln!(input, "go 20").expect("go");
    let sent: BTreeMap<String, u64> = serde_json::from_str(&line(&mut output)).expect("counts");
    let after = commandstats(rport, true);
    // The server's own counts, less the INFO calls that read them.
    let mut served = commandstats_delta(&after, &before);
    served.remove("INFO");
    assert_eq!(
        served, sent,
        "harness: redis served other than the client sent"
    );
    wait_for_client_counts(&agent, "127.0.0.1", rport, &sent);
    assert_eq!(drops(&agent, "tls_unlinked"), Some(0.0), "{capture}");
    assert_eq!(agent_drops(&agent, "tls_untied"), Some(0.0), "{capture}");
    drop(input);
    stop(&mut child, libc::SIGTERM);
}

fn line(output: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    output.read_line(&mut line).expect("the client's output");
    line.trim().to_owned()
}
