//! The built-in dashboard in a real browser (Debian's chromium, driven by
//! playwright-core from npm): while bounded load runs against a real
//! server, the service shows, its request-rate and latency charts get new
//! points, a stopped dependency and a firing alert show, and the page
//! requests nothing outside the agent. A screenshot is kept under target/.

use std::{
    net::TcpListener,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use apm_e2e::{Agent, Client, Server, free_port, get, require_root};
use serde_json::Value;

/// Where `cargo xtask test` installed playwright-core (APM_NODE_TOOLS).
fn node_tools() -> std::path::PathBuf {
    std::env::var_os("APM_NODE_TOOLS")
        .map(Into::into)
        .expect("APM_NODE_TOOLS (set by cargo xtask test)")
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

#[test]
fn the_dashboard_shows_live_data_health_and_alerts_from_the_agent_only() {
    require_root();
    let port = free_port().expect("port");
    let _server = Server::python(port).expect("server");
    let dependency = TcpListener::bind("127.0.0.1:0").expect("bind");
    let check = format!("tcp://{}", dependency.local_addr().expect("addr"));
    let config = apm_e2e::always_firing_config("DashboardShowsAlerts", "");
    let agent = Agent::start(&[
        "--port",
        &port.to_string(),
        "--check",
        &check,
        "--check-interval",
        "1s",
        "--config",
        config.to_str().expect("path"),
    ])
    .expect("agent");
    agent.wait_for_service(port, "python3");

    // Bounded load: a mix of fast, slow and failing requests for at most
    // 60 s, until the browser is done.
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut client = Client::connect(port).expect("connect");
            let start = Instant::now();
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                let path = match i % 10 {
                    0 => "/error",
                    1 => "/sleep/40",
                    _ => "/ok",
                };
                let _ = client.get(path);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            i
        })
    };

    // The script runs next to its node_modules (ES modules ignore NODE_PATH).
    let tools = node_tools();
    let script = tools.join("dashboard.mjs");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/browser/dashboard.mjs"),
        &script,
    )
    .expect("script");
    let screenshot = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
        .join("apm-dashboard.png");
    let browser = {
        let url = format!("http://{}/", agent.addr);
        let screenshot = screenshot.clone();
        let failing = format!("dependency {check}");
        std::thread::spawn(move || {
            Command::new("node")
                .arg(&script)
                .args([url.as_str(), "python3"])
                .arg(&screenshot)
                .arg(&failing)
                .output()
                .expect("node (installed by cargo xtask test)")
        })
    };
    // Once the charts have been read twice, the dependency goes away.
    std::thread::sleep(Duration::from_secs(12));
    drop(dependency);
    let out = browser.join().expect("browser thread");
    done.store(true, Ordering::Relaxed);
    let sent = load.join().expect("load thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("script JSON");

    assert_eq!(
        r["outside"],
        Value::Array(vec![]),
        "requests outside the agent"
    );
    assert!(
        r["requests"].as_array().is_some_and(|a| a
            .iter()
            .any(|u| u.as_str().is_some_and(|u| u.contains("/api/dashboard")))),
        "{r}"
    );
    assert_eq!(r["first"]["selected"], "python3", "{r}");
    let rps = |k: &str| numbers(&r[k]["rps"][1]);
    let latency = |k: &str| numbers(&r[k]["latency"][2]);
    assert!(
        rps("first").iter().any(|&v| v > 0.0),
        "no request rate: {r}"
    );
    assert!(latency("first").iter().any(|&v| v > 0.0), "no latency: {r}");
    assert_ne!(
        numbers(&r["first"]["rps"][0]),
        numbers(&r["second"]["rps"][0]),
        "no new points"
    );
    assert_ne!(rps("first"), rps("second"), "request rate did not move");
    assert_ne!(latency("first"), latency("second"), "latency did not move");
    assert!(
        r["first"]["svgOrCanvas"].as_u64().unwrap_or(0) >= 8,
        "charts not drawn: {r}"
    );
    // The saturation row: its ratios charted (the server holds a few
    // descriptors of its limit), what it is now, and its port's TCP health.
    let fds = numbers(&r["second"]["saturation"][3]);
    assert!(
        !fds.is_empty() && fds.iter().all(|&v| (0.0..1.0).contains(&v)),
        "no descriptor usage: {r}"
    );
    assert!(fds.iter().any(|&v| v > 0.0), "no descriptor usage: {r}");
    let now = r["second"]["saturationNow"].as_str().unwrap_or("");
    assert!(
        now.contains("descriptors") && now.contains(&format!("accept queue :{port}")),
        "saturation now: {r}"
    );
    assert!(
        r["second"]["network"]
            .as_str()
            .is_some_and(|n| n.contains(&format!("port {port}"))),
        "TCP health of the port: {r}"
    );
    let failing = r["third"]["failing"].as_str().unwrap_or("");
    assert!(
        failing.contains(&format!("dependency {check}")),
        "health failure not shown: {r}"
    );
    assert!(
        r["third"]["alerts"]
            .as_str()
            .is_some_and(|a| a.contains("DashboardShowsAlerts")),
        "firing alert not shown: {r}"
    );
    // A slow route's trace opened as a waterfall: the route clicked is the
    // slowest (the 40 ms sleeps), and its trace's spans are drawn.
    let route = r["route"].as_str().unwrap_or_default();
    assert!(route.contains("/sleep/"), "slowest route: {r}");
    let w = &r["waterfall"];
    assert!(
        w["filter"].as_str().is_some_and(|f| f.contains(route)),
        "trace list not narrowed to {route}: {r}"
    );
    assert_eq!(
        w["trace"].as_str().map(str::len),
        Some(32),
        "no trace opened: {r}"
    );
    let rows = w["rows"].as_array().cloned().unwrap_or_default();
    assert!(!rows.is_empty(), "no waterfall: {r}");
    assert!(
        rows[0]["label"].as_str().is_some_and(|l| l.contains(route)),
        "{r}"
    );
    assert!(rows[0]["ms"].as_f64().unwrap_or(0.0) >= 40.0, "{r}");
    assert!(screenshot.exists());
    eprintln!(
        "dashboard checked with {sent} requests; screenshot at {}",
        screenshot.display()
    );
    // The page and its assets need no token, the data does.
    let with_token = Agent::start(&["--no-ebpf", "--auth-token", "dash-token-1"]).expect("agent");
    assert_eq!(get(with_token.addr, "/").expect("page").status, 200);
    assert_eq!(
        get(with_token.addr, "/assets/app.js").expect("js").status,
        200
    );
    assert_eq!(
        get(with_token.addr, "/api/dashboard").expect("data").status,
        401
    );
    std::fs::remove_file(config).ok();
}

