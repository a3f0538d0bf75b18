//! `cargo xtask fuzz`: every cargo-fuzz target of apm-agent/fuzz for a
//! bounded time. A crash is copied into apm-agent/fuzz/regressions/<target>/,
//! where the agent's unit tests replay it from then on, and fails the run.
//!
//! cargo-fuzz passes rustc flags that stable Rust only takes with
//! RUSTC_BOOTSTRAP=1 (no nightly toolchain is needed); without a sanitizer,
//! so the build works with Debian's rustc.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The targets (apm_agent::fuzzing::TARGETS, by name).
pub const TARGETS: &[&str] = &[
    "http", "routes", "records", "pairing", "streams", "postgres", "mysql",
];

/// What one target's run did.
pub struct Outcome {
    pub target: &'static str,
    pub runs: u64,
    pub execs_per_second: u64,
    pub coverage: u64,
}

pub fn fuzz(root: &Path, seconds: u64) -> Result<Vec<Outcome>> {
    let crate_dir = root.join("apm-agent");
    let mut outcomes = Vec::new();
    for &target in TARGETS {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&crate_dir)
            .env("PATH", crate::bootstrap::path_with_cargo_bin())
            .env("RUSTC_BOOTSTRAP", "1")
            .env("AYA_BUILD_SKIP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(crate_dir.join("fuzz/seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-max_len=4096", "-timeout=10", "-rss_limit_mb=2048"])
            .stdin(Stdio::null())
            .output()
            .context("running cargo fuzz (cargo xtask installs it)")?;
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            let kept = keep_crash(&crate_dir, target, &log)?;
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}); {}\n{}",
                output.status,
                kept.map_or_else(
                    || "no crash input was written".to_owned(),
                    |p| format!(
                        "its input is now the regression fixture {}: fix the cause and commit it",
                        p.display()
                    )
                ),
                tail.join("\n")
            );
        }
        outcomes.push(outcome(target, &log));
    }
    Ok(outcomes)
}

/// Copies the crash input libFuzzer named into the regression fixtures.
fn keep_crash(crate_dir: &Path, target: &str, log: &str) -> Result<Option<PathBuf>> {
    let Some(artifact) = log.split_whitespace().find(|w| {
        w.contains("artifacts/")
            && (w.contains("crash-") || w.contains("timeout-") || w.contains("oom-"))
    }) else {
        return Ok(None);
    };
    let artifact = crate_dir
        .join("fuzz")
        .join(artifact.trim_start_matches("fuzz/"));
    let name = artifact
        .file_name()
        .context("crash artifact without a name")?
        .to_owned();
    let dir = crate_dir.join("fuzz/regressions").join(target);
    std::fs::create_dir_all(&dir)?;
    let kept = dir.join(name);
    std::fs::copy(&artifact, &kept)
        .with_context(|| format!("copying {} to {}", artifact.display(), kept.display()))?;
    Ok(Some(kept))
}

/// libFuzzer's final `#N DONE cov: C ... exec/s: E` line.
fn outcome(target: &'static str, log: &str) -> Outcome {
    let mut o = Outcome {
        target,
        runs: 0,
        execs_per_second: 0,
        coverage: 0,
    };
    let Some(line) = log.lines().rev().find(|l| l.contains("DONE ")) else {
        return o;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    o.runs = words
        .first()
        .and_then(|w| w.trim_start_matches('#').parse().ok())
        .unwrap_or(0);
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    o.coverage = after("cov:");
    o.execs_per_second = after("exec/s:");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_summary_is_read() {
        let log = "INFO: seed\n#4661939\tDONE   cov: 606 ft: 2007 corp: 1111/271Kb lim: 4096 exec/s: 221997 rss: 62Mb\nDone 4661939 runs in 21 second(s)\n";
        let o = outcome("http", log);
        assert_eq!(
            (o.runs, o.coverage, o.execs_per_second),
            (4_661_939, 606, 221_997)
        );
    }

    #[test]
    fn a_crash_input_becomes_a_regression_fixture() {
        let dir = std::env::temp_dir().join(format!("apm-xtask-fuzz-{}", std::process::id()));
        let artifacts = dir.join("fuzz/artifacts/http");
        std::fs::create_dir_all(&artifacts).expect("mkdir");
        let crash = artifacts.join("crash-0123abcd");
        std::fs::write(&crash, b"GET /x").expect("write");
        let log = format!(
            "INFO: -artifact_prefix='{}/'; \n==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='{}/'; Test unit written to {}\n",
            artifacts.display(),
            artifacts.display(),
            crash.display()
        );
        let kept = keep_crash(&dir, "http", &log)
            .expect("kept")
            .expect("a fixture");
        assert_eq!(kept, dir.join("fuzz/regressions/http/crash-0123abcd"));
        assert_eq!(std::fs::read(&kept).expect("read"), b"GET /x");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_targets_match_the_fuzz_crate() {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../apm-agent/fuzz/Cargo.toml"),
        )
        .expect("fuzz manifest");
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
        }
    }
}
