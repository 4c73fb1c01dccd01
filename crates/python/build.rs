//! Builds the guest agent (a static binary, `crates/agent`) with a nested cargo and hands its
//! path to `include_bytes!` through `NTNG_AGENT_BINARY`, so that every build of the Python
//! module carries the agent of the same source.
//!
//! The nested cargo gets its own target directory under OUT_DIR (the outer build holds the
//! lock of its own) and none of the outer build's settings: the CARGO_*/RUSTFLAGS variables
//! that cargo and maturin set for this build would otherwise redirect or change it.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const AGENT_PACKAGE: &str = "nixos-test-ng-agent";

/// Variables of the outer build that must not reach the nested one. Everything else (CARGO_HOME,
/// CARGO_NET_*, CARGO_HTTP_*, CARGO_REGISTRIES_*, RUSTUP_*) keeps pointing at the same
/// registry and toolchain.
fn is_outer_setting(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "MAKEFLAGS",
        "MFLAGS",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_INCREMENTAL",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CARGO_TARGET_",
        "CARGO_PKG_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_LLVM_COV",
        "__CARGO",
        "DEP_",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target = env::var("TARGET").expect("TARGET");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    // A directory is scanned whole for changes.
    for path in [
        "crates/agent/src",
        "crates/agent/Cargo.toml",
        "crates/agent-protocol/src",
        "crates/agent-protocol/Cargo.toml",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }

    let target_dir = out_dir.join("agent-target");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .args(["-p", AGENT_PACKAGE])
        .args(["--target", &target])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        // This script's stdout is for cargo directives.
        .stdout(std::io::stderr());
    if workspace.join("Cargo.lock").exists() {
        cmd.arg("--locked");
    }
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(is_outer_setting) {
            cmd.env_remove(&name);
        }
    }
    // `--target` keeps the flag off build scripts and proc macros (they stay dynamic).
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build the guest agent: {e}"));
    assert!(
        status.success(),
        "building the guest agent ({AGENT_PACKAGE}) failed: {status}"
    );

    let binary = target_dir.join(&target).join("release").join(AGENT_PACKAGE);
    assert!(
        binary.is_file(),
        "the guest agent was not built at {}",
        binary.display()
    );
    println!("cargo:rustc-env=NTNG_AGENT_BINARY={}", binary.display());
}
