//! The receive decision: what a node does with one received envelope, as a
//! sans-IO state machine that the driver (and the simulation) runs.
//!
//! The rule, in order: verify the envelope (every check of
//! [`Verifier::verify`]) → its signer is the member the connection
//! authenticated → it was not applied before (the replay table) → apply its
//! payload → sign a receipt → record the replay entry, the inbox entry and
//! any new trust list in one transaction → **flush** → only then answer with
//! the receipt. A replay of an applied message is answered with the receipt
//! stored the first time, and also only once that first write is durable (the
//! first copy's flush may still be pending: found by the simulation, seed 27).
//!
//! # Call order
//! [`Reception::new`] verifies; then the driver loops on
//! [`Reception::poll`], performs the [`Action`] it returns (a read, a write,
//! a flush, a signature, applying a consent notice), and reports the outcome
//! with the matching `handle_*`, until [`Action::Answer`], which is final. The
//! machine owns everything it needs, so a driver may keep it across awaits and
//! a simulator across simulated time.

use crate::core::consent::SubjectId;
use crate::core::delivery::{self, Applied, SenderContext};
use crate::core::envelope::{
    Envelope, Payload, RejectReason, Rejection, Sealed, VerifiedEnvelope, Verifier,
};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::reason::Reason;
use crate::core::trust::{TrustListError, VerifiedTrustList};

/// Why a received envelope (a notice or a call) was not applied or answered.
///
/// The chain of one refusal, from the core to the wire: the envelope checks
/// give a [`RejectReason`] inside a [`Rejection`] (what could be read of the
/// envelope); the receive decision and the call handlers give a `Refusal`
/// (one of which wraps the `Rejection`); the transports turn it into a
/// `transport::Verdict` (a gRPC code, a [`Reason`], a message, a stored
/// receipt), the same on gRPC and libp2p; the sender's side reads that back
/// as a `transport::PeerError`.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The envelope failed verification or replay checks.
    #[error("{rejection}")]
    Rejected {
        /// What and why.
        rejection: Rejection,
        /// For a replay: the receipt stored when the message was first applied.
        receipt: Option<Vec<u8>>,
    },
    /// The envelope is valid but its payload cannot be applied.
    #[error("message {message_id} from {sender} cannot be applied: {reason}")]
    Unusable {
        /// Message id.
        message_id: MessageId,
        /// Sender.
        sender: OperatorId,
        /// Why.
        reason: String,
    },
    /// The payload is valid but would take this node over one of the
    /// limits' bounds (`RESOURCE_EXHAUSTED`, with the limit's reason).
    #[error("message {message_id} from {sender} is over a limit: {message}")]
    OverLimit {
        /// Message id.
        message_id: MessageId,
        /// Sender.
        sender: OperatorId,
        /// The limit's stable reason, e.g. [`Reason::TooManyConsents`].
        reason: Reason,
        /// Text for people.
        message: String,
    },
    /// The node cannot answer now (its data source is down); retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A call asked for something this node does not hold.
    #[error("not found: {0}")]
    NotFound(String),
    /// The node failed to store it; the sender should retry.
    #[error("storage failure, retry later: {0}")]
    Store(String),
    /// A valid envelope of another member than the one the TLS connection
    /// authenticated: a member delivers only envelopes it signed itself.
    #[error(
        "envelope {message_id} is signed by {sender}, but the TLS connection is \
         authenticated as {peer}; a member sends only its own envelopes"
    )]
    NotFromPeer {
        /// Message id.
        message_id: MessageId,
        /// The envelope's (verified) sender.
        sender: OperatorId,
        /// The member the connection authenticated.
        peer: OperatorId,
    },
}

