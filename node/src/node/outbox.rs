//! The driver's sending side: sealing a message into the outbox (durable
//! before the caller hears of it), the delivery loop that retries each one
//! until its receipt verifies, and synchronous calls to a peer.
//!
//! The retry policy is the core's ([`Scheduler`], `handle_*` in, `poll_*`
//! out); this module only performs what it asks for over [`Peers`].

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::{Error, Node};
use crate::clock::{now_ms, random_id_bytes};
use crate::core::delivery::{self, Expected, ReceiptError};
use crate::core::envelope::{Payload, Rejection};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::outbox::{Backoff, Scheduler};
use crate::core::trust::{MemberStatus, VerifiedTrustList};
use crate::limits;
use crate::store::{self, Outgoing, OutgoingState};
use crate::transport::{PeerError, Peers};

/// Errors of [`Shared::send`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The recipient is not an active member.
    #[error("{0} is not an active member of the federation")]
    UnknownRecipient(OperatorId),
    /// A node does not send to itself.
    #[error("a node does not send messages to itself")]
    ToSelf,
    /// The envelope would exceed the size limit.
    #[error("message is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The node could not store the message.
    #[error("storage failure: {0}")]
    Store(#[from] store::Error),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The trust list held has expired: the node sends nothing until it has a newer one.
    #[error(
        "this node's trust list expired: version {version} was valid until {valid_until_ms} ms; \
         it sends nothing until it fetches a newer one from a peer or an admin installs one"
    )]
    TrustListExpired {
        /// Version of the expired list.
        version: u64,
        /// End of its validity.
        valid_until_ms: u64,
    },
}

/// Errors of [`Shared::call`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The trust list held has expired: the node calls no one until it has a newer one.
    #[error("{0}")]
    TrustListExpired(String),
    /// The callee is not an active member.
    #[error("{0} is not an active member of the federation")]
    NotAMember(OperatorId),
    /// The transports did not reach the callee, or it refused the call.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The answer does not verify.
    #[error("the answer does not verify: {0}")]
    BadAnswer(Rejection),
    /// A verified envelope, but not the callee's answer to this call.
    #[error("{0} answered with an envelope that does not answer this call")]
    NotTheAnswer(OperatorId),
}

impl CallError {
    /// The callee was not reached or could not answer (on every transport
    /// it offers), as opposed to a verdict on the call itself.
    pub fn is_unreachable(&self) -> bool {
        match self {
            CallError::Peer(PeerError::Unreachable(_)) => true,
            // The peer's own "unavailable" or deadline verdict, or a status
            // its stack produced without a verdict (`Unknown`).
            CallError::Peer(PeerError::Refused { code, .. }) => matches!(
                code,
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
            ),
            _ => false,
        }
    }

    /// The callee refused the call with `code`.
    pub fn is_refused_with(&self, code: Code) -> bool {
        matches!(self, CallError::Peer(PeerError::Refused { code: c, .. }) if *c == code)
    }
}

/// Why one delivery attempt failed; kept as the outbox entry's
/// `last_error` (`ListOutbox` shows it) and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The outbox could not be read or updated.
    #[error("storage failure: {0}")]
    Store(#[from] store::Error),
    /// Nothing goes out under an expired trust list.
    #[error("{0}")]
    TrustListExpired(String),
    /// The recipient left the trust list since the message was sent.
    #[error("{0} is no longer in the trust list")]
    NotAMember(OperatorId),
    /// No transport reached the recipient, or it refused the envelope.
    #[error("{error}{hint}")]
    Peer {
        /// What the transports said.
        error: PeerError,
        /// The likely cause on this side (this operator suspended), or empty.
        hint: String,
    },
    /// The receipt does not acknowledge this message.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// No answer within the delivery deadline (ms).
    #[error("no answer within {0} ms")]
    Timeout(u64),
}

/// A newly stored outgoing message, announced to the delivery loop.
#[derive(Debug)]
pub(super) struct Enqueued {
    id: MessageId,
    recipient: OperatorId,
    expires_at_ms: u64,
}

/// What the sending side owns: the clients of both transports and the
/// delivery loop's wake-up queue.
#[derive(Debug)]
pub(super) struct Outbox {
    /// Clients of both transports (gRPC and libp2p).
    pub(super) peers: Peers,
    enqueued: mpsc::Sender<Enqueued>,
}

impl Outbox {
    /// The sending side over `peers`, and the receiver of its wake-up queue
    /// for [`DeliveryLoop::new`].
    pub(super) fn new(peers: Peers) -> (Self, mpsc::Receiver<Enqueued>) {
        let (enqueued, woken) = mpsc::channel(limits::OUTBOX_WAKE_QUEUE);
        (Self { peers, enqueued }, woken)
    }
}

