//! The paired bench for Redis (see `paired`): three redis-servers on CPU
//! 0, the agent timing the commands of the first only, one looping
//! redis-benchmark GET client per server on CPU 1, all at once; the
//! servers' own `total_commands_processed` read every second. Without
//! pipelining and with `-P 16`, where every command of a stream of about
//! a million commands a second is captured.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::load::cpu_seconds;

use super::{
    paired::{Clients, PROGRAMS, Paired, Subject, sample, six_ports},
    redis::server,
    tools::{RunningAgent, pinned},
};

const CLIENTS: u32 = 32;

/// GETs redis-server on `port` has processed so far (INFO commandstats).
fn gets(port: u16) -> Result<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"INFO commandstats\r\n")?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    // A bulk string: "$<len>\r\n", the text, "\r\n".
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("redis on {port} closed before its INFO reply ended");
        }
        text.extend_from_slice(&buf[..n]);
        let t = String::from_utf8_lossy(&text);
        if let Some((head, rest)) = t.split_once("\r\n")
            && let Some(len) = head.strip_prefix('$').and_then(|l| l.parse::<usize>().ok())
            && rest.len() >= len
        {
            // "cmdstat_get:calls=N,usec=…", absent before the first GET.
            return Ok(rest
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
                .and_then(|v| v.split(',').next()?.parse().ok())
                .unwrap_or(0.0));
        }
    }
}

/// GETs the agent timed.
fn timed(admin: u16) -> Result<f64> {
    crate::load::metric_sum(
        admin,
        "apm_db_server_operation_duration_seconds_count{db_operation_name=\"GET\"",
    )
}

pub fn redis_paired(agent: &Path, pipeline: u32, extra: &[&str]) -> Result<Paired> {
    let ports = six_ports()?;
    let served = [ports[0], ports[1], ports[2]];
    let _servers = [server(served[0])?, server(served[1])?, server(served[2])?];
    std::thread::sleep(Duration::from_millis(500));
    let pids = _servers.each_ref().map(|s| s.pid());
    let what = format!("redis -P {pipeline}");
    sample(Subject {
        counters: &mut |i| gets(served[i]),
        agent: &mut |k| {
            let port = served[k].to_string();
            let args: Vec<&str> = ["--redis-port", &port]
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            RunningAgent::start(agent, served[k], &args, false)
        },
        timed: &timed,
        server_cpu: &mut || pids.iter().map(|&p| cpu_seconds(p)).sum(),
        clients: &mut || {
            let clients = served.iter().map(|port| {
                pinned(1, "redis-benchmark")
                    .args(["-p", &port.to_string(), "-c", &CLIENTS.to_string()])
                    .args(["-n", "100000000", "-P", &pipeline.to_string()])
                    .args(["-t", "get", "-q", "-l"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting redis-benchmark")
            });
            Ok(Clients(clients.collect::<Result<_>>()?))
        },
        what: &what,
        programs: &PROGRAMS,
    })
}
