//! The driver's receiving side: what a transport hands up ([`Inbound`]) is
//! run through the core's receive decision ([`Reception`]), with this module
//! performing the reads, writes, flushes and signatures it asks for; calls are
//! verified and dispatched to the consent and exchange sides.
//!
//! Also the upkeep of the replay table (pruning expired ids).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxFuture;
use tracing::{debug, info, info_span, warn};

use super::{consent, exchange, Error, Node};
use crate::clock::{now_ms, random_id_bytes};
use crate::core::delivery::SenderContext;
use crate::core::envelope::{Envelope, Payload, Verifier};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::receive::{self, Action, FlushFor, Reception, Refusal};
use crate::core::trust::VerifiedTrustList;
use crate::limits;
use crate::store;
use crate::transport::{Inbound, Operation};

impl From<store::Error> for Refusal {
    fn from(error: store::Error) -> Self {
        Refusal::Store(error.to_string())
    }
}

impl Inbound for Node {
    fn handle(
        self: Arc<Self>,
        operation: Operation,
        envelope: Vec<u8>,
        peer: Option<OperatorId>,
    ) -> BoxFuture<Vec<u8>, Refusal> {
        Box::pin(async move {
            match operation {
                Operation::Deliver => self.receive(&envelope, peer.as_ref()).await,
                Operation::Call => self.answer_call(&envelope, peer.as_ref()).await,
            }
        })
    }

    fn trust(&self) -> Arc<VerifiedTrustList> {
        Node::trust(self)
    }

    fn heard_trust_version(self: Arc<Self>, member: &OperatorId, version: u64) {
        self.reconcile_trust_version(member, version);
    }
}

impl Node {
    /// A verifier of envelopes addressed to this node under `trust`.
    pub(super) fn verifier<'a>(&'a self, trust: &'a VerifiedTrustList) -> Verifier<'a> {
        Verifier {
            me: &self.config.operator_id,
            trust,
            limits: self.config.envelope_limits,
        }
    }

