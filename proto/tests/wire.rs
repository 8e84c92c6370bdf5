//! The wire types against the protocol they come from: every message of
//! `mim4.v1` (and the bench echo) round-trips through prost with every field
//! set, once per member of its `oneof`s; the reserved field numbers stay
//! reserved; unknown fields behave as the envelope rules expect (skipped on
//! decode and lost on re-encoding, which is why signatures cover the received
//! bytes and the node refuses a signed envelope that does not re-encode to
//! them); and the gRPC services keep the names and methods deployed nodes call.
//!
//! The schema is read from the `.proto` files themselves: `protoc` (the
//! vendored one the build script uses) compiles them to a descriptor set, and
//! the tests walk it, so a message added to the protocol without a round-trip
//! entry here fails [`every_message_is_in_the_table`].

// Test helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use mim4_proto::bench::v1 as bench;
use mim4_proto::v1 as pb;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

/// The `.proto` files the crate is built from, relative to `proto/proto`.
const PROTO_FILES: [&str; 2] = ["mim4/v1/mim4.proto", "mim4/bench/v1/echo.proto"];

/// How deep sample messages nest before a message-typed field is left empty
/// (the schema has no recursive types today; this bounds any later one).
const DEPTH_MAX: usize = 6;

/// The descriptor set of [`PROTO_FILES`], compiled by the vendored `protoc`.
fn descriptors() -> FileDescriptorSet {
    let protoc = protoc_bin_vendored::protoc_bin_path().unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "mim4-descriptors-{}-{:?}.pb",
        std::process::id(),
        std::thread::current().id()
    ));
    let status = std::process::Command::new(protoc)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("-I{}", include.display()))
        .args(PROTO_FILES)
        .status()
        .unwrap();
    assert!(status.success(), "protoc failed: {status}");
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    FileDescriptorSet::decode(bytes.as_slice()).unwrap()
}

/// Every message type of the schema by full name (`mim4.v1.Envelope`),
/// nested ones included (map entries too: they describe map fields).
fn messages(set: &FileDescriptorSet) -> BTreeMap<String, DescriptorProto> {
    let mut all = BTreeMap::new();
    let mut pending: Vec<(String, DescriptorProto)> = Vec::new();
    for file in &set.file {
        for message in &file.message_type {
            pending.push((file.package().to_owned(), message.clone()));
        }
    }
    while let Some((scope, message)) = pending.pop() {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            pending.push((name.clone(), nested.clone()));
        }
        all.insert(name, message);
    }
    all
}

fn is_map_entry(message: &DescriptorProto) -> bool {
    message.options.as_ref().is_some_and(|o| o.map_entry())
}

/// Writes `value` as a protobuf varint.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(out: &mut Vec<u8>, number: i32, wire_type: u64) {
    varint(out, (u64::try_from(number).unwrap() << 3) | wire_type);
}

