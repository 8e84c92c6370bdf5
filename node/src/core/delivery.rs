//! Delivery rules: exactly-once application of a received message, the
//! signed receipt that acknowledges it, and the sender's check of that receipt.
//!
//! The receiver applies a message id once: the caller looks up whether the id
//! was already applied (the seen table, which survives restarts) and passes
//! the answer to [`check_replay`]. A retransmission of the same body is refused
//! as [`RejectReason::Replayed`]; the edge then hands back the stored receipt so
//! that the sender's outbox can stop retrying. The sender checks a receipt with
//! [`check_receipt`] before it marks a message delivered.

use crate::core::envelope::{
    Envelope, EnvelopeLimits, Payload, Receipt, RejectReason, Rejection, VerifiedEnvelope,
    Verifier, PROTOCOL_VERSION,
};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::trust::VerifiedTrustList;

/// What the receiver remembers about an applied message id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// SHA-256 of the applied body.
    pub body_sha256: [u8; 32],
    /// When it was applied (ms since the epoch).
    pub applied_at_ms: u64,
}

/// Refuses a message whose id was already applied.
pub fn check_replay(
    verified: &VerifiedEnvelope,
    prior: Option<&Applied>,
) -> Result<(), RejectReason> {
    match prior {
        None => Ok(()),
        Some(applied) if applied.body_sha256 == verified.body_sha256() => {
            Err(RejectReason::Replayed {
                first_applied_at_ms: applied.applied_at_ms,
            })
        }
        Some(_) => Err(RejectReason::IdReused),
    }
}

/// Parameters that every envelope this node signs carries.
#[derive(Clone, Debug)]
pub struct SenderContext<'a> {
    /// This node's operator id.
    pub me: &'a OperatorId,
    /// Rulebook version.
    pub rulebook_version: &'a str,
    /// Version of the trust list in force.
    pub trust_list_version: u64,
    /// Lifetime given to new messages, in ms.
    pub lifetime_ms: u64,
}

impl SenderContext<'_> {
    /// A new envelope to `recipient` with this node's header fields.
    pub fn envelope(
        &self,
        message_id: MessageId,
        recipient: OperatorId,
        now_ms: u64,
        in_reply_to: Option<MessageId>,
        payload: Payload,
    ) -> Envelope {
        Envelope {
            protocol_version: PROTOCOL_VERSION,
            rulebook_version: self.rulebook_version.to_owned(),
            trust_list_version: self.trust_list_version,
            message_id,
            sender: self.me.clone(),
            recipient,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.lifetime_ms),
            in_reply_to,
            payload,
        }
    }

    /// The receipt acknowledging `applied`, addressed to its sender.
    pub fn receipt(
        &self,
        receipt_id: MessageId,
        applied: &VerifiedEnvelope,
        now_ms: u64,
    ) -> Envelope {
        let original = applied.envelope();
        self.envelope(
            receipt_id,
            original.sender.clone(),
            now_ms,
            Some(original.message_id),
            Payload::Receipt(Receipt {
                message_id: original.message_id,
                body_sha256: applied.body_sha256(),
                applied_at_ms: now_ms,
            }),
        )
    }
}

/// What the sender expects a receipt to acknowledge.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    /// The message sent.
    pub message_id: MessageId,
    /// Its recipient, who must have signed the receipt.
    pub recipient: &'a OperatorId,
    /// SHA-256 of the body sent.
    pub body_sha256: [u8; 32],
}

/// Why a receipt was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The receipt envelope itself failed verification.
    #[error("receipt refused: {0}")]
    Envelope(#[from] Rejection),
    /// Signed by someone other than the recipient.
    #[error("receipt is signed by {got}, expected the recipient {expected}")]
    WrongSigner {
        /// The recipient.
        expected: OperatorId,
        /// Who signed.
        got: OperatorId,
    },
    /// The envelope does not carry a receipt.
    #[error("expected a receipt, got a {0}")]
    NotAReceipt(&'static str),
    /// It acknowledges another message or another body.
    #[error("receipt acknowledges message {got_id} (body digest match: {digest_matches}), expected {expected_id}")]
    Mismatch {
        /// The message sent.
        expected_id: MessageId,
        /// The message acknowledged.
        got_id: MessageId,
        /// Whether the body digests agree.
        digest_matches: bool,
    },
}

/// Verifies a receipt for a message this node sent.
///
/// Receipts are responses, not notices: they are not entered in the replay
/// table (accepting the same receipt twice marks the message delivered twice,
/// which is idempotent).
pub fn check_receipt(
    me: &OperatorId,
    trust: &VerifiedTrustList,
    limits: EnvelopeLimits,
    bytes: &[u8],
    expected: &Expected<'_>,
    now_ms: u64,
) -> Result<(VerifiedEnvelope, Receipt), ReceiptError> {
    let verifier = Verifier { me, trust, limits };
    let verified = verifier.verify(bytes, now_ms)?;
    let envelope = verified.envelope();
    if &envelope.sender != expected.recipient {
        return Err(ReceiptError::WrongSigner {
            expected: expected.recipient.clone(),
            got: envelope.sender.clone(),
        });
    }
    let Payload::Receipt(receipt) = &envelope.payload else {
        return Err(ReceiptError::NotAReceipt(envelope.payload.kind()));
    };
    if receipt.message_id != expected.message_id || receipt.body_sha256 != expected.body_sha256 {
        return Err(ReceiptError::Mismatch {
            expected_id: expected.message_id,
            got_id: receipt.message_id,
            digest_matches: receipt.body_sha256 == expected.body_sha256,
        });
    }
    let receipt = receipt.clone();
    Ok((verified, receipt))
}