impl Refusal {
    /// The stable reason the peer is told.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Rejected { rejection, .. } => rejection.reason.reason(),
            Refusal::Unusable { .. } => Reason::Unusable,
            Refusal::OverLimit { reason, .. } => *reason,
            Refusal::NotFound(_) => Reason::NotFound,
            Refusal::Unavailable(_) => Reason::Unavailable,
            Refusal::Store(_) => Reason::StoreFailure,
            Refusal::NotFromPeer { .. } => Reason::NotFromPeer,
        }
    }

    /// An envelope refused by a check of the core.
    pub fn rejected(rejection: Rejection) -> Self {
        Refusal::Rejected {
            rejection,
            receipt: None,
        }
    }
}

/// Refuses a verified envelope whose sender is not `peer`, the member the TLS
/// connection (or the noise handshake) authenticated; no check in plaintext
/// mode, where `peer` is `None`.
pub fn check_sent_by_peer(envelope: &Envelope, peer: Option<&OperatorId>) -> Result<(), Refusal> {
    match peer {
        Some(peer) if peer != &envelope.sender => Err(Refusal::NotFromPeer {
            message_id: envelope.message_id,
            sender: envelope.sender.clone(),
            peer: peer.clone(),
        }),
        _ => Ok(()),
    }
}

/// What the driver does next for one received envelope.
#[must_use]
#[derive(Debug)]
pub enum Action {
    /// Read the replay table's entry for this id (the applied record and the
    /// receipt stored with it), then call [`Reception::handle_prior`].
    LookUpPrior(MessageId),
    /// Apply the consent notice ([`Reception::envelope`]'s payload) to the
    /// node's consent records: idempotent writes, made durable by the same
    /// flush as the replay entry; then call [`Reception::handle_applied`].
    ApplyConsent,
    /// Sign this receipt with the operator key, then call [`Reception::handle_signed`].
    Sign(Box<Envelope>),
    /// Write the record in one transaction (failing if the id is already
    /// recorded: a concurrent copy), then call [`Reception::handle_recorded`].
    Record(Record),
    /// Make every write so far durable, then call [`Reception::handle_flushed`].
    Flush(FlushFor),
    /// Put this trust list in force: it is recorded and durable.
    InstallTrust(Box<VerifiedTrustList>),
    /// The answer to the sender: the encoded receipt, or why not. Final.
    Answer(Result<Vec<u8>, Refusal>),
}

/// Why a flush is asked for (a broken test variant skips some).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushFor {
    /// This message's own writes, before its receipt leaves.
    Applied,
    /// The first copy's writes, before its stored receipt goes back to a replay.
    Replay,
}

/// What the driver writes for an applied message, in one transaction, with
/// the received envelope bytes (which it holds).
#[derive(Clone, Debug)]
pub struct Record {
    /// The message id (the replay table's key).
    pub message_id: MessageId,
    /// The verified sender.
    pub sender: OperatorId,
    /// SHA-256 of the applied body.
    pub body_sha256: [u8; 32],
    /// When the message expires (the replay entry is kept until then).
    pub expires_at_ms: u64,
    /// When it was applied.
    pub applied_at_ms: u64,
    /// The encoded signed receipt, returned again to replays.
    pub receipt: Vec<u8>,
    /// The encoded signed trust list, when the message installs one.
    pub trust_list: Option<Vec<u8>>,
    /// The citizen the message is about, whose data key seals the inbox entry.
    pub subject: Option<SubjectId>,
}

/// The effect of the payload, decided before anything is written.
#[derive(Clone, Debug)]
enum Effect {
    /// Nothing beyond the record (a memo, an old trust list).
    None,
    /// A consent notice the driver applies.
    Consent,
    /// A newer trust list, installed once durable.
    Trust(Box<VerifiedTrustList>),
}

#[derive(Clone, Debug)]
enum Stage {
    LookUp,
    Apply,
    Sign,
    Record(Sealed),
    /// Waiting for a flush; then go on to the boxed stage.
    Flush(FlushFor, Box<Stage>),
    /// Install the new trust list, then answer with this receipt.
    Install(Vec<u8>),
    Answer(Result<Vec<u8>, Refusal>),
    Done,
}

