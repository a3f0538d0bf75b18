//! Finding, and when allowed installing, what building and testing apm
//! needs. Installs only what is missing, so a second run installs nothing.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages the eBPF build needs (see shared/TOOLCHAIN.md): Debian's
/// Rust with a prebuilt `core` for bpfel, LLVM 22 for bpf-linker, bpftool to
/// inspect what is loaded.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
];

/// Debian packages the end-to-end tests use as real peers and tools.
const TEST_PACKAGES: &[&str] = &[
    // setpriv: start the agent without capabilities.
    "util-linux",
    "bpftool",
    // The non-Rust HTTP server of the end-to-end tests (http.server), and
    // the scripted resource-using services.
    "python3",
    // A real dependency for /health/detailed.
    "redis-server",
    // Network namespaces for the container-like test server.
    "iproute2",
    // A real Prometheus (and promtool) scraping the agent.
    "prometheus",
    // The virtualenv for the PyPI manifest validators.
    "python3-venv",
];

/// PyPI tools the deployment tests run, installed into a virtualenv under
/// target/ (never into the system Python).
const PY_TOOLS: &[&str] = &["kubernetes-validate", "yamllint"];

/// Debian packages `cargo xtask bench` drives.
const BENCH_PACKAGES: &[&str] = &["nginx", "wrk"];

const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

pub fn ensure_build_deps() -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_bpf_linker()
}

pub fn ensure_test_deps() -> Result<()> {
    ensure_packages(TEST_PACKAGES)
}

/// A virtualenv with [`PY_TOOLS`] under `target/pytools`; returns its bin
/// directory.
pub fn ensure_py_tools(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/pytools");
    let bin = venv.join("bin");
    if PY_TOOLS.iter().all(|t| bin.join(t).is_file()) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing {} from PyPI into {}",
        PY_TOOLS.join(", "),
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .stdin(Stdio::null())
        .status()
        .context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status}); install python3-venv");
    }
    let status = Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PY_TOOLS)
        .stdin(Stdio::null())
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {} failed ({status})", PY_TOOLS.join(" "));
    }
    Ok(bin)
}

pub fn ensure_bench_deps() -> Result<()> {
    ensure_packages(BENCH_PACKAGES)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    let debian = Path::new("/etc/debian_version").exists() && which("apt-get").is_some();
    if !debian {
        bail!(
            "apm builds with Debian 12's packages {list}; install them (or their equivalents) first"
        );
    }
    if !is_root() {
        bail!("missing Debian packages: run `sudo apt-get install -y {list}`, then try again");
    }
    eprintln!("xtask: installing Debian packages: {list}");
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        apt(&["update", "-q"])?;
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// PATH with `$CARGO_HOME/bin` in it, so child builds find bpf-linker.
pub fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let bin = cargo_bin();
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_with_cargo_bin())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn ensure_bpf_linker() -> Result<()> {
    if let Some(linker) = which("bpf-linker") {
        let version = Command::new(&linker)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
            return Ok(());
        }
        eprintln!(
            "xtask: {} is {:?}, apm needs {BPF_LINKER_VERSION}.x built for LLVM 22: reinstalling",
            linker.display(),
            version.trim()
        );
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        bail!("bpf-linker needs LLVM 22: install the Debian package llvm-22-dev first");
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} (about 2 minutes)"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "install",
            "bpf-linker",
            "--version",
            &format!("^{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ])
        // bpf-linker's build script reads LLVM_PREFIX; Debian's default
        // llvm-config is LLVM 14.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .stdin(Stdio::null())
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    Ok(())
}
