//! The driver's data-exchange side: answering data requests as a holder
//! (consent per attribute, reading only what is allowed, idempotent by
//! request id) and making them as a requester (routing each attribute to its
//! catalogued source, verifying the signed answers, keeping what was received
//! with the consent it came under).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::core::consent::index::Query;
use crate::core::envelope::Payload;
use crate::core::exchange::{self, DataRequest, DataResponse, RequestError};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::reason::Reason;
use crate::limits;
use crate::node::{Error, Node};
use crate::sources::registry::{LoadError, LoadReport, Registry};
use crate::sources::DataSource;
use crate::sources::SourceError;
use crate::store::{self, RequestState};

/// Errors of a data request, on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The request is invalid (unknown attribute, too many, purpose not registered, ...).
    #[error("invalid request: {0}")]
    Invalid(#[from] RequestError),
    /// The data source failed.
    #[error("{0}")]
    Source(SourceError),
    /// Storage failed.
    #[error("storage failure: {0}")]
    Store(#[from] store::Error),
}

/// The outcome of a request at one source.
#[derive(Debug, Clone)]
pub enum SourceOutcome {
    /// The source answered (values, answers and what it withheld), signed.
    Answered(DataResponse),
    /// The source could not be asked or did not answer in time.
    Failed {
        /// The source.
        source: OperatorId,
        /// `unreachable`, `refused` or `invalid-answer`.
        code: &'static str,
        /// In words.
        reason: String,
    },
}

/// Why an admin's registry load was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryLoadError {
    /// The node answers from an NGSI-LD broker.
    #[error(
        "this node answers from an NGSI-LD context broker; it has no built-in registry to load"
    )]
    NoRegistry,
    /// The document is not valid registry JSON.
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// The store failed.
    #[error(transparent)]
    Node(#[from] Error),
}

/// What the data-exchange side owns: the source this node answers from.
#[derive(Debug)]
pub(super) struct Exchange {
    /// The source this node answers data requests from.
    pub(super) source: Arc<dyn DataSource>,
    /// The built-in registry behind `source`, unless the node answers from NGSI-LD.
    pub(super) registry: Option<Registry>,
}

/// A request id for one source, derived from the caller's idempotency key so
/// that a retried request reaches each source with the same id.
fn per_source_id(request_id: MessageId, source: &OperatorId) -> MessageId {
    let digest = Sha256::new()
        .chain_update(b"mim4/v1/request-id\0")
        .chain_update(request_id.as_bytes())
        .chain_update(source.as_str().as_bytes())
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    MessageId::from_bytes(id)
}

impl Node {
    /// Answers a data request from `sender` as the holder. A request id
    /// already answered for this sender is answered from the stored response,
    /// so nothing is read or decided twice.
    pub(crate) async fn serve_data_request(
        self: &Arc<Self>,
        sender: &OperatorId,
        request: DataRequest,
    ) -> Result<DataResponse, ExchangeError> {
        if let Some(stored) = self.store.served(sender, &request.request_id)? {
            info!(request_id = %request.request_id, %sender, "repeated data request answered from the stored result");
            return Ok(stored);
        }
        let trust = self.trust();
        let me = self.operator_id().clone();
        if let Err(e) = exchange::validate(&request, &trust, sender, Some(&me)) {
            self.counters.count(Reason::DataRequestInvalid);
            warn!(request_id = %request.request_id, %sender, error = %e, "data request refused");
            return Err(e.into());
        }
        let sectors = self.sectors_of(sender);
        let now = now_ms();
        let request_id = request.request_id;
        self.store
            .set_request_state("holder", &request_id, RequestState::Requested, now)?;
        let plan = exchange::plan(&request, |attribute, action| {
            self.decide(&Query {
                subject: &request.subject,
                operator: sender,
                service: &request.service,
                sectors: &sectors,
                source: &me,
                attribute,
                action,
                purpose: &request.purpose,
                at_ms: now,
            })
        });
        self.store
            .set_request_state("holder", &request_id, RequestState::Authorised, now)?;
        let to_read = plan.attributes_to_read(&request);
        let (values, subject_known) = if to_read.is_empty() {
            (BTreeMap::new(), true)
        } else {
            match self.exchange.source.read(&request.subject, &to_read).await {
                Ok(values) => (values, true),
                Err(SourceError::UnknownSubject) => (BTreeMap::new(), false),
                Err(e) => {
                    self.counters.count(Reason::DataSourceFailed);
                    self.store.set_request_state(
                        "holder",
                        &request_id,
                        RequestState::Failed,
                        now_ms(),
                    )?;
                    return Err(ExchangeError::Source(e));
                }
            }
        };
        let response = exchange::answer(&request, plan, &me, &values, subject_known, now);
        for withheld in &response.withheld {
            self.counters.count_withheld(&withheld.code);
        }
        let outcome = if response.values.is_empty() && response.answers.is_empty() {
            RequestState::Denied
        } else {
            RequestState::Fulfilled
        };
        self.store
            .set_request_state("holder", &request_id, outcome, now_ms())?;
        self.store.put_served(sender, &request.subject, &response)?;
        self.store.durable().await?;
        info!(
            request_id = %request.request_id, %sender, service = %request.service,
            released = response.values.len(), answered = response.answers.len(),
            withheld = response.withheld.len(), "data request answered"
        );
        Ok(response)
    }

