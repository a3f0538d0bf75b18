//! Everything about deployment that can be checked without a cluster:
//! manifests validated offline, a real Prometheus scraping a real agent,
//! promtool's lint of a live /metrics, container identity from a real
//! cgroup.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use apm_e2e::{
    Agent, Client, Redis, Server, Worker, free_port, get,
    grpc::{GrpcServer, drive},
    prometheus::Prometheus,
    require_root, wait_for,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A PyPI tool from the virtualenv `cargo xtask test` prepares
/// (APM_PY_TOOLS), else from PATH.
fn py_tool(name: &str) -> PathBuf {
    std::env::var_os("APM_PY_TOOLS")
        .map(|dir| PathBuf::from(dir).join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // kustomize's own file has no Kubernetes schema; it is checked by
        // building it below.
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn manifests_validate_offline() {
    let files = manifests();
    assert!(files.len() >= 3, "{files:?}");
    let out = run_ok(
        Command::new(py_tool("kubernetes-validate"))
            .arg("--strict")
            .args(&files),
    );
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            out.contains(&format!("{name} passed")),
            "{name} not validated:\n{out}"
        );
    }
    run_ok(
        Command::new(py_tool("yamllint"))
            .args(["-s"])
            .arg(repo().join("deploy")),
    );
    // The Prometheus config loads in the real Prometheus' checker.
    run_ok(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(repo().join("deploy/prometheus/prometheus.yml")),
    );

    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok()
    {
        let built = run_ok(
            Command::new("kubectl")
                .arg("kustomize")
                .arg(repo().join("deploy/kubernetes")),
        );
        assert!(built.contains("kind: DaemonSet"), "{built}");
        let tmp = std::env::temp_dir().join(format!("apm-kustomize-{}.yaml", std::process::id()));
        std::fs::write(&tmp, &built).expect("write");
        let out = run_ok(
            Command::new(py_tool("kubernetes-validate"))
                .arg("--strict")
                .arg(&tmp),
        );
        // Namespace, DaemonSet, Service, NetworkPolicy.
        assert_eq!(out.matches(" passed ").count(), 4, "{out}");
        std::fs::remove_file(tmp).ok();
    } else {
        eprintln!("kubectl not installed: kustomization not built");
    }

    // What the DaemonSet promises.
    let ds = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).expect("ds");
    for needed in [
        "hostPID: true",
        "readOnlyRootFilesystem: true",
        "privileged: false",
        "- BPF",
        "- PERFMON",
        // A syscall filter (validated by kubernetes-validate above with
        // the rest of the pod spec).
        "seccompProfile:\n          type: RuntimeDefault",
        "allowPrivilegeEscalation: false",
        // Only /metrics and the probes face the cluster; the admin API
        // stays on loopback.
        "name: APM_METRICS_LISTEN\n              value: \"0.0.0.0:9464\"",
        "name: APM_LISTEN\n              value: \"127.0.0.1:9465\"",
        "path: /health\n",
        "path: /health/ready\n",
        "- operator: Exists",
    ] {
        assert!(ds.contains(needed), "daemonset.yaml lacks {needed:?}");
    }
    assert!(
        !ds.contains("/health/detailed"),
        "probes must not depend on dependencies"
    );
}

