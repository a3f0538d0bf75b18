//! The test tools that come from the language registries rather than
//! Debian: PyPI packages in virtualenvs under target/ (never the system
//! Python) and npm packages under target/node.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// PyPI tools the deployment tests run, installed into a virtualenv under
/// target/ (never into the system Python).
const PY_TOOLS: &[&str] = &["kubernetes-validate", "yamllint"];

/// A virtualenv with [`PY_TOOLS`] under `target/pytools`; returns its bin
/// directory.
pub fn ensure_py_tools(root: &Path) -> Result<PathBuf> {
    ensure_venv(&root.join("target/pytools"), PY_TOOLS, |bin| {
        PY_TOOLS.iter().all(|t| bin.join(t).is_file())
    })
}

/// PyPI packages of the production-traffic tests' FastAPI applications
/// (tests/servers/app.py, and db_app.py with SQLAlchemy over asyncpg and
/// psycopg), of the TLS tests' clients (httpx, redis-py) and of the
/// MySQL tests' client (mysql_client.py: PyMySQL, which sends its
/// `SET NAMES` at every connect from 1.1 on, and mysql-connector-python,
/// used in pure Python), of the distributed-trace tests (the OTLP
/// receiver and trace_front.py's OpenTelemetry SDK) and of the gRPC tests
/// (grpcio's server and client) and of `Upgrade: h2c` (hypercorn, which
/// implements it), installed into their own virtualenv.
const PY_APP: &[&str] = &[
    "fastapi>=0.110,<1",
    "uvicorn>=0.29,<1",
    "httpx>=0.27,<1",
    "redis>=5,<7",
    "sqlalchemy[asyncio]>=2,<3",
    "asyncpg>=0.29,<1",
    "psycopg[binary]>=3.1,<4",
    "PyMySQL>=1.1,<2",
    "mysql-connector-python>=8.3,<27",
    "opentelemetry-proto>=1.28,<2",
    "opentelemetry-sdk>=1.28,<2",
    "opentelemetry-exporter-otlp-proto-http>=1.28,<2",
    "opentelemetry-instrumentation-fastapi>=0.49b0,<1",
    "grpcio>=1.60,<2",
    "hypercorn>=0.16,<1",
];

/// A virtualenv with [`PY_APP`] under `target/pyapp`; returns its bin
/// directory (holding uvicorn).
pub fn ensure_py_app(root: &Path) -> Result<PathBuf> {
    ensure_venv(&root.join("target/pyapp"), PY_APP, |bin| {
        bin.join("uvicorn").is_file()
            && Command::new(bin.join("python"))
                .args([
                    "-c",
                    "import fastapi, uvicorn, h11, httpx, redis, sqlalchemy, greenlet, asyncpg, psycopg, \
                     pymysql, mysql.connector, opentelemetry.proto, opentelemetry.sdk, \
                     opentelemetry.instrumentation.fastapi, opentelemetry.exporter.otlp.proto.http, \
                     grpc, hypercorn",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
}

/// A virtualenv at `venv` with `packages` from PyPI, unless `ready` says
/// its bin directory already has them; returns that bin directory.
fn ensure_venv(venv: &Path, packages: &[&str], ready: impl Fn(&Path) -> bool) -> Result<PathBuf> {
    let bin = venv.join("bin");
    if ready(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing {} from PyPI into {}",
        packages.join(", "),
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .stdin(Stdio::null())
        .status()
        .context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status}); install python3-venv");
    }
    let status = Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .stdin(Stdio::null())
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {} failed ({status})", packages.join(" "));
    }
    if !ready(&bin) {
        bail!(
            "{} lacks {} after pip install",
            venv.display(),
            packages.join(", ")
        );
    }
    Ok(bin)
}

/// npm packages: what the browser test drives Chromium with, and the
/// gRPC server of the gRPC-over-TLS test.
const NODE_TOOLS: &[&str] = &["playwright-core@1", "@grpc/grpc-js@1"];

/// [`NODE_TOOLS`] installed under `target/node` (no browser download:
/// the test uses Debian's chromium); returns that directory.
pub fn ensure_node_tools(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/node");
    let installed = NODE_TOOLS.iter().all(|spec| {
        let name = spec.rsplit_once('@').map_or(*spec, |(name, _)| name);
        dir.join("node_modules")
            .join(name)
            .join("package.json")
            .is_file()
    });
    if installed {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "xtask: installing {} from npm into {}",
        NODE_TOOLS.join(", "),
        dir.display()
    );
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .args(NODE_TOOLS)
        .stdin(Stdio::null())
        .status()
        .context("running npm")?;
    if !status.success() {
        bail!("npm install {} failed ({status})", NODE_TOOLS.join(" "));
    }
    Ok(dir)
}