impl Node {
    /// Seals a message to `recipient`, stores it durably in the outbox and
    /// hands it to the delivery loop. Returns once it is durable.
    pub async fn send(
        self: &Arc<Self>,
        recipient: OperatorId,
        payload: Payload,
    ) -> Result<MessageId, SendError> {
        if &recipient == self.operator_id() {
            return Err(SendError::ToSelf);
        }
        let trust = self.trust();
        let now = now_ms();
        if !trust.is_current(now) {
            return Err(SendError::TrustListExpired {
                version: trust.version(),
                valid_until_ms: trust.list().valid_until_ms,
            });
        }
        // Notices go to active members; a trust-list update also reaches suspended ones.
        let reachable = |status| match &payload {
            Payload::TrustListUpdate(_) => status != MemberStatus::Revoked,
            _ => status == MemberStatus::Active,
        };
        if !trust
            .member(&recipient)
            .is_some_and(|m| reachable(m.status))
        {
            return Err(SendError::UnknownRecipient(recipient));
        }
        let subject = payload.subject();
        let envelope = self.sender_context(trust.version()).envelope(
            MessageId::from_bytes(random_id_bytes()),
            recipient.clone(),
            now,
            None,
            payload,
        );
        let sealed = envelope.seal(&self.key);
        if sealed.bytes.len() > self.config.envelope_limits.message_bytes_max {
            return Err(SendError::TooLarge {
                size: sealed.bytes.len(),
                max: self.config.envelope_limits.message_bytes_max,
            });
        }
        let outgoing = Outgoing {
            recipient: recipient.clone(),
            envelope_sha256: sha256(&sealed.bytes),
            envelope: sealed.bytes,
            body_sha256: sealed.body_sha256,
            expires_at_ms: envelope.expires_at_ms,
            state: OutgoingState::Pending,
            attempts: 0,
            last_error: None,
            receipt: None,
        };
        self.store
            .enqueue(sealed.message_id, &outgoing, subject.as_ref())?;
        self.store.durable().await?;
        debug!(message_id = %sealed.message_id, %recipient, "stored in outbox");
        self.outbox
            .enqueued
            .send(Enqueued {
                id: sealed.message_id,
                recipient,
                expires_at_ms: envelope.expires_at_ms,
            })
            .await
            .map_err(|_| SendError::ShuttingDown)?;
        Ok(sealed.message_id)
    }

    /// Sends a synchronous request to `to` and returns its verified answer.
    pub async fn call(
        self: &Arc<Self>,
        to: OperatorId,
        payload: Payload,
    ) -> Result<Payload, CallError> {
        let trust = self.trust();
        if !trust.is_current(now_ms()) {
            return Err(CallError::TrustListExpired(trust_expired_message(&trust)));
        }
        let member = trust
            .member(&to)
            .filter(|m| m.status == MemberStatus::Active)
            .ok_or_else(|| CallError::NotAMember(to.clone()))?;
        let request_id = MessageId::from_bytes(random_id_bytes());
        let sealed = self
            .sender_context(trust.version())
            .envelope(request_id, to.clone(), now_ms(), None, payload)
            .seal(&self.key);
        let answer = self.outbox.peers.call(member, sealed.bytes).await?;
        let verified = self
            .verifier(&trust)
            .verify(&answer, now_ms())
            .map_err(CallError::BadAnswer)?;
        let envelope = verified.into_envelope();
        if envelope.sender != to || envelope.in_reply_to != Some(request_id) {
            return Err(CallError::NotTheAnswer(to));
        }
        Ok(envelope.payload)
    }

    /// One delivery attempt: send the stored bytes, check the receipt, mark delivered.
    async fn deliver_once(self: Arc<Self>, id: MessageId) -> Result<(), AttemptError> {
        let outgoing = self.store.outgoing(&id)?;
        let Some(outgoing) = outgoing else {
            // Gone with the erasure of the citizen it was about: nothing to send.
            debug!(message_id = %id, "no longer in the outbox (its subject was erased)");
            return Ok(());
        };
        if outgoing.state != OutgoingState::Pending {
            return Ok(());
        }
        let trust = self.trust();
        if !trust.is_current(now_ms()) {
            // Kept in the outbox, retried with backoff once a newer list is in force.
            return Err(AttemptError::TrustListExpired(trust_expired_message(
                &trust,
            )));
        }
        let member = trust
            .member(&outgoing.recipient)
            .ok_or_else(|| AttemptError::NotAMember(outgoing.recipient.clone()))?;
        let receipt = self
            .outbox
            .peers
            .deliver(member, outgoing.envelope.clone())
            .await
            .map_err(|error| AttemptError::Peer {
                error,
                // Over TLS a peer refuses a suspended member at the handshake,
                // before any reason can travel back: name the likely cause.
                hint: match trust.member(self.operator_id()).map(|m| m.status) {
                    Some(MemberStatus::Active) => String::new(),
                    Some(status) => format!(
                        " (this operator is {} in trust list version {}, so peers refuse it)",
                        status.as_str(),
                        trust.version()
                    ),
                    None => format!(
                        " (this operator is not in trust list version {})",
                        trust.version()
                    ),
                },
            })?;
        let expected = Expected {
            message_id: id,
            recipient: &outgoing.recipient,
            body_sha256: outgoing.body_sha256,
        };
        let (verified, _) = delivery::check_receipt(
            &self.config.operator_id,
            &trust,
            self.config.envelope_limits,
            &receipt,
            &expected,
            now_ms(),
        )?;
        self.store.update_outgoing(&id, |o| {
            o.state = OutgoingState::Delivered;
            o.attempts = o.attempts.saturating_add(1);
            o.receipt = Some(receipt.clone());
            o.last_error = None;
        })?;
        info!(message_id = %id, recipient = %outgoing.recipient, "delivered; receipt verified");
        self.reconcile_trust_version(&outgoing.recipient, verified.envelope().trust_list_version);
        Ok(())
    }
}

