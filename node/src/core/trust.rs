//! The federation trust list: who the members are, which keys they sign with,
//! and how a node decides to accept a newer list.
//!
//! A list is accepted at start only when signed by the governance keys that the
//! operator pinned in its configuration (the trust anchor), and later only when
//! signed by `threshold` of the governance keys of the list the node already
//! holds, with a higher version, for the same federation, and not expired.
//!
//! It also says which member a peer's key names, and whether that member may
//! connect now ([`VerifiedTrustList::active_member_with_key`]): the one rule
//! the TLS verifiers, the gRPC port and the libp2p swarm all apply.

use std::collections::BTreeMap;

use crate::core::consent::{Attribute, Purpose, ServiceId};
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, PublicKey, SecretKey, TRUST_LIST_DOMAIN};
use crate::core::wire;

/// A role an operator plays in the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Home operator for citizens.
    Operator,
    /// Hosts authoritative registries.
    Source,
    /// Runs or fronts city services that request data.
    Consumer,
}

impl Role {
    /// The role's name in configuration files and command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Source => "source",
            Role::Consumer => "consumer",
        }
    }

    /// Parses a role name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "operator" => Some(Role::Operator),
            "source" => Some(Role::Source),
            "consumer" => Some(Role::Consumer),
            _ => None,
        }
    }
}

/// Membership status of an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatus {
    /// Messages are accepted.
    Active,
    /// Temporarily refused.
    Suspended,
    /// Permanently refused.
    Revoked,
}

impl MemberStatus {
    /// The status's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Active => "active",
            MemberStatus::Suspended => "suspended",
            MemberStatus::Revoked => "revoked",
        }
    }
}

/// A member's signing key with its validity window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberKey {
    /// The key.
    pub public_key: PublicKey,
    /// First instant of validity (ms since the epoch, inclusive).
    pub not_before_ms: u64,
    /// End of validity (ms since the epoch, exclusive); `None` for no end.
    pub not_after_ms: Option<u64>,
}

impl MemberKey {
    /// Whether the key may sign at `now_ms`.
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        now_ms >= self.not_before_ms && self.not_after_ms.is_none_or(|end| now_ms < end)
    }
}

/// An operator in the federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Operator id.
    pub operator_id: OperatorId,
    /// Human-readable name.
    pub name: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Roles it plays.
    pub roles: Vec<Role>,
    /// Signing keys; several overlap during rotation.
    pub keys: Vec<MemberKey>,
    /// gRPC endpoint of its `OperatorPeer` service: `https://host:port`
    /// (`http://` only in a development federation without TLS).
    pub grpc_endpoint: String,
    /// libp2p multiaddrs.
    pub p2p_addrs: Vec<String>,
    /// Membership status.
    pub status: MemberStatus,
    /// Sector labels.
    pub sectors: Vec<String>,
}

impl Member {
    /// The key with this id, if the member lists it.
    pub fn key(&self, key_id: &KeyId) -> Option<&MemberKey> {
        self.keys.iter().find(|k| &k.public_key.key_id() == key_id)
    }
}

/// A governance key named in the trust list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovernanceKey {
    /// The key.
    pub public_key: PublicKey,
}

/// The content of a trust list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustList {
    /// Federation name.
    pub federation_id: String,
    /// Monotonic version.
    pub version: u64,
    /// When it was signed (ms since the epoch).
    pub issued_at_ms: u64,
    /// Not to be relied on after this instant (ms since the epoch).
    pub valid_until_ms: u64,
    /// Rulebook version.
    pub rulebook_version: String,
    /// Governance keys; a newer list needs `threshold` of their signatures.
    pub governance_keys: Vec<GovernanceKey>,
    /// Signatures a list needs (k of n).
    pub threshold: u32,
    /// The members, in the order governance listed them.
    pub members: Vec<Member>,
    /// The attribute catalogue.
    pub attributes: Vec<CatalogueAttribute>,
    /// The service registry.
    pub services: Vec<ServiceEntry>,
}

/// The type of an attribute's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// A whole number.
    Integer,
    /// A number.
    Number,
    /// Text.
    String,
    /// True or false.
    Boolean,
    /// An ISO 8601 date (`YYYY-MM-DD`).
    Date,
    /// A list of texts (e.g. licence classes).
    StringList,
}