#[test]
fn prometheus_scrapes_the_same_counts_the_client_sent() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    let agent = Agent::start(&["--port", &port.to_string()]).expect("agent");
    agent.wait_for_service(port, "apm-httpd");
    let prometheus = Prometheus::start(agent.addr);

    let mut sent: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut client = Client::connect(port).expect("connect");
    for (path, route, n) in [
        ("/ok", "/ok", 40),
        ("/missing", "/missing", 15),
        ("/error", "/error", 5),
        ("/users/77", "/users/{id}", 10),
    ] {
        for _ in 0..n {
            let status = client.get(path).expect("request");
            *sent
                .entry((route.to_owned(), status.to_string()))
                .or_default() += 1.0;
        }
    }
    let query = "sum by (http_route, http_response_status_code) (http_server_request_duration_seconds_count{service_name=\"apm-httpd\"})";
    let seen = wait_for(Duration::from_secs(30), || {
        let v = prometheus.query(query);
        let got: BTreeMap<(String, String), f64> = v["data"]["result"]
            .as_array()?
            .iter()
            .filter_map(|r| {
                let route = r["metric"]["http_route"].as_str()?.to_owned();
                let status = r["metric"]["http_response_status_code"]
                    .as_str()?
                    .to_owned();
                let value: f64 = r["value"][1].as_str()?.parse().ok()?;
                Some(((route, status), value))
            })
            .collect();
        (got == sent).then_some(got)
    });
    assert!(
        seen.is_some(),
        "Prometheus never showed the client's counts {sent:?}; last answer: {}",
        prometheus.query(query)
    );
    drop(server);
}

/// The service a Grafana panel is checked with: its Redis client panels
/// with this test process (a monitored service, "shop"), the Redis server
/// panel with redis-server, the gRPC panels with grpc_server.py, the rest
/// with the HTTP test server.
fn panel_service(title: &str) -> &'static str {
    if title.starts_with("Redis server") {
        "redis-server"
    } else if title.starts_with("gRPC") {
        "python"
    } else if title.starts_with("SQL") {
        "postgres"
    } else if ["Redis", "Cache", "Outbound"]
        .iter()
        .any(|p| title.starts_with(p))
    {
        "shop"
    } else {
        "apm-httpd"
    }
}

/// Every expression of the Grafana dashboard, with its variables set to
/// the test services, returns data from a real Prometheus scraping a real
/// agent (HTTP traffic with 5xx, Redis commands with hits and misses from
/// a monitored client, SQL statements, gRPC calls with server errors, a
/// checked dependency, a firing alert).
#[test]
fn every_grafana_query_returns_data_for_the_test_service() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    // In a cgroup with a CPU limit, as in a container: its throttling.
    let cgroup = apm_e2e::cgroups::Cgroup::create("grafana");
    cgroup.limit_cpu(4.0);
    cgroup.adopt(server.pid());
    let rport = free_port().expect("port");
    let _redis = Redis::start(rport);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let lport = listener.local_addr().expect("addr").port();
    let pgport = free_port().expect("port");
    let _pg = apm_e2e::databases::postgres(pgport, "unused", "trust", &[]);
    let gport = free_port().expect("port");
    let _grpc = GrpcServer::start(gport);
    let config = apm_e2e::always_firing_config("GrafanaShowsAlerts", "");
    let check = format!("tcp://127.0.0.1:{port}");
    let agent = Agent::start(&[
        "--port",
        &port.to_string(),
        "--port",
        &rport.to_string(),
        "--port",
        &lport.to_string(),
        "--port",
        &pgport.to_string(),
        "--port",
        &gport.to_string(),
        "--service-name",
        &format!("{lport}=shop"),
        "--redis-port",
        &rport.to_string(),
        "--check",
        &check,
        "--check-interval",
        "1s",
        "--config",
        config.to_str().expect("path"),
    ])
    .expect("agent");
    agent.wait_for_service(port, "apm-httpd");
    agent.wait_for_service(rport, "redis-server");
    agent.wait_for_service(lport, "shop");
    agent.wait_for_service(pgport, "postgres");
    agent.wait_for_service(gport, "python");
    agent.wait_for_process("shop");
    let prometheus = Prometheus::start(agent.addr);
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/apm-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("json");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let service = panel_service(p["title"].as_str().unwrap_or_default());
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| (service, t))
        })
        .filter_map(|(service, t)| {
            t["expr"].as_str().map(|e| {
                e.replace("$service_name", service)
                    .replace("$job", ".*")
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "30s")
            })
        })
        .collect();
    // Bounded traffic with some 5xx, and Redis reads that hit and miss,
    // while Prometheus scrapes every second.
    let mut client = Client::connect(port).expect("connect");
    let redis = redis::Client::open(format!("redis://127.0.0.1:{rport}/")).expect("redis");
    let mut con = redis.get_connection().expect("redis connect");
    let mut empty = exprs.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while !empty.is_empty() && std::time::Instant::now() < deadline {
        for path in ["/ok", "/ok", "/error", "/users/7", "/missing"] {
            client.get(path).expect("request");
        }
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut con)
            .expect("SET");
        for key in ["k", "absent"] {
            let _: Option<String> = redis::cmd("GET").arg(key).query(&mut con).expect("GET");
        }
        // Statements on a table, and one that fails (SQLSTATE 22012).
        apm_e2e::databases::psql(pgport, &["SELECT count(*) FROM pg_class", "SELECT 1 / 0"]);
        // gRPC calls, DEADLINE_EXCEEDED (a server error) among them.
        drive(gport, 1);
        // An abortive close by shop: a reset each side counts.
        let aborted = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        apm_e2e::close_with_reset(aborted);
        std::thread::sleep(Duration::from_millis(200));
        empty.retain(|e| {
            prometheus.query(e)["data"]["result"]
                .as_array()
                .is_none_or(Vec::is_empty)
        });
    }
    assert!(empty.is_empty(), "Grafana queries without data: {empty:#?}");
    drop((server, listener, cgroup));
    std::fs::remove_file(config).ok();
}

