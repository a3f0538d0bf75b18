use super::*;

/// The example of the README (and of the issue that asked for it).
pub const EXAMPLE: &str = r#"
[alerts]
evaluation_interval = "1s"
defaults = true              # keep the built-in rules

[[alerts.rules]]
name = "CheckoutErrors"
signal = "http_error_ratio"
above = 0.05
window = "30s"
for = "10s"
cooldown = "5m"
severity = "critical"
service = "checkout"
labels = { team = "payments" }

[[alerts.rules]]
name = "SlowPayments"
signal = "http_latency_p95_seconds"
above = 0.5
service = "checkout"
route = "/pay/{id}"
min_requests = 50            # fewer in the window: no data
keep_firing_for = "2m"       # resolve only after 2 minutes below

[[alerts.rules]]
name = "ServiceAbsent"       # opt-in: no request for 5 minutes
signal = "service_absent"
service = "checkout"
window = "5m"

[[alerts.receivers]]
alertmanager = "http://127.0.0.1:9093"
"#;

#[test]
fn the_documented_example_parses() {
    let c = parse(EXAMPLE, "apm.toml").expect("example");
    assert_eq!(c.evaluation_interval, Duration::from_secs(1));
    assert_eq!(c.rules.len(), defaults().len() + 3);
    let r = c
        .rules
        .iter()
        .find(|r| r.name == "CheckoutErrors")
        .expect("rule");
    assert_eq!(r.threshold, Threshold::Above(0.05));
    assert_eq!(
        (r.window, r.hold),
        (Duration::from_secs(30), Duration::from_secs(10))
    );
    assert_eq!(r.labels["team"], "payments");
    assert_eq!(r.min_requests, DEFAULT_MIN_REQUESTS);
    assert_eq!(r.no_data, NoData::KeepFiring);
    let slow = c
        .rules
        .iter()
        .find(|r| r.name == "SlowPayments")
        .expect("rule");
    assert_eq!(
        (slow.min_requests, slow.keep_firing_for),
        (50, Duration::from_secs(120))
    );
    let absent = c
        .rules
        .iter()
        .find(|r| r.name == "ServiceAbsent")
        .expect("rule");
    assert_eq!(
        (absent.signal, absent.threshold, absent.window),
        (
            Signal::ServiceAbsent,
            Threshold::Below(1.0),
            Duration::from_secs(300)
        )
    );
    assert_eq!(
        c.receivers,
        vec![Receiver::Alertmanager("http://127.0.0.1:9093".into())]
    );
    // The README carries the same example.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    assert!(readme.contains(EXAMPLE.trim()), "README's example differs");
}

#[test]
fn mistakes_name_their_line() {
    let cases = [
        (
            "[alerts]\nevaluation_interval = \"1s\"\nspeed = 3\n",
            "line 3",
            "unknown field",
        ),
        (
            "[alerts]\n\n[[alerts.rules]]\nname = \"A\"\nsignal = \"cpu_joy\"\nabove = 1\n",
            "line 5",
            "unknown variant",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"host_cpu_ratio\"\nabove = 1\nwindow = \"soon\"\n",
            "line 6",
            "invalid duration",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"host_cpu_ratio\"\n",
            "line 2",
            "exactly one of above or below",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"host_cpu_ratio\"\nabove = 1\nroute = \"/x\"\n",
            "line 2",
            "route applies",
        ),
        (
            "[alerts]\n[[alerts.receivers]]\nwebhook = \"ftp://u:pw@x\"\n",
            "line 2",
            "not an http(s) URL",
        ),
        ("[alert]\n", "line 1", "unknown field"),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"host_cpu_ratio\"\nabove = 1\nmin_request = 5\n",
            "line 6",
            "unknown field `min_request`",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"host_cpu_ratio\"\nabove = 1\nmin_requests = 5\n",
            "line 2",
            "min_requests applies to the http_ and db_ signals only",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"http_error_ratio\"\nabove = 1\nno_data = \"ok\"\n",
            "line 6",
            "unknown variant `ok`, expected `keep_firing` or `resolve`",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"service_absent\"\nbelow = 1\n",
            "line 2",
            "service_absent takes no above or below",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"service_absent\"\nno_data = \"resolve\"\n",
            "line 2",
            "service_absent has no no_data",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"http_error_ratio\"\nabove = 1\nkeep_firing_for = \"-1s\"\n",
            "line 6",
            "invalid duration",
        ),
    ];
    for (text, line, what) in cases {
        let err = parse(text, "apm.toml").expect_err(text);
        assert!(err.contains(line) && err.contains(what), "{text:?}: {err}");
        assert!(!err.contains("pw@"), "{err}");
    }
}

#[test]
fn defaults_can_be_dropped_or_replaced() {
    let none = parse("[alerts]\ndefaults = false\n", "f").expect("parse");
    assert!(none.rules.is_empty());
    let replaced = parse(
        "[alerts]\n[[alerts.rules]]\nname = \"HostCpuHigh\"\nsignal = \"host_cpu_ratio\"\nabove = 0.95\n",
        "f",
    )
    .expect("parse");
    let cpu: Vec<_> = replaced
        .rules
        .iter()
        .filter(|r| r.name == "HostCpuHigh")
        .collect();
    assert_eq!(cpu.len(), 1);
    assert_eq!(cpu[0].threshold, Threshold::Above(0.95));
    assert_eq!(parse("", "f").expect("empty"), AlertConfig::default());
}

#[test]
fn no_data_defaults_by_signal() {
    for r in defaults() {
        let want = if r.signal == Signal::FilesystemUsedRatio {
            NoData::Resolve
        } else {
            NoData::KeepFiring
        };
        assert_eq!(r.no_data, want, "{}", r.name);
        assert_eq!(r.keep_firing_for, Duration::ZERO);
    }
    let c = parse(
        "[alerts]\n[[alerts.rules]]\nname = \"A\"\nsignal = \"http_error_ratio\"\nabove = 0.1\nno_data = \"resolve\"\n",
        "f",
    )
    .expect("parse");
    assert_eq!(c.rules.last().map(|r| r.no_data), Some(NoData::Resolve));
}
