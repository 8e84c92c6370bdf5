//! The fixed world the fuzz targets run in: a governance key, two operators
//! with keys made from fixed bytes, a catalogue with one attribute of each
//! value type, and the trust list naming them, verified against the
//! governance key. Time is the constant [`NOW`], as in the core tests.

// A fixture that cannot be built is a bug in this file: fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use mim4_node::core::consent::Attribute;
use mim4_node::core::envelope::{EnvelopeLimits, Verifier};
use mim4_node::core::ids::OperatorId;
use mim4_node::core::keys::SecretKey;
use mim4_node::core::trust::{
    CatalogueAttribute, GovernanceKey, Member, MemberKey, MemberStatus, Role, TrustList, ValueType,
    VerifiedTrustList,
};

/// The fixed clock (ms since the epoch, in 2027).
pub const NOW: u64 = 1_800_000_000_000;

/// One day in ms.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The value types of the catalogue, each with an attribute `fuzz.<type>`.
pub const VALUE_TYPES: [ValueType; 6] = [
    ValueType::Integer,
    ValueType::Number,
    ValueType::String,
    ValueType::Boolean,
    ValueType::Date,
    ValueType::StringList,
];

/// The catalogue name of the attribute of `value_type`.
pub fn attribute_name(value_type: ValueType) -> String {
    format!("fuzz.{}", value_type.as_str().replace('-', "_"))
}

/// An operator of the fixture.
#[derive(Debug)]
pub struct Operator {
    /// Its id.
    pub id: OperatorId,
    /// Its signing key.
    pub key: SecretKey,
}

/// The fixture.
#[derive(Debug)]
pub struct World {
    /// The governance key (threshold 1).
    pub governance: SecretKey,
    /// The sender, `fi.helsinki`.
    pub sender: Operator,
    /// The recipient, `se.stockholm`.
    pub recipient: Operator,
    /// The trust list in force.
    pub trust: VerifiedTrustList,
}

impl World {
    /// A verifier of envelopes addressed to the recipient.
    pub fn verifier(&self) -> Verifier<'_> {
        Verifier {
            me: &self.recipient.id,
            trust: &self.trust,
            limits: EnvelopeLimits::default(),
        }
    }
}

fn member(operator: &Operator) -> Member {
    Member {
        operator_id: operator.id.clone(),
        name: operator.id.to_string(),
        country: "FI".into(),
        roles: vec![Role::Operator, Role::Source],
        keys: vec![MemberKey {
            public_key: operator.key.public(),
            not_before_ms: 0,
            not_after_ms: None,
        }],
        grpc_endpoint: "http://127.0.0.1:7400".into(),
        p2p_addrs: Vec::new(),
        status: MemberStatus::Active,
        sectors: vec!["education".into()],
    }
}

/// The fixture, built once per process.
pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let governance = SecretKey::from_bytes(&[0x01; 32]).unwrap();
        let sender = Operator {
            id: OperatorId::new("fi.helsinki").unwrap(),
            key: SecretKey::from_bytes(&[0x11; 32]).unwrap(),
        };
        let recipient = Operator {
            id: OperatorId::new("se.stockholm").unwrap(),
            key: SecretKey::from_bytes(&[0x22; 32]).unwrap(),
        };
        let list = TrustList {
            federation_id: "eu.mim4.fuzz".into(),
            version: 1,
            issued_at_ms: NOW - DAY_MS,
            valid_until_ms: NOW + 30 * DAY_MS,
            rulebook_version: "2025.1".into(),
            governance_keys: vec![GovernanceKey {
                public_key: governance.public(),
            }],
            threshold: 1,
            members: vec![member(&sender), member(&recipient)],
            attributes: VALUE_TYPES
                .iter()
                .map(|&value_type| CatalogueAttribute {
                    name: Attribute::new(attribute_name(value_type)).unwrap(),
                    value_type,
                    unit: String::new(),
                    sensitivity: "normal".into(),
                    description: String::new(),
                    sources: vec![recipient.id.clone()],
                })
                .collect(),
            services: Vec::new(),
        };
        let trust = VerifiedTrustList::verify_with_anchor(
            list.sign(&[&governance]),
            &[governance.public()],
            1,
        )
        .unwrap();
        World {
            governance,
            sender,
            recipient,
            trust,
        }
    })
}