#[test]
fn the_demo_fills_the_dashboard_within_ten_seconds() {
    require_root();
    use std::os::unix::process::CommandExt as _;
    let xtask = std::env::var_os("APM_XTASK_BIN").expect("APM_XTASK_BIN (set by cargo xtask test)");
    let admin = free_port().expect("port");
    // Its own process group, so that the agent and the demo service stop
    // with it, as they do on Ctrl-C.
    let mut demo = Command::new(xtask)
        .args(["run", "--demo", "--agent"])
        .arg(apm_e2e::agent_bin())
        .args([
            "--",
            "--listen",
            &format!("127.0.0.1:{admin}"),
            "--log-level",
            "warn",
        ])
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("cargo xtask run --demo");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    let up = apm_e2e::wait_for(Duration::from_secs(30), || {
        get(addr, "/health").ok().filter(|r| r.status == 200)
    });
    assert!(up.is_some(), "the demo's agent did not come up");
    let start = Instant::now();
    let shown = apm_e2e::wait_for(Duration::from_secs(10), || {
        let r = get(addr, "/api/dashboard").ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        let shop = v["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "demo-shop")?
            .clone();
        let moving = shop["rps"].as_f64()? > 0.0 && v["series"]["rps"].as_array()?.len() >= 2;
        (v["selected"] == "demo-shop" || moving)
            .then_some(shop)
            .filter(|_| moving)
    });
    let waited = start.elapsed();
    // SAFETY: a negative pid signals the process group we created above.
    unsafe { libc::kill(-(demo.id() as i32), libc::SIGTERM) };
    let _ = demo.wait();
    let shop = shown.unwrap_or_else(|| panic!("demo-shop not on the dashboard within 10 s"));
    eprintln!(
        "demo on the dashboard {:.1} s after the agent answered: {shop}",
        waited.as_secs_f64()
    );
    let stopped = apm_e2e::wait_for(Duration::from_secs(10), || {
        get(addr, "/health").is_err().then_some(())
    });
    assert!(
        stopped.is_some(),
        "the demo's agent still runs after its xtask stopped"
    );
}