    /// Makes a data request for one of this operator's services: routes each
    /// attribute to its catalogued source, asks every source concurrently
    /// under one deadline, verifies each signed answer, and stores what was
    /// received with the consent it came under. A repeated request id is
    /// answered from the stored outcome.
    ///
    /// About 80 lines: the steps of one request (validate, look up, group by
    /// source, ask, store) read in order; each step is a call.
    pub async fn request_data(
        self: &Arc<Self>,
        request: DataRequest,
    ) -> Result<Vec<SourceOutcome>, ExchangeError> {
        let trust = self.trust();
        let me = self.operator_id().clone();
        exchange::validate(&request, &trust, &me, None)
            .inspect_err(|_| self.counters.count(Reason::DataRequestInvalid))?;
        if let Some(stored) = self.store.received(&request.request_id)? {
            return Ok(stored.into_iter().map(SourceOutcome::Answered).collect());
        }
        self.store.set_request_state(
            "requester",
            &request.request_id,
            RequestState::Requested,
            now_ms(),
        )?;
        // Route: the first catalogued source of each attribute.
        let mut by_source: BTreeMap<OperatorId, DataRequest> = BTreeMap::new();
        let source_of = |attribute| {
            trust
                .attribute(attribute)
                .and_then(|a| a.sources.first().cloned())
        };
        for attribute in &request.attributes {
            if let Some(source) = source_of(attribute) {
                by_source
                    .entry(source.clone())
                    .or_insert_with(|| sub_request(&request, &source))
                    .attributes
                    .push(attribute.clone());
            }
        }
        for predicate in &request.predicates {
            if let Some(source) = source_of(&predicate.attribute) {
                by_source
                    .entry(source.clone())
                    .or_insert_with(|| sub_request(&request, &source))
                    .predicates
                    .push(predicate.clone());
            }
        }
        let mut calls = JoinSet::new();
        for (source, sub) in by_source {
            let shared = self.clone();
            calls.spawn(async move { shared.ask_source(source, sub).await });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => warn!(error = %e, "data request task failed"),
            }
        }
        outcomes.sort_by(|a, b| source_name(a).cmp(source_name(b)));
        let answered: Vec<DataResponse> = outcomes
            .iter()
            .filter_map(|o| match o {
                SourceOutcome::Answered(r) => Some(r.clone()),
                SourceOutcome::Failed { .. } => None,
            })
            .collect();
        // Keep only complete outcomes, so a retry after a failure asks again.
        let given = answered
            .iter()
            .any(|r| !r.values.is_empty() || !r.answers.is_empty());
        let state = if answered.len() != outcomes.len() {
            RequestState::Failed
        } else if given {
            RequestState::Fulfilled
        } else {
            RequestState::Denied
        };
        if state != RequestState::Failed {
            self.store
                .put_received(&request.request_id, &request.subject, &answered)?;
        }
        self.store
            .set_request_state("requester", &request.request_id, state, now_ms())?;
        self.store.durable().await?;
        Ok(outcomes)
    }

    async fn ask_source(self: Arc<Self>, source: OperatorId, sub: DataRequest) -> SourceOutcome {
        let request_id = sub.request_id;
        if &source == self.operator_id() {
            let me = source.clone();
            return match self.serve_data_request(&me, sub).await {
                Ok(response) => SourceOutcome::Answered(response),
                Err(e) => SourceOutcome::Failed {
                    source,
                    code: "refused",
                    reason: e.to_string(),
                },
            };
        }
        let deadline = Duration::from_millis(limits::DATA_REQUEST_TIMEOUT_MS);
        let answer = tokio::time::timeout(
            deadline,
            self.call(source.clone(), Payload::DataRequest(sub)),
        )
        .await;
        let failed = |code, reason: String| {
            warn!(%source, %request_id, code, %reason, "data request failed");
            SourceOutcome::Failed {
                source: source.clone(),
                code,
                reason,
            }
        };
        match answer {
            Err(_) => failed(
                "unreachable",
                format!(
                    "{source} did not answer within {} ms",
                    limits::DATA_REQUEST_TIMEOUT_MS
                ),
            ),
            Ok(Err(e)) if e.is_unreachable() => {
                failed("unreachable", format!("{source} is unreachable: {e}"))
            }
            Ok(Err(e)) => failed("refused", e.to_string()),
            Ok(Ok(Payload::DataResponse(response))) => {
                if response.request_id != request_id || response.source != source {
                    failed(
                        "invalid-answer",
                        "the answer is for another request or from another source".into(),
                    )
                } else {
                    SourceOutcome::Answered(response)
                }
            }
            Ok(Ok(other)) => failed(
                "invalid-answer",
                format!("{source} answered with a {}", other.kind()),
            ),
        }
    }

    /// Loads registry JSON (admin API): parsed and checked whole, written in
    /// one batch, and flushed before this returns.
    pub async fn load_registry(&self, json: String) -> Result<LoadReport, RegistryLoadError> {
        let registry = self
            .exchange
            .registry
            .clone()
            .ok_or(RegistryLoadError::NoRegistry)?;
        let report = tokio::task::spawn_blocking(move || registry.load_json(&json))
            .await
            .map_err(|e| Error::Source(format!("registry load task: {e}")))??;
        self.store.durable().await.map_err(Error::from)?;
        Ok(report)
    }
}

fn sub_request(request: &DataRequest, source: &OperatorId) -> DataRequest {
    DataRequest {
        request_id: per_source_id(request.request_id, source),
        subject: request.subject.clone(),
        service: request.service.clone(),
        purpose: request.purpose.clone(),
        attributes: Vec::new(),
        predicates: Vec::new(),
    }
}

fn source_name(outcome: &SourceOutcome) -> &OperatorId {
    match outcome {
        SourceOutcome::Answered(r) => &r.source,
        SourceOutcome::Failed { source, .. } => source,
    }
}
