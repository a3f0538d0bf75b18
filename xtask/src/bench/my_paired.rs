//! The paired bench for MariaDB (see `paired`): three servers on CPU 0
//! (installed here, a table of 1000 rows each), the agent timing the
//! statements of the first only, one mariadb-slap per server on CPU 1
//! running a point SELECT over the text protocol (four connections), all
//! at once. Each server's own count of the SELECTs it ran (`Com_select`)
//! is read every second through one mariadb session per server, over
//! its Unix socket (which the agent does not see).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    paired::{Clients, PROGRAMS, Paired, Subject, sample, six_ports, sql_timed},
    tools::{RunningAgent, cpu_seconds_of, pinned},
};

/// The table the load reads, as the agent names it.
const TABLE: &str = "kv";
const QUERY: &str = "SELECT v FROM kv WHERE k = 42";

/// A server listening on 127.0.0.1:`port`, on CPU 0, removed when dropped.
struct Server {
    server: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we have not reaped.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server(work: &Path, port: u16) -> Result<Server> {
    let dir = work.join(format!("my-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rows: Vec<String> = (0..1000).map(|k| format!("({k}, 'value-{k}')")).collect();
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        format!(
            "CREATE USER IF NOT EXISTS 'bench'@'127.0.0.1' IDENTIFIED BY 'bench';\n\
             CREATE DATABASE IF NOT EXISTS shop;\n\
             GRANT ALL ON shop.* TO 'bench'@'127.0.0.1';\n\
             CREATE TABLE IF NOT EXISTS shop.kv (k INT PRIMARY KEY, v VARCHAR(64));\n\
             INSERT IGNORE INTO shop.kv VALUES {};\n",
            rows.join(", ")
        ),
    )?;
    let data = dir.join("data");
    let status = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--user=root",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("mariadb-install-db (apt install mariadb-server-core)")?;
    ensure!(status.success(), "mariadb-install-db failed");
    let server = pinned(0, "mariadbd")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--init-file={}", init.display()))
        .args([
            "--user=root",
            &format!("--port={port}"),
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--performance-schema=OFF",
            "--innodb-buffer-pool-size=32M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mariadbd")?;
    let server = Server { server, dir };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("mariadbd on {port} did not listen")
}

/// A mariadb session over a server's socket that reads its `Com_select`.
struct Counter {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Counter {
    fn open(work: &Path, port: u16) -> Result<Self> {
        let socket = work.join(format!("my-{port}")).join("sock");
        let mut child = Command::new("mariadb")
            .arg(format!("--socket={}", socket.display()))
            .args([
                "--user=root",
                "--batch",
                "--skip-column-names",
                "--unbuffered",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting mariadb")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn read(&mut self) -> Result<f64> {
        writeln!(self.stdin, "SHOW GLOBAL STATUS LIKE 'Com_select';")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("mariadb ended");
        }
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("mariadb printed {line:?}"))
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn my_paired(agent: &Path, work: &Path, extra: &[&str]) -> Result<Paired> {
    let ports = six_ports()?;
    let served = [ports[0], ports[1], ports[2]];
    let _servers = [
        server(work, served[0])?,
        server(work, served[1])?,
        server(work, served[2])?,
    ];
    // The init file runs once the server listens: wait for its rows.
    std::thread::sleep(Duration::from_secs(1));
    let mut counters = [
        Counter::open(work, served[0])?,
        Counter::open(work, served[1])?,
        Counter::open(work, served[2])?,
    ];
    sample(Subject {
        counters: &mut |i| counters[i].read(),
        // mariadbd gets the deep capture by its name.
        agent: &mut |k| RunningAgent::start(agent, served[k], extra, false),
        timed: &|admin| sql_timed(admin, TABLE),
        server_cpu: &mut || cpu_seconds_of("mariadbd"),
        clients: &mut || {
            let clients = served.iter().map(|port| {
                pinned(1, "mariadb-slap")
                    .args(["-h", "127.0.0.1", "-P", &port.to_string()])
                    .args([
                        "-u",
                        "bench",
                        "-pbench",
                        "--create-schema=shop",
                        "--no-drop",
                    ])
                    .args(["--concurrency=4", "--iterations=1"])
                    .args(["--number-of-queries=400000000", "--query", QUERY])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting mariadb-slap (apt install mariadb-client)")
            });
            Ok(Clients(clients.collect::<Result<_>>()?))
        },
        what: "mariadb",
        programs: &PROGRAMS,
    })
}
