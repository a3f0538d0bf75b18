//! `cargo xtask`: apm's build, run and test entry points.
//!
//! Each command first makes sure the eBPF toolchain is present (Debian's
//! rustc-web and prebuilt BPF `core`, LLVM 22, bpf-linker), installing what
//! is missing when it runs as root on Debian, or stopping with one sentence
//! that names what to install. A second run finds everything and installs
//! nothing.

mod bench;
mod bootstrap;
mod demo;
mod docs;
mod flood;
mod fuzz;
mod load;
mod needs;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "apm's build, run and test helpers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing build dependencies, then build the agent (release).
    Build,
    /// Build and run the agent in the foreground; extra arguments go to the agent.
    Run {
        /// Also start a small demo service on loopback and bounded traffic
        /// against it (errors and slow requests included), so that the
        /// dashboard moves at once; both stop with the agent.
        #[arg(long)]
        demo: bool,
        /// Run this agent binary instead of building one (the tests).
        #[arg(long, hide = true)]
        agent: Option<PathBuf>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting, clippy (every crate, eBPF included), unit tests and the
    /// root end-to-end tests.
    Test {
        /// Skip the end-to-end tests (they need root and a BPF-capable kernel).
        #[arg(long)]
        no_e2e: bool,
    },
    /// Measure the agent's overhead (wrk + nginx, criterion) and write
    /// docs/benchmarks.md. Needs root.
    Bench {
        /// Only the paired benches (nginx, Redis -P 1 and -P 16; about 10
        /// minutes), printed and written to their docs/benchmarks.md
        /// section.
        #[arg(long)]
        paired_only: bool,
        /// Only the pipeline's instructions per request (callgrind; about
        /// a minute), printed and written to their docs/benchmarks.md
        /// section. Needs no root.
        #[arg(long)]
        instructions_only: bool,
        /// With --paired-only: only these cases (nginx, nginx-h2c, nginx-tls, tls-bystander, traces,
        /// traces-all, postgres, mariadb, redis1, redis16, tcp-health),
        /// printed and not written to docs/benchmarks.md.
        #[arg(long, value_delimiter = ',')]
        case: Vec<String>,
        /// With --paired-only: an extra agent argument (repeatable), to
        /// compare settings such as --ring-buffer-bytes.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Steady mixed load for N minutes with the agent's RSS and CPU sampled
    /// every minute; fails if RSS grows 5 % or more after warm-up. Needs root.
    Soak {
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Write the results into docs/benchmarks.md.
        #[arg(long)]
        record: bool,
    },
    /// One million distinct paths and ten thousand short-lived listeners
    /// against the agent: its series, state and memory stay bounded, and
    /// idle ones expire. Needs root.
    Flood {
        /// Write the results into docs/benchmarks.md.
        #[arg(long)]
        record: bool,
    },
    /// A short-lived listener for `flood` (internal).
    #[command(hide = true)]
    FloodListener,
    /// Run every fuzz target (apm-agent/fuzz) for a while; a crash becomes
    /// a regression fixture and fails the run.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Write the results into docs/benchmarks.md.
        #[arg(long)]
        record: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Cmd::Build => {
            bootstrap::ensure_build_deps()?;
            build_agent(&root, true).map(|_| ())
        }
        Cmd::Run {
            demo,
            agent,
            mut args,
        } => {
            let agent = match agent {
                Some(agent) => agent,
                None => {
                    bootstrap::ensure_build_deps()?;
                    build_agent(&root, true)?
                }
            };
            let demo = if demo {
                bootstrap::ensure_demo_deps()?;
                let d = demo::Demo::start(&root)?;
                println!(
                    "demo service on http://127.0.0.1:{}/ with traffic (errors and slow requests included)",
                    d.port
                );
                args.extend(["--service-name".to_owned(), format!("{}=demo-shop", d.port)]);
                Some(d)
            } else {
                None
            };
            let result = run_agent(&agent, &args);
            drop(demo);
            result
        }
        Cmd::Bench {
            paired_only,
            instructions_only,
            case,
            agent_args,
        } => {
            bootstrap::ensure_build_deps()?;
            bootstrap::ensure_bench_deps()?;
            if instructions_only {
                return bench::instructions_only(&root);
            }
            if !bootstrap::is_root() {
                bail!(
                    "the benchmark loads eBPF programs and needs root: run `sudo cargo xtask bench`"
                );
            }
            // APM_AGENT_BIN: measure that binary (an earlier build) instead.
            let agent = match std::env::var_os("APM_AGENT_BIN") {
                Some(bin) => PathBuf::from(bin),
                None => build_agent(&root, true)?,
            };
            if paired_only {
                return bench::paired_only(&root, &agent, &case, &agent_args);
            }
            bench::bench(&root, &agent)
        }
        Cmd::Soak { minutes, record } => {
            bootstrap::ensure_build_deps()?;
            bootstrap::ensure_bench_deps()?;
            if !bootstrap::is_root() {
                bail!("the soak loads eBPF programs and needs root: run `sudo cargo xtask soak`");
            }
            let agent = build_agent(&root, true)?;
            soak::soak(&root, &agent, minutes, record)
        }
        Cmd::Flood { record } => {
            bootstrap::ensure_build_deps()?;
            bootstrap::ensure_bench_deps()?;
            if !bootstrap::is_root() {
                bail!("the flood loads eBPF programs and needs root: run `sudo cargo xtask flood`");
            }
            let agent = build_agent(&root, true)?;
            flood::flood(&root, &agent, record)
        }
        Cmd::FloodListener => flood::listener(),
        Cmd::Fuzz { seconds, record } => {
            bootstrap::ensure_fuzz_deps()?;
            let outcomes = fuzz::fuzz(&root, seconds)?;
            let table = fuzz_table(&outcomes, seconds);
            println!("{table}");
            if record {
                docs::write_section(&root, "fuzz", &table)?;
            }
            Ok(())
        }
        Cmd::Test { no_e2e } => {
            bootstrap::ensure_build_deps()?;
            bootstrap::ensure_fuzz_deps()?;
            if !no_e2e {
                bootstrap::ensure_test_deps()?;
            }
            test(&root, no_e2e)
        }
    }
}

