//! Signed envelopes: sealing a message and verifying one that arrives.
//!
//! Verification runs every check of the protocol, in this order, and stops at
//! the first failure with a distinct [`RejectReason`]:
//!
//! 1. size limit, before any decoding;
//! 2. decoding of the signed envelope and its body;
//! 3. protocol version;
//! 4. the node's trust list is still valid;
//! 5. the sender is a member, and active;
//! 6. the signing key is one of the sender's keys, and valid now;
//! 7. the strict Ed25519 signature over the domain prefix and the exact body bytes;
//! 8. the recipient is this node;
//! 9. lifetime, expiry and clock skew.
//!
//! Replay (a message id already applied) is decided by [`crate::core::delivery`],
//! because it depends on stored state that the caller looks up.

use sha2::{Digest as _, Sha256};

use crate::core::consent::{ConsentId, ConsentLog, ConsentTerms, SubjectId};
use crate::core::exchange::{DataRequest, DataResponse};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::keys::{KeyId, SecretKey, ENVELOPE_DOMAIN};
use crate::core::reason::Reason;
use crate::core::trust::{MemberStatus, SignedTrustList, VerifiedTrustList};
use crate::core::wire;
use crate::limits;

/// The protocol version this node speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// SHA-256 of an envelope body: what receipts quote and stores check.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The header and payload of a node-to-node message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Protocol version.
    pub protocol_version: u32,
    /// Rulebook version the sender operates under.
    pub rulebook_version: String,
    /// Trust-list version the sender held.
    pub trust_list_version: u64,
    /// Unique id.
    pub message_id: MessageId,
    /// Sender's operator id.
    pub sender: OperatorId,
    /// Recipient's operator id.
    pub recipient: OperatorId,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// Expiry (ms since the epoch).
    pub expires_at_ms: u64,
    /// The message this one answers.
    pub in_reply_to: Option<MessageId>,
    /// What the message says.
    pub payload: Payload,
}

/// The payloads of this protocol version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A free-form note between operators.
    Memo(Memo),
    /// A signed acknowledgement.
    Receipt(Receipt),
    /// A newer trust list for a peer that holds an older one.
    TrustListUpdate(SignedTrustList),
    /// A consumer asks the subject's home operator to record a consent request.
    ConsentOffer(ConsentTerms),
    /// The home operator's signed log of a consent, pushed when it changes.
    ConsentRecord(ConsentLog),
    /// "What is the status of this consent?" (a call).
    ConsentStatusQuery(ConsentId),
    /// The answer to a status query.
    ConsentStatusAnswer(ConsentLog),
    /// A request for attributes (a call).
    DataRequest(DataRequest),
    /// The holder's answer to a data request.
    DataResponse(DataResponse),
}

impl Payload {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Memo(_) => "memo",
            Payload::Receipt(_) => "receipt",
            Payload::TrustListUpdate(_) => "trust-list-update",
            Payload::ConsentOffer(_) => "consent-offer",
            Payload::ConsentRecord(_) => "consent-record",
            Payload::ConsentStatusQuery(_) => "consent-status-query",
            Payload::ConsentStatusAnswer(_) => "consent-status-answer",
            Payload::DataRequest(_) => "data-request",
            Payload::DataResponse(_) => "data-response",
        }
    }

    /// The citizen the payload is about, if it names exactly one: the store
    /// seals a stored copy under that subject's data key, so erasing the
    /// subject makes the copy unreadable. For a consent log it is read from
    /// the first event without checking signatures ([`ConsentLog::subject`]):
    /// good for choosing a key, never for a decision.
    pub fn subject(&self) -> Option<SubjectId> {
        match self {
            Payload::ConsentOffer(terms) => Some(terms.subject.clone()),
            Payload::ConsentRecord(log) | Payload::ConsentStatusAnswer(log) => log.subject(),
            Payload::DataRequest(request) => Some(request.subject.clone()),
            Payload::Memo(_)
            | Payload::Receipt(_)
            | Payload::TrustListUpdate(_)
            | Payload::ConsentStatusQuery(_)
            | Payload::DataResponse(_) => None,
        }
    }
}