impl ValueType {
    /// The type's name in the catalogue.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Integer => "integer",
            ValueType::Number => "number",
            ValueType::String => "string",
            ValueType::Boolean => "boolean",
            ValueType::Date => "date",
            ValueType::StringList => "string-list",
        }
    }

    /// Parses a type name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "integer" => ValueType::Integer,
            "number" => ValueType::Number,
            "string" => ValueType::String,
            "boolean" => ValueType::Boolean,
            "date" => ValueType::Date,
            "string-list" => ValueType::StringList,
            _ => return None,
        })
    }
}

/// One attribute of the federation's catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogueAttribute {
    /// Its name.
    pub name: Attribute,
    /// The type of its values.
    pub value_type: ValueType,
    /// Unit, if any.
    pub unit: String,
    /// `normal`, `sensitive` or `special-category`.
    pub sensitivity: String,
    /// What it is.
    pub description: String,
    /// The members that are its authoritative source (the first is asked).
    pub sources: Vec<OperatorId>,
}

/// A consumer service of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Its id.
    pub service_id: ServiceId,
    /// Its name.
    pub name: String,
    /// The purposes it may request data for.
    pub purposes: Vec<Purpose>,
}

impl TrustList {
    /// The member with this id.
    pub fn member(&self, id: &OperatorId) -> Option<&Member> {
        self.members.iter().find(|m| &m.operator_id == id)
    }

    /// Encodes the list and signs it with each of `keys`.
    pub fn sign(&self, keys: &[&SecretKey]) -> SignedTrustList {
        let body = wire::encode_trust_list(self);
        let signatures = keys
            .iter()
            .map(|key| {
                (
                    key.public().key_id(),
                    key.sign(TRUST_LIST_DOMAIN, &body).to_vec(),
                )
            })
            .collect();
        SignedTrustList { body, signatures }
    }
}

/// A trust list as it travels: the exact signed body and its signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTrustList {
    /// The encoded `TrustList`, exactly as signed.
    pub body: Vec<u8>,
    /// `(key id, signature)` pairs.
    pub signatures: Vec<(KeyId, Vec<u8>)>,
}

impl SignedTrustList {
    /// Encodes to the wire form (`mim4.v1.SignedTrustList`).
    pub fn encode(&self) -> Vec<u8> {
        wire::encode_signed_trust_list(self)
    }

    /// Decodes the wire form, bounded by the size limit.
    pub fn decode(bytes: &[u8]) -> Result<Self, TrustListError> {
        wire::decode_signed_trust_list(bytes)
    }
}

/// A trust list whose governance signatures have been checked.
#[derive(Clone, Debug)]
pub struct VerifiedTrustList {
    list: TrustList,
    signed: SignedTrustList,
    index: BTreeMap<OperatorId, usize>,
    attributes: BTreeMap<Attribute, usize>,
    services: BTreeMap<ServiceId, usize>,
}

impl VerifiedTrustList {
    /// The verified content.
    pub fn list(&self) -> &TrustList {
        &self.list
    }

    /// The signed form, to store and to pass on to peers.
    pub fn signed(&self) -> &SignedTrustList {
        &self.signed
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.list.version
    }

    /// The member with this id, in O(log n).
    pub fn member(&self, id: &OperatorId) -> Option<&Member> {
        self.index.get(id).map(|&i| &self.list.members[i])
    }

    /// The catalogue entry of an attribute.
    pub fn attribute(&self, name: &Attribute) -> Option<&CatalogueAttribute> {
        self.attributes.get(name).map(|&i| &self.list.attributes[i])
    }

    /// The registry entry of a service.
    pub fn service(&self, id: &ServiceId) -> Option<&ServiceEntry> {
        self.services.get(id).map(|&i| &self.list.services[i])
    }

    /// Whether the list may still be relied on at `now_ms`.
    pub fn is_current(&self, now_ms: u64) -> bool {
        now_ms < self.list.valid_until_ms
    }

    /// Verifies `signed` against the trust anchor (governance keys pinned in
    /// the node's configuration). Used when a node loads a list from a file.
    ///
    /// Expiry is not checked here: a node may hold an expired list (and refuse
    /// traffic until it gets a newer one), but never a forged one.
    pub fn verify_with_anchor(
        signed: SignedTrustList,
        anchor: &[PublicKey],
        threshold: u32,
    ) -> Result<Self, TrustListError> {
        let list = wire::decode_trust_list(&signed.body)?;
        check_signatures(&signed, anchor, threshold)?;
        Ok(Self::new(list, signed))
    }