/// One received envelope on its way through the receive decision.
#[derive(Clone, Debug)]
pub struct Reception {
    verified: VerifiedEnvelope,
    now_ms: u64,
    /// The receipt to sign, addressed to the sender.
    receipt: Envelope,
    /// A concurrent copy was recorded first: the next look-up must find it.
    raced: bool,
    /// What applying the payload does, or why it cannot be applied.
    effect: Result<Effect, String>,
    stage: Stage,
}

impl Reception {
    /// Verifies `bytes` under `verifier`'s trust list at `now_ms` and checks
    /// that the signer is `peer`. `receipt_id` (fresh random) and `context`
    /// make the receipt, should the message be applied.
    pub fn new(
        verifier: &Verifier<'_>,
        bytes: &[u8],
        peer: Option<&OperatorId>,
        now_ms: u64,
        receipt_id: MessageId,
        context: &SenderContext<'_>,
    ) -> Result<Self, Refusal> {
        let verified = verifier.verify(bytes, now_ms).map_err(Refusal::rejected)?;
        check_sent_by_peer(verified.envelope(), peer)?;
        let receipt = context.receipt(receipt_id, &verified, now_ms);
        Ok(Self {
            verified,
            now_ms,
            receipt,
            raced: false,
            effect: Ok(Effect::None),
            stage: Stage::LookUp,
        })
    }

    /// The verified envelope.
    pub fn envelope(&self) -> &Envelope {
        self.verified.envelope()
    }

