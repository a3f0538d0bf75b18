//! Instructions per request of the agent's pipeline, counted by callgrind
//! (`apm-agent/benches/instructions.rs`): deterministic where criterion's
//! timings on this VM move by half from one run to the next, so a cut of a
//! few per cent shows.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

/// Replays of the workload besides the warm-up, in the short and the long
/// run; their difference cancels set-up and warm-up.
pub const SHORT: u64 = 1;
pub const LONG: u64 = 4;

/// Instructions per request (per command for RESP) of each workload.
#[derive(Clone, Copy, Debug)]
pub struct Instructions {
    pub packets: f64,
    pub syscalls: f64,
    pub resp: f64,
}

impl Instructions {
    pub fn line(&self) -> String {
        format!(
            "pipeline instructions (callgrind): {:.0} per HTTP request from packets, {:.0} from syscalls, {:.0} per Redis command from packets",
            self.packets, self.syscalls, self.resp
        )
    }
}

pub fn instructions(root: &Path) -> Result<Instructions> {
    eprintln!("xtask bench: callgrind instruction counts of the pipeline");
    let bin = build(root)?;
    let per = |workload: &str| -> Result<f64> {
        let (short, per_pass) = collected(&bin, workload, SHORT)?;
        let (long, _) = collected(&bin, workload, LONG)?;
        ensure!(long > short, "callgrind counted no more for more passes");
        Ok((long - short) as f64 / ((LONG - SHORT) * per_pass) as f64)
    };
    Ok(Instructions {
        packets: per("packets")?,
        syscalls: per("syscalls")?,
        resp: per("resp")?,
    })
}

/// Builds the bench target and returns its executable.
fn build(root: &Path) -> Result<PathBuf> {
    let out = super::tools::cargo_bench(
        root,
        "instructions",
        &["--no-run", "--message-format=json-render-diagnostics"],
    )?;
    ensure!(
        out.status.success(),
        "building the instructions bench failed"
    );
    executable(&String::from_utf8_lossy(&out.stdout))
        .context("cargo named no executable for the instructions bench")
}

/// The `executable` of the `instructions` target in cargo's JSON messages.
fn executable(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "instructions")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Instructions callgrind counted over a whole run of `bin workload
/// passes`, and the requests (or commands) per pass the bench says its
/// workload holds.
fn collected(bin: &Path, workload: &str, passes: u64) -> Result<(u64, u64)> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(bin)
        .args([workload, &passes.to_string()])
        .output()
        .context("running valgrind")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("valgrind {workload} {passes} failed: {stderr}");
    }
    let count = parse_collected(&stderr)
        .with_context(|| format!("no `Collected :` line from callgrind: {stderr}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let per_pass = parse_per_pass(&stdout)
        .with_context(|| format!("no `requests per pass:` line from the bench: {stdout}"))?;
    Ok((count, per_pass))
}

/// The bench's `requests per pass: N` line.
fn parse_per_pass(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests per pass:"))
        .and_then(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
}

/// The count of callgrind's `==PID== Collected : N` summary line.
fn parse_collected(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.split_once("Collected :"))
        .and_then(|(_, n)| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_summary_and_cargo_messages_are_read() {
        let stderr = "==12== Events    : Ir\n==12== Collected : 123456789\n==12==\n";
        assert_eq!(parse_collected(stderr), Some(123_456_789));
        assert_eq!(parse_collected("nothing"), None);
        assert_eq!(parse_per_pass("requests per pass: 8192\n"), Some(8192));
        assert_eq!(parse_per_pass("requests per pass: 0\n"), None);
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"pipeline"},"executable":"/t/pipeline-1"}
{"reason":"compiler-artifact","target":{"name":"instructions"},"executable":"/t/instructions-2"}"#;
        assert_eq!(
            executable(messages),
            Some(PathBuf::from("/t/instructions-2"))
        );
    }
}