/// Why nothing goes out under an expired list, naming the list.
fn trust_expired_message(trust: &VerifiedTrustList) -> String {
    format!(
        "trust_list_expired: this node's trust list version {} was valid until {} ms; \
         nothing is sent until a newer one is in force",
        trust.version(),
        trust.list().valid_until_ms
    )
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Runs the outbox: starts attempts when due, records outcomes, expires the undeliverable.
pub(crate) struct DeliveryLoop {
    shared: Arc<Node>,
    scheduler: Scheduler,
    enqueued: mpsc::Receiver<Enqueued>,
    attempts: JoinSet<(MessageId, Result<(), AttemptError>)>,
}

impl DeliveryLoop {
    pub(super) fn new(
        shared: Arc<Node>,
        enqueued: mpsc::Receiver<Enqueued>,
    ) -> Result<Self, Error> {
        let mut scheduler = Scheduler::new(
            Backoff {
                initial_ms: limits::RETRY_DELAY_MS_INITIAL,
                max_ms: limits::RETRY_DELAY_MS_MAX,
            },
            limits::IN_FLIGHT_PER_PEER_MAX,
            limits::IN_FLIGHT_TOTAL_MAX,
        );
        let pending = shared.store.pending()?;
        if !pending.is_empty() {
            info!(
                count = pending.len(),
                "resuming delivery of pending messages"
            );
        }
        let now = now_ms();
        for (id, outgoing) in pending {
            scheduler.handle_enqueued(
                id,
                outgoing.recipient,
                outgoing.expires_at_ms,
                outgoing.attempts,
                now,
            );
        }
        Ok(Self {
            shared,
            scheduler,
            enqueued,
            attempts: JoinSet::new(),
        })
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) -> Result<(), Error> {
        loop {
            let now = now_ms();
            while let Some(id) = self.scheduler.poll_expired(now) {
                warn!(message_id = %id, "message expired before a receipt came back");
                self.shared.store.update_outgoing(&id, |o| {
                    o.state = OutgoingState::Expired;
                })?;
            }
            while let Some((id, recipient)) = self.scheduler.poll_due(now) {
                let shared = self.shared.clone();
                self.attempts.spawn(
                    async move {
                        let timeout = Duration::from_millis(limits::DELIVERY_TIMEOUT_MS);
                        let outcome =
                            match tokio::time::timeout(timeout, shared.deliver_once(id)).await {
                                Ok(outcome) => outcome,
                                Err(_) => Err(AttemptError::Timeout(limits::DELIVERY_TIMEOUT_MS)),
                            };
                        (id, outcome)
                    }
                    .instrument(info_span!("deliver", message_id = %id, %recipient)),
                );
            }
            let sleep_ms = self
                .scheduler
                .poll_timeout()
                .map_or(60_000, |t| t.saturating_sub(now).max(1));
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(event) = self.enqueued.recv() => {
                    self.scheduler.handle_enqueued(event.id, event.recipient, event.expires_at_ms, 0, now_ms());
                }
                Some(joined) = self.attempts.join_next() => {
                    match joined {
                        Ok((id, Ok(()))) => self.scheduler.handle_attempt_succeeded(id),
                        Ok((id, Err(error))) => {
                            let jitter: f64 = rand::thread_rng().gen();
                            let attempts = self.scheduler.handle_attempt_failed(id, now_ms(), jitter);
                            debug!(message_id = %id, attempts, %error, "delivery attempt failed; will retry");
                            self.shared.store.update_outgoing(&id, |o| {
                                o.attempts = attempts;
                                o.last_error = Some(error.to_string());
                            })?;
                        }
                        Err(e) => warn!(error = %e, "delivery task failed"),
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            }
        }
        self.attempts.shutdown().await;
        Ok(())
    }
}