    /// The header fields of every envelope this node signs under `trust_list_version`.
    pub(super) fn sender_context(&self, trust_list_version: u64) -> SenderContext<'_> {
        SenderContext {
            me: &self.config.operator_id,
            rulebook_version: &self.config.rulebook_version,
            trust_list_version,
            lifetime_ms: self.config.message_lifetime_ms,
        }
    }

    /// Verifies, applies and durably records a received envelope, and returns
    /// the encoded signed receipt: the core's [`Reception`] decides each step
    /// and this performs it. Cancel-safe up to the flush: if the caller goes
    /// away after the write, the write is still flushed by the next one.
    ///
    /// `peer` is the member the TLS connection authenticated (`None` only in
    /// plaintext mode); an envelope signed by anyone else is refused.
    pub async fn receive(
        self: &Arc<Self>,
        bytes: &[u8],
        peer: Option<&OperatorId>,
    ) -> Result<Vec<u8>, Refusal> {
        let now = now_ms();
        let trust = self.trust();
        let context = self.sender_context(trust.version());
        let receipt_id = MessageId::from_bytes(random_id_bytes());
        let mut reception = match Reception::new(
            &self.verifier(&trust),
            bytes,
            peer,
            now,
            receipt_id,
            &context,
        ) {
            Ok(reception) => reception,
            Err(refusal) => {
                warn!(%refusal, "envelope refused");
                return Err(refusal);
            }
        };
        let envelope = reception.envelope();
        let span = info_span!("receive", message_id = %envelope.message_id, sender = %envelope.sender, kind = envelope.payload.kind());
        let (sender, version) = (envelope.sender.clone(), envelope.trust_list_version);
        let answer = self.perform(&mut reception, bytes, &trust).await;
        let _entered = span.enter();
        match &answer {
            Ok(_) => {
                info!("applied");
                self.reconcile_trust_version(&sender, version);
            }
            Err(refusal) => warn!(%refusal, "envelope refused"),
        }
        answer
    }

    /// Carries out what `reception` asks for until it answers.
    async fn perform(
        self: &Arc<Self>,
        reception: &mut Reception,
        bytes: &[u8],
        trust: &VerifiedTrustList,
    ) -> Result<Vec<u8>, Refusal> {
        while let Some(action) = reception.poll() {
            match action {
                Action::LookUpPrior(id) => {
                    reception.handle_prior(self.store.applied(&id)?, trust);
                }
                Action::ApplyConsent => {
                    let envelope = reception.envelope();
                    let applied = self
                        .apply_consent_payload(&envelope.sender, &envelope.payload)
                        .await
                        .map_err(|error| notice_refusal(envelope, error));
                    reception.handle_applied(applied);
                }
                Action::Sign(receipt) => reception.handle_signed(receipt.seal(&self.key)),
                Action::Record(record) => {
                    let recorded = self.store.record_applied(store::AppliedMessage {
                        message_id: record.message_id,
                        sender: &record.sender,
                        body_sha256: record.body_sha256,
                        expires_at_ms: record.expires_at_ms,
                        applied_at_ms: record.applied_at_ms,
                        envelope: bytes,
                        receipt: &record.receipt,
                        new_trust_list: record.trust_list.as_deref(),
                        subject: record.subject.as_ref(),
                    })?;
                    reception.handle_recorded(recorded.is_some());
                }
                Action::Flush(why) => {
                    self.flush_for(why).await?;
                    reception.handle_flushed();
                }
                Action::InstallTrust(newer) => self.install_trust(*newer),
                Action::Answer(answer) => return answer,
            }
        }
        Err(Refusal::Store(
            "the receive decision ended without an answer".into(),
        ))
    }

    /// Makes the writes so far durable before an acknowledgement leaves. The
    /// test-only `broken-ack-before-flush` feature skips it, so the crash
    /// loop can show that it catches the bug.
    async fn flush_for(&self, why: FlushFor) -> Result<(), store::Error> {
        debug!(?why, "flushing before the answer");
        #[cfg(not(feature = "broken-ack-before-flush"))]
        self.store.durable().await?;
        Ok(())
    }

    /// Answers a call: verifies the request (calls read and change nothing, so
    /// no replay entry is kept) and returns the signed answer.
    /// `peer` is as for [`Node::receive`].
    pub async fn answer_call(
        self: &Arc<Self>,
        bytes: &[u8],
        peer: Option<&OperatorId>,
    ) -> Result<Vec<u8>, Refusal> {
        let trust = self.trust();
        let verifier = self.verifier(&trust);
        let verified = verifier.verify(bytes, now_ms()).map_err(|rejection| {
            warn!(reason = %rejection.reason, "call refused");
            Refusal::Rejected {
                rejection,
                receipt: None,
            }
        })?;
        let request = verified.into_envelope();
        receive::check_sent_by_peer(&request, peer)
            .inspect_err(|refusal| warn!(%refusal, "call refused"))?;
        let unusable = |reason: String| Refusal::Unusable {
            message_id: request.message_id,
            sender: request.sender.clone(),
            reason,
        };
        let answer = match &request.payload {
            Payload::ConsentStatusQuery(id) => {
                self.answer_status_query(id).map_err(Refusal::NotFound)?
            }
            Payload::DataRequest(data_request) => {
                match self
                    .serve_data_request(&request.sender, data_request.clone())
                    .await
                {
                    Ok(response) => Payload::DataResponse(response),
                    Err(exchange::ExchangeError::Invalid(e)) => {
                        return Err(unusable(e.to_string()))
                    }
                    Err(exchange::ExchangeError::Source(e)) => {
                        return Err(Refusal::Unavailable(e.to_string()))
                    }
                    Err(exchange::ExchangeError::Store(e)) => return Err(e.into()),
                }
            }
            other => return Err(unusable(format!("a {} is not a call", other.kind()))),
        };
        let sealed = self
            .sender_context(trust.version())
            .envelope(
                MessageId::from_bytes(random_id_bytes()),
                request.sender.clone(),
                now_ms(),
                Some(request.message_id),
                answer,
            )
            .seal(&self.key);
        Ok(sealed.bytes)
    }
}

/// Why a consent notice was not applied, as the peer is told: over a limit
/// with the limit's reason, a storage failure as one (the sender retries),
/// anything else as unusable.
fn notice_refusal(envelope: &Envelope, error: consent::ConsentError) -> Refusal {
    if let Some(reason) = error.limit_reason() {
        return Refusal::OverLimit {
            message_id: envelope.message_id,
            sender: envelope.sender.clone(),
            reason,
            message: error.to_string(),
        };
    }
    match error {
        consent::ConsentError::Store(e) => e.into(),
        other => Refusal::Unusable {
            message_id: envelope.message_id,
            sender: envelope.sender.clone(),
            reason: other.to_string(),
        },
    }
}

/// Deletes replay-table entries whose messages have expired (plus the clock
/// skew), in bounded batches, once a minute.
pub(crate) async fn prune_loop(shared: Arc<Node>, cancel: CancellationToken) -> Result<(), Error> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(limits::PRUNE_INTERVAL_MS)) => {}
        }
        let before = now_ms().saturating_sub(shared.config.envelope_limits.clock_skew_ms_max);
        let pruned = shared.store.prune_seen(before, limits::PRUNE_BATCH_MAX)?;
        if pruned > 0 {
            debug!(pruned, "pruned expired message ids from the replay window");
        }
    }
}
