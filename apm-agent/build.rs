//! Builds apm-ebpf for bpfel-unknown-none with Debian's Rust toolchain
//! (rustc-web and libstd-rust-web-dev-bpf under /usr) and embeds the object.
//! See ../shared/TOOLCHAIN.md for why it is that toolchain and not rustup's.

use std::path::Path;

use anyhow::{Context as _, bail};

// The files of Debian's toolchain that this build reads, with their
// packages; xtask's bootstrap installs from the same table.
include!("../xtask/src/needs.rs");

/// The toolchain whose prebuilt `core` covers bpfel-unknown-none.
const BPF_TOOLCHAIN: &str = "/usr";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../apm-common/src");
    println!("cargo:rerun-if-changed=../xtask/src/needs.rs");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // Lints and docs only: write an empty object; the agent then runs
        // without eBPF and says so.
        let out = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
        std::fs::write(Path::new(&out).join("apm"), b"").context("writing placeholder")?;
        return Ok(());
    }
    for need in EBPF_TOOLCHAIN {
        let found = glob::glob(need.path)
            .with_context(|| format!("bad pattern {}", need.path))?
            .flatten()
            .next();
        if found.is_none() {
            bail!(
                "{} is missing: install the Debian package {} (`apt-get install {}`), \
                 or run `cargo xtask build`, which installs it",
                need.path,
                need.package,
                need.package
            );
        }
    }
    // `aya_ebpf` enables feature(asm_experimental_arch) on bpf; this form of
    // RUSTC_BOOTSTRAP unlocks that one crate only, and keeps aya-build from
    // asking for -Z build-std, which needs rust-src.
    if std::env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: build scripts are single-threaded at this point; nothing
        // else reads the environment concurrently.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("agent crate has no parent dir")?
        .join("apm-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "apm-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(BPF_TOOLCHAIN),
    )
    .context("building apm-ebpf (is bpf-linker installed? `cargo xtask build` installs it)")
}
