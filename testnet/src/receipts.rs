//! Checks signed receipts the way an auditor would: against the federation's
//! trust list, with the node's own core, independently of the nodes' claims.

use mim4_node::core::delivery::{self, Expected};
use mim4_node::core::envelope::{body_sha256, EnvelopeLimits, Payload};
use mim4_node::core::ids::{MessageId, OperatorId};
use mim4_node::core::keys::KeyId;
use mim4_node::core::trust::VerifiedTrustList;
use mim4_node::core::wire;

/// A receipt that verified.
#[derive(Debug, Clone)]
pub struct CheckedReceipt {
    /// The receipt's own message id.
    pub receipt_id: MessageId,
    /// The key that signed it.
    pub key_id: KeyId,
    /// When the recipient applied the message (ms since the epoch).
    pub applied_at_ms: u64,
}

/// Verifies that `receipt` is `recipient`'s valid signed receipt for the
/// envelope `sent` by `sender`.
pub fn check(
    trust: &VerifiedTrustList,
    sender: &OperatorId,
    recipient: &OperatorId,
    sent: &[u8],
    receipt: &[u8],
    now_ms: u64,
) -> Result<CheckedReceipt, String> {
    if receipt.is_empty() {
        return Err("no receipt".into());
    }
    let signed = wire::decode_signed_envelope(sent).map_err(|e| format!("sent envelope: {e}"))?;
    let envelope =
        wire::decode_envelope(&signed.body).map_err(|e| format!("sent envelope: {e}"))?;
    let body_sha256 = body_sha256(&signed.body);
    let expected = Expected {
        message_id: envelope.message_id,
        recipient,
        body_sha256,
    };
    let (verified, receipt) = delivery::check_receipt(
        sender,
        trust,
        EnvelopeLimits::default(),
        receipt,
        &expected,
        now_ms,
    )
    .map_err(|e| e.to_string())?;
    debug_assert!(matches!(verified.envelope().payload, Payload::Receipt(_)));
    Ok(CheckedReceipt {
        receipt_id: verified.envelope().message_id,
        key_id: verified.key_id().clone(),
        applied_at_ms: receipt.applied_at_ms,
    })
}
