//! Finds an operator's API address and a client's credential in a running
//! `mim4-testnet` folder (default `./.mim4-testnet`).

use std::path::PathBuf;

/// A testnet folder.
pub(crate) struct Testnet {
    dir: PathBuf,
    state: serde_json::Value,
}

impl Testnet {
    /// Opens the testnet named by the first argument, or `./.mim4-testnet`.
    pub(crate) fn from_args() -> anyhow::Result<Self> {
        let dir = PathBuf::from(
            std::env::args()
                .nth(1)
                .unwrap_or_else(|| ".mim4-testnet".into()),
        );
        let path = dir.join("testnet.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; start a testnet first: cargo run -p mim4-testnet -- up --operators 7",
                path.display()
            )
        })?;
        Ok(Self {
            state: serde_json::from_str(&text)?,
            dir,
        })
    }

    /// A client of `operator`'s API with the credential of `client`.
    pub(crate) async fn client(
        &self,
        operator: &str,
        client: &str,
    ) -> anyhow::Result<mim4_sdk::Client> {
        let op = self.state["operators"]
            .as_array()
            .and_then(|ops| ops.iter().find(|o| o["id"] == operator))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "operator {operator} is not in this testnet (start it with more --operators)"
                )
            })?;
        let api = op["api_addr"].as_str().unwrap_or_default();
        let credential =
            std::fs::read_to_string(self.dir.join(operator).join(format!("{client}.credential")))?;
        Ok(mim4_sdk::Client::connect(&format!("http://{api}"), credential.trim()).await?)
    }
}

/// Retries `attempt` while it is denied (a just-granted consent travels to
/// the source through the outbox), for at most 30 s.
pub(crate) async fn when_granted<T, F, Fut>(mut attempt: F) -> Result<T, mim4_sdk::RequestError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, mim4_sdk::RequestError>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match attempt().await {
            Err(mim4_sdk::RequestError::Denied(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}
