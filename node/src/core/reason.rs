//! Every machine-readable reason a node gives: on the wire (the gRPC
//! `mim4-reason` metadata, libp2p's `PeerRefusal.reason`, the API's refusals)
//! and in its refusal counters (`GetStatus`).
//!
//! One closed enum, one case style (snake_case), so a reason is never a
//! string literal typed twice: a peer or a test tells refusals apart by
//! [`Reason::as_str`], and a new reason is one variant here. The names are
//! part of the protocol: never renamed once released.
//!
//! Not here: the codes of a consent *decision* (`no-consent`,
//! `purpose-not-covered`, ... in `consent::index`) and of withheld attributes
//! (`not-found`, `too-large`), which are part of a data answer, not refusals
//! of a request; they keep their released kebab-case names.

use std::fmt;

/// Why a request, a message or a call was refused (or counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    // -- envelope checks (`envelope::RejectReason::reason`) --
    /// Larger than a size limit; nothing was decoded.
    Oversized,
    /// Not decodable.
    Malformed,
    /// A protocol version this node does not speak.
    UnsupportedProtocol,
    /// This node's trust list has expired.
    TrustListExpired,
    /// The sender is not in the trust list.
    UnknownSender,
    /// The sender is suspended or revoked.
    SenderNotActive,
    /// The key is not one of the sender's.
    UnknownKey,
    /// The key is outside its validity window.
    KeyNotValidNow,
    /// The signature does not verify.
    BadSignature,
    /// Addressed to another operator.
    WrongRecipient,
    /// The lifetime is out of bounds.
    BadLifetime,
    /// Past its expiry.
    Expired,
    /// Created beyond the clock-skew bound.
    ClockSkew,
    /// The message id was applied before (the stored receipt comes along).
    Replayed,
    /// The message id was used for another body.
    IdReused,
    // -- the receive decision (`receive::Refusal`) --
    /// Valid, but its payload cannot be applied here.
    Unusable,
    /// A call asked for something this node does not hold.
    NotFound,
    /// The node cannot answer now (its data source is down).
    Unavailable,
    /// The node failed to store it; retry.
    StoreFailure,
    /// Signed by another member than the connection's peer.
    NotFromPeer,
    // -- admission, before decoding (both transports, the API) --
    /// The peer's or client's bucket is empty.
    RateLimited,
    /// The server serves its most requests already.
    Busy,
    /// A libp2p request from a PeerId that is not an active member's key.
    NotAMember,
    /// A TLS connection's key is no longer an active member's.
    TlsPeerRefused,
    // -- limits of a subject's data (`limits.rs`) --
    /// A consent record over its event limit.
    TooManyEvents,
    /// Consent terms over a list or text limit.
    TermsTooLarge,
    /// A subject's consent records at their limit.
    TooManyConsents,
    /// An agent's delegations at their limit.
    TooManyDelegations,
    /// An attribute value over its size limit.
    ValueTooLarge,
    /// A subject's attributes at their limit.
    TooManyAttributes,
    /// A subject's data over its byte limit.
    SubjectTooLarge,
    // -- counters of the data exchange --
    /// A data request that does not validate.
    DataRequestInvalid,
    /// The data source failed while answering.
    DataSourceFailed,
    /// A source's answer that does not verify or does not answer the request.
    InvalidAnswer,
}

impl Reason {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::UnsupportedProtocol => "unsupported_protocol",
            Self::TrustListExpired => "trust_list_expired",
            Self::UnknownSender => "unknown_sender",
            Self::SenderNotActive => "sender_not_active",
            Self::UnknownKey => "unknown_key",
            Self::KeyNotValidNow => "key_not_valid_now",
            Self::BadSignature => "bad_signature",
            Self::WrongRecipient => "wrong_recipient",
            Self::BadLifetime => "bad_lifetime",
            Self::Expired => "expired",
            Self::ClockSkew => "clock_skew",
            Self::Replayed => "replayed",
            Self::IdReused => "id_reused",
            Self::Unusable => "unusable",
            Self::NotFound => "not_found",
            Self::Unavailable => "unavailable",
            Self::StoreFailure => "store_failure",
            Self::NotFromPeer => "not_from_peer",
            Self::RateLimited => "rate_limited",
            Self::Busy => "busy",
            Self::NotAMember => "not_a_member",
            Self::TlsPeerRefused => "tls_peer_refused",
            Self::TooManyEvents => "too_many_events",
            Self::TermsTooLarge => "terms_too_large",
            Self::TooManyConsents => "too_many_consents",
            Self::TooManyDelegations => "too_many_delegations",
            Self::ValueTooLarge => "value_too_large",
            Self::TooManyAttributes => "too_many_attributes",
            Self::SubjectTooLarge => "subject_too_large",
            Self::DataRequestInvalid => "data_request_invalid",
            Self::DataSourceFailed => "data_source_failed",
            Self::InvalidAnswer => "invalid_answer",
        }
    }

    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 34] = [
        Self::Oversized,
        Self::Malformed,
        Self::UnsupportedProtocol,
        Self::TrustListExpired,
        Self::UnknownSender,
        Self::SenderNotActive,
        Self::UnknownKey,
        Self::KeyNotValidNow,
        Self::BadSignature,
        Self::WrongRecipient,
        Self::BadLifetime,
        Self::Expired,
        Self::ClockSkew,
        Self::Replayed,
        Self::IdReused,
        Self::Unusable,
        Self::NotFound,
        Self::Unavailable,
        Self::StoreFailure,
        Self::NotFromPeer,
        Self::RateLimited,
        Self::Busy,
        Self::NotAMember,
        Self::TlsPeerRefused,
        Self::TooManyEvents,
        Self::TermsTooLarge,
        Self::TooManyConsents,
        Self::TooManyDelegations,
        Self::ValueTooLarge,
        Self::TooManyAttributes,
        Self::SubjectTooLarge,
        Self::DataRequestInvalid,
        Self::DataSourceFailed,
        Self::InvalidAnswer,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;
    use std::collections::BTreeSet;

    /// Every reason is snake_case and no two share a name.
    #[test]
    fn reasons_are_unique_snake_case() {
        let names: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for name in names {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name} is not snake_case"
            );
        }
    }
}
