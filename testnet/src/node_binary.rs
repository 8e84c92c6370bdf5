//! Finds the `mim4-node` binary, building it when the testnet runs from the
//! source tree and the binary is not there yet.

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
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    // Test binaries live in target/<profile>/deps; binaries one level up.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let sibling = dir.join("mim4-node");
    let from_cargo = std::env::var_os("CARGO").is_some();
    if from_cargo || !sibling.is_file() {
        build(&dir)?;
    }
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "mim4-node not found beside {}; build it with `cargo build -p mim4-node` or pass --node-bin",
        exe.display()
    )
}

fn build(target_profile_dir: &Path) -> anyhow::Result<()> {
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
    command
        .current_dir(workspace)
        .args(["build", "-p", "mim4-node", "--bin", "mim4-node"]);
    if release {
        command.arg("--release");
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