#[test]
fn promtool_check_metrics_prints_nothing_for_a_live_scrape() {
    require_root();
    let port = free_port().expect("port");
    let server = Server::rust(port).expect("apm-httpd");
    let agent = Agent::start(&[
        "--check",
        &format!("tcp://127.0.0.1:{port}"),
        "--check-interval",
        "1s",
    ])
    .expect("agent");
    let mut client = Client::connect(port).expect("connect");
    let body = wait_for(Duration::from_secs(15), || {
        client.get("/ok").ok()?;
        let r = get(agent.addr, "/metrics").ok()?;
        let complete = r
            .body
            .contains("http_server_request_duration_seconds_bucket")
            && r.body.contains("apm_dependency_up")
            && r.body.contains("apm_process_resident_memory_bytes");
        complete.then_some(r.body)
    })
    .expect("a full scrape");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by cargo xtask test)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.is_empty(),
        "promtool said:\n{printed}"
    );
    drop(server);
}

/// A cgroup directory for the test, named the way Docker names its scopes,
/// in whichever hierarchy this machine lets us write; removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(container_id: &str) -> Self {
        let scope = format!("docker-{container_id}.scope");
        let candidates = [
            // Pure cgroup v2.
            (
                Path::new("/sys/fs/cgroup/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/apm-e2e.slice").join(&scope),
            ),
            // Hybrid: v2 at unified/.
            (
                Path::new("/sys/fs/cgroup/unified/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/unified/apm-e2e.slice").join(&scope),
            ),
            // v1: Docker's layout in the pids hierarchy.
            (
                Path::new("/sys/fs/cgroup/pids/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/pids/apm-e2e/docker").join(container_id),
            ),
        ];
        for (probe, dir) in candidates {
            if probe.exists() && std::fs::create_dir_all(&dir).is_ok() {
                return Self(dir);
            }
        }
        panic!("no writable cgroup hierarchy on this machine");
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty by now (the process was killed); remove up to our top dir.
        let mut dir = self.0.clone();
        while dir.to_string_lossy().contains("apm-e2e") {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}

