//! Arbetsförmedlingen (the Swedish public employment service) gathers a job
//! seeker's driving licence, diploma and criminal-record extract from three
//! public registers held by other operators, with the job seeker's consent
//! given at their home operator (Stockholm). One request, three signed answers.
//!
//! ```text
//! cargo run -p mim4-testnet -- up --operators 7
//! cargo run -p mim4-sdk --example job_seeker          # [TESTNET_DIR]
//! ```

#[path = "support/testnet.rs"]
mod support;

use mim4_sdk::Terms;

const SERVICE: &str = "se.arbetsformedlingen/job-matching";
const PURPOSE: &str = "dpv:RecruitmentAndHiring";
const JOB_SEEKER: &str = "se:pnr:19900101-1234";
/// (attribute, register holding it).
const DOCUMENTS: [(&str, &str); 3] = [
    ("licence.driving.classes", "se.transportstyrelsen"),
    ("education.diplomas", "se.uhr"),
    ("criminal_record.extract", "se.polisen"),
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let testnet = support::Testnet::from_args()?;
    let service = testnet
        .client("se.arbetsformedlingen", "job-matching")
        .await?;
    // The job seeker's home operator is Stockholm; their app acts there.
    let citizen_app = testnet.client("se.stockholm", "citizen-app").await?;

    // One consent flow: a consent per register, all granted in one go.
    for (attribute, register) in DOCUMENTS {
        let terms = Terms::consent(JOB_SEEKER, "se.stockholm", SERVICE, register)
            .read(attribute)
            .purpose(PURPOSE)
            .purpose_text("Verifying certificates for job applications")
            .build();
        let id = service.request_consent(terms).await?;
        // The request travels to Stockholm through the outbox; grant once it is there.
        let view = loop {
            match citizen_app.grant(id, JOB_SEEKER, None).await {
                Ok(view) => break view,
                Err(mim4_sdk::CallError::NotFound(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        println!(
            "consent {id} for {attribute} from {register}: {}",
            view.status
        );
    }

    let attributes = DOCUMENTS.map(|(a, _)| a);
    let answer = support::when_granted(|| {
        service
            .request(JOB_SEEKER)
            .service(SERVICE)
            .purpose(PURPOSE)
            .attributes(attributes)
            .send()
    })
    .await?;
    for value in &answer.values {
        println!(
            "{}: {} (signed by {})",
            value.attribute, value.value, value.source
        );
    }
    for (attribute, code, reason) in &answer.withheld {
        println!("{attribute}: withheld ({code}): {reason}");
    }
    for (source, code, reason) in &answer.failures {
        println!("{source}: {code}: {reason}");
    }
    Ok(())
}
