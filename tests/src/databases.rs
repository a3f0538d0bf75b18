//! Database servers the tests start: Debian's PostgreSQL and MariaDB,
//! each a throwaway instance on loopback, removed when dropped.

use std::{
    collections::BTreeMap,
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub use crate::mysql_client::*;
use crate::{NetNs, wait_for};

/// A database server started here: listening on 127.0.0.1:`port`, stopped
/// with `signal` (its fast, clean shutdown), its directory removed after.
pub struct Server {
    child: Option<Child>,
    dir: PathBuf,
    signal: i32,
}

impl Server {
    /// Spawns `cmd` and waits for the port to accept connections (in
    /// `ns`, or the test's own namespace).
    pub fn spawn_in(
        ns: Option<&NetNs>,
        mut cmd: Command,
        port: u16,
        dir: PathBuf,
        signal: i32,
    ) -> Self {
        let name = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let listening = || TcpStream::connect(("127.0.0.1", port)).is_ok();
        let up = wait_for(Duration::from_secs(30), || {
            match ns {
                Some(ns) => ns.run(listening),
                None => listening(),
            }
            .then_some(())
        });
        assert!(up.is_some(), "{name} did not start");
        Self {
            child: Some(child),
            dir,
            signal,
        }
    }

    /// [`Server::spawn_in`] the test's own namespace.
    pub fn spawn(cmd: Command, port: u16, dir: PathBuf, signal: i32) -> Self {
        Self::spawn_in(None, cmd, port, dir, signal)
    }

    /// Shuts the server down and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with the pid of a child we have not reaped.
            unsafe { libc::kill(child.id() as i32, self.signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL's program `name` (initdb, postgres, pgbench).
pub fn postgres_bin(name: &str) -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL (installed by cargo xtask test)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .max()
        .expect("an initdb under /usr/lib/postgresql")
        .join(name)
}

/// A throwaway PostgreSQL cluster on 127.0.0.1:`port`, owned by the
/// `postgres` user (the server refuses to run as root): superuser `apm`
/// with `password`, TCP clients authenticated by `host_auth` (`trust`,
/// `scram-sha-256`), and `settings` as `-c name=value`.
pub fn postgres(port: u16, password: &str, host_auth: &str, settings: &[&str]) -> Server {
    postgres_in(None, port, password, host_auth, settings)
}

/// [`postgres`], listening in network namespace `ns`.
pub fn postgres_in(
    ns: Option<&NetNs>,
    port: u16,
    password: &str,
    host_auth: &str,
    settings: &[&str],
) -> Server {
    let dir = std::env::temp_dir().join(format!("apm-e2e-pg-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, password).expect("pwfile");
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status()
        .expect("chown");
    assert!(chown.success());
    let data = dir.join("data");
    let initdb = as_postgres(postgres_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "apm",
            &format!("--auth-host={host_auth}"),
            "--auth-local=trust",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdout(Stdio::null())
        .status()
        .expect("initdb");
    assert!(initdb.success(), "initdb failed");
    let mut cmd = as_postgres_in(ns, postgres_bin("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
    for setting in settings {
        cmd.args(["-c", setting]);
    }
    // Fast shutdown.
    Server::spawn_in(ns, cmd, port, dir, libc::SIGINT)
}

/// `program` run as the postgres user (setpriv execs, so the child is the
/// server itself).
pub fn as_postgres(program: PathBuf) -> Command {
    as_postgres_in(None, program)
}

/// [`as_postgres`] in network namespace `ns`.
pub fn as_postgres_in(ns: Option<&NetNs>, program: PathBuf) -> Command {
    let mut cmd = in_ns(ns, "setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

/// A throwaway MariaDB on 127.0.0.1:`port`, with a user `apm` identified
/// by `password` and a database `shop`. It runs as root (`--user=root`),
/// so the test needs no `mysql` account, which only the full
/// mariadb-server package creates.
pub fn mariadb(port: u16, password: &str) -> Server {
    mariadb_in(None, port, password, &[])
}

/// Server options that make MariaDB keep its own record of every
/// statement: performance_schema with the statement history (the
/// history_long consumer records nothing unless the current one is on).
/// Each statement of a COM_QUERY is one row of
/// `events_statements_history_long` (`statement/sql/<command>`, a
/// syntax error's `statement/sql/error`; `SQL_TEXT` from that statement
/// to the end of the query; `MYSQL_ERRNO`), and each command that is no
/// statement one `statement/com/<command>` row (Ping, Init DB, Quit,
/// Prepare, Reset stmt, Close stmt, and Execute: an executed prepared
/// statement is only that, with no SQL text).
pub const MARIADB_STATEMENT_HISTORY: [&str; 4] = [
    "--performance-schema=ON",
    "--performance-schema-consumer-events-statements-current=ON",
    "--performance-schema-consumer-events-statements-history-long=ON",
    "--performance-schema-events-statements-history-long-size=10000",
];

/// The rows `events_statements_history_long` keeps (see
/// [`MARIADB_STATEMENT_HISTORY`]).
const MARIADB_HISTORY_ROWS: u64 = 10_000;

/// [`mariadb`] with more server `options` (such as
/// [`MARIADB_STATEMENT_HISTORY`]), listening in network namespace `ns`.
/// Its unix socket ([`mariadb_root`]) is reachable from any namespace.
pub fn mariadb_in(ns: Option<&NetNs>, port: u16, password: &str, options: &[&str]) -> Server {
    let dir = mariadb_dir(port);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        format!(
            "CREATE USER IF NOT EXISTS 'apm'@'127.0.0.1' IDENTIFIED BY '{password}';\n\
             CREATE DATABASE IF NOT EXISTS shop;\n\
             GRANT ALL ON shop.* TO 'apm'@'127.0.0.1';\n"
        ),
    )
    .expect("init.sql");
    let data = dir.join("data");
    let install = Command::new("mariadb-install-db")
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
        .expect("mariadb-install-db (installed by cargo xtask test)");
    assert!(install.success(), "mariadb-install-db failed");
    let mut cmd = in_ns(ns, "mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--init-file={}", init.display()))
        .args([
            "--user=root",
            &format!("--port={port}"),
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
        ])
        .args(options);
    // Normal shutdown.
    Server::spawn_in(ns, cmd, port, dir, libc::SIGTERM)
}

fn mariadb_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("apm-e2e-mariadb-{port}"))
}

/// The `mariadb` client as root over the unix socket of the server on
/// `port` (never TCP: the agent does not see it), with no default
/// database, in batch mode without column names: whether `sql`
/// succeeded, and its output (tab-separated rows; its errors if not).
pub fn mariadb_root(port: u16, sql: &str) -> (bool, String) {
    let out = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!(
            "--socket={}",
            mariadb_dir(port).join("sock").display()
        ))
        .args(["-u", "root", "--batch", "--skip-column-names", "-e", sql])
        .stdin(Stdio::null())
        .output()
        .expect("mariadb (installed by cargo xtask test)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text)
}

/// [`mariadb_root`] that must succeed: its rows, split into fields.
pub fn mariadb_rows(port: u16, sql: &str) -> Vec<Vec<String>> {
    let (ok, out) = mariadb_root(port, sql);
    assert!(ok, "{sql}: {out}");
    out.lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The tables of [`crate::databases::MysqlClient`]'s workloads in `shop`:
/// `items (id, name, qty)`, empty, and `wide (id, pad)`, 2000 rows of a
/// 200-byte pad (created over the socket, unseen by the agent).
pub fn mariadb_shop_tables(port: u16) {
    mariadb_rows(
        port,
        "CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(100), qty INT); \
         CREATE TABLE shop.wide (id INT PRIMARY KEY, pad VARCHAR(250)); \
         INSERT INTO shop.wide SELECT seq, REPEAT('w', 200) FROM shop.seq_1_to_2000",
    );
}

/// Empties MariaDB's record of statements (see
/// [`MARIADB_STATEMENT_HISTORY`]): what [`mariadb_statements`] counts
/// starts here.
pub fn mariadb_forget_statements(port: u16) {
    mariadb_rows(
        port,
        "TRUNCATE performance_schema.events_statements_history_long; \
         TRUNCATE performance_schema.events_statements_summary_by_user_by_event_name",
    );
}

/// MariaDB's own count of the statements run in database `shop` (by the
/// user `apm`: root's here never use it) since
/// [`mariadb_forget_statements`], by (first keyword upper case, error
/// number, "" for none), from `events_statements_history_long`: one row
/// per statement, prepared statements' executes not included (they are
/// `statement/com/Execute`). Panics unless the history holds them all:
/// the per-user summary counts the same statements, and the history has
/// not wrapped.
pub fn mariadb_statements(port: u16) -> BTreeMap<(String, String), u64> {
    let rows = mariadb_rows(
        port,
        // An executable comment's code is the statement: its marker goes.
        "SELECT UPPER(SUBSTRING_INDEX(TRIM(REGEXP_REPLACE(SQL_TEXT, '^/[*]![0-9]* *', '')), ' ', 1)), \
         MYSQL_ERRNO, COUNT(*) \
         FROM performance_schema.events_statements_history_long \
         WHERE CURRENT_SCHEMA = 'shop' AND EVENT_NAME LIKE 'statement/sql/%' \
         GROUP BY 1, 2",
    );
    let counts: BTreeMap<(String, String), u64> = rows
        .iter()
        .map(|r| {
            let code = if r[1] == "0" { "" } else { &r[1] };
            let n = r[2].parse().expect("count");
            ((r[0].clone(), code.to_owned()), n)
        })
        .collect();
    let summary = mariadb_rows(
        port,
        "SELECT COALESCE(SUM(COUNT_STAR), 0) \
         FROM performance_schema.events_statements_summary_by_user_by_event_name \
         WHERE USER = 'apm' AND EVENT_NAME LIKE 'statement/sql/%'",
    );
    let kept = mariadb_rows(
        port,
        "SELECT COUNT(*) FROM performance_schema.events_statements_history_long",
    );
    let summed: u64 = summary[0][0].parse().expect("summary");
    let kept: u64 = kept[0][0].parse().expect("history rows");
    assert!(
        kept < MARIADB_HISTORY_ROWS && counts.values().sum::<u64>() == summed,
        "the statement history is incomplete: {counts:?} of {summed}, {kept} rows kept"
    );
    counts
}

/// MariaDB's count of the prepared statements' executes in `shop` since
/// [`mariadb_forget_statements`] (their `statement/com/Execute` rows),
/// by error number ("" for none).
pub fn mariadb_executes(port: u16) -> BTreeMap<String, u64> {
    mariadb_rows(
        port,
        "SELECT MYSQL_ERRNO, COUNT(*) FROM performance_schema.events_statements_history_long \
         WHERE CURRENT_SCHEMA = 'shop' AND EVENT_NAME = 'statement/com/Execute' GROUP BY 1",
    )
    .into_iter()
    .map(|r| {
        let code = if r[0] == "0" {
            String::new()
        } else {
            r[0].clone()
        };
        (code, r[1].parse().expect("count"))
    })
    .collect()
}

/// The statements prepared on the server and not yet closed
/// (`performance_schema.prepared_statements_instances`, whose row goes
/// with COM_STMT_CLOSE): (executes, failed executes) by text.
pub fn mariadb_prepared(port: u16) -> BTreeMap<String, (u64, u64)> {
    mariadb_rows(
        port,
        "SELECT SQL_TEXT, COUNT_EXECUTE, SUM_ERRORS \
         FROM performance_schema.prepared_statements_instances",
    )
    .into_iter()
    .map(|r| {
        let n = |i: usize| r[i].parse::<u64>().expect("count");
        (r[0].clone(), (n(1), n(2)))
    })
    .collect()
}

/// Fails unless the server ran what [`MysqlClient::prepared`] says it
/// did (`ran`; its kept statements still open): executes and failures
/// by statement text, executes by error number, `Com_stmt_execute`
/// grown from `executes_before` by all of them, and its text statements
/// (the connection's SETs).
pub fn assert_server_ran_prepared(port: u16, ran: &Ran, executes_before: u64) {
    let prepared = mariadb_prepared(port);
    assert_eq!(
        prepared, ran.prepared,
        "harness: prepared_statements_instances differs from the client"
    );
    let mut by_code = BTreeMap::new();
    let mut text = ran.counts.clone();
    for ((op, table, code), n) in &ran.counts {
        if op != "SET" {
            *by_code.entry(code.clone()).or_default() += n;
            text.remove(&(op.clone(), table.clone(), code.clone()));
        }
    }
    assert_eq!(
        mariadb_status(port, "Com_stmt_execute") - executes_before,
        by_code.values().sum::<u64>(),
        "harness: Com_stmt_execute"
    );
    assert_eq!(
        mariadb_executes(port),
        by_code,
        "harness: executes by errno"
    );
    assert_eq!(
        mariadb_statements(port),
        by_operation(&text),
        "harness: text"
    );
}

/// A global status counter of the server on `port` (`Com_stmt_execute`).
pub fn mariadb_status(port: u16, name: &str) -> u64 {
    let rows = mariadb_rows(port, &format!("SHOW GLOBAL STATUS LIKE '{name}'"));
    rows.first()
        .and_then(|r| r.get(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: {rows:?}"))
}

/// psql connected as the superuser `apm` (trusted) to the cluster on
/// `port`, reading no ~/.psqlrc.
pub fn psql_command(port: u16) -> Command {
    psql_command_in(None, port)
}

/// [`psql_command`] in network namespace `ns`.
pub fn psql_command_in(ns: Option<&NetNs>, port: u16) -> Command {
    let mut cmd = in_ns(ns, &postgres_bin("psql").to_string_lossy());
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "apm", "-d", "postgres", "-X", "-q"]);
    cmd
}

/// `psql -At -c SQL…` (see [`psql_command`]): whether it succeeded, and
/// its output.
pub fn psql(port: u16, sqls: &[&str]) -> (bool, String) {
    psql_in(None, port, sqls)
}

/// [`psql`] in network namespace `ns`.
pub fn psql_in(ns: Option<&NetNs>, port: u16, sqls: &[&str]) -> (bool, String) {
    let mut cmd = psql_command_in(ns, port);
    cmd.arg("-At");
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    let out = cmd.output().expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `program`, in network namespace `ns` when there is one.
pub fn in_ns(ns: Option<&NetNs>, program: &str) -> Command {
    match ns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    }
}
