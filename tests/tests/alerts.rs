//! Alert configuration against the real agent binary: a mistake in the
//! file stops startup with one error naming the line; a good file starts.

use std::{process::Command, time::Duration};

use apm_e2e::{Agent, agent_bin, require_root};

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("apm-e2e-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn a_bad_config_stops_startup_naming_the_line() {
    require_root();
    let path = write(
        "bad",
        "[alerts]\n\n[[alerts.rules]]\nname = \"A\"\nsignal = \"http_error_ratio\"\nabove = 0.1\nwindow = \"a while\"\n",
    );
    let out = Command::new(agent_bin())
        .args(["--no-ebpf", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("agent");
    assert!(!out.status.success(), "started with a bad config");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("line 7") && text.contains("invalid duration"),
        "{text}"
    );
    std::fs::remove_file(path).ok();
}

#[test]
fn a_good_config_starts_and_says_how_many_rules() {
    require_root();
    let path = write(
        "good",
        "[alerts]\nevaluation_interval = \"1s\"\n\n[[alerts.rules]]\nname = \"CheckoutErrors\"\nsignal = \"http_error_ratio\"\nabove = 0.05\n",
    );
    let agent =
        Agent::start(&["--no-ebpf", "--config", path.to_str().expect("path")]).expect("agent");
    std::thread::sleep(Duration::from_millis(200));
    let log = agent.log_text();
    assert!(
        log.contains("alert rules loaded") && log.contains("\"rules\":6"),
        "{log}"
    );
    std::fs::remove_file(path).ok();
}