/// The fuzz results as a docs/benchmarks.md section.
fn fuzz_table(outcomes: &[fuzz::Outcome], seconds: u64) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut s = format!(
        "## Fuzzing\n\n`cargo xtask fuzz --seconds {seconds} --record` on {date}: every target of apm-agent/fuzz (libFuzzer through cargo-fuzz, without a sanitizer, which Debian's rustc does not ship; the parsers and the pipeline are safe Rust) ran {seconds} s with no crash, timeout or out-of-memory. Inputs that ever fail are kept under apm-agent/fuzz/regressions and replayed by the unit tests; `cargo xtask test` runs a 10 s smoke of each.\n\n| target | what it drives | runs | execs/s | coverage (edges) |\n|---|---|---|---|---|\n"
    );
    for o in outcomes {
        let what = match o.target {
            "http" => "request and status-line parsers",
            "routes" => "route templater (placeholders, caps)",
            "records" => "ring-record decoding, reassembly, pairing, recording",
            "streams" => "HTTP and RESP conversations cut, lost, repeated, reordered",
            "postgres" => "SQL normalising, PostgreSQL framing and pairing of any pieces",
            "mysql" => {
                "MySQL's SQL dialect, MySQL framing and pairing of any pieces, joined or not"
            }
            _ => "packet streams with loss, retransmission, FIN/RST",
        };
        s.push_str(&format!(
            "| {} | {what} | {} | {} | {} |\n",
            o.target, o.runs, o.execs_per_second, o.coverage
        ));
    }
    s
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// A `cargo` command run from the workspace root with rustup's cargo (the
/// one that invoked us), never Debian's: that one only builds apm-ebpf.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd.env("PATH", bootstrap::path_with_cargo_bin());
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("starting {what}: {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Test totals parsed from cargo test's `test result:` lines.
#[derive(Default, Debug, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test` command, echoing its output and adding its results
/// to `tally`.
fn run_tests(mut cmd: Command, what: &str, tally: &mut Tally) -> Result<()> {
    use std::io::BufRead as _;
    eprintln!("xtask: {what}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}: {cmd:?}"))?;
    let stdout = child.stdout.take().context("test stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        println!("{} passed, {} failed", tally.passed, tally.failed.max(1));
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn build_agent(root: &Path, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo(root);
    cmd.args(["build", "--package", "apm-agent", "--bin", "apm-agent"]);
    if release {
        cmd.arg("--release");
    }
    run(cmd, "building apm-agent (with its eBPF object)")?;
    let profile = if release { "release" } else { "debug" };
    Ok(root.join("target").join(profile).join("apm-agent"))
}

fn run_agent(agent: &Path, args: &[String]) -> Result<()> {
    let listen = listen_address(args).unwrap_or_else(|| "127.0.0.1:9464".to_owned());
    println!("apm dashboard: http://{listen}/  (metrics at http://{listen}/metrics; Ctrl-C stops)");
    if !bootstrap::is_root() {
        eprintln!(
            "xtask: not root, so the agent cannot load eBPF programs and runs procfs-only; use sudo for full data"
        );
    }
    let status = Command::new(agent)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", agent.display()))?;
    // 130/143: stopped by SIGINT/SIGTERM, which is how one stops it.
    if !status.success() && !matches!(status.code(), Some(130 | 143) | None) {
        bail!("apm-agent exited with {status}");
    }
    Ok(())
}

/// The admin address the agent will use, from `--listen` or `APM_LISTEN`.
fn listen_address(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = arg.strip_prefix("--listen=") {
            return Some(v.to_owned());
        }
        if arg == "--listen" {
            return it.next().cloned();
        }
    }
    std::env::var("APM_LISTEN").ok()
}

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u64 = 10;

fn test(root: &Path, no_e2e: bool) -> Result<()> {
    let mut fmt = cargo(root);
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt, "cargo fmt --check")?;

    let mut clippy = cargo(root);
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy, "clippy -D warnings (all crates, apm-ebpf included)")?;

    let mut tally = Tally::default();
    let mut unit = cargo(root);
    unit.args(["test", "--workspace", "--exclude", "apm-e2e"])
        // What the bootstrap has installed by now: the table test then
        // requires each of those files to exist.
        .env(
            "APM_BOOTSTRAPPED",
            if no_e2e { "build" } else { "build,test" },
        );
    run_tests(unit, "unit tests", &mut tally)?;

    // The fuzz smoke: every target, briefly (failures become fixtures).
    let smoke = fuzz::fuzz(root, FUZZ_SMOKE_SECONDS)?;
    eprintln!(
        "xtask: fuzz smoke passed: {} targets, {FUZZ_SMOKE_SECONDS} s each",
        smoke.len()
    );
    tally.passed += smoke.len() as u64;

    if no_e2e {
        eprintln!("xtask: end-to-end tests skipped (--no-e2e)");
        println!("{} passed, {} failed", tally.passed, tally.failed);
        return Ok(());
    }
    if !bootstrap::is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and need root: run `sudo cargo xtask test` or pass --no-e2e"
        );
    }
    // The agent under test is the release build users run: unoptimised,
    // its pipeline is several times slower, and saturating loads (wrk,
    // redis-benchmark) would measure a debug build's ring-buffer overflows.
    let agent = build_agent(root, true)?;
    let py_tools = bootstrap::ensure_py_tools(root)?;
    let py_app = bootstrap::ensure_py_app(root)?;
    let node_tools = bootstrap::ensure_node_tools(root)?;
    let mut e2e = cargo(root);
    e2e.args(["test", "--package", "apm-e2e", "--", "--test-threads=1"])
        .env("APM_AGENT_BIN", &agent)
        .env("APM_PY_TOOLS", &py_tools)
        .env("APM_PY_APP", &py_app)
        .env("APM_NODE_TOOLS", &node_tools)
        .env("APM_XTASK_BIN", std::env::current_exe()?);
    run_tests(
        e2e,
        "end-to-end tests (real eBPF programs, real servers)",
        &mut tally,
    )?;
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_adds_cargo_test_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 14 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line(
            "test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!(
            t,
            Tally {
                passed: 18,
                failed: 1,
                ignored: 2
            }
        );
    }

    #[test]
    fn listen_address_from_flags() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            listen_address(&s(&["--listen", "0.0.0.0:1"])).as_deref(),
            Some("0.0.0.0:1")
        );
        assert_eq!(
            listen_address(&s(&["--port", "80", "--listen=[::1]:2"])).as_deref(),
            Some("[::1]:2")
        );
    }
}