    /// Checks that `candidate` may replace this list at `now_ms`: same
    /// federation, higher version, not expired, and signed by `threshold` of
    /// the governance keys of this (current) list.
    pub fn check_update(
        &self,
        candidate: SignedTrustList,
        now_ms: u64,
    ) -> Result<Self, TrustListError> {
        let list = wire::decode_trust_list(&candidate.body)?;
        if list.federation_id != self.list.federation_id {
            return Err(TrustListError::OtherFederation {
                expected: self.list.federation_id.clone(),
                got: list.federation_id,
            });
        }
        if list.version <= self.list.version {
            return Err(TrustListError::NotNewer {
                current: self.list.version,
                got: list.version,
            });
        }
        if list.valid_until_ms <= now_ms {
            return Err(TrustListError::Expired {
                valid_until_ms: list.valid_until_ms,
                now_ms,
            });
        }
        let anchor: Vec<PublicKey> = self
            .list
            .governance_keys
            .iter()
            .map(|g| g.public_key)
            .collect();
        check_signatures(&candidate, &anchor, self.list.threshold)?;
        Ok(Self::new(list, candidate))
    }

    fn new(list: TrustList, signed: SignedTrustList) -> Self {
        let index = list
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.operator_id.clone(), i))
            .collect();
        let attributes = list
            .attributes
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        let services = list
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.service_id.clone(), i))
            .collect();
        Self {
            list,
            signed,
            index,
            attributes,
            services,
        }
    }
}

