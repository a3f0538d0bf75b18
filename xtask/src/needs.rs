// The files apm's build and tests read, each with the Debian package that
// ships it. One table for two readers: xtask's bootstrap (which installs
// the package of every missing file) and apm-agent's build script (which
// names the package when a file is missing). The build script pulls this
// file in with `include!`, so it holds plain data and nothing else.
//
// A path may be a glob pattern (`*` within one component). Checking files,
// not package names, also repairs a machine where a package is installed
// but its file is gone, and catches a package that only a Recommends would
// have brought (cargo-web, the home of /usr/bin/cargo, is a Recommends of
// rustc-web and so never came with `--no-install-recommends`).

/// A file the build or the tests need, and the Debian package to install
/// when it is missing.
#[derive(Clone, Copy)]
pub struct Need {
    /// Absolute path or glob pattern.
    pub path: &'static str,
    /// The package that installs it (directly or through its dependencies).
    pub package: &'static str,
}

/// Debian's Rust toolchain with a prebuilt `core` for bpfel: what building
/// apm-ebpf itself reads (apm-agent's build script checks these).
pub const EBPF_TOOLCHAIN: &[Need] = &[
    Need {
        path: "/usr/bin/cargo",
        package: "cargo-web",
    },
    Need {
        path: "/usr/bin/rustc",
        package: "rustc-web",
    },
    Need {
        path: "/usr/lib/rustlib/bpfel-unknown-none/lib/libcore-*.rlib",
        package: "libstd-rust-web-dev-bpf",
    },
];