#[test]
fn a_process_in_its_own_cgroup_gets_its_container_id() {
    require_root();
    let id: String = (0..64)
        .map(|i| char::from(b"0123456789abcdef"[(i * 7 + std::process::id() as usize) % 16]))
        .collect();
    let cgroup = Cgroup::create(&id);
    let port = free_port().expect("port");
    let worker = Worker::start(port, "apm-contained", 0).expect("worker");
    cgroup.add(worker.pids[0]);
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", worker.pids[0])).expect("cgroup");
    assert!(own.contains(&id), "{own}");

    let agent = Agent::start(&["--comm", "apm-contained"]).expect("agent");
    let labelled = wait_for(Duration::from_secs(15), || {
        let m = agent.metrics().ok()?;
        m.value(
            "apm_service_info",
            &[
                ("service_name", "apm-contained"),
                ("container_id", id.as_str()),
            ],
        )
    });
    assert_eq!(
        labelled,
        Some(1.0),
        "{}",
        agent.metrics().expect("metrics").text
    );
    // Only that service carries the id.
    let m = agent.metrics().expect("metrics");
    let by_id = [("container_id", id.as_str())];
    let carriers: Vec<&str> = m
        .matching("apm_service_info", &by_id)
        .map(|s| s.labels["service_name"].as_str())
        .collect();
    assert_eq!(carriers, vec!["apm-contained"]);
    drop(worker);
    std::thread::sleep(Duration::from_millis(200));
    drop(cgroup);
}

#[test]
fn dashboard_queries_are_valid_promql_over_documented_metrics() {
    let path = repo().join("deploy/grafana/apm-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("json");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    // Grafana's variables, as Grafana would expand them.
    let expanded: Vec<String> = exprs
        .iter()
        .map(|e| {
            e.replace("$service_name", ".*")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "5m")
        })
        .collect();
    let mut rules = String::from("groups:\n  - name: apm-dashboard\n    rules:\n");
    for (i, e) in expanded.iter().enumerate() {
        assert!(!e.contains('\''), "{e}");
        rules.push_str(&format!(
            "      - record: apm_dashboard:query_{i}\n        expr: '{e}'\n"
        ));
    }
    let file = std::env::temp_dir().join(format!("apm-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&file, rules).expect("rules");
    run_ok(Command::new("promtool").args(["check", "rules"]).arg(&file));
    std::fs::remove_file(file).ok();

    // Every metric the dashboard reads is one apm exports (docs/metrics.md
    // is kept equal to /metrics by tests/tests/docs.rs).
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs");
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let is_metric = ["apm_", "http_", "node_"]
                .iter()
                .any(|p| word.starts_with(p))
                && !word.contains("__");
            if !is_metric {
                continue;
            }
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .filter(|f| docs.contains(&format!("`{f}`")))
                .unwrap_or(word);
            assert!(
                docs.contains(&format!("`{family}`")),
                "dashboard reads undocumented {word}"
            );
        }
    }
}

#[test]
fn the_prometheus_alert_rules_check_and_pass_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let checked = run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.join("apm-rules.yml")),
    );
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tested = run_ok(Command::new("promtool").current_dir(&dir).args([
        "test",
        "rules",
        "apm-rules.test.yml",
    ]));
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The same rule names and thresholds as the agent's built-in rules.
    let rules = std::fs::read_to_string(dir.join("apm-rules.yml")).expect("rules");
    for (name, threshold) in [
        ("HostMemoryHigh", "> 0.85"),
        ("HostCpuHigh", "> 0.80"),
        ("FilesystemAlmostFull", "> 0.90"),
        ("HttpErrorRatioHigh", "> 0.05"),
        ("HttpLatencyP95High", "> 2"),
        ("ServiceFdsAlmostExhausted", "> 0.9"),
        ("ServiceOomKilled", "> 0"),
        ("ServiceCpuThrottled", "> 0.25"),
        ("ServiceDroppingConnections", "> 0"),
    ] {
        let at = rules
            .find(&format!("alert: {name}"))
            .unwrap_or_else(|| panic!("{name}"));
        let block = &rules[at..];
        let end = block[1..].find("- alert:").map_or(block.len(), |i| i + 1);
        assert!(block[..end].contains(threshold), "{name} lacks {threshold}");
    }
}
