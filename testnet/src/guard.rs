//! A federation whose nodes are stopped on every way out of a run that
//! started them: an error, a panic, or the run's future being dropped on
//! Ctrl-C. The crash loop and chaos share it.

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
