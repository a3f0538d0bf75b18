//! Database servers the tests start: Debian's PostgreSQL and MariaDB,
//! each a throwaway instance on loopback, removed when dropped.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

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
    let dir = std::env::temp_dir().join(format!("apm-e2e-mariadb-{port}"));
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
    let mut cmd = Command::new("mariadbd");
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
        ]);
    // Normal shutdown.
    Server::spawn(cmd, port, dir, libc::SIGTERM)
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
