//! The trust list and its signed form: members, keys, governance keys, the
//! catalogue and the service registry.

use mim4_proto::v1 as pb;
use prost::Message as _;

use crate::core::consent::{Attribute, Purpose, ServiceId};
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, PublicKey};
use crate::core::trust::{
    CatalogueAttribute, GovernanceKey, Member, MemberKey, MemberStatus, Role, ServiceEntry,
    SignedTrustList, TrustList, TrustListError, ValueType,
};
use crate::limits;

use super::{at_most_bytes, at_most_items, operator_id_field, DecodeError};

/// Encodes a trust list body.
pub fn encode_trust_list(list: &TrustList) -> Vec<u8> {
    let raw = pb::TrustList {
        federation_id: list.federation_id.clone(),
        version: list.version,
        issued_at_ms: list.issued_at_ms,
        valid_until_ms: list.valid_until_ms,
        rulebook_version: list.rulebook_version.clone(),
        governance_keys: list
            .governance_keys
            .iter()
            .map(governance_key_to_pb)
            .collect(),
        threshold: list.threshold,
        members: list.members.iter().map(member_to_pb).collect(),
        attributes: list
            .attributes
            .iter()
            .map(|a| pb::CatalogueAttribute {
                name: a.name.to_string(),
                value_type: a.value_type.as_str().into(),
                unit: a.unit.clone(),
                sensitivity: a.sensitivity.clone(),
                description: a.description.clone(),
                sources: a.sources.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        services: list
            .services
            .iter()
            .map(|s| pb::ServiceEntry {
                service_id: s.service_id.to_string(),
                name: s.name.clone(),
                purposes: s.purposes.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    };
    raw.encode_to_vec()
}

fn governance_key_to_pb(key: &GovernanceKey) -> pb::GovernanceKey {
    let (key_id, public_key) = key_to_pb(&key.public_key);
    pb::GovernanceKey { key_id, public_key }
}

/// A key as the wire carries it: its id and its 32 bytes.
fn key_to_pb(key: &PublicKey) -> (String, Vec<u8>) {
    (key.key_id().to_string(), key.to_bytes().to_vec())
}

pub(super) fn member_to_pb(member: &Member) -> pb::Member {
    pb::Member {
        operator_id: member.operator_id.to_string(),
        name: member.name.clone(),
        country: member.country.clone(),
        roles: member.roles.iter().map(|r| role_to_pb(*r) as i32).collect(),
        keys: member
            .keys
            .iter()
            .map(|k| {
                let (key_id, public_key) = key_to_pb(&k.public_key);
                let not_after_ms = k.not_after_ms.unwrap_or(0);
                let not_before_ms = k.not_before_ms;
                pb::MemberKey {
                    key_id,
                    public_key,
                    not_before_ms,
                    not_after_ms,
                }
            })
            .collect(),
        grpc_endpoint: member.grpc_endpoint.clone(),
        p2p_addrs: member.p2p_addrs.clone(),
        status: status_to_pb(member.status) as i32,
        sectors: member.sectors.clone(),
    }
}

/// Converts a role to its wire enum.
pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Operator => pb::Role::Operator,
        Role::Source => pb::Role::Source,
        Role::Consumer => pb::Role::Consumer,
    }
}

/// Converts a status to its wire enum.
pub fn status_to_pb(status: MemberStatus) -> pb::MemberStatus {
    match status {
        MemberStatus::Active => pb::MemberStatus::Active,
        MemberStatus::Suspended => pb::MemberStatus::Suspended,
        MemberStatus::Revoked => pb::MemberStatus::Revoked,
    }
}

/// Decodes and validates a trust list body.
pub fn decode_trust_list(body: &[u8]) -> Result<TrustList, TrustListError> {
    if body.len() > limits::TRUST_LIST_BYTES_MAX {
        return Err(TrustListError::Oversized {
            size: body.len(),
            max: limits::TRUST_LIST_BYTES_MAX,
        });
    }
    let raw = pb::TrustList::decode(body).map_err(|e| TrustListError::Malformed(e.to_string()))?;
    let invalid = |text: String| TrustListError::Invalid(text);
    if raw.federation_id.is_empty() || raw.federation_id.len() > limits::TEXT_FIELD_BYTES_MAX {
        return Err(invalid("federation_id must be 1 to 512 bytes".into()));
    }
    if raw.governance_keys.is_empty() || raw.governance_keys.len() > limits::GOVERNANCE_KEYS_MAX {
        return Err(invalid(format!(
            "a list names 1 to {} governance keys, this one {}",
            limits::GOVERNANCE_KEYS_MAX,
            raw.governance_keys.len()
        )));
    }
    let governance_keys = governance_keys_from_pb(raw.governance_keys)?;
    if raw.threshold == 0 || raw.threshold as usize > governance_keys.len() {
        return Err(invalid(format!(
            "threshold {} must be between 1 and the {} governance keys",
            raw.threshold,
            governance_keys.len()
        )));
    }
    let members = members_from_pb(raw.members)?;
    if raw.attributes.len() > limits::CATALOGUE_ATTRIBUTES_MAX
        || raw.services.len() > limits::REGISTRY_SERVICES_MAX
    {
        return Err(invalid(format!(
            "at most {} attributes and {} services",
            limits::CATALOGUE_ATTRIBUTES_MAX,
            limits::REGISTRY_SERVICES_MAX
        )));
    }
    let attributes = raw
        .attributes
        .into_iter()
        .map(catalogue_attribute_from_pb)
        .collect::<Result<_, _>>()?;
    let services = raw
        .services
        .into_iter()
        .map(service_from_pb)
        .collect::<Result<_, _>>()?;
    Ok(TrustList {
        attributes,
        services,
        federation_id: raw.federation_id,
        version: raw.version,
        issued_at_ms: raw.issued_at_ms,
        valid_until_ms: raw.valid_until_ms,
        rulebook_version: raw.rulebook_version,
        governance_keys,
        threshold: raw.threshold,
        members,
    })
}

/// A trust list's governance keys, each checked against its key id.
pub(super) fn governance_keys_from_pb(
    keys: Vec<pb::GovernanceKey>,
) -> Result<Vec<GovernanceKey>, TrustListError> {
    let invalid = TrustListError::Invalid;
    let mut governance_keys = Vec::with_capacity(keys.len());
    for g in keys {
        let public_key = PublicKey::from_bytes(&g.public_key)
            .map_err(|e| invalid(format!("governance key {}: {e}", g.key_id)))?;
        if public_key.key_id().as_str() != g.key_id {
            return Err(invalid(format!(
                "governance key id {} does not match its key",
                g.key_id
            )));
        }
        governance_keys.push(GovernanceKey { public_key });
    }
    Ok(governance_keys)
}

/// A trust list's members, at most [`limits::MEMBERS_MAX`], none listed twice.
pub(super) fn members_from_pb(raw: Vec<pb::Member>) -> Result<Vec<Member>, TrustListError> {
    let invalid = TrustListError::Invalid;
    if raw.len() > limits::MEMBERS_MAX {
        return Err(invalid(format!(
            "{} members, more than the {} allowed",
            raw.len(),
            limits::MEMBERS_MAX
        )));
    }
    let mut members = Vec::with_capacity(raw.len());
    let mut seen_ids = std::collections::BTreeSet::new();
    for m in raw {
        let member = member_from_pb(m).map_err(|e| invalid(e.to_string()))?;
        if !seen_ids.insert(member.operator_id.clone()) {
            return Err(invalid(format!(
                "member {} is listed twice",
                member.operator_id
            )));
        }
        members.push(member);
    }
    Ok(members)
}

/// One attribute of the catalogue: its type, short texts and 1 to
/// [`limits::ATTRIBUTE_SOURCES_MAX`] sources.
pub(super) fn catalogue_attribute_from_pb(
    a: pb::CatalogueAttribute,
) -> Result<CatalogueAttribute, TrustListError> {
    let invalid = TrustListError::Invalid;
    let name = Attribute::new(a.name).map_err(|e| invalid(e.to_string()))?;
    let text_ok = [&a.unit, &a.sensitivity, &a.description]
        .iter()
        .all(|t| t.len() <= limits::TEXT_FIELD_BYTES_MAX);
    if !text_ok || a.sources.is_empty() || a.sources.len() > limits::ATTRIBUTE_SOURCES_MAX {
        return Err(invalid(format!(
            "attribute {name}: 1 to {} sources and short texts",
            limits::ATTRIBUTE_SOURCES_MAX
        )));
    }
    Ok(CatalogueAttribute {
        value_type: ValueType::parse(&a.value_type)
            .ok_or_else(|| invalid(format!("attribute {name}: unknown type {:?}", a.value_type)))?,
        unit: a.unit,
        sensitivity: a.sensitivity,
        description: a.description,
        sources: a
            .sources
            .into_iter()
            .map(|s| OperatorId::new(s).map_err(|e| invalid(format!("attribute {name}: {e}"))))
            .collect::<Result<_, _>>()?,
        name,
    })
}

/// One service of the registry, with at most [`limits::SERVICE_PURPOSES_MAX`] purposes.
pub(super) fn service_from_pb(entry: pb::ServiceEntry) -> Result<ServiceEntry, TrustListError> {
    let invalid = TrustListError::Invalid;
    let service_id = ServiceId::new(entry.service_id).map_err(|e| invalid(e.to_string()))?;
    if entry.name.len() > limits::TEXT_FIELD_BYTES_MAX
        || entry.purposes.len() > limits::SERVICE_PURPOSES_MAX
    {
        return Err(invalid(format!(
            "service {service_id}: name too long or too many purposes"
        )));
    }
    Ok(ServiceEntry {
        purposes: entry
            .purposes
            .into_iter()
            .map(|p| Purpose::new(p).map_err(|e| invalid(format!("service {service_id}: {e}"))))
            .collect::<Result<_, _>>()?,
        name: entry.name,
        service_id,
    })
}

pub(super) fn member_from_pb(m: pb::Member) -> Result<Member, DecodeError> {
    let operator_id = operator_id_field(m.operator_id, "operator_id")?;
    let in_member = |source: DecodeError| DecodeError::Member {
        operator_id: operator_id.clone(),
        source: Box::new(source),
    };
    let text_max = limits::TEXT_FIELD_BYTES_MAX;
    at_most_bytes("name", &m.name, text_max).map_err(in_member)?;
    at_most_bytes("country", &m.country, text_max).map_err(in_member)?;
    at_most_bytes("grpc_endpoint", &m.grpc_endpoint, text_max).map_err(in_member)?;
    at_most_items("p2p addresses", &m.p2p_addrs, 16).map_err(in_member)?;
    for addr in &m.p2p_addrs {
        at_most_bytes("p2p address", addr, text_max).map_err(in_member)?;
    }
    at_most_items("sectors", &m.sectors, 32).map_err(in_member)?;
    for sector in &m.sectors {
        at_most_bytes("sector", sector, text_max).map_err(in_member)?;
    }
    if m.keys.is_empty() || m.keys.len() > limits::KEYS_PER_MEMBER_MAX {
        return Err(in_member(DecodeError::Count {
            field: "keys",
            count: m.keys.len(),
            min: 1,
            max: limits::KEYS_PER_MEMBER_MAX,
        }));
    }
    let mut keys = Vec::with_capacity(m.keys.len());
    for k in m.keys {
        let public_key = PublicKey::from_bytes(&k.public_key).map_err(|source| {
            in_member(DecodeError::Key {
                key_id: k.key_id.clone(),
                source,
            })
        })?;
        if public_key.key_id().as_str() != k.key_id {
            return Err(in_member(DecodeError::KeyMismatch { key_id: k.key_id }));
        }
        keys.push(MemberKey {
            public_key,
            not_before_ms: k.not_before_ms,
            not_after_ms: (k.not_after_ms != 0).then_some(k.not_after_ms),
        });
    }
    let mut roles = Vec::with_capacity(m.roles.len());
    for r in m.roles {
        roles.push(match pb::Role::try_from(r) {
            Ok(pb::Role::Operator) => Role::Operator,
            Ok(pb::Role::Source) => Role::Source,
            Ok(pb::Role::Consumer) => Role::Consumer,
            _ => {
                return Err(in_member(DecodeError::UnknownEnum {
                    field: "role",
                    value: r,
                }))
            }
        });
    }
    let status = match pb::MemberStatus::try_from(m.status) {
        Ok(pb::MemberStatus::Active) => MemberStatus::Active,
        Ok(pb::MemberStatus::Suspended) => MemberStatus::Suspended,
        Ok(pb::MemberStatus::Revoked) => MemberStatus::Revoked,
        _ => {
            return Err(in_member(DecodeError::UnknownEnum {
                field: "status",
                value: m.status,
            }))
        }
    };
    Ok(Member {
        operator_id,
        name: m.name,
        country: m.country,
        roles,
        keys,
        grpc_endpoint: m.grpc_endpoint,
        p2p_addrs: m.p2p_addrs,
        status,
        sectors: m.sectors,
    })
}

/// Encodes a signed trust list.
pub fn encode_signed_trust_list(signed: &SignedTrustList) -> Vec<u8> {
    signed_trust_list_to_pb(signed).encode_to_vec()
}

/// Converts a signed trust list to its wire type.
pub fn signed_trust_list_to_pb(signed: &SignedTrustList) -> pb::SignedTrustList {
    pb::SignedTrustList {
        body: signed.body.clone(),
        signatures: signed
            .signatures
            .iter()
            .map(|(key_id, signature)| pb::GovernanceSignature {
                key_id: key_id.to_string(),
                signature: signature.clone(),
            })
            .collect(),
    }
}

/// Decodes a signed trust list (signatures not yet checked).
pub fn decode_signed_trust_list(bytes: &[u8]) -> Result<SignedTrustList, TrustListError> {
    if bytes.len() > limits::TRUST_LIST_BYTES_MAX {
        return Err(TrustListError::Oversized {
            size: bytes.len(),
            max: limits::TRUST_LIST_BYTES_MAX,
        });
    }
    let raw =
        pb::SignedTrustList::decode(bytes).map_err(|e| TrustListError::Malformed(e.to_string()))?;
    signed_trust_list_from_pb(raw)
}

/// Validates a signed trust list from its wire type.
pub fn signed_trust_list_from_pb(
    raw: pb::SignedTrustList,
) -> Result<SignedTrustList, TrustListError> {
    if raw.signatures.len() > limits::GOVERNANCE_KEYS_MAX {
        return Err(TrustListError::Invalid(format!(
            "{} signatures, more than the {} allowed",
            raw.signatures.len(),
            limits::GOVERNANCE_KEYS_MAX
        )));
    }
    Ok(SignedTrustList {
        body: raw.body,
        signatures: raw
            .signatures
            .into_iter()
            .map(|s| (KeyId::from_wire(&s.key_id), s.signature))
            .collect(),
    })
}

// ---------------------------------------------------------------------------
// Consent
// ---------------------------------------------------------------------------
