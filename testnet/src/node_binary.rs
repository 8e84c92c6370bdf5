//! Finds the `mim4-node` binary, building it when the testnet runs from the
//! source tree and the binary is not there yet.
//!
//! The test-only node of the crash loop (feature `broken-ack-before-flush`)
//! is its own binary, `mim4-node-broken`, in the same target folder: it
//! shares every compiled dependency and never replaces the real binary that
//! other tests run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The node binary: `explicit`, else `$MIM4_NODE_BIN`, else `mim4-node` beside
/// this executable (Cargo puts every binary of a workspace in the same folder).
///
/// When the tool was started by Cargo (`cargo run`, `cargo test`: `$CARGO` is
/// set) from the source tree, it first runs `cargo build -p mim4-node` with the
/// same profile, so the nodes never run stale code; that is a no-op taking well
/// under a second when the binary is up to date.
pub fn find(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("--node-bin {}: no such file", path.display());
    }
    if let Some(path) = std::env::var_os("MIM4_NODE_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("MIM4_NODE_BIN={}: no such file", path.display());
    }
    let (exe, dir) = profile_dir()?;
    let sibling = dir.join("mim4-node");
    let from_cargo = std::env::var_os("CARGO").is_some();
    if from_cargo || !sibling.is_file() {
        build(&dir, false)?;
    }
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "mim4-node not found beside {}; build it with `cargo build -p mim4-node` or pass --node-bin",
        exe.display()
    )
}

/// The test-only feature of [`find_broken`]'s node (see `node/Cargo.toml`).
pub const BROKEN_FEATURE: &str = "broken-ack-before-flush";

/// `mim4-node-broken`, the node built with [`BROKEN_FEATURE`] (it
/// acknowledges before flushing), beside this executable; built (or brought
/// up to date) now, so it needs the source tree. Compiles only the node
/// itself once more: the dependencies are those of `mim4-node`.
pub fn find_broken() -> anyhow::Result<PathBuf> {
    let (_, dir) = profile_dir()?;
    build(&dir, true)?;
    let binary = dir.join(BROKEN_BIN);
    if binary.is_file() {
        return Ok(binary);
    }
    bail!("cargo built no {}", binary.display())
}

/// The binary target of [`find_broken`] (`required-features` in `node/Cargo.toml`).
const BROKEN_BIN: &str = "mim4-node-broken";

/// The running executable and the target profile folder it lives in
/// (test binaries live in `target/<profile>/deps`, binaries one level up).
fn profile_dir() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok((exe, dir))
}

/// Prefixes of the variables Cargo sets for the crate it builds or runs,
/// which a nested `cargo build` must not inherit (see [`build`]).
const CRATE_ENV_PREFIXES: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// `cargo build -p mim4-node` of the `mim4-node` binary with the profile of
/// `target_profile_dir`; with `broken`, that feature's binary instead.
fn build(target_profile_dir: &Path, broken: bool) -> anyhow::Result<()> {
    // Tests of one process start nodes in parallel: one nested build at a
    // time, so none of them execs a binary that another's build is linking.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    if !workspace.join("Cargo.toml").is_file() {
        bail!("mim4-node is missing and the source tree is not available to build it");
    }
    let release = target_profile_dir
        .file_name()
        .is_some_and(|n| n == "release");
    let spinner = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    spinner.set_message("building mim4-node ...");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut command = Command::new(cargo);
    let bin = if broken { BROKEN_BIN } else { "mim4-node" };
    command
        .current_dir(workspace)
        .args(["build", "-p", "mim4-node", "--bin", bin]);
    // Under `cargo test` or `cargo run` this process has the variables Cargo
    // sets for a crate (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, OUT_DIR, ...).
    // Build scripts such as ring's track some of them (`rerun-if-env-changed`),
    // so passing them on would rebuild ring and everything above it here, and
    // again in the next ordinary `cargo test` (about 45 s each time).
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if CRATE_ENV_PREFIXES.iter().any(|p| name.starts_with(p)) || name == "OUT_DIR" {
            command.env_remove(name);
        }
    }
    if release {
        command.arg("--release");
    }
    if broken {
        command.args(["--features", BROKEN_FEATURE]);
        spinner.set_message(format!("building {bin} ..."));
    }
    let output = command.output().context("running cargo build")?;
    spinner.finish_and_clear();
    if !output.status.success() {
        bail!(
            "cargo build -p mim4-node failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
