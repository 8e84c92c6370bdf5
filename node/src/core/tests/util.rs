//! The shared fixture of the core tests: a governance key, three operators
//! with keys made from fixed bytes, a trust list signed by governance and
//! verified against the anchor, and helpers to seal, tamper with and verify
//! envelopes.
//!
//! Keys come from fixed bytes and time is the constant [`NOW`], so every test
//! is deterministic: the core reads neither the clock nor the RNG.

use crate::core::delivery::SenderContext;
use crate::core::envelope::{
    Envelope, EnvelopeLimits, Memo, Payload, Sealed, SignedEnvelope, Verifier,
};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::keys::{PublicKey, SecretKey};
use crate::core::trust::{
    GovernanceKey, Member, MemberKey, MemberStatus, Role, TrustList, VerifiedTrustList,
};
use crate::core::wire;
use crate::limits;

/// The fixed clock of every test (ms since the epoch, in 2027).
pub(super) const NOW: u64 = 1_800_000_000_000;

/// One day in ms.
pub(super) const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The federation of the fixture.
pub(super) const FEDERATION: &str = "eu.mim4.test";

/// End of validity of the fixture's trust list.
pub(super) const TRUST_LIST_VALID_UNTIL: u64 = NOW + 30 * DAY_MS;

/// Seed of the fixture's governance key.
pub(super) const GOVERNANCE_SEED: u8 = 0x01;

/// A key made from 32 copies of `seed`.
pub(super) fn secret(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32]).unwrap()
}

/// A message id made from 16 copies of `seed`.
pub(super) fn message_id(seed: u8) -> MessageId {
    MessageId::from_bytes([seed; 16])
}

/// An operator of the fixture: its id and its signing key.
#[derive(Debug)]
pub(super) struct Operator {
    /// Operator id.
    pub(super) id: OperatorId,
    /// Signing key (the first key of its trust-list entry).
    pub(super) key: SecretKey,
}

impl Operator {
    /// An operator whose key is made from `seed`.
    pub(super) fn new(id: &str, seed: u8) -> Self {
        Self {
            id: OperatorId::new(id).unwrap(),
            key: secret(seed),
        }
    }

    /// The header fields this operator puts on what it sends.
    pub(super) fn sender(&self) -> SenderContext<'_> {
        SenderContext {
            me: &self.id,
            rulebook_version: "2025.1",
            trust_list_version: 1,
            lifetime_ms: limits::MESSAGE_LIFETIME_MS_DEFAULT,
        }
    }

    /// A memo from this operator to `to`, created at `created_at_ms`.
    pub(super) fn memo(&self, to: &Operator, id: MessageId, created_at_ms: u64) -> Envelope {
        self.sender().envelope(
            id,
            to.id.clone(),
            created_at_ms,
            None,
            Payload::Memo(Memo {
                subject: "hello".to_owned(),
                text: "a note between operators".to_owned(),
            }),
        )
    }

    /// A memo from this operator to `to` at [`NOW`], sealed with its key.
    pub(super) fn sealed_memo(&self, to: &Operator) -> Sealed {
        self.memo(to, message_id(7), NOW).seal(&self.key)
    }

    /// Its trust-list entry: active, with its one key valid from 0 forever.
    pub(super) fn member(&self) -> Member {
        Member {
            operator_id: self.id.clone(),
            name: format!("Operator {}", self.id),
            country: self.id.as_str()[..2].to_uppercase(),
            roles: vec![Role::Operator],
            keys: vec![MemberKey {
                public_key: self.key.public(),
                not_before_ms: 0,
                not_after_ms: None,
            }],
            grpc_endpoint: format!("http://{}.example:7400", self.id),
            p2p_addrs: Vec::new(),
            status: MemberStatus::Active,
            sectors: vec!["employment".to_owned()],
        }
    }
}

