//! Finding, and when allowed installing, what building and testing apm
//! needs. Installs only what is missing, so a second run installs nothing.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::needs::{EBPF_TOOLCHAIN, Need};

mod registries;
pub use registries::{ensure_node_tools, ensure_py_app, ensure_py_tools};

/// Files of LLVM 22 and the libraries bpf-linker links against, and
/// bpftool to inspect what is loaded (see shared/TOOLCHAIN.md).
const LINKER_NEEDS: &[Need] = &[
    Need {
        path: "/usr/lib/llvm-22/bin/llvm-config",
        package: "llvm-22-dev",
    },
    Need {
        path: "/usr/lib/*-linux-gnu/libLLVM.so.22*",
        package: "libllvm22",
    },
    Need {
        path: "/usr/lib/llvm-22/lib/libPolly*.a",
        package: "libpolly-22-dev",
    },
    Need {
        path: "/usr/lib/*-linux-gnu/libzstd.so",
        package: "libzstd-dev",
    },
    Need {
        path: "/usr/lib/*-linux-gnu/libz.so",
        package: "zlib1g-dev",
    },
    Need {
        path: "/usr/sbin/bpftool",
        package: "bpftool",
    },
];

/// Files of the real peers and tools the end-to-end tests drive.
/// What `cargo xtask fuzz` (and the test suite's fuzz smoke) builds with
/// besides cargo: libFuzzer's C++ sources, compiled by libfuzzer-sys.
const FUZZ_NEEDS: &[Need] = &[Need {
    path: "/usr/bin/g++",
    package: "g++",
}];

const TEST_NEEDS: &[Need] = &[
    // Start the agent without capabilities.
    Need {
        path: "/usr/bin/setpriv",
        package: "util-linux",
    },
    Need {
        path: "/usr/sbin/bpftool",
        package: "bpftool",
    },
    // The non-Rust HTTP server of the end-to-end tests (http.server), and
    // the scripted resource-using services.
    Need {
        path: "/usr/bin/python3",
        package: "python3",
    },
    // The virtualenv for the PyPI manifest validators (Debian keeps
    // ensurepip out of the standard library package).
    Need {
        path: "/usr/lib/python3.*/ensurepip/__init__.py",
        package: "python3-venv",
    },
    // A real dependency for /health/detailed.
    Need {
        path: "/usr/bin/redis-server",
        package: "redis-server",
    },
    // The --check postgres:// test's server (Debian 12's PostgreSQL), and
    // the wire tests' pgbench, psql and pg_stat_statements (the same
    // package and its client).
    Need {
        path: "/usr/lib/postgresql/15/bin/initdb",
        package: "postgresql-15",
    },
    Need {
        path: "/usr/lib/postgresql/15/lib/pg_stat_statements.so",
        package: "postgresql-15",
    },
    Need {
        path: "/usr/lib/postgresql/15/bin/psql",
        package: "postgresql-client-15",
    },
    // The --check mysql:// test's server (Debian 12's MariaDB): the server
    // and mariadb-install-db, which calls my_print_defaults. The core
    // packages start no system service.
    Need {
        path: "/usr/sbin/mariadbd",
        package: "mariadb-server-core",
    },
    Need {
        path: "/usr/bin/my_print_defaults",
        package: "mariadb-client-core",
    },
    // Ground truth for the Redis tests: INFO commandstats and load.
    Need {
        path: "/usr/bin/redis-benchmark",
        package: "redis-tools",
    },
    Need {
        path: "/usr/bin/redis-cli",
        package: "redis-tools",
    },
    // Network namespaces for the container-like test server.
    Need {
        path: "/bin/ip",
        package: "iproute2",
    },
    // A real Prometheus (and promtool) scraping the agent.
    Need {
        path: "/usr/bin/prometheus",
        package: "prometheus",
    },
    Need {
        path: "/usr/bin/promtool",
        package: "prometheus",
    },
    // The dashboard's browser test: Debian's chromium, driven by
    // playwright-core from npm.
    Need {
        path: "/usr/bin/chromium",
        package: "chromium",
    },
    Need {
        path: "/usr/bin/node",
        package: "nodejs",
    },
    Need {
        path: "/usr/bin/npm",
        package: "npm",
    },
    // A real Alertmanager receiving the agent's alerts.
    Need {
        path: "/usr/bin/prometheus-alertmanager",
        package: "prometheus-alertmanager",
    },
    // The production-traffic tests (tests/tests/production.rs): nginx
    // serving static files in a network namespace whose loopback is made
    // Ethernet-like (offloads off with ethtool) and lossy (nftables).
    Need {
        path: "/usr/sbin/nginx",
        package: "nginx",
    },
    Need {
        path: "/usr/sbin/nft",
        package: "nftables",
    },
    Need {
        path: "/sbin/ethtool",
        package: "ethtool",
    },
    // HTTPS read at the TLS library (tests/tests/tls.rs): nginx with ssl
    // under curl and wrk.
    Need {
        path: "/usr/bin/curl",
        package: "curl",
    },
    Need {
        path: "/usr/bin/wrk",
        package: "wrk",
    },
    // A Go HTTPS server built by tests/tests/tls_apps.rs (crypto/tls).
    Need {
        path: "/usr/bin/go",
        package: "golang-go",
    },
    // HTTP/2 load with many streams per connection (tests/tests/http2.rs).
    Need {
        path: "/usr/bin/h2load",
        package: "nghttp2-client",
    },
];

