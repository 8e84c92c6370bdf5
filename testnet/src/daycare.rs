//! The Helsinki daycare-fee scenario, run against a running testnet.
//!
//! Helsinki early education sets a family's daycare fee from both parents'
//! gross monthly income, held by the national income register (another
//! operator). Each parent consents at their home operator (Helsinki); the
//! service asks for both incomes, computes the fee, asks a predicate-only
//! variant ("is the income below the threshold?") that reveals no amount, and
//! after one parent withdraws, the next request is denied.

use std::time::Duration;

use anyhow::{bail, Context as _};
use mim4_sdk::{Client, ConsentId, RequestError, Terms};

use crate::Federation;

/// The early-education service.
const SERVICE: &str = "fi.helsinki/early-education";
const PURPOSE: &str = "dpv:ServiceProvision";
const INCOME: &str = "income.gross_monthly";
/// The two parents (fictitious personal identity codes).
const PARENTS: [&str; 2] = ["fi:hetu:010180-123N", "fi:hetu:020282-456P"];

/// Simplified Helsinki rule for a family of three: 10.7 % of the income above
/// 4,066 €/month, at most 311 €/month.
const THRESHOLD_EUR: f64 = 4_066.0;
const RATE: f64 = 0.107;
const FEE_MAX_EUR: f64 = 311.0;

/// One line of the report.
fn step(n: usize, text: &str) {
    println!("  {n}. {text}");
}

/// Runs the scenario; fails if any expectation does not hold.
pub async fn run(federation: &Federation) -> anyhow::Result<()> {
    let home = federation.operator("fi.helsinki")?;
    federation.operator("fi.incomeregister").context(
        "the daycare scenario needs the income register (run with --operators 2 or more)",
    )?;
    let service = Client::connect(&home.api_url(), &home.credential("early-education")?).await?;
    let citizen_app = Client::connect(&home.api_url(), &home.credential("citizen-app")?).await?;

    println!("\nHelsinki daycare fee (early education asks the income register for both parents' income):");
    let mut consents: Vec<ConsentId> = Vec::new();
    for parent in PARENTS {
        let terms = Terms::consent(parent, "fi.helsinki", SERVICE, "fi.incomeregister")
            .read(INCOME)
            .purpose(PURPOSE)
            .purpose_text("Setting the family's early-education fee")
            .build();
        let id = service.request_consent(terms).await?;
        citizen_app.grant(id, parent, None).await?;
        consents.push(id);
    }
    step(
        1,
        &format!(
            "both parents granted consent at Helsinki ({} and {})",
            consents[0], consents[1]
        ),
    );

    let incomes = retry_until_given(|| async {
        let mut incomes = Vec::new();
        for parent in PARENTS {
            let answer = service
                .request(parent)
                .service(SERVICE)
                .purpose(PURPOSE)
                .attributes([INCOME])
                .send()
                .await?;
            let value = answer
                .value(INCOME)
                .and_then(|v| v.value.as_f64())
                .ok_or_else(|| RequestError::Denied(format!("no income for {parent}")))?;
            incomes.push(value);
        }
        Ok(incomes)
    })
    .await?;
    let family = incomes.iter().sum::<f64>();
    let fee = ((family - THRESHOLD_EUR) * RATE).clamp(0.0, FEE_MAX_EUR);
    step(
        2,
        &format!(
            "signed answers from fi.incomeregister: {} + {} = {family} €/month; monthly fee {fee:.2} €",
            incomes[0], incomes[1]
        ),
    );

    let answer = service
        .request(PARENTS[0])
        .service(SERVICE)
        .purpose(PURPOSE)
        .predicate(INCOME, "<=", THRESHOLD_EUR)
        .send()
        .await?;
    let below = answer
        .holds(INCOME)
        .context("the predicate was not answered")?;
    if !answer.values.is_empty() {
        bail!("a predicate-only answer carried values");
    }
    step(3, &format!("predicate only: \"income of parent 1 <= {THRESHOLD_EUR} €\" is {below}; no amount revealed"));

    citizen_app.withdraw(consents[1], PARENTS[1], None).await?;
    let denied = retry_until_denied(|| async {
        service
            .request(PARENTS[1])
            .service(SERVICE)
            .purpose(PURPOSE)
            .attributes([INCOME])
            .send()
            .await
    })
    .await?;
    step(
        4,
        &format!("parent 2 withdrew; the next request is denied: {denied}"),
    );
    println!("  daycare scenario: all expectations met");
    Ok(())
}

/// Retries while the register has not yet received the granted consent
/// (it travels through the outbox), for at most 30 s.
async fn retry_until_given<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RequestError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(RequestError::Denied(reason)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%reason, "consent not yet at the source; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("request failed: {e}"),
        }
    }
}

/// Retries until the request is denied (the withdrawal has reached the source), at most 30 s.
async fn retry_until_denied<T, F, Fut>(mut attempt: F) -> anyhow::Result<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RequestError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Err(RequestError::Denied(reason)) => return Ok(reason),
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) => bail!("still answered 30 s after the withdrawal"),
            Err(e) => bail!("request failed: {e}"),
        }
    }
}