    /// The next thing to do. After [`Action::Answer`] it returns `None`.
    pub fn poll(&mut self) -> Option<Action> {
        let message_id = self.envelope().message_id;
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::LookUp => {
                self.stage = Stage::LookUp;
                Some(Action::LookUpPrior(message_id))
            }
            Stage::Apply => {
                self.stage = Stage::Apply;
                Some(Action::ApplyConsent)
            }
            Stage::Sign => {
                self.stage = Stage::Sign;
                Some(Action::Sign(Box::new(self.receipt.clone())))
            }
            Stage::Record(sealed) => {
                let record = self.record(&sealed);
                self.stage = Stage::Record(sealed);
                Some(Action::Record(record))
            }
            Stage::Flush(why, then) => {
                self.stage = Stage::Flush(why, then);
                Some(Action::Flush(why))
            }
            Stage::Install(receipt) => {
                self.stage = Stage::Answer(Ok(receipt));
                match std::mem::replace(&mut self.effect, Ok(Effect::None)) {
                    Ok(Effect::Trust(list)) => Some(Action::InstallTrust(list)),
                    _ => self.poll(),
                }
            }
            Stage::Answer(answer) => Some(Action::Answer(answer)),
            Stage::Done => None,
        }
    }

    /// The replay table's entry for this id: the applied record and its
    /// stored receipt, if the id was applied before; `trust` is the list in
    /// force, against which a trust-list update is checked.
    pub fn handle_prior(&mut self, prior: Option<(Applied, Vec<u8>)>, trust: &VerifiedTrustList) {
        let applied = prior.as_ref().map(|(applied, _)| applied);
        if let Err(reason) = delivery::check_replay(&self.verified, applied) {
            let receipt = matches!(reason, RejectReason::Replayed { .. })
                .then(|| prior.map(|(_, receipt)| receipt))
                .flatten();
            let replayed = receipt.is_some();
            let answer = Stage::Answer(Err(self.refused(reason, receipt)));
            self.stage = if replayed {
                // The stored receipt is an acknowledgement: it goes out only
                // once the first copy's write is durable.
                Stage::Flush(FlushFor::Replay, Box::new(answer))
            } else {
                answer
            };
            return;
        }
        if self.raced {
            // Bounded: a record that was there when written is gone now.
            let gone = "a concurrent copy's record of this message is gone".to_owned();
            self.stage = Stage::Answer(Err(Refusal::Store(gone)));
            return;
        }
        // Decided only for a message not applied before: checking a trust
        // list costs its governance signatures, which a replay need not pay.
        self.effect = decide_effect(self.verified.envelope(), trust, self.now_ms);
        self.stage = match &self.effect {
            Err(reason) => Stage::Answer(Err(self.unusable(reason.clone()))),
            Ok(Effect::Consent) => Stage::Apply,
            Ok(_) => Stage::Sign,
        };
    }

    /// The outcome of applying a consent notice.
    pub fn handle_applied(&mut self, outcome: Result<(), Refusal>) {
        self.stage = match outcome {
            Ok(()) => Stage::Sign,
            Err(refusal) => Stage::Answer(Err(refusal)),
        };
    }

    /// The signed receipt.
    pub fn handle_signed(&mut self, receipt: Sealed) {
        self.stage = Stage::Record(receipt);
    }

    /// Whether the record was written (`false`: a concurrent copy of the
    /// same message id was recorded first).
    pub fn handle_recorded(&mut self, recorded: bool) {
        let Stage::Record(sealed) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return;
        };
        self.stage = if recorded {
            let then = match self.effect {
                Ok(Effect::Trust(_)) => Stage::Install(sealed.bytes),
                _ => Stage::Answer(Ok(sealed.bytes)),
            };
            Stage::Flush(FlushFor::Applied, Box::new(then))
        } else {
            // The winner's write may not be durable yet: wait for it, then
            // answer as a replay with the receipt it stored.
            self.raced = true;
            Stage::Flush(FlushFor::Replay, Box::new(Stage::LookUp))
        };
    }

    /// The flush asked for is done: every write so far is durable.
    pub fn handle_flushed(&mut self) {
        if let Stage::Flush(_, then) = std::mem::replace(&mut self.stage, Stage::Done) {
            self.stage = *then;
        }
    }

    fn record(&self, sealed: &Sealed) -> Record {
        let envelope = self.envelope();
        Record {
            message_id: envelope.message_id,
            sender: envelope.sender.clone(),
            body_sha256: self.verified.body_sha256(),
            expires_at_ms: envelope.expires_at_ms,
            applied_at_ms: self.now_ms,
            receipt: sealed.bytes.clone(),
            trust_list: match &self.effect {
                Ok(Effect::Trust(list)) => Some(list.signed().encode()),
                _ => None,
            },
            subject: envelope.payload.subject(),
        }
    }

    fn refused(&self, reason: RejectReason, receipt: Option<Vec<u8>>) -> Refusal {
        let envelope = self.envelope();
        Refusal::Rejected {
            rejection: Rejection {
                message_id: Some(envelope.message_id),
                sender: Some(envelope.sender.clone()),
                reason,
            },
            receipt,
        }
    }

    fn unusable(&self, reason: String) -> Refusal {
        let envelope = self.envelope();
        Refusal::Unusable {
            message_id: envelope.message_id,
            sender: envelope.sender.clone(),
            reason,
        }
    }
}

/// What applying `envelope`'s payload does under `trust`, or why a notice
/// of its kind cannot be applied.
fn decide_effect(
    envelope: &Envelope,
    trust: &VerifiedTrustList,
    now_ms: u64,
) -> Result<Effect, String> {
    match &envelope.payload {
        Payload::Memo(_) => Ok(Effect::None),
        Payload::Receipt(_) => Err("receipts travel in Deliver responses, not as messages".into()),
        Payload::ConsentOffer(_) | Payload::ConsentRecord(_) => Ok(Effect::Consent),
        Payload::ConsentStatusQuery(_)
        | Payload::ConsentStatusAnswer(_)
        | Payload::DataRequest(_)
        | Payload::DataResponse(_) => {
            Err("status queries and data requests are calls, not notices".into())
        }
        Payload::TrustListUpdate(signed) => match trust.check_update(signed.clone(), now_ms) {
            Ok(newer) => Ok(Effect::Trust(Box::new(newer))),
            // An older or equal list is acknowledged without effect.
            Err(TrustListError::NotNewer { .. }) => Ok(Effect::None),
            Err(e) => Err(format!("trust-list update refused: {e}")),
        },
    }
}