fn length_delimited(out: &mut Vec<u8>, number: i32, bytes: &[u8]) {
    tag(out, number, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The bytes of one scalar value of `field`'s type, without a tag, and its
/// wire type; `n` (1 or 2) makes the elements of a repeated field differ.
fn scalar(field: &FieldDescriptorProto, n: u64) -> (u64, Vec<u8>) {
    let mut out = Vec::new();
    let wire_type = match field.r#type() {
        Type::Double => {
            out.extend_from_slice(&(n as f64 + 0.5).to_le_bytes());
            1
        }
        Type::Float => {
            out.extend_from_slice(&(n as f32 + 0.5).to_le_bytes());
            5
        }
        Type::Fixed64 | Type::Sfixed64 => {
            out.extend_from_slice(&n.to_le_bytes());
            1
        }
        Type::Fixed32 | Type::Sfixed32 => {
            out.extend_from_slice(&(n as u32).to_le_bytes());
            5
        }
        Type::Sint32 | Type::Sint64 => {
            varint(&mut out, n << 1);
            0
        }
        Type::Bool => {
            varint(&mut out, 1);
            0
        }
        Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 | Type::Enum => {
            varint(&mut out, n);
            0
        }
        other => panic!("{}: {other:?} is not a scalar", field.name()),
    };
    (wire_type, out)
}

/// An encoding of `message` with every field set to a non-default value:
/// two elements in a repeated field (packed, as proto3 encodes numbers), one
/// entry in a map, and of each `oneof` only member `variant` (modulo its size).
fn sample(
    all: &BTreeMap<String, DescriptorProto>,
    message: &DescriptorProto,
    variant: usize,
    depth: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    for field in &message.field {
        if let Some(oneof) = field.oneof_index.filter(|_| !field.proto3_optional()) {
            let members: Vec<&FieldDescriptorProto> = message
                .field
                .iter()
                .filter(|f| f.oneof_index == Some(oneof))
                .collect();
            if members[variant % members.len()].number() != field.number() {
                continue;
            }
        }
        let repeated = field.label() == Label::Repeated;
        match field.r#type() {
            Type::String | Type::Bytes => {
                for text in if repeated { &["x", "y"][..] } else { &["x"] } {
                    length_delimited(&mut out, field.number(), text.as_bytes());
                }
            }
            Type::Message => {
                let nested = &all[field.type_name().trim_start_matches('.')];
                let body = if depth < DEPTH_MAX {
                    sample(all, nested, variant, depth + 1)
                } else {
                    Vec::new()
                };
                // A map gets one entry: two with the same sample key would merge.
                let count = if repeated && !is_map_entry(nested) {
                    2
                } else {
                    1
                };
                for _ in 0..count {
                    length_delimited(&mut out, field.number(), &body);
                }
            }
            Type::Group => panic!("{}: groups are not proto3", field.name()),
            _ if repeated => {
                let mut packed = Vec::new();
                for n in [1, 2] {
                    packed.extend(scalar(field, n).1);
                }
                length_delimited(&mut out, field.number(), &packed);
            }
            _ => {
                let (wire_type, bytes) = scalar(field, 1);
                tag(&mut out, field.number(), wire_type);
                out.extend(bytes);
            }
        }
    }
    out
}

/// Decodes `bytes` as `M`, which must keep every field (its encoding is as
/// long as the input: nothing was skipped as unknown or of another type), and
/// checks that the decoded value encodes and decodes back to itself.
fn round_trip<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Result<(), String> {
    let decoded = M::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
    if !bytes.is_empty() && decoded == M::default() {
        return Err("decodes to the default value".into());
    }
    if decoded.encoded_len() != bytes.len() {
        return Err(format!(
            "encodes to {} bytes, not {}: a field of the schema is missing or of another type in {decoded:?}",
            decoded.encoded_len(),
            bytes.len()
        ));
    }
    let again = M::decode(decoded.encode_to_vec().as_slice()).map_err(|e| e.to_string())?;
    if again != decoded {
        return Err(format!("{again:?} after a round trip of {decoded:?}"));
    }
    Ok(())
}

/// The round trip of each message type, by full name.
type RoundTrip = fn(&[u8]) -> Result<(), String>;

macro_rules! table {
    ($($package:literal: $module:ident { $($name:ident),* $(,)? })*) => {
        vec![$($((concat!($package, ".", stringify!($name)), round_trip::<$module::$name> as RoundTrip),)*)*]
    };
}