/// A free-form note between operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memo {
    /// Subject line.
    pub subject: String,
    /// Text.
    pub text: String,
}

/// "I, the recipient, have durably applied message `message_id`."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The acknowledged message.
    pub message_id: MessageId,
    /// SHA-256 of the acknowledged envelope body.
    pub body_sha256: [u8; 32],
    /// When it was applied (ms since the epoch).
    pub applied_at_ms: u64,
}

/// A signed envelope as it travels, decoded but not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEnvelope {
    /// The encoded [`Envelope`], exactly as signed.
    pub body: Vec<u8>,
    /// Signature over [`ENVELOPE_DOMAIN`] and `body`.
    pub signature: Vec<u8>,
    /// Id of the signing key.
    pub key_id: KeyId,
}

/// An envelope sealed by this node, ready to store and send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The message id.
    pub message_id: MessageId,
    /// The encoded `SignedEnvelope`.
    pub bytes: Vec<u8>,
    /// SHA-256 of the body, as a receipt will quote it.
    pub body_sha256: [u8; 32],
}

impl Envelope {
    /// Encodes the envelope and signs it with `key`.
    pub fn seal(&self, key: &SecretKey) -> Sealed {
        let body = wire::encode_envelope(self);
        let signature = key.sign(ENVELOPE_DOMAIN, &body);
        let body_sha256 = body_sha256(&body);
        let signed = SignedEnvelope {
            body,
            signature: signature.to_vec(),
            key_id: key.public().key_id(),
        };
        Sealed {
            message_id: self.message_id,
            bytes: wire::encode_signed_envelope(&signed),
            body_sha256,
        }
    }
}

/// An envelope whose every check passed. Only [`Verifier::verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedEnvelope {
    envelope: Envelope,
    key_id: KeyId,
    body_sha256: [u8; 32],
}

impl VerifiedEnvelope {
    /// The verified content.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Takes the verified content.
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }

    /// The key that signed it.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// SHA-256 of the signed body.
    pub fn body_sha256(&self) -> [u8; 32] {
        self.body_sha256
    }
}

/// Bounds applied while verifying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Largest signed envelope, in bytes.
    pub message_bytes_max: usize,
    /// Largest tolerated clock difference, in ms.
    pub clock_skew_ms_max: u64,
    /// Largest accepted lifetime (expires_at - created_at), in ms.
    pub lifetime_ms_max: u64,
}

impl Default for EnvelopeLimits {
    fn default() -> Self {
        Self {
            message_bytes_max: limits::MESSAGE_BYTES_MAX,
            clock_skew_ms_max: limits::CLOCK_SKEW_MS_DEFAULT,
            lifetime_ms_max: limits::MESSAGE_LIFETIME_MS_MAX,
        }
    }
}

/// Verifies envelopes addressed to one node against its trust list.
#[derive(Debug, Clone, Copy)]
pub struct Verifier<'a> {
    /// This node's operator id.
    pub me: &'a OperatorId,
    /// The trust list in force.
    pub trust: &'a VerifiedTrustList,
    /// Bounds.
    pub limits: EnvelopeLimits,
}

