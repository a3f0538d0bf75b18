//! The paired bench for PostgreSQL (see `paired`): three clusters on CPU
//! 0 (initdb'd here, pg_stat_statements preloaded), the agent timing the
//! statements of the first only, one pgbench per cluster on CPU 1 running
//! the select-only script over prepared statements (`-S -M prepared`,
//! four connections), all at once. Each server's own count of the
//! statements it ran (pg_stat_statements' calls, updated as each
//! statement ends) is read every second through one psql session per
//! server.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    paired::{Clients, LOAD_SECS, PROGRAMS, Paired, Subject, sample, six_ports, sql_timed},
    tools::{RunningAgent, cpu_seconds_of, pinned},
};

/// The statements pgbench runs, as the agent and pg_stat_statements name
/// their table.
const TABLE: &str = "pgbench_accounts";

/// The newest PostgreSQL's program `name`.
fn bin(name: &str) -> Result<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL (apt install postgresql-15)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .max()
        .map(|b| b.join(name))
        .context("no initdb under /usr/lib/postgresql")
}

/// `program` as the postgres user (the server refuses root).
fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

/// A cluster listening on 127.0.0.1:`port`, on CPU 0, its backends too.
struct Cluster {
    server: Child,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we have not reaped.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGINT) };
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cluster(work: &Path, port: u16) -> Result<Cluster> {
    let dir = work.join(format!("pg-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status()?;
    ensure!(status.success(), "chown {}", dir.display());
    let data = dir.join("data");
    let status = as_postgres(&bin("initdb")?)
        .arg("-D")
        .arg(&data)
        .args(["-U", "apm", "--auth=trust"])
        .stdout(Stdio::null())
        .status()
        .context("initdb")?;
    ensure!(status.success(), "initdb failed");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "setpriv"])
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(bin("postgres")?)
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", "shared_preload_libraries=pg_stat_statements"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = cmd.spawn().context("starting postgres")?;
    let cluster = Cluster { server, dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let psql = |sql: &str| -> Result<()> {
        let status = Command::new(bin("psql")?)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "apm"])
            .args(["-d", "postgres", "-X", "-q", "-c", sql])
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "psql {sql:?} failed");
        Ok(())
    };
    psql("CREATE EXTENSION pg_stat_statements")?;
    let status = Command::new(bin("pgbench")?)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "apm"])
        .args(["-i", "-s", "1", "-q", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "pgbench -i failed");
    Ok(cluster)
}

/// A psql session that reads one server's count of pgbench's statements.
struct Counter {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Counter {
    fn open(port: u16) -> Result<Self> {
        let mut child = Command::new(bin("psql")?)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "apm"])
            .args(["-d", "postgres", "-X", "-q", "-A", "-t"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting psql")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn read(&mut self) -> Result<f64> {
        writeln!(
            self.stdin,
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%{TABLE}%' AND query NOT LIKE '%pg_stat_statements%';"
        )?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("psql ended");
        }
        line.trim()
            .parse()
            .with_context(|| format!("psql printed {line:?}"))
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pg_paired(agent: &Path, work: &Path, extra: &[&str]) -> Result<Paired> {
    let ports = six_ports()?;
    let served = [ports[0], ports[1], ports[2]];
    let _clusters = [
        cluster(work, served[0])?,
        cluster(work, served[1])?,
        cluster(work, served[2])?,
    ];
    let mut counters = [
        Counter::open(served[0])?,
        Counter::open(served[1])?,
        Counter::open(served[2])?,
    ];
    let pgbench = bin("pgbench")?;
    sample(Subject {
        counters: &mut |i| counters[i].read(),
        agent: &mut |k| RunningAgent::start(agent, served[k], extra, false),
        timed: &|admin| sql_timed(admin, TABLE),
        server_cpu: &mut || cpu_seconds_of("postgres"),
        clients: &mut || {
            let clients = served.iter().map(|port| {
                pinned(1, &pgbench.to_string_lossy())
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "apm"])
                    .args(["-S", "-M", "prepared", "-n", "-c", "4", "-j", "1"])
                    .args(["-T", &LOAD_SECS.to_string(), "postgres"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting pgbench")
            });
            Ok(Clients(clients.collect::<Result<_>>()?))
        },
        what: "postgres",
        programs: &PROGRAMS,
    })
}