/// Every message type of the schema, with its Rust type.
fn table() -> Vec<(&'static str, RoundTrip)> {
    table! {
        "mim4.v1": pb {
            SignedEnvelope, Envelope, Memo, Receipt, ScopeItem, ConsentTerms, ConsentActor,
            ConsentEvent, SignedConsentEvent, ConsentOffer, ConsentRecordUpdate,
            ConsentStatusQuery, Predicate, DataRequest, AttributeValue, PredicateAnswer,
            Withheld, ReceivedData, DataResponse, TrustListUpdate, SignedTrustList,
            GovernanceSignature, TrustList, CatalogueAttribute, ServiceEntry, GovernanceKey,
            Member, MemberKey, CallRequest, CallResponse, DeliverRequest, DeliverResponse,
            FetchTrustListRequest, FetchTrustListResponse, PeerRequest, PeerResponse,
            PeerRefusal, RequestDataRequest, SourceFailure, RequestDataResponse,
            RequestConsentRequest, ConsentIdResponse, ActOnConsentRequest,
            NarrowConsentRequest, CreateArrangementRequest, RecordDelegationRequest,
            ListConsentsRequest, ListConsentsResponse, GetConsentRequest, PullConsentRequest,
            ConsentDelivery, ConsentView, DecideRequest, DecideResponse, ExportConsentRequest,
            ExportConsentResponse, GetStatusRequest, GetStatusResponse, ListPeersRequest, Peer,
            ListPeersResponse, SendMessageRequest, SendMessageResponse, GetOutgoingRequest,
            GetOutgoingResponse, ListMessagesRequest, ReceivedMessage, ListMessagesResponse,
            InstallTrustListRequest, InstallTrustListResponse, LoadRegistryRequest,
            LoadRegistryResponse,
        }
        "mim4.bench.v1": bench { EchoMessage }
    }
}

/// The table names exactly the schema's message types (map entries aside),
/// so a new message cannot go without its round trip.
#[test]
fn every_message_is_in_the_table() {
    let schema: BTreeSet<String> = messages(&descriptors())
        .into_iter()
        .filter(|(_, m)| !is_map_entry(m))
        .map(|(name, _)| name)
        .collect();
    let table: BTreeSet<String> = table().iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(
        schema.difference(&table).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "messages of the schema without a round trip here"
    );
    assert_eq!(
        table.difference(&schema).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "messages here that the schema does not have"
    );
}