/// Which members a peer's key lets connect: the rules both transports apply
/// to the key a connection authenticated (a TLS certificate, a libp2p PeerId).
impl VerifiedTrustList {
    /// The active member that holds `key`, valid at `now_ms`: the rule for a
    /// peer that connects to this node, applied at the handshake and again to
    /// every request.
    pub fn active_member_with_key(
        &self,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<OperatorId, KeyHolderError> {
        let version = self.version();
        let mut holders = self.list.members.iter().filter(|m| holds(m, key));
        let Some(member) = holders.next() else {
            return Err(KeyHolderError::UnknownKey {
                key_id: key.key_id(),
                version,
            });
        };
        if holders.next().is_some() {
            return Err(KeyHolderError::Ambiguous {
                key_id: key.key_id(),
                version,
            });
        }
        if member.status != MemberStatus::Active {
            return Err(KeyHolderError::NotAllowed {
                member: member.operator_id.clone(),
                status: member.status,
                version,
            });
        }
        if !valid_now(member, key, now_ms) {
            return Err(KeyHolderError::KeyNotValidNow {
                member: member.operator_id.clone(),
                key_id: key.key_id(),
                version,
            });
        }
        Ok(member.operator_id.clone())
    }

    /// Checks that `key` is a key of `expected`, valid at `now_ms`, and that
    /// `expected` is not revoked: the rule for a peer this node dialled. A
    /// suspended member may be dialled, so that it learns of its status.
    pub fn check_dialled_key(
        &self,
        expected: &OperatorId,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<(), KeyHolderError> {
        let version = self.version();
        let Some(member) = self.member(expected).filter(|m| holds(m, key)) else {
            return Err(KeyHolderError::WrongMember {
                expected: expected.clone(),
                key_id: key.key_id(),
            });
        };
        if member.status == MemberStatus::Revoked {
            return Err(KeyHolderError::NotAllowed {
                member: expected.clone(),
                status: member.status,
                version,
            });
        }
        if !valid_now(member, key, now_ms) {
            return Err(KeyHolderError::KeyNotValidNow {
                member: expected.clone(),
                key_id: key.key_id(),
                version,
            });
        }
        Ok(())
    }
}

/// Whether `member` lists `key`, in any window.
fn holds(member: &Member, key: &PublicKey) -> bool {
    member.keys.iter().any(|k| k.public_key == *key)
}

/// Whether `member` lists `key` with a window that holds `now_ms`.
fn valid_now(member: &Member, key: &PublicKey, now_ms: u64) -> bool {
    member
        .keys
        .iter()
        .any(|k| k.public_key == *key && k.is_valid_at(now_ms))
}

/// Counts valid signatures by distinct keys of `anchor` and requires `threshold`.
fn check_signatures(
    signed: &SignedTrustList,
    anchor: &[PublicKey],
    threshold: u32,
) -> Result<(), TrustListError> {
    if threshold == 0 {
        return Err(TrustListError::Invalid(
            "threshold must be at least 1".into(),
        ));
    }
    let mut valid = std::collections::BTreeSet::new();
    for (key_id, signature) in &signed.signatures {
        let Some(key) = anchor.iter().find(|k| &k.key_id() == key_id) else {
            continue;
        };
        if key.verify(TRUST_LIST_DOMAIN, &signed.body, signature) {
            valid.insert(key_id.clone());
        } else {
            return Err(TrustListError::BadSignature {
                key_id: key_id.clone(),
            });
        }
    }
    let valid = u32::try_from(valid.len()).unwrap_or(u32::MAX);
    if valid < threshold {
        return Err(TrustListError::NotEnoughSignatures {
            valid,
            needed: threshold,
        });
    }
    Ok(())
}

/// Why a trust list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustListError {
    /// Larger than the trust-list size limit.
    #[error("trust list is {size} bytes, more than the {max} allowed")]
    Oversized {
        /// Received size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Not a decodable trust list.
    #[error("trust list is malformed: {0}")]
    Malformed(String),
    /// Decodes, but breaks a rule (duplicate member, bad key, ...).
    #[error("trust list is invalid: {0}")]
    Invalid(String),
    /// A signature by a governance key does not verify.
    #[error("governance signature by key {key_id} does not verify (forged or altered list)")]
    BadSignature {
        /// The key that supposedly signed.
        key_id: KeyId,
    },
    /// Too few valid governance signatures.
    #[error("trust list has {valid} valid governance signature(s), {needed} needed")]
    NotEnoughSignatures {
        /// Valid signatures by distinct trusted keys.
        valid: u32,
        /// Threshold.
        needed: u32,
    },
    /// Version not higher than the one held.
    #[error("trust list version {got} is not newer than the current version {current}")]
    NotNewer {
        /// Version held.
        current: u64,
        /// Version offered.
        got: u64,
    },
    /// For another federation.
    #[error("trust list is for federation {got:?}, this node belongs to {expected:?}")]
    OtherFederation {
        /// This node's federation.
        expected: String,
        /// The list's federation.
        got: String,
    },
    /// Its validity period is over.
    #[error("trust list expired at {valid_until_ms} ms (now {now_ms} ms)")]
    Expired {
        /// End of validity.
        valid_until_ms: u64,
        /// Current time.
        now_ms: u64,
    },
}

/// Why a peer's key does not let it connect
/// ([`VerifiedTrustList::active_member_with_key`],
/// [`VerifiedTrustList::check_dialled_key`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyHolderError {
    /// No member of the trust list holds this key.
    #[error("key {key_id} is not a key of any member of trust list version {version}")]
    UnknownKey {
        /// The presented key.
        key_id: KeyId,
        /// The trust list consulted.
        version: u64,
    },
    /// The key is listed, but outside its validity window now.
    #[error("key {key_id} of {member} is not valid now (trust list version {version})")]
    KeyNotValidNow {
        /// Its holder.
        member: OperatorId,
        /// The presented key.
        key_id: KeyId,
        /// The trust list consulted.
        version: u64,
    },
    /// The member may not connect in its current status.
    #[error("{member} is {} in trust list version {version}", .status.as_str())]
    NotAllowed {
        /// The member.
        member: OperatorId,
        /// Its status.
        status: MemberStatus,
        /// The trust list consulted.
        version: u64,
    },
    /// Several members hold the key, so it names no one.
    #[error("key {key_id} is listed for more than one member in trust list version {version}")]
    Ambiguous {
        /// The presented key.
        key_id: KeyId,
        /// The trust list consulted.
        version: u64,
    },
    /// The peer dialled is not the member this node meant to reach.
    #[error("the server presented key {key_id}, which is not a key of {expected}")]
    WrongMember {
        /// The member dialled.
        expected: OperatorId,
        /// The presented key.
        key_id: KeyId,
    },
}
