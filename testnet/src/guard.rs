//! A federation whose nodes are stopped on every way out of a run that
//! started them: an error, a panic, or the run's future being dropped on
//! Ctrl-C. The crash loop and chaos share [`NodeGuard`]; tests that start
//! nodes use [`StopOnDrop`] (a federation they hold) or [`DownOnDrop`] (a
//! testnet folder that the `mim4-testnet` tool started), so that a failing
//! assertion does not leave real node processes running.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::Context as _;

use crate::Federation;

/// Stops every node of the federation (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct NodeGuard {
    federation: Option<Federation>,
    /// Every process id this run started, to prove afterwards that none is left.
    pub(crate) pids: Vec<u32>,
    /// Who the messages say stopped the nodes (`crashloop`, `chaos`).
    label: &'static str,
}

impl NodeGuard {
    pub(crate) fn new(federation: Federation, label: &'static str) -> Self {
        Self {
            federation: Some(federation),
            pids: Vec::new(),
            label,
        }
    }

    pub(crate) fn federation(&mut self) -> anyhow::Result<&mut Federation> {
        self.federation.as_mut().context("the nodes were stopped")
    }

    /// Starts the operator's node and remembers its pid.
    pub(crate) fn start(&mut self, id: &str) -> anyhow::Result<u32> {
        let pid = self.federation()?.start(id)?;
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
        Ok(pid)
    }

    /// Starts every node that is not running and waits until each answers.
    pub(crate) async fn start_all_ready(&mut self, wait: Duration) -> anyhow::Result<()> {
        let ids = self.ids()?;
        for id in &ids {
            self.start(id)?;
        }
        for id in &ids {
            self.federation()?.wait_ready(id, wait).await?;
        }
        Ok(())
    }

    /// The operator ids.
    pub(crate) fn ids(&mut self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .federation()?
            .operators()
            .iter()
            .map(|o| o.id.clone())
            .collect())
    }

    /// Stops every node (SIGTERM, then SIGKILL after 10 s) and hands the
    /// federation back, for the offline check.
    pub(crate) fn stop(&mut self) -> anyhow::Result<Federation> {
        let mut federation = self.federation.take().context("the nodes were stopped")?;
        federation.stop_all()?;
        Ok(federation)
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(mut federation) = self.federation.take() {
            if let Err(e) = federation.stop_all() {
                eprintln!("{}: stopping the nodes failed: {e:#}", self.label);
            }
        }
    }
}

impl NodeGuard {
    /// Waits until no node has an outgoing message awaiting a receipt, or
    /// `wait` passes. Returns whether every outbox drained. The figures come
    /// from the nodes' status only to decide when to stop waiting; the checker
    /// reads the stores themselves afterwards.
    pub(crate) async fn drain(&mut self, wait: Duration) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        let ids = self.ids()?;
        let mut clients = Vec::with_capacity(ids.len());
        for id in &ids {
            clients.push(self.federation()?.admin(id).await?);
        }
        loop {
            let mut pending = 0;
            for client in &clients {
                match client.status().await {
                    Ok(status) => pending += status.outbox_pending,
                    // Not answering counts as not drained; the deadline bounds the wait.
                    Err(_) => pending += 1,
                }
            }
            if pending == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A [`Federation`] whose nodes are stopped (SIGTERM, then SIGKILL) when it
/// is dropped, on a panic too. A plain `Federation` leaves its nodes running
/// on purpose (that is what `mim4-testnet up` is for); a test holds this instead.
#[derive(Debug)]
pub struct StopOnDrop(Federation);

impl StopOnDrop {
    /// Takes `federation`; its nodes stop with this guard.
    pub fn new(federation: Federation) -> Self {
        Self(federation)
    }
}

impl Deref for StopOnDrop {
    type Target = Federation;

    fn deref(&self) -> &Federation {
        &self.0
    }
}

impl DerefMut for StopOnDrop {
    fn deref_mut(&mut self) -> &mut Federation {
        &mut self.0
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop_all() {
            eprintln!(
                "stopping the nodes of {} failed: {e:#}",
                self.0.dir().display()
            );
        }
    }
}

/// Does what `mim4-testnet down` does for the testnet folder `dir` when
/// dropped: kills the tool process it was given, if any (SIGKILL), then stops
/// every node of the folder, recorded or found by its configuration, and
/// deletes the network namespaces of tools that no longer run. For a test
/// that starts a testnet through the tool (`up`, `chaos`).
#[derive(Debug)]
pub struct DownOnDrop {
    dir: PathBuf,
    tool: Option<Child>,
}

impl DownOnDrop {
    /// Guards the testnet folder `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            tool: None,
        }
    }

    /// Guards the testnet folder `dir` that the running `tool` works on.
    pub fn with_tool(dir: impl Into<PathBuf>, tool: Child) -> Self {
        Self {
            dir: dir.into(),
            tool: Some(tool),
        }
    }

    /// The tool process, if this guard holds one.
    pub fn tool(&mut self) -> Option<&mut Child> {
        self.tool.as_mut()
    }
}

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if let Some(tool) = self.tool.as_mut() {
            let _ = tool.kill();
            let _ = tool.wait();
        }
        match Federation::open(&self.dir) {
            Ok(Some(mut federation)) => {
                if let Err(e) = federation.stop_all() {
                    eprintln!("stopping the nodes of {} failed: {e:#}", self.dir.display());
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("{}: {e:#}", self.dir.display()),
        }
        crate::netns::remove_stale();
    }
}

/// A fresh folder name under the system's temporary folder.
pub(crate) fn temporary_dir(prefix: &str) -> std::path::PathBuf {
    use rand::RngCore as _;
    let mut suffix = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{checker, node_binary, DEFAULT_OPERATORS};

    /// A test that panics while its node runs leaves no node behind: the
    /// guard stops it while the panic unwinds. Without the guard's `Drop` the
    /// node would run on (its own process group), and this would fail.
    #[test]
    fn a_panic_while_a_node_runs_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let node_bin = node_binary::find(None).unwrap();
        let federation = Federation::create(dir.path(), &DEFAULT_OPERATORS[..1], node_bin).unwrap();
        let id = federation.operators()[0].id.clone();
        let (started, pid) = std::sync::mpsc::channel();
        let outcome = std::thread::spawn(move || {
            let mut nodes = StopOnDrop::new(federation);
            started.send(nodes.start(&id).unwrap()).unwrap();
            panic!("a failing test with a node running");
        })
        .join();
        assert!(outcome.is_err(), "the thread panicked");
        let pid = pid.recv().unwrap();
        let left = checker::live_nodes(&[pid]);
        // Clean up before failing, so that a regression leaves nothing either.
        for pid in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert_eq!(left, Vec::<u32>::new(), "the node outlived the panic");
    }
}
