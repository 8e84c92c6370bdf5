//! The editable trust-list draft (`trust-draft.toml`) that governance keeps,
//! and its conversion to a signed list.
//!
//! Governance edits the draft with `mim4-node trust add-member/add-key/suspend`
//! (or by hand), then `trust sign` turns it into the next signed version. The
//! draft records the last signed version so versions only go up.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::consent::{Attribute, Purpose, ServiceId};
use crate::core::ids::OperatorId;
use crate::core::keys::{PublicKey, SecretKey};
use crate::core::trust::{
    CatalogueAttribute, GovernanceKey, Member, MemberKey, MemberStatus, Role, ServiceEntry,
    SignedTrustList, TrustList, ValueType,
};

/// Errors of draft handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The draft file cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The draft breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

/// A member key in the draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftKey {
    /// Public key, 64 hex digits.
    pub public_key: String,
    /// Valid from (ms since the epoch).
    #[serde(default)]
    pub not_before_ms: u64,
    /// Valid until (ms since the epoch), if it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
}

/// A member in the draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftMember {
    /// Operator id.
    pub operator_id: String,
    /// Name.
    pub name: String,
    /// Country code.
    pub country: String,
    /// Roles: operator, source, consumer.
    pub roles: Vec<String>,
    /// gRPC endpoint of its peer server: `https://host:port` (`http://` only
    /// in a development federation whose nodes run without TLS).
    pub grpc_endpoint: String,
    /// libp2p multiaddrs.
    #[serde(default)]
    pub p2p_addrs: Vec<String>,
    /// active, suspended or revoked.
    #[serde(default = "active")]
    pub status: String,
    /// Sector labels.
    #[serde(default)]
    pub sectors: Vec<String>,
    /// Signing keys.
    #[serde(rename = "key")]
    pub keys: Vec<DraftKey>,
}

fn active() -> String {
    "active".into()
}

/// The draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// Federation name.
    pub federation_id: String,
    /// Last signed version (0 before the first signature).
    pub version: u64,
    /// Rulebook version.
    pub rulebook_version: String,
    /// Signatures a list needs.
    pub threshold: u32,
    /// Governance public keys, hex.
    pub governance_keys: Vec<String>,
    /// Members.
    #[serde(default, rename = "member")]
    pub members: Vec<DraftMember>,
    /// The attribute catalogue.
    #[serde(default, rename = "attribute")]
    pub attributes: Vec<DraftAttribute>,
    /// The service registry.
    #[serde(default, rename = "service")]
    pub services: Vec<DraftService>,
}

/// A catalogue attribute in the draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftAttribute {
    /// Name, e.g. `income.gross_monthly`.
    pub name: String,
    /// integer, number, string, boolean, date or string-list.
    pub value_type: String,
    /// Unit, if any.
    #[serde(default)]
    pub unit: String,
    /// normal, sensitive or special-category.
    #[serde(default = "normal")]
    pub sensitivity: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Operator ids of its sources.
    pub sources: Vec<String>,
}

fn normal() -> String {
    "normal".into()
}

/// A registered service in the draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftService {
    /// Service id, e.g. `fi.helsinki/early-education`.
    pub service_id: String,
    /// Name.
    pub name: String,
    /// DPV purposes it may request data for.
    pub purposes: Vec<String>,
}