impl Verifier<'_> {
    /// Runs every check (see the module docs) on a received `SignedEnvelope`.
    ///
    /// Long (about 80 lines) on purpose: the checks are a security argument
    /// whose order matters (size before decoding, membership before the
    /// signature, the signature before anything is trusted), read top to bottom.
    pub fn verify(&self, bytes: &[u8], now_ms: u64) -> Result<VerifiedEnvelope, Rejection> {
        if bytes.len() > self.limits.message_bytes_max {
            return Err(Rejection::anonymous(RejectReason::Oversized {
                size: bytes.len(),
                max: self.limits.message_bytes_max,
            }));
        }
        let malformed =
            |e: wire::DecodeError| Rejection::anonymous(RejectReason::Malformed(e.to_string()));
        let signed = wire::decode_signed_envelope(bytes).map_err(malformed)?;
        let envelope = wire::decode_envelope(&signed.body).map_err(malformed)?;
        let reject = |reason| Rejection {
            message_id: Some(envelope.message_id),
            sender: Some(envelope.sender.clone()),
            reason,
        };
        if envelope.protocol_version != PROTOCOL_VERSION {
            return Err(reject(RejectReason::UnsupportedProtocol(
                envelope.protocol_version,
            )));
        }
        if !self.trust.is_current(now_ms) {
            return Err(reject(RejectReason::TrustListExpired {
                version: self.trust.version(),
                valid_until_ms: self.trust.list().valid_until_ms,
            }));
        }
        let Some(member) = self.trust.member(&envelope.sender) else {
            return Err(reject(RejectReason::UnknownSender));
        };
        if member.status != MemberStatus::Active {
            return Err(reject(RejectReason::SenderNotActive(member.status)));
        }
        let Some(key) = member.key(&signed.key_id) else {
            return Err(reject(RejectReason::UnknownKey(signed.key_id.clone())));
        };
        if !key.is_valid_at(now_ms) {
            return Err(reject(RejectReason::KeyNotValidNow {
                key_id: signed.key_id.clone(),
                not_before_ms: key.not_before_ms,
                not_after_ms: key.not_after_ms,
            }));
        }
        if !key
            .public_key
            .verify(ENVELOPE_DOMAIN, &signed.body, &signed.signature)
        {
            return Err(reject(RejectReason::BadSignature));
        }
        if &envelope.recipient != self.me {
            return Err(reject(RejectReason::WrongRecipient(
                envelope.recipient.clone(),
            )));
        }
        let lifetime_ms = envelope
            .expires_at_ms
            .saturating_sub(envelope.created_at_ms);
        if envelope.expires_at_ms <= envelope.created_at_ms
            || lifetime_ms > self.limits.lifetime_ms_max
        {
            return Err(reject(RejectReason::BadLifetime {
                lifetime_ms,
                max_ms: self.limits.lifetime_ms_max,
            }));
        }
        if envelope.expires_at_ms <= now_ms {
            return Err(reject(RejectReason::Expired {
                expires_at_ms: envelope.expires_at_ms,
                now_ms,
            }));
        }
        if envelope.created_at_ms > now_ms.saturating_add(self.limits.clock_skew_ms_max) {
            return Err(reject(RejectReason::ClockSkew {
                created_at_ms: envelope.created_at_ms,
                now_ms,
                skew_ms_max: self.limits.clock_skew_ms_max,
            }));
        }
        Ok(VerifiedEnvelope {
            envelope,
            key_id: signed.key_id,
            body_sha256: body_sha256(&signed.body),
        })
    }
}

/// A refused envelope: what could be read of it, and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Rejection {
    /// The message id, when the body could be decoded.
    pub message_id: Option<MessageId>,
    /// The claimed sender, when the body could be decoded (not authenticated
    /// unless the reason comes after the signature check).
    pub sender: Option<OperatorId>,
    /// Why.
    pub reason: RejectReason,
}

impl Rejection {
    /// A rejection of bytes that could not be decoded.
    pub fn anonymous(reason: RejectReason) -> Self {
        Self {
            message_id: None,
            sender: None,
            reason,
        }
    }

    fn describe(&self) -> String {
        match (&self.message_id, &self.sender) {
            (Some(id), Some(sender)) => {
                format!("message {id} from {sender} refused: {}", self.reason)
            }
            _ => format!("message refused: {}", self.reason),
        }
    }
}

