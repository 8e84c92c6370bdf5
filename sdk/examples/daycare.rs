//! Helsinki early education sets a daycare fee from both parents' gross
//! monthly income, held by the national income register (another operator).
//! Each parent consents at their home operator; the service then asks for both
//! incomes and gets signed answers, or a clear denial.
//!
//! ```text
//! cargo run -p mim4-testnet -- up
//! cargo run -p mim4-sdk --example daycare            # [TESTNET_DIR]
//! ```

#[path = "support/testnet.rs"]
mod support;

use mim4_sdk::Terms;

const SERVICE: &str = "fi.helsinki/early-education";
const PURPOSE: &str = "dpv:ServiceProvision";
const PARENTS: [&str; 2] = ["fi:hetu:010180-123N", "fi:hetu:020282-456P"];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let testnet = support::Testnet::from_args()?;
    // The city service and the citizens' app both talk to Helsinki's node.
    let service = testnet.client("fi.helsinki", "early-education").await?;
    let citizen_app = testnet.client("fi.helsinki", "citizen-app").await?;

    for parent in PARENTS {
        let terms = Terms::consent(parent, "fi.helsinki", SERVICE, "fi.incomeregister")
            .read("income.gross_monthly")
            .purpose(PURPOSE)
            .purpose_text("Setting the family's early-education fee")
            .build();
        let id = service.request_consent(terms).await?;
        citizen_app.grant(id, parent, None).await?;
        println!("{parent} granted consent {id}");
    }

    let mut family_income = 0.0;
    for parent in PARENTS {
        let answer = support::when_granted(|| {
            service
                .request(parent)
                .service(SERVICE)
                .purpose(PURPOSE)
                .attributes(["income.gross_monthly"])
                .send()
        })
        .await?;
        let value = answer
            .value("income.gross_monthly")
            .ok_or_else(|| anyhow::anyhow!("income of {parent} withheld: {:?}", answer.withheld))?;
        println!(
            "{parent}: {} €/month (source {}, consent {}, read at {} ms)",
            value.value, value.source, value.consent_id, value.retrieved_at_ms
        );
        family_income += value.value.as_f64().unwrap_or_default();
    }
    // Simplified Helsinki rule for a family of three.
    let fee = ((family_income - 4_066.0) * 0.107).clamp(0.0, 311.0);
    println!("family income {family_income} €/month -> daycare fee {fee:.2} €/month");
    Ok(())
}