impl Draft {
    /// An empty draft for a new federation.
    pub fn new(federation_id: &str, governance_keys: &[PublicKey]) -> Self {
        Self {
            federation_id: federation_id.to_owned(),
            version: 0,
            rulebook_version: "mim4-rulebook-1.0".into(),
            threshold: 1,
            governance_keys: governance_keys.iter().map(PublicKey::to_hex).collect(),
            members: Vec::new(),
            attributes: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Reads a draft file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes the draft file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let body = toml::to_string(self).map_err(|e| Error::Invalid(e.to_string()))?;
        let text = format!(
            "# MIM4 federation trust-list draft. Edit with `mim4-node trust ...`, then\n\
             # `mim4-node trust sign` makes the next signed version.\n\n{body}"
        );
        std::fs::write(path, text).map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Adds a member; refuses a duplicate id.
    pub fn add_member(&mut self, member: DraftMember) -> Result<(), Error> {
        if self
            .members
            .iter()
            .any(|m| m.operator_id == member.operator_id)
        {
            return Err(Error::Invalid(format!(
                "member {} is already in the draft",
                member.operator_id
            )));
        }
        self.members.push(member);
        Ok(())
    }

    /// The member with this id, to edit.
    pub fn member_mut(&mut self, operator_id: &str) -> Result<&mut DraftMember, Error> {
        self.members
            .iter_mut()
            .find(|m| m.operator_id == operator_id)
            .ok_or_else(|| Error::Invalid(format!("no member {operator_id} in the draft")))
    }

    /// Converts to the core's trust list with the given version and times.
    pub fn to_trust_list(
        &self,
        version: u64,
        issued_at_ms: u64,
        valid_until_ms: u64,
    ) -> Result<TrustList, Error> {
        let governance_keys = self
            .governance_keys
            .iter()
            .map(|k| {
                PublicKey::from_hex(k)
                    .map(|public_key| GovernanceKey { public_key })
                    .map_err(|e| Error::Invalid(format!("governance key {k}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let list = TrustList {
            federation_id: self.federation_id.clone(),
            version,
            issued_at_ms,
            valid_until_ms,
            rulebook_version: self.rulebook_version.clone(),
            governance_keys,
            threshold: self.threshold,
            members: self
                .members
                .iter()
                .map(DraftMember::to_member)
                .collect::<Result<_, _>>()?,
            attributes: self
                .attributes
                .iter()
                .map(DraftAttribute::to_catalogue_attribute)
                .collect::<Result<_, _>>()?,
            services: self
                .services
                .iter()
                .map(DraftService::to_service_entry)
                .collect::<Result<_, _>>()?,
        };
        // Round-trip through the wire decoder so a draft that signs is a list that verifies.
        crate::core::wire::decode_trust_list(&crate::core::wire::encode_trust_list(&list))
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Signs the next version with `keys`, bumping the draft's version.
    pub fn sign_next(
        &mut self,
        keys: &[&SecretKey],
        now_ms: u64,
        valid_for_ms: u64,
    ) -> Result<SignedTrustList, Error> {
        let version = self.version + 1;
        let list = self.to_trust_list(version, now_ms, now_ms.saturating_add(valid_for_ms))?;
        self.version = version;
        Ok(list.sign(keys))
    }
}

impl DraftMember {
    /// The trust list's member: a valid id, known roles and status, a way to
    /// reach it (each address valid, its libp2p addresses naming its keys).
    fn to_member(&self) -> Result<Member, Error> {
        let operator_id =
            OperatorId::new(self.operator_id.clone()).map_err(|e| Error::Invalid(e.to_string()))?;
        let roles = self
            .roles
            .iter()
            .map(|r| {
                Role::parse(r).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{operator_id}: role {r:?} is not operator, source or consumer"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.check_endpoints(&operator_id)?;
        let status = match self.status.as_str() {
            "active" => MemberStatus::Active,
            "suspended" => MemberStatus::Suspended,
            "revoked" => MemberStatus::Revoked,
            other => {
                return Err(Error::Invalid(format!(
                    "{operator_id}: status {other:?} is not active, suspended or revoked"
                )))
            }
        };
        let keys = self
            .keys
            .iter()
            .map(|k| {
                Ok(MemberKey {
                    public_key: PublicKey::from_hex(&k.public_key)
                        .map_err(|e| Error::Invalid(format!("{operator_id} key: {e}")))?,
                    not_before_ms: k.not_before_ms,
                    not_after_ms: k.not_after_ms,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        for addr in &self.p2p_addrs {
            crate::transport::p2p::check_listed_addr(addr, keys.iter().map(|k| &k.public_key))
                .map_err(|e| Error::Invalid(format!("{operator_id}: {e}")))?;
        }
        Ok(Member {
            operator_id,
            name: self.name.clone(),
            country: self.country.clone(),
            roles,
            keys,
            grpc_endpoint: self.grpc_endpoint.clone(),
            p2p_addrs: self.p2p_addrs.clone(),
            status,
            sectors: self.sectors.clone(),
        })
    }

    /// Peers can reach the member: it lists a gRPC endpoint or a libp2p
    /// address, and its gRPC endpoint, if any, parses.
    fn check_endpoints(&self, operator_id: &OperatorId) -> Result<(), Error> {
        if self.grpc_endpoint.is_empty() && self.p2p_addrs.is_empty() {
            return Err(Error::Invalid(format!(
                "{operator_id}: lists neither a gRPC endpoint nor a libp2p address; \
                 peers could not reach it"
            )));
        }
        if !self.grpc_endpoint.is_empty() {
            crate::transport::grpc::parse_endpoint(&self.grpc_endpoint)
                .map_err(|e| Error::Invalid(format!("{operator_id}: {e}")))?;
        }
        Ok(())
    }
}

impl DraftAttribute {
    /// The catalogue entry: a valid name, a known type, valid source ids.
    fn to_catalogue_attribute(&self) -> Result<CatalogueAttribute, Error> {
        Ok(CatalogueAttribute {
            name: Attribute::new(self.name.clone()).map_err(|e| Error::Invalid(e.to_string()))?,
            value_type: ValueType::parse(&self.value_type).ok_or_else(|| {
                Error::Invalid(format!(
                    "attribute {}: unknown type {:?}",
                    self.name, self.value_type
                ))
            })?,
            unit: self.unit.clone(),
            sensitivity: self.sensitivity.clone(),
            description: self.description.clone(),
            sources: self
                .sources
                .iter()
                .map(|s| OperatorId::new(s.clone()).map_err(|e| Error::Invalid(e.to_string())))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl DraftService {
    /// The registry entry: a valid service id and valid purposes.
    fn to_service_entry(&self) -> Result<ServiceEntry, Error> {
        Ok(ServiceEntry {
            service_id: ServiceId::new(self.service_id.clone())
                .map_err(|e| Error::Invalid(e.to_string()))?,
            name: self.name.clone(),
            purposes: self
                .purposes
                .iter()
                .map(|p| Purpose::new(p.clone()).map_err(|e| Error::Invalid(e.to_string())))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draft edited by hand to hold a small-order (weak) key, as a member
    /// key or a governance key, does not convert to a trust list, and the
    /// error names the member and says why.
    #[test]
    fn small_order_keys_in_a_draft_are_refused() {
        let governance = SecretKey::from_bytes(&[9; 32]).unwrap();
        let operator = SecretKey::from_bytes(&[10; 32]).unwrap();
        let weak = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa";
        let key = |public_key: String| DraftKey {
            public_key,
            not_before_ms: 0,
            not_after_ms: None,
        };
        let mut draft = Draft::new("weak-test", &[governance.public()]);
        draft
            .add_member(DraftMember {
                operator_id: "fi.helsinki".into(),
                name: "City of Helsinki".into(),
                country: "FI".into(),
                roles: vec!["operator".into()],
                grpc_endpoint: "http://127.0.0.1:7401".into(),
                p2p_addrs: Vec::new(),
                status: "active".into(),
                sectors: Vec::new(),
                keys: vec![key(operator.public().to_hex())],
            })
            .unwrap();
        assert!(draft.to_trust_list(1, 0, 1).is_ok());

        let mut with_weak_member_key = draft.clone();
        with_weak_member_key
            .member_mut("fi.helsinki")
            .unwrap()
            .keys
            .push(key(weak.into()));
        let error = with_weak_member_key
            .to_trust_list(1, 0, 1)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("fi.helsinki") && error.contains("weak (small order)"),
            "{error}"
        );

        let mut with_weak_governance_key = draft;
        with_weak_governance_key.governance_keys.push(weak.into());
        let error = with_weak_governance_key
            .to_trust_list(1, 0, 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("weak (small order)"), "{error}");
    }
}
