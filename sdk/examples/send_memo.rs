//! Sends a memo to another operator through your own node and waits for the
//! recipient's signed receipt.
//!
//! ```text
//! cargo run -p mim4-sdk --example send_memo -- http://127.0.0.1:7402 "$CREDENTIAL" se.stockholm
//! ```
//! With a testnet running (`cargo run -p mim4-testnet -- up`), the API address
//! and an admin credential of each operator are in `.mim4-testnet/<operator>/`.

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(credential), Some(recipient)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: send_memo NODE_API_URL CREDENTIAL RECIPIENT_OPERATOR");
    };
    let client = mim4_sdk::Client::connect(&url, &credential).await?;
    let status = client.status().await?;
    println!(
        "connected to {} as {} ({}), trust list v{}",
        status.operator_id, status.caller_id, status.caller_role, status.trust_list_version
    );
    let id = client
        .send_message(&recipient, "hello", "first contact from the SDK example")
        .await?;
    println!("message {id} stored; waiting for the receipt ...");
    let outgoing = client.wait_delivered(id, Duration::from_secs(30)).await?;
    println!(
        "{:?} after {} attempt(s); signed receipt of {} bytes",
        outgoing.state,
        outgoing.attempts,
        outgoing.receipt.len()
    );
    Ok(())
}