/// Files of what `cargo xtask bench` drives.
const BENCH_NEEDS: &[Need] = &[
    // Pins nginx and wrk to their own CPUs.
    Need {
        path: "/usr/bin/taskset",
        package: "util-linux",
    },
    Need {
        path: "/usr/sbin/nginx",
        package: "nginx",
    },
    Need {
        path: "/usr/bin/wrk",
        package: "wrk",
    },
    // h2load for `--case nginx-h2c`.
    Need {
        path: "/usr/bin/h2load",
        package: "nghttp2-client",
    },
    // The certificate of the TLS arm.
    Need {
        path: "/usr/bin/openssl",
        package: "openssl",
    },
    // Instructions per request of the agent's pipeline (callgrind).
    Need {
        path: "/usr/bin/valgrind",
        package: "valgrind",
    },
    // The Redis arm: redis-benchmark against redis-server.
    Need {
        path: "/usr/bin/redis-server",
        package: "redis-server",
    },
    Need {
        path: "/usr/bin/redis-benchmark",
        package: "redis-tools",
    },
    // The MariaDB arm: mariadb-slap against mariadbd.
    Need {
        path: "/usr/sbin/mariadbd",
        package: "mariadb-server-core",
    },
    Need {
        path: "/usr/bin/mariadb-slap",
        package: "mariadb-client",
    },
];

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
    ensure_files(&[EBPF_TOOLCHAIN, LINKER_NEEDS].concat())?;
    ensure_bpf_linker()
}

pub fn ensure_test_deps() -> Result<()> {
    ensure_files(&[TEST_NEEDS, FUZZ_NEEDS].concat())?;
    ensure_cargo_fuzz()
}

/// The demo service of `cargo xtask run --demo` is the Python test server.
pub fn ensure_demo_deps() -> Result<()> {
    let python: Vec<Need> = TEST_NEEDS
        .iter()
        .filter(|n| n.path == "/usr/bin/python3")
        .copied()
        .collect();
    ensure_files(&python)
}

pub fn ensure_fuzz_deps() -> Result<()> {
    ensure_files(FUZZ_NEEDS)?;
    ensure_cargo_fuzz()
}

pub fn ensure_bench_deps() -> Result<()> {
    ensure_files(BENCH_NEEDS)
}

/// The first existing path that `pattern` names below `root` (`/` on a
/// real machine; a scratch directory in the tests).
fn find(root: &Path, pattern: &str) -> Option<PathBuf> {
    let full = root.join(pattern.trim_start_matches('/'));
    glob::glob(full.to_str()?).ok()?.flatten().next()
}

/// The packages to install so that every file of `needs` exists below
/// `root`, each named once, in table order.
fn missing_packages(root: &Path, needs: &[Need]) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = Vec::new();
    for need in needs {
        if find(root, need.path).is_none() && !missing.contains(&need.package) {
            missing.push(need.package);
        }
    }
    missing
}

/// Installs the package of every missing file. `--reinstall` also repairs
/// a package that dpkg calls installed but whose file is gone; for one not
/// installed it is a plain install.
fn ensure_files(needs: &[Need]) -> Result<()> {
    let root = Path::new("/");
    let missing = missing_packages(root, needs);
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
    let mut args = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--reinstall",
    ];
    args.extend(&missing);
    apt(&args)?;
    if let Some(need) = needs.iter().find(|n| find(root, n.path).is_none()) {
        bail!(
            "{} is still missing after installing the Debian package {}; install it by hand",
            need.path,
            need.package
        );
    }
    Ok(())
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

/// A program on PATH (or in `$CARGO_HOME/bin`) and what its `--version`
/// prints.
fn installed(program: &str) -> Option<(PathBuf, String)> {
    let path = which(program)?;
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    Some((path, version))
}

/// The cargo-fuzz version `cargo xtask fuzz` drives.
const CARGO_FUZZ_VERSION: &str = "0.13";

