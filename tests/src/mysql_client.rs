//! The MySQL tests' client (tests/servers/mysql_client.py), the counts it
//! and the agent keep, by (operation, table, error number).

use std::collections::BTreeMap;

use crate::{NetNs, Scripted, databases::in_ns};

/// Statements by (operation, table, error number or ""), as a MySQL
/// client or the agent counts them.
pub type SqlCounts = BTreeMap<(String, String, String), u64>;

/// [`SqlCounts`] summed over tables: by (operation, error number).
pub fn by_operation(counts: &SqlCounts) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for ((op, _, code), n) in counts {
        *out.entry((op.clone(), code.clone())).or_default() += n;
    }
    out.retain(|_, n| *n > 0);
    out
}

/// What a [`MysqlClient`] command ran.
#[derive(Debug, Default)]
pub struct Ran {
    /// Its statements (executes of prepared ones included).
    pub counts: SqlCounts,
    /// `sql`: the wall time of its statements, in seconds.
    pub seconds: f64,
    /// `prepared`: executes and failed executes by statement text.
    pub prepared: BTreeMap<String, (u64, u64)>,
}

/// The SQL operations of histogram `family` (its `_count`) in the series
/// matching `labels`, by (operation, table, error code).
pub fn sql_counts(m: &crate::Metrics, family: &str, labels: &[(&str, &str)]) -> SqlCounts {
    let mut out = SqlCounts::new();
    for s in m.matching(&format!("{family}_count"), labels) {
        let key = (
            s.labels["db_operation_name"].clone(),
            s.labels["db_collection_name"].clone(),
            s.labels["db_response_status_code"].clone(),
        );
        *out.entry(key).or_default() += s.value as u64;
    }
    out
}

/// tests/servers/mysql_client.py: PyMySQL and mysql-connector-python
/// (pure Python) as user `apm` against the server on `port`, keeping
/// their own counts; a monitored service when it listens too.
pub struct MysqlClient(Scripted);

impl MysqlClient {
    /// The client, run in `ns` (or here), listening on `listen` if
    /// given; waits until it is ready.
    pub fn start(ns: Option<&NetNs>, port: u16, password: &str, listen: Option<u16>) -> Self {
        Self::spawn(ns, port, password, listen, false)
    }

    /// [`MysqlClient::start`] here, its PyMySQL connections over TLS.
    pub fn start_tls(port: u16, password: &str) -> Self {
        Self::spawn(None, port, password, None, true)
    }

    fn spawn(
        ns: Option<&NetNs>,
        port: u16,
        password: &str,
        listen: Option<u16>,
        tls: bool,
    ) -> Self {
        let python = crate::prod::py_app_bin().join("python");
        let mut cmd = in_ns(ns, &python.to_string_lossy());
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/servers/mysql_client.py"
        ))
        .args(["127.0.0.1", &port.to_string(), password])
        .args(listen.map(|p| p.to_string()))
        .env("PYTHONDONTWRITEBYTECODE", "1");
        if tls {
            cmd.env("APM_MYSQL_TLS", "1");
        }
        let client = Scripted::spawn(cmd)
            .expect("python with PyMySQL and mysql-connector-python (cargo xtask test)");
        client.expect_line("ready").expect("mysql_client.py");
        Self(client)
    }

    fn run(&mut self, command: &str, arg: serde_json::Value) -> Ran {
        let line = self
            .0
            .command(&format!("{command} {arg}"), "counts ")
            .unwrap_or_else(|e| panic!("mysql_client.py {command}: {e}"));
        let mut v: serde_json::Value =
            serde_json::from_str(&line["counts ".len()..]).expect("counts");
        let mut ran = Ran {
            seconds: v["_seconds"].as_f64().unwrap_or(0.0),
            ..Ran::default()
        };
        for (text, n) in v["_prepared"].as_object().into_iter().flatten() {
            let (runs, errors) = (n[0].as_u64(), n[1].as_u64());
            ran.prepared
                .insert(text.clone(), (runs.expect("runs"), errors.expect("errors")));
        }
        let map = v.as_object_mut().expect("counts object");
        map.retain(|k, _| !k.starts_with('_'));
        for (key, n) in map.iter() {
            let mut parts = key.splitn(3, '|').map(str::to_owned);
            let mut part = || parts.next().expect("OP|TABLE|ERRNO");
            let key = (part(), part(), part());
            ran.counts.insert(key, n.as_u64().expect("count"));
        }
        ran
    }

    /// The text-protocol workload (see mysql_client.py): about 4 `rounds`
    /// statements, ids from `base`, `bigs` results of `big_rows` rows.
    pub fn text(&mut self, rounds: u32, big_rows: u32, bigs: u32, base: u32) -> Ran {
        self.run(
            "text",
            serde_json::json!({"rounds": rounds, "big_rows": big_rows, "bigs": bigs, "base": base}),
        )
    }

    /// The prepared-statement workload: 3.3 `rounds` executes (`rounds`
    /// / 10 failing), ids from `base`; its three kept statements stay
    /// open until [`MysqlClient::close`].
    pub fn prepared(&mut self, rounds: u32, base: u32) -> Ran {
        self.run(
            "prepared",
            serde_json::json!({"rounds": rounds, "base": base}),
        )
    }

    /// Opens a text and a prepared-statement connection and uses each
    /// once (mysql_client.py `open`).
    pub fn open(&mut self) -> Ran {
        self.run("open", serde_json::json!({}))
    }

    /// `n` SELECTs, `n` UPDATEs, a failing SELECT and `n` executes of
    /// the statement prepared before, on [`MysqlClient::open`]'s
    /// connections.
    pub fn reuse(&mut self, n: u32, base: u32) -> Ran {
        self.run("reuse", serde_json::json!({"n": n, "base": base}))
    }

    /// Closes the prepared statements and their connection.
    pub fn close(&mut self) {
        self.0.command("close", "closed").expect("close");
    }

    /// `sql` `n` times on one new connection, each expected to end with
    /// error number `code` (0: success), counted as `op` on `table`.
    pub fn sql(&mut self, n: u32, sql: &str, op: &str, table: &str, code: u32) -> Ran {
        self.run(
            "sql",
            serde_json::json!({"n": n, "sql": sql, "op": op, "table": table, "code": code}),
        )
    }
}