/// A trust list of `FEDERATION`, valid until [`TRUST_LIST_VALID_UNTIL`].
pub(super) fn trust_list(
    version: u64,
    governance: &[&SecretKey],
    threshold: u32,
    members: Vec<Member>,
) -> TrustList {
    TrustList {
        federation_id: FEDERATION.to_owned(),
        version,
        issued_at_ms: NOW - DAY_MS,
        valid_until_ms: TRUST_LIST_VALID_UNTIL,
        rulebook_version: "2025.1".to_owned(),
        governance_keys: governance
            .iter()
            .map(|key| GovernanceKey {
                public_key: key.public(),
            })
            .collect(),
        threshold,
        members,
        attributes: Vec::new(),
        services: Vec::new(),
    }
}

/// The public keys of `keys`, as an operator pins them in its configuration.
pub(super) fn anchor(keys: &[&SecretKey]) -> Vec<PublicKey> {
    keys.iter().map(|key| key.public()).collect()
}

/// The member `id` of `list`, to edit.
pub(super) fn member_mut<'a>(list: &'a mut TrustList, id: &OperatorId) -> &'a mut Member {
    list.members
        .iter_mut()
        .find(|m| &m.operator_id == id)
        .unwrap()
}

/// Three operators, a governance key and the verified trust list naming them.
#[derive(Debug)]
pub(super) struct Fixture {
    /// The governance key (threshold 1).
    pub(super) governance: SecretKey,
    /// `fi.helsinki`.
    pub(super) helsinki: Operator,
    /// `se.stockholm`.
    pub(super) stockholm: Operator,
    /// `fr.iledefrance`.
    pub(super) iledefrance: Operator,
    /// The trust list in force, version 1.
    pub(super) trust: VerifiedTrustList,
}

impl Fixture {
    /// The fixture with its default trust list.
    pub(super) fn new() -> Self {
        Self::with_list(|_| {})
    }

    /// The fixture whose trust list is changed by `edit` before governance signs it.
    pub(super) fn with_list(edit: impl FnOnce(&mut TrustList)) -> Self {
        let governance = secret(GOVERNANCE_SEED);
        let helsinki = Operator::new("fi.helsinki", 0x11);
        let stockholm = Operator::new("se.stockholm", 0x22);
        let iledefrance = Operator::new("fr.iledefrance", 0x33);
        let mut list = trust_list(
            1,
            &[&governance],
            1,
            vec![helsinki.member(), stockholm.member(), iledefrance.member()],
        );
        edit(&mut list);
        let trust = VerifiedTrustList::verify_with_anchor(
            list.sign(&[&governance]),
            &anchor(&[&governance]),
            1,
        )
        .unwrap();
        Self {
            governance,
            helsinki,
            stockholm,
            iledefrance,
            trust,
        }
    }

    /// The unsigned content of the list in force, to derive candidates from.
    pub(super) fn list(&self) -> TrustList {
        self.trust.list().clone()
    }

    /// A verifier for envelopes addressed to `me`, with the default limits.
    pub(super) fn verifier<'a>(&'a self, me: &'a Operator) -> Verifier<'a> {
        Verifier {
            me: &me.id,
            trust: &self.trust,
            limits: EnvelopeLimits::default(),
        }
    }
}

/// Decodes the outer `SignedEnvelope` of sealed bytes.
pub(super) fn decode_signed(bytes: &[u8]) -> SignedEnvelope {
    wire::decode_signed_envelope(bytes).unwrap()
}

/// Re-encodes `bytes` with the body's fields changed by `edit`, keeping the
/// original signature and key id: what an attacker on the path can do.
pub(super) fn with_edited_body(bytes: &[u8], edit: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let mut signed = decode_signed(bytes);
    let mut envelope = wire::decode_envelope(&signed.body).unwrap();
    edit(&mut envelope);
    signed.body = wire::encode_envelope(&envelope);
    wire::encode_signed_envelope(&signed)
}