/// cargo-fuzz from crates.io, installed into `$CARGO_HOME/bin` if missing.
pub fn ensure_cargo_fuzz() -> Result<()> {
    if let Some((_, version)) = installed("cargo-fuzz")
        && version.contains(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"))
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 1 minute)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "cargo-fuzz", "--locked", "--force"])
        .args(["--version", &format!("^{CARGO_FUZZ_VERSION}")])
        .stdin(Stdio::null())
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    if let Some((linker, version)) = installed("bpf-linker") {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn all_needs() -> Vec<(&'static str, &'static [Need])> {
        vec![
            ("build", EBPF_TOOLCHAIN),
            ("build", LINKER_NEEDS),
            ("test", TEST_NEEDS),
            ("test", FUZZ_NEEDS),
            ("bench", BENCH_NEEDS),
        ]
    }

    #[test]
    fn a_missing_file_names_its_package_once() {
        let root = std::env::temp_dir().join(format!("apm-needs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let needs = [EBPF_TOOLCHAIN, LINKER_NEEDS].concat();
        for need in &needs {
            let path = root.join(
                need.path
                    .trim_start_matches('/')
                    .replace("*-linux-gnu", "x86_64-linux-gnu")
                    .replace('*', "1"),
            );
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"").expect("touch");
        }
        assert!(missing_packages(&root, &needs).is_empty());
        // Debian's cargo is only a Recommends of rustc-web: the file is what
        // tells it is missing.
        std::fs::remove_file(root.join("usr/bin/cargo")).expect("rm cargo");
        assert_eq!(missing_packages(&root, &needs), ["cargo-web"]);
        for lib in ["libzstd.so", "libz.so"] {
            std::fs::remove_file(root.join("usr/lib/x86_64-linux-gnu").join(lib)).expect("rm");
        }
        assert_eq!(
            missing_packages(&root, &needs),
            ["cargo-web", "libzstd-dev", "zlib1g-dev"]
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    /// The packages that own `path` according to dpkg.
    fn owners(path: &Path) -> Vec<String> {
        let out = Command::new("dpkg")
            .arg("-S")
            .arg(path)
            .output()
            .expect("dpkg -S");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some((owners, _)) = text.lines().next().and_then(|l| l.split_once(": ")) else {
            return Vec::new();
        };
        owners
            .split(", ")
            .map(|o| o.split(':').next().unwrap_or(o).to_owned())
            .collect()
    }

    /// `package` and the packages it depends on directly.
    fn package_and_deps(package: &str) -> Vec<String> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Depends}, ${Pre-Depends}", package])
            .output()
            .expect("dpkg-query");
        let mut names = vec![package.to_owned()];
        for alternative in String::from_utf8_lossy(&out.stdout).split([',', '|']) {
            if let Some(name) = alternative.split_whitespace().next() {
                names.push(name.split(':').next().unwrap_or(name).to_owned());
            }
        }
        names
    }

    /// Whether installed `owner` declares `Provides: package` (NodeSource's
    /// nodejs provides npm and ships /usr/bin/npm itself).
    fn provides(owner: &str, package: &str) -> bool {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Provides}", owner])
            .output()
            .expect("dpkg-query");
        String::from_utf8_lossy(&out.stdout)
            .split(',')
            .any(|p| p.split_whitespace().next() == Some(package))
    }

    /// Checks the table against dpkg: every file that exists here belongs to
    /// its package (or to a direct dependency that the package brings, or
    /// to a package that provides it).
    /// `cargo xtask test` names in APM_BOOTSTRAPPED the groups it installed
    /// before running this, and every file of those groups must exist.
    #[test]
    fn every_needed_file_belongs_to_its_package() {
        if !Path::new("/var/lib/dpkg/status").exists() {
            eprintln!("not a Debian machine: nothing to check against");
            return;
        }
        let required = std::env::var("APM_BOOTSTRAPPED").unwrap_or_default();
        let mut checked = 0;
        for (group, needs) in all_needs() {
            for need in needs {
                let Some(path) = find(Path::new("/"), need.path) else {
                    assert!(
                        !required.split(',').any(|g| g == group),
                        "{} ({group}) is missing although xtask installed {}",
                        need.path,
                        need.package
                    );
                    continue;
                };
                let owners = owners(&path);
                let allowed = package_and_deps(need.package);
                assert!(
                    owners
                        .iter()
                        .any(|o| allowed.contains(o) || provides(o, need.package)),
                    "{} belongs to {owners:?}, not to {} or its dependencies {allowed:?}",
                    path.display(),
                    need.package
                );
                checked += 1;
            }
        }
        eprintln!("{checked} needed files checked against dpkg");
    }
}