/// Why an envelope was refused. Each variant reads as a sentence for a person,
/// and [`RejectReason::code`] names it for a program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// Larger than the size limit; nothing was decoded.
    #[error("envelope is {size} bytes, more than the {max} allowed")]
    Oversized {
        /// Received size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Not a decodable envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A protocol version this node does not speak.
    #[error("protocol version {0} is not supported (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedProtocol(u32),
    /// This node's own trust list has expired, so it cannot judge membership.
    #[error("this node's trust list expired: version {version} was valid until {valid_until_ms} ms; it accepts nothing until it gets a newer one")]
    TrustListExpired {
        /// Version of the expired list.
        version: u64,
        /// End of validity.
        valid_until_ms: u64,
    },
    /// The sender is not in the trust list.
    #[error("sender is not a member of the federation")]
    UnknownSender,
    /// The sender is suspended or revoked.
    #[error("sender is {} in the trust list", .0.as_str())]
    SenderNotActive(MemberStatus),
    /// The key id is not one of the sender's keys.
    #[error("key {0} is not one of the sender's keys in the trust list")]
    UnknownKey(KeyId),
    /// The key is outside its validity window.
    #[error("key {key_id} is not valid now (valid from {not_before_ms} ms until {})", .not_after_ms.map_or("no end".to_owned(), |t| format!("{t} ms")))]
    KeyNotValidNow {
        /// The key.
        key_id: KeyId,
        /// Start of validity.
        not_before_ms: u64,
        /// End of validity.
        not_after_ms: Option<u64>,
    },
    /// The signature does not verify: the envelope was altered or forged.
    #[error(
        "signature does not verify: the envelope was altered or not signed by the sender's key"
    )]
    BadSignature,
    /// Addressed to another operator.
    #[error("envelope is addressed to {0}, not to this node")]
    WrongRecipient(OperatorId),
    /// Expiry not after creation, or lifetime over the limit.
    #[error("message lifetime of {lifetime_ms} ms is not between 1 ms and {max_ms} ms")]
    BadLifetime {
        /// expires_at - created_at.
        lifetime_ms: u64,
        /// Limit.
        max_ms: u64,
    },
    /// Past its expiry.
    #[error("message expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// Expiry.
        expires_at_ms: u64,
        /// Current time.
        now_ms: u64,
    },
    /// Created further in the future than the tolerated clock skew.
    #[error("message was created at {created_at_ms} ms, beyond now ({now_ms} ms) plus the {skew_ms_max} ms clock-skew bound")]
    ClockSkew {
        /// Claimed creation time.
        created_at_ms: u64,
        /// Current time.
        now_ms: u64,
        /// Tolerated skew.
        skew_ms_max: u64,
    },
    /// The message id was already applied.
    #[error(
        "message id was already applied at {first_applied_at_ms} ms (replay or retransmission)"
    )]
    Replayed {
        /// When the first copy was applied.
        first_applied_at_ms: u64,
    },
    /// The same message id was applied with a different body.
    #[error("message id was already used for a different message")]
    IdReused,
}

impl RejectReason {
    /// The variant's stable reason, for programs: the transports send it
    /// beside the readable message, so a peer or a test can tell refusals
    /// apart without parsing text.
    pub fn reason(&self) -> Reason {
        match self {
            RejectReason::Oversized { .. } => Reason::Oversized,
            RejectReason::Malformed(_) => Reason::Malformed,
            RejectReason::UnsupportedProtocol(_) => Reason::UnsupportedProtocol,
            RejectReason::TrustListExpired { .. } => Reason::TrustListExpired,
            RejectReason::UnknownSender => Reason::UnknownSender,
            RejectReason::SenderNotActive(_) => Reason::SenderNotActive,
            RejectReason::UnknownKey(_) => Reason::UnknownKey,
            RejectReason::KeyNotValidNow { .. } => Reason::KeyNotValidNow,
            RejectReason::BadSignature => Reason::BadSignature,
            RejectReason::WrongRecipient(_) => Reason::WrongRecipient,
            RejectReason::BadLifetime { .. } => Reason::BadLifetime,
            RejectReason::Expired { .. } => Reason::Expired,
            RejectReason::ClockSkew { .. } => Reason::ClockSkew,
            RejectReason::Replayed { .. } => Reason::Replayed,
            RejectReason::IdReused => Reason::IdReused,
        }
    }

    /// [`RejectReason::reason`]'s snake_case name. Never renamed once released.
    pub fn code(&self) -> &'static str {
        self.reason().as_str()
    }
}
