//! Data requests: ask for attributes of a citizen for a purpose, and get the
//! holders' signed answers or a clear denial.
//!
//! ```no_run
//! # async fn demo(client: mim4_sdk::Client) -> Result<(), mim4_sdk::RequestError> {
//! let answer = client
//!     .request("fi:hetu:010180-1234")
//!     .service("fi.helsinki/early-education")
//!     .purpose("dpv:ServiceProvision")
//!     .attributes(["income.gross_monthly"])
//!     .predicate("income.gross_monthly", "<=", 4000)
//!     .send()
//!     .await?;
//! println!("{:?}", answer.value("income.gross_monthly"));
//! # Ok(()) }
//! ```

use crate::{pb, CallError, Client};

/// Why a data request failed as a whole. Partial answers are not errors:
/// see [`DataAnswer::withheld`] and [`DataAnswer::failures`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Every attribute was withheld for lack of a valid consent.
    #[error("denied: {0}")]
    Denied(String),
    /// No holder knows the subject (or the attributes).
    #[error("not found: {0}")]
    NotFound(String),
    /// A holder could not be reached; nothing was answered.
    #[error("operator unreachable: {0}")]
    Unreachable(String),
    /// The request is invalid (unknown attribute, too many, purpose not registered, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The call itself failed (authentication, permission, node down, ...).
    #[error(transparent)]
    Call(#[from] CallError),
}

/// A released value.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// The attribute.
    pub attribute: String,
    /// The value as JSON.
    pub value: serde_json::Value,
    /// The holder.
    pub source: String,
    /// The consent it was released under (hex).
    pub consent_id: String,
    /// When the source read it (ms since the epoch).
    pub retrieved_at_ms: u64,
}

/// The combined answer of every holder.
#[derive(Clone, Debug, Default)]
pub struct DataAnswer {
    /// The request's id (its idempotency key).
    pub request_id: Vec<u8>,
    /// Values released.
    pub values: Vec<Value>,
    /// Predicate answers: (attribute, op, operand JSON, holds).
    pub answers: Vec<(String, String, String, bool)>,
    /// What was withheld: (attribute, code, reason).
    pub withheld: Vec<(String, String, String)>,
    /// Holders that could not answer: (operator, code, reason).
    pub failures: Vec<(String, String, String)>,
}

impl DataAnswer {
    /// The value of an attribute, if released.
    pub fn value(&self, attribute: &str) -> Option<&Value> {
        self.values.iter().find(|v| v.attribute == attribute)
    }

    /// The answer to the predicate on an attribute, if answered.
    pub fn holds(&self, attribute: &str) -> Option<bool> {
        self.answers
            .iter()
            .find(|(a, _, _, _)| a == attribute)
            .map(|(_, _, _, holds)| *holds)
    }
}

/// Builds a data request; see [`Client::request`].
#[derive(Debug)]
pub struct DataRequestBuilder<'c> {
    client: &'c Client,
    request: pb::RequestDataRequest,
}

impl Client {
    /// Starts a data request about `subject`.
    pub fn request(&self, subject: &str) -> DataRequestBuilder<'_> {
        DataRequestBuilder {
            client: self,
            request: pb::RequestDataRequest {
                subject: subject.into(),
                ..Default::default()
            },
        }
    }
}

impl DataRequestBuilder<'_> {
    /// The requesting service (`fi.helsinki/early-education`).
    pub fn service(mut self, service: &str) -> Self {
        self.request.service = service.into();
        self
    }

    /// The purpose, a DPV term.
    pub fn purpose(mut self, purpose: &str) -> Self {
        self.request.purpose = purpose.into();
        self
    }

    /// Attributes whose values are wanted.
    pub fn attributes<'a>(mut self, attributes: impl IntoIterator<Item = &'a str>) -> Self {
        self.request
            .attributes
            .extend(attributes.into_iter().map(str::to_owned));
        self
    }

    /// A yes/no question instead of the value ("answer, not data"); `op` is
    /// one of `<`, `<=`, `>`, `>=`, `==`, `!=`, `contains`.
    pub fn predicate(
        mut self,
        attribute: &str,
        op: &str,
        operand: impl Into<serde_json::Value>,
    ) -> Self {
        self.request.predicates.push(pb::Predicate {
            attribute: attribute.into(),
            op: op.into(),
            value_json: operand.into().to_string(),
        });
        self
    }

    /// An idempotency key: retrying with the same key is answered from the
    /// stored result and never executed twice.
    pub fn idempotency_key(mut self, key: [u8; 16]) -> Self {
        self.request.idempotency_key = key.to_vec();
        self
    }

    /// Sends the request and combines the holders' answers.
    pub async fn send(self) -> Result<DataAnswer, RequestError> {
        let mut inner = self.client.inner.clone();
        let response = inner
            .request_data(self.client.with_credential(self.request))
            .await
            .map_err(|status| match CallError::from(status) {
                CallError::InvalidRequest(m) => RequestError::Invalid(m),
                other => RequestError::Call(other),
            })?
            .into_inner();
        let mut answer = DataAnswer {
            request_id: response.request_id,
            failures: response
                .failures
                .into_iter()
                .map(|f| (f.source, f.code, f.reason))
                .collect(),
            ..Default::default()
        };
        for r in response.responses {
            for v in r.values {
                answer.values.push(Value {
                    attribute: v.attribute,
                    value: serde_json::from_str(&v.value_json).unwrap_or(serde_json::Value::Null),
                    source: r.source.clone(),
                    consent_id: hex::encode(&v.consent_id),
                    retrieved_at_ms: v.retrieved_at_ms,
                });
            }
            for a in r.answers {
                let p = a.predicate.unwrap_or_default();
                answer
                    .answers
                    .push((p.attribute, p.op, p.value_json, a.holds));
            }
            for w in r.withheld {
                answer.withheld.push((w.attribute, w.code, w.reason));
            }
        }
        let nothing_given = answer.values.is_empty() && answer.answers.is_empty();
        if nothing_given {
            if let Some((source, code, reason)) = answer.failures.first() {
                let text = format!("{source}: {reason}");
                return Err(if code == "unreachable" {
                    RequestError::Unreachable(text)
                } else {
                    RequestError::Invalid(text)
                });
            }
            let all_not_found = !answer.withheld.is_empty()
                && answer
                    .withheld
                    .iter()
                    .all(|(_, code, _)| code == "not-found");
            let summary = answer
                .withheld
                .iter()
                .map(|(a, _, reason)| format!("{a}: {reason}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(if all_not_found {
                RequestError::NotFound(summary)
            } else {
                RequestError::Denied(summary)
            });
        }
        Ok(answer)
    }
}