/// Every message, with every field set (each `oneof` member in turn: every
/// envelope payload, every peer response), decodes to a value that keeps each
/// field and encodes and decodes back to itself.
#[test]
fn every_message_round_trips_with_every_field_set() {
    let all = messages(&descriptors());
    let mut failures = Vec::new();
    let mut cases = 0;
    for (name, round_trip) in table() {
        let message = &all[name];
        let variants = (0..message.oneof_decl.len())
            .map(|i| {
                message
                    .field
                    .iter()
                    .filter(|f| f.oneof_index == Some(i as i32) && !f.proto3_optional())
                    .count()
            })
            .max()
            .unwrap_or(1)
            .max(1);
        for variant in 0..variants {
            cases += 1;
            let bytes = sample(&all, message, variant, 0);
            if let Err(why) = round_trip(&bytes) {
                failures.push(format!("{name} (oneof member {variant}): {why}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Envelope alone has 11 payloads: the count shows oneofs were walked.
    assert!(cases > table().len() + 10, "{cases} cases");
}

/// The field numbers the protocol holds for later payloads and metadata
/// (`reserved` in mim4.proto) are still reserved, and nothing else is:
/// (message, inclusive ranges).
const RESERVED: &[(&str, &[(i32, i32)])] = &[
    (
        "mim4.v1.Envelope",
        &[(34, 39), (43, 49), (50, 59), (60, 69), (70, 79)],
    ),
    ("mim4.v1.Member", &[(10, 19)]),
    ("mim4.v1.TrustList", &[(11, 19)]),
];

#[test]
fn reserved_field_numbers_stay_reserved() {
    let all = messages(&descriptors());
    let found: Vec<(String, Vec<(i32, i32)>)> = all
        .iter()
        .filter(|(_, m)| !m.reserved_range.is_empty() || !m.reserved_name.is_empty())
        .map(|(name, m)| {
            assert!(m.reserved_name.is_empty(), "{name} reserves names");
            // Descriptor ranges are end-exclusive.
            let ranges = m
                .reserved_range
                .iter()
                .map(|r| (r.start(), r.end() - 1))
                .collect();
            (name.clone(), ranges)
        })
        .collect();
    let expected: Vec<(String, Vec<(i32, i32)>)> = RESERVED
        .iter()
        .map(|(name, ranges)| ((*name).to_owned(), ranges.to_vec()))
        .collect();
    assert_eq!(found, expected);
    // No field uses a reserved number (protoc refuses that too; this is the pair).
    for (name, ranges) in RESERVED {
        for field in &all[*name].field {
            assert!(
                !ranges
                    .iter()
                    .any(|(lo, hi)| (*lo..=*hi).contains(&field.number())),
                "{name}.{} uses reserved number {}",
                field.name(),
                field.number()
            );
        }
    }
}

/// An envelope body from a newer sender, with a payload at a number reserved
/// for later (34, "further consent payloads"), decodes with no payload: the
/// node then refuses it as "a payload this node does not know" instead of
/// reading it as something else. The other fields are kept, and re-encoding
/// drops the unknown one, so a signature must be checked over the received
/// bytes, never over a re-encoding.
#[test]
fn a_payload_at_a_reserved_number_decodes_as_no_payload() {
    let known = pb::Envelope {
        protocol_version: 1,
        sender: "fi.helsinki".into(),
        recipient: "se.stockholm".into(),
        message_id: vec![7; 16],
        ..Default::default()
    };
    let mut body = known.encode_to_vec();
    length_delimited(&mut body, 34, b"\x0a\x03new");
    let decoded = pb::Envelope::decode(body.as_slice()).unwrap();
    assert_eq!(decoded.payload, None);
    assert_eq!(decoded, known);
    assert!(
        decoded.encoded_len() < body.len(),
        "the unknown field is dropped"
    );
}

/// A signed envelope with a field the schema does not have decodes to the
/// same three fields but does not re-encode to the received bytes: the
/// difference the node's decoder checks to refuse it (one message, one byte form).
#[test]
fn an_unknown_field_in_a_signed_envelope_does_not_survive_re_encoding() {
    let signed = pb::SignedEnvelope {
        body: b"body".to_vec(),
        signature: vec![1; 64],
        key_id: "k1".into(),
    };
    let mut bytes = signed.encode_to_vec();
    length_delimited(&mut bytes, 9, b"extra");
    let decoded = pb::SignedEnvelope::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, signed);
    assert_ne!(decoded.encode_to_vec(), bytes);
}

/// The gRPC services keep the names and methods that deployed nodes and
/// SDK clients call (a rename is a protocol break), and the generated servers
/// announce those names.
#[test]
fn services_keep_their_names_and_methods() {
    let set = descriptors();
    let found: BTreeMap<String, Vec<String>> = set
        .file
        .iter()
        .flat_map(|file| {
            file.service.iter().map(move |service| {
                (
                    format!("{}.{}", file.package(), service.name()),
                    service.method.iter().map(|m| m.name().to_owned()).collect(),
                )
            })
        })
        .collect();
    let expected: BTreeMap<String, Vec<String>> = [
        (
            "mim4.v1.OperatorPeer",
            &["Deliver", "FetchTrustList", "Call"][..],
        ),
        (
            "mim4.v1.OperatorApi",
            &[
                "GetStatus",
                "ListPeers",
                "SendMessage",
                "GetOutgoing",
                "ListMessages",
                "InstallTrustList",
                "LoadRegistry",
                "RequestConsent",
                "ActOnConsent",
                "NarrowConsent",
                "CreateArrangement",
                "RecordDelegation",
                "ListConsents",
                "GetConsent",
                "PullConsent",
                "Decide",
                "ExportConsent",
                "RequestData",
            ][..],
        ),
        ("mim4.bench.v1.Echo", &["Echo"][..]),
    ]
    .into_iter()
    .map(|(s, m)| (s.to_owned(), m.iter().map(|m| (*m).to_owned()).collect()))
    .collect();
    assert_eq!(found, expected);
    assert_eq!(
        pb::operator_peer_server::SERVICE_NAME,
        "mim4.v1.OperatorPeer"
    );
    assert_eq!(pb::operator_api_server::SERVICE_NAME, "mim4.v1.OperatorApi");
}
