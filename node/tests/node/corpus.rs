//! Hostile-input corpus: 10,000 envelopes in eleven categories, generated
//! from a seed, each sent over a real peer transport as node 1 (gRPC over
//! TLS, and libp2p over noise: one test each) to an in-process node. Every case must be refused with the expected gRPC code *and* the
//! expected machine-readable reason (the `mim4-reason` metadata of the
//! refusal), the node must stay healthy, and a summary (counts per category
//! and reason, timings, resident memory) is printed and written to
//! `$CARGO_TARGET_DIR/reliability/corpus-{grpc,libp2p}.json` (`target/` by default).
//!
//! The seed (`MIM4_CORPUS_SEED`, default [`SEED_DEFAULT`]) fixes which cases
//! are made: every choice (sub-case, cut, bit, size, key, point, times
//! relative to now) comes from it. The bytes themselves still differ between
//! runs, because the operators' keys and the clock do.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mim4_node::clock::now_ms;
use mim4_node::core::envelope::{Envelope, Memo, Payload, PROTOCOL_VERSION};
use mim4_node::core::ids::{MessageId, OperatorId};
use mim4_node::core::keys::{SecretKey, ENVELOPE_DOMAIN, TRUST_LIST_DOMAIN};
use mim4_node::core::trust::SignedTrustList;
use mim4_node::core::wire;
use mim4_node::limits;
use mim4_node::transport::grpc::REASON_METADATA_KEY;
use mim4_node::trust_draft::{DraftKey, DraftMember};
use mim4_proto::v1 as pb;
use pb::operator_peer_client::OperatorPeerClient;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{until_delivered, P2pSender, TestNet, Transports};

/// Cases in the corpus.
const CASES: usize = 10_000;

/// The seed used when `MIM4_CORPUS_SEED` is not set ("MIM4").
const SEED_DEFAULT: u64 = 0x4d49_4d34;

/// Requests in flight at once over the one peer connection.
const CONCURRENCY: usize = 16;

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

const HOUR_MS: u64 = 60 * 60 * 1000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The order of the Ed25519 group, little-endian.
const ORDER_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Encodings of points of small order (1, 2, 4 or 8): the eight canonical
/// ones, then non-canonical ones (y >= p, or x = 0 with the sign bit set).
/// Each decodes as a curve point that `VerifyingKey::is_weak` flags.
const SMALL_ORDER_POINTS: &[&str] = &[
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

/// The categories of the corpus, in the order the summary lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Category {
    Malformed,
    Truncated,
    Oversized,
    BadSignature,
    WrongSigner,
    UnknownKey,
    RevokedOrSuspended,
    SmallOrderKey,
    NonCanonicalSignature,
    Expired,
    Replayed,
}

const CATEGORIES: [Category; 11] = [
    Category::Malformed,
    Category::Truncated,
    Category::Oversized,
    Category::BadSignature,
    Category::WrongSigner,
    Category::UnknownKey,
    Category::RevokedOrSuspended,
    Category::SmallOrderKey,
    Category::NonCanonicalSignature,
    Category::Expired,
    Category::Replayed,
];

impl Category {
    fn name(self) -> &'static str {
        match self {
            Category::Malformed => "malformed",
            Category::Truncated => "truncated",
            Category::Oversized => "oversized",
            Category::BadSignature => "bad_signature",
            Category::WrongSigner => "wrong_signer",
            Category::UnknownKey => "unknown_key",
            Category::RevokedOrSuspended => "revoked_or_suspended",
            Category::SmallOrderKey => "small_order_key",
            Category::NonCanonicalSignature => "non_canonical_signature",
            Category::Expired => "expired",
            Category::Replayed => "replayed",
        }
    }
}

/// The bytes of a case. Oversized cases are built when sent, so the corpus
/// does not hold a gigabyte of filler.
enum Bytes {
    Plain(Vec<u8>),
    /// `len` bytes: 32 bytes drawn from `seed`, then filler.
    Filler {
        len: usize,
        seed: u64,
    },
    /// A `SignedEnvelope` whose body is filler: well formed, but too large.
    WrappedFiller {
        len: usize,
        seed: u64,
    },
}

impl Bytes {
    fn build(&self) -> Vec<u8> {
        match *self {
            Bytes::Plain(ref bytes) => bytes.clone(),
            Bytes::Filler { len, seed } => filler(len, seed),
            Bytes::WrappedFiller { len, seed } => {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut signature = vec![0; 64];
                rng.fill_bytes(&mut signature);
                let wrap = |body_len| {
                    pb::SignedEnvelope {
                        body: filler(body_len, seed),
                        signature: signature.clone(),
                        key_id: "0123456789abcdef".into(),
                    }
                    .encode_to_vec()
                };
                // The framing takes a few bytes; size the body so the whole is `len`.
                let overhead = wrap(len).len() - len;
                let bytes = wrap(len - overhead);
                assert!(bytes.len().abs_diff(len) <= 2, "{} vs {len}", bytes.len());
                bytes
            }
        }
    }

    /// What makes two cases distinct.
    fn identity(&self) -> [u8; 32] {
        match *self {
            Bytes::Plain(ref bytes) => Sha256::digest(bytes).into(),
            Bytes::Filler { len, seed } | Bytes::WrappedFiller { len, seed } => {
                let wrapped = matches!(self, Bytes::WrappedFiller { .. });
                let text = format!("{wrapped}/{len}/{seed}");
                Sha256::digest(text.as_bytes()).into()
            }
        }
    }
}

fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![(seed % 251) as u8; len];
    let mut rng = StdRng::seed_from_u64(seed);
    rng.fill_bytes(&mut bytes[..32.min(len)]);
    bytes
}

/// The refusal a case must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expected {
    code: Code,
    /// The `mim4-reason` value; `None` where tonic refuses before the node
    /// sees the request (larger than the transport's limit).
    reason: Option<&'static str>,
    /// For a replay: the index of the original whose receipt must come back
    /// in the status details. Every other refusal carries no details.
    receipt_of: Option<usize>,
}

impl Expected {
    fn node(code: Code, reason: &'static str) -> Self {
        Self {
            code,
            reason: Some(reason),
            receipt_of: None,
        }
    }
}

const MALFORMED: Expected = Expected {
    code: Code::InvalidArgument,
    reason: Some("malformed"),
    receipt_of: None,
};

struct Case {
    category: Category,
    /// The sub-case, for the summary and for failure messages.
    label: &'static str,
    bytes: Bytes,
    expected: Expected,
}

/// What came back for one case.
#[derive(Debug)]
enum Outcome {
    /// Applied; the receipt.
    Accepted(Vec<u8>),
    /// The libp2p stream failed before an answer came back.
    StreamFailed,
    Refused {
        code: Code,
        reason: Option<String>,
        details: Vec<u8>,
    },
    TimedOut,
}

/// Keys and ids the generator signs with, beyond the running nodes' own.
struct Extra {
    /// A second key of node 1 whose window ended an hour ago.
    ended: SecretKey,
    /// A third key of node 1 valid only from tomorrow.
    future: SecretKey,
    /// The key of a suspended member.
    suspended: SecretKey,
    /// The key of a revoked member.
    revoked: SecretKey,
}

const SUSPENDED_ID: &str = "xx.suspended";
const REVOKED_ID: &str = "xx.revoked";

/// Makes the cases. Node 0 receives; node 1 is the usual sender; node 2 is
/// an active member that does not run.
struct Generator<'a> {
    rng: StdRng,
    net: &'a TestNet,
    extra: &'a Extra,
    now: u64,
    /// Valid memos delivered before the corpus, so that they can be replayed.
    originals: Vec<Envelope>,
}

impl Generator<'_> {
    fn id(&self, i: usize) -> OperatorId {
        self.net.id(i)
    }

    fn message_id(&mut self) -> MessageId {
        MessageId::from_bytes(self.rng.gen())
    }

    fn text(&mut self, min: usize, max: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ";
        let len = self.rng.gen_range(min..=max);
        (0..len)
            .map(|_| ALPHABET[self.rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    }

    /// A memo from `sender` to node 0 with a fresh id and random text.
    fn memo_from(&mut self, sender: OperatorId, created_at_ms: u64, lifetime_ms: u64) -> Envelope {
        let subject = "corpus".to_owned();
        let text = self.text(16, 200);
        Envelope {
            protocol_version: PROTOCOL_VERSION,
            rulebook_version: "mim4-rulebook-1.0".into(),
            trust_list_version: 2,
            message_id: self.message_id(),
            sender,
            recipient: self.id(0),
            created_at_ms,
            expires_at_ms: created_at_ms + lifetime_ms,
            in_reply_to: None,
            payload: Payload::Memo(Memo { subject, text }),
        }
    }

    /// A fresh memo from node 1, valid now.
    fn memo(&mut self) -> Envelope {
        self.memo_from(self.id(1), self.now, HOUR_MS)
    }

    fn case(&mut self, category: Category, index: usize) -> Case {
        let (label, bytes, expected) = match category {
            Category::Malformed => self.malformed(index),
            Category::Truncated => self.truncated(index),
            Category::Oversized => self.oversized(index),
            Category::BadSignature => self.bad_signature(index),
            Category::WrongSigner => self.wrong_signer(index),
            Category::UnknownKey => self.unknown_key(index),
            Category::RevokedOrSuspended => self.revoked_or_suspended(index),
            Category::SmallOrderKey => self.small_order_key(index),
            Category::NonCanonicalSignature => self.non_canonical_signature(index),
            Category::Expired => self.expired(index),
            Category::Replayed => self.replayed(index),
        };
        Case {
            category,
            label,
            bytes,
            expected,
        }
    }

    fn malformed(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let valid = self.memo();
        let mut body = pb::Envelope::decode(&wire::encode_envelope(&valid)[..]).unwrap();
        let net = self.net;
        let key = &net.keys[1];
        let key_id = key.public().key_id().to_string();
        let (label, bytes) = match index % 9 {
            0 => {
                // A first byte whose wire type (6 or 7) does not exist.
                let mut bytes = vec![0; self.rng.gen_range(1..=512)];
                self.rng.fill_bytes(&mut bytes);
                bytes[0] = (self.rng.gen::<u8>() & 0x78) | self.rng.gen_range(6..=7);
                ("invalid wire type", bytes)
            }
            1 => {
                let mut len = self.rng.gen_range(0..=200);
                if len == 64 {
                    len = 63;
                }
                let body = wire::encode_envelope(&valid);
                let mut signature = key.sign(ENVELOPE_DOMAIN, &body).to_vec();
                signature.resize(len, 0xa5);
                ("signature length", signed_raw(body, signature, key_id))
            }
            2 => {
                let body = wire::encode_envelope(&valid);
                let signature = key.sign(ENVELOPE_DOMAIN, &body).to_vec();
                let len = [0, self.rng.gen_range(65..=300)][self.rng.gen_range(0..2)];
                (
                    "key id length",
                    signed_raw(body, signature, "k".repeat(len)),
                )
            }
            3 => {
                let mut garbage = vec![0; self.rng.gen_range(1..=400)];
                self.rng.fill_bytes(&mut garbage);
                garbage[0] = (self.rng.gen::<u8>() & 0x78) | 7;
                ("garbage body", self.sign_body(garbage, 1))
            }
            4 => {
                let mut len = self.rng.gen_range(0..=40);
                if len == MessageId::LEN {
                    len += 1;
                }
                body.message_id = (0..len).map(|_| self.rng.gen()).collect();
                ("message id length", self.sign_body(body.encode_to_vec(), 1))
            }
            5 => {
                let bad = match self.rng.gen_range(0..4) {
                    0 => String::new(),
                    1 => format!("Fi.{}", self.text(1, 20).replace(' ', "")),
                    2 => format!("9{}", self.text(1, 20).replace(' ', "x")),
                    _ => "a".repeat(self.rng.gen_range(65..=200)),
                };
                if self.rng.gen() {
                    body.sender = bad;
                } else {
                    body.recipient = bad;
                }
                ("operator id", self.sign_body(body.encode_to_vec(), 1))
            }
            6 => {
                let label = if self.rng.gen() {
                    body.payload = None;
                    "no payload"
                } else {
                    let len = limits::MEMO_TEXT_BYTES_MAX + self.rng.gen_range(1..=4096);
                    body.payload = Some(pb::envelope::Payload::Memo(pb::Memo {
                        subject: "corpus".into(),
                        text: "x".repeat(len),
                    }));
                    "memo text too long"
                };
                (label, self.sign_body(body.encode_to_vec(), 1))
            }
            7 => {
                // A complete extra field: unknown, or a repeated key id.
                let mut bytes = valid.seal(key).bytes;
                if self.rng.gen() {
                    let field = self.rng.gen_range(4u8..=15);
                    bytes.extend_from_slice(&[(field << 3) | 5, 1, 2, 3, 4]);
                    ("unknown outer field", bytes)
                } else {
                    bytes.push(0x1a);
                    bytes.push(key_id.len() as u8);
                    bytes.extend_from_slice(key_id.as_bytes());
                    ("repeated outer field", bytes)
                }
            }
            _ => {
                // A length prefix far past the end, or a varint that never ends.
                let mut bytes = vec![0x0a];
                if self.rng.gen() {
                    bytes.extend_from_slice(&[0xff, 0xff, 0x3f]);
                    let mut tail = vec![0; self.rng.gen_range(0..=100)];
                    self.rng.fill_bytes(&mut tail);
                    bytes.extend_from_slice(&tail);
                    ("length past the end", bytes)
                } else {
                    bytes.extend(std::iter::repeat_n(0xff, self.rng.gen_range(10..=40)));
                    let mut tail = vec![0; self.rng.gen_range(0..=64)];
                    self.rng.fill_bytes(&mut tail);
                    bytes.extend_from_slice(&tail);
                    ("endless varint", bytes)
                }
            }
        };
        (label, Bytes::Plain(bytes), MALFORMED)
    }

    /// Signs `body` (any bytes) with node `i`'s key, as that node would.
    fn sign_body(&self, body: Vec<u8>, i: usize) -> Vec<u8> {
        let key = &self.net.keys[i];
        let signature = key.sign(ENVELOPE_DOMAIN, &body).to_vec();
        signed_raw(body, signature, key.public().key_id().to_string())
    }

    fn truncated(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let envelope = self.memo();
        let sealed = envelope.seal(&self.net.keys[1]).bytes;
        // Cuts fall after the first byte of the fresh message id, so that no
        // two cases are the same prefix.
        let after_id = |bytes: &[u8]| {
            let id = envelope.message_id.as_bytes();
            bytes.windows(id.len()).position(|w| w == id).unwrap() + 1
        };
        if index % 2 == 0 {
            let keep = self.rng.gen_range(after_id(&sealed)..sealed.len());
            (
                "signed envelope cut",
                Bytes::Plain(sealed[..keep].to_vec()),
                MALFORMED,
            )
        } else {
            // The sender signs a body that was cut: the signature is valid,
            // the body does not decode.
            let body = wire::decode_signed_envelope(&sealed).unwrap().body;
            let keep = self.rng.gen_range(after_id(&body)..body.len());
            let bytes = self.sign_body(body[..keep].to_vec(), 1);
            ("body cut, then signed", Bytes::Plain(bytes), MALFORMED)
        }
    }

    fn oversized(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let max = self.net.configs[0].envelope_limits.message_bytes_max;
        let seed = self.rng.gen();
        if index % 20 == 19 {
            // Past the transport's own limit: tonic refuses it before the node
            // decodes anything, so there is no node reason to carry.
            let len = self.rng.gen_range(max + 1024..=2 * max);
            let expected = Expected {
                code: Code::OutOfRange,
                reason: None,
                receipt_of: None,
            };
            return (
                "past the transport limit",
                Bytes::Filler { len, seed },
                expected,
            );
        }
        // Inside the transport's framing room (64 bytes around the envelope,
        // of which the request's own tag and length take 4).
        let len = self.rng.gen_range(max + 1..=max + 60);
        let expected = Expected::node(Code::ResourceExhausted, "oversized");
        if index % 2 == 0 {
            ("filler", Bytes::Filler { len, seed }, expected)
        } else {
            (
                "signed envelope of filler",
                Bytes::WrappedFiller { len, seed },
                expected,
            )
        }
    }

    fn bad_signature(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let net = self.net;
        let key = &net.keys[1];
        let envelope = self.memo();
        let body = wire::encode_envelope(&envelope);
        let good = key.sign(ENVELOPE_DOMAIN, &body).to_vec();
        let (label, body, signature) = match index % 7 {
            0 => {
                let mut signature = good;
                let bit = self.rng.gen_range(0..512);
                signature[bit / 8] ^= 1 << (bit % 8);
                ("one bit flipped", body, signature)
            }
            1 => {
                let mut signature = vec![0; 64];
                self.rng.fill_bytes(&mut signature);
                ("random signature", body, signature)
            }
            2 => {
                let other = wire::encode_envelope(&self.memo());
                let signature = key.sign(ENVELOPE_DOMAIN, &other).to_vec();
                ("signature of another envelope", body, signature)
            }
            3 => {
                // One character of the memo text changed: the body still decodes.
                let Payload::Memo(memo) = &envelope.payload else {
                    unreachable!()
                };
                let at = body
                    .windows(memo.text.len())
                    .position(|w| w == memo.text.as_bytes())
                    .unwrap()
                    + self.rng.gen_range(0..memo.text.len());
                let mut body = body;
                body[at] = if body[at] == b'z' { b'y' } else { b'z' };
                ("body altered after signing", body, good)
            }
            4 => {
                let signature = key.sign(b"", &body).to_vec();
                ("no domain prefix", body, signature)
            }
            5 => {
                let signature = key.sign(TRUST_LIST_DOMAIN, &body).to_vec();
                ("trust-list domain", body, signature)
            }
            _ => {
                // Zero R and S, with a few random bytes so each case differs.
                let mut signature = vec![0; 64];
                let at = self.rng.gen_range(0..64);
                signature[at] = self.rng.gen_range(1..=255);
                ("almost zero", body, signature)
            }
        };
        let bytes = signed_raw(body, signature, key.public().key_id().to_string());
        let expected = Expected::node(Code::Unauthenticated, "bad_signature");
        (label, Bytes::Plain(bytes), expected)
    }

    fn wrong_signer(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        if index % 7 == 6 {
            // A valid envelope of node 2, delivered over node 1's connection:
            // members send only their own envelopes.
            let envelope = self.memo_from(self.id(2), self.now, HOUR_MS);
            let bytes = envelope.seal(&self.net.keys[2]).bytes;
            let expected = Expected::node(Code::PermissionDenied, "not_from_peer");
            return (
                "node 2's valid envelope, sent by node 1",
                Bytes::Plain(bytes),
                expected,
            );
        }
        // (claimed sender, signer, whose key id is named)
        let (label, claimed, signer, named) = match index % 7 {
            0 => ("node 2 signs as node 1, names its own key", 1, 2, 2),
            1 => ("node 2 signs as node 1, names node 1's key", 1, 2, 1),
            2 => (
                "the recipient's key signs as node 1, names its own key",
                1,
                0,
                0,
            ),
            3 => (
                "the recipient's key signs as node 1, names node 1's key",
                1,
                0,
                1,
            ),
            4 => ("node 1 signs as node 2, names its own key", 2, 1, 1),
            _ => ("node 1 signs as node 2, names node 2's key", 2, 1, 2),
        };
        let envelope = self.memo_from(self.id(claimed), self.now, HOUR_MS);
        let body = wire::encode_envelope(&envelope);
        let signature = self.net.keys[signer].sign(ENVELOPE_DOMAIN, &body).to_vec();
        let key_id = self.net.keys[named].public().key_id().to_string();
        let expected = if named == claimed {
            Expected::node(Code::Unauthenticated, "bad_signature")
        } else {
            Expected::node(Code::Unauthenticated, "unknown_key")
        };
        (
            label,
            Bytes::Plain(signed_raw(body, signature, key_id)),
            expected,
        )
    }

    fn unknown_key(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let unknown = Expected::node(Code::Unauthenticated, "unknown_key");
        match index % 4 {
            0 => {
                let stranger = SecretKey::generate(&mut self.rng);
                let bytes = self.memo().seal(&stranger).bytes;
                ("a key no member has", Bytes::Plain(bytes), unknown)
            }
            1 => {
                let body = wire::encode_envelope(&self.memo());
                let signature = self.net.keys[1].sign(ENVELOPE_DOMAIN, &body).to_vec();
                let key_id = self.text(1, 64).replace(' ', "_");
                let bytes = signed_raw(body, signature, key_id);
                ("an invented key id", Bytes::Plain(bytes), unknown)
            }
            2 => {
                let sender = OperatorId::new(format!("xx.stranger-{index}")).unwrap();
                let stranger = SecretKey::generate(&mut self.rng);
                let bytes = self
                    .memo_from(sender, self.now, HOUR_MS)
                    .seal(&stranger)
                    .bytes;
                let expected = Expected::node(Code::Unauthenticated, "unknown_sender");
                ("a sender no list names", Bytes::Plain(bytes), expected)
            }
            _ => {
                let bytes = self.memo().seal(&self.net.governance).bytes;
                ("the governance key", Bytes::Plain(bytes), unknown)
            }
        }
    }

    fn revoked_or_suspended(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let not_valid = Expected::node(Code::Unauthenticated, "key_not_valid_now");
        let not_active = Expected::node(Code::PermissionDenied, "sender_not_active");
        match index % 4 {
            0 => {
                let bytes = self.memo().seal(&self.extra.ended).bytes;
                ("key window ended", Bytes::Plain(bytes), not_valid)
            }
            1 => {
                let bytes = self.memo().seal(&self.extra.future).bytes;
                ("key window not begun", Bytes::Plain(bytes), not_valid)
            }
            2 => {
                let sender = OperatorId::new(SUSPENDED_ID).unwrap();
                let envelope = self.memo_from(sender, self.now, HOUR_MS);
                let bytes = envelope.seal(&self.extra.suspended).bytes;
                ("suspended member", Bytes::Plain(bytes), not_active)
            }
            _ => {
                let sender = OperatorId::new(REVOKED_ID).unwrap();
                let envelope = self.memo_from(sender, self.now, HOUR_MS);
                let bytes = envelope.seal(&self.extra.revoked).bytes;
                ("revoked member", Bytes::Plain(bytes), not_active)
            }
        }
    }

    fn small_order_key(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let point: [u8; 32] = hex::decode(SMALL_ORDER_POINTS.choose(&mut self.rng).unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let point_key_id = hex::encode(&Sha256::digest(point)[..8]);
        match index % 3 {
            0 | 1 => {
                // R = the identity (or the point itself) and S = 0: a signature
                // that a cofactored or non-strict verifier accepts for a
                // small-order key. The key is in no list, and cannot be.
                let claimed = 1 + index % 2;
                let envelope = self.memo_from(self.id(claimed), self.now, HOUR_MS);
                let mut signature = vec![0; 64];
                if index % 2 == 0 {
                    signature[0] = 1;
                } else {
                    signature[..32].copy_from_slice(&point);
                }
                let body = wire::encode_envelope(&envelope);
                let bytes = signed_raw(body, signature, point_key_id);
                let expected = Expected::node(Code::Unauthenticated, "unknown_key");
                ("signed by a small-order key", Bytes::Plain(bytes), expected)
            }
            _ => {
                // A trust-list update, signed by governance and carried by a
                // valid envelope of node 1, naming a small-order key: the list
                // does not decode, so the payload is unusable.
                let list = self.trust_list_with_small_order_key(point);
                let mut envelope = self.memo();
                envelope.payload = Payload::TrustListUpdate(list);
                let bytes = envelope.seal(&self.net.keys[1]).bytes;
                let expected = Expected::node(Code::InvalidArgument, "unusable");
                (
                    "trust-list update naming one",
                    Bytes::Plain(bytes),
                    expected,
                )
            }
        }
    }

    /// The draft as version 3, with one member key or the governance key
    /// replaced by `point`, signed by governance.
    fn trust_list_with_small_order_key(&mut self, point: [u8; 32]) -> SignedTrustList {
        let list = self
            .net
            .draft
            .to_trust_list(3, self.now, self.now + DAY_MS)
            .unwrap();
        let mut raw = pb::TrustList::decode(&wire::encode_trust_list(&list)[..]).unwrap();
        let key_id = hex::encode(&Sha256::digest(point)[..8]);
        let slot = self.rng.gen_range(0..=raw.members.len());
        if slot == raw.members.len() {
            raw.governance_keys.push(pb::GovernanceKey {
                key_id,
                public_key: point.to_vec(),
            });
        } else {
            let keys = &mut raw.members[slot].keys;
            let at = self.rng.gen_range(0..=keys.len());
            keys.insert(
                at,
                pb::MemberKey {
                    key_id,
                    public_key: point.to_vec(),
                    not_before_ms: 0,
                    not_after_ms: 0,
                },
            );
        }
        let body = raw.encode_to_vec();
        let governance = &self.net.governance;
        let signature = governance.sign(TRUST_LIST_DOMAIN, &body).to_vec();
        SignedTrustList {
            body,
            signatures: vec![(governance.public().key_id(), signature)],
        }
    }

    fn non_canonical_signature(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let net = self.net;
        let key = &net.keys[1];
        let body = wire::encode_envelope(&self.memo());
        let good: [u8; 64] = key.sign(ENVELOPE_DOMAIN, &body);
        let mut signature = good;
        let label = match index % 4 {
            0 => {
                // S + k·L for a random k: the same scalar mod L, not canonical.
                let mut s: [u8; 32] = good[32..].try_into().unwrap();
                let mut sums = Vec::new();
                while let Some(next) = add_le(&s, &ORDER_L) {
                    sums.push(next);
                    s = next;
                }
                signature[32..].copy_from_slice(sums.choose(&mut self.rng).unwrap());
                "S + kL"
            }
            1 => {
                // S with its top bits set: at least 2^253, far above L.
                self.rng.fill_bytes(&mut signature[32..]);
                signature[63] |= 0xe0;
                "S >= 2^253"
            }
            2 => {
                // R as y = p + d (non-canonical), sign bit random.
                let mut r = [0xffu8; 32];
                r[0] = 0xed + self.rng.gen_range(0..=18u8);
                r[31] = if self.rng.gen() { 0x7f } else { 0xff };
                signature[..32].copy_from_slice(&r);
                "R not canonical (y >= p)"
            }
            _ => {
                // R of small order (canonical or not), S random below 2^252.
                let point = hex::decode(SMALL_ORDER_POINTS.choose(&mut self.rng).unwrap()).unwrap();
                signature[..32].copy_from_slice(&point);
                self.rng.fill_bytes(&mut signature[32..]);
                signature[63] &= 0x0f;
                "R of small order"
            }
        };
        let bytes = signed_raw(body, signature.to_vec(), key.public().key_id().to_string());
        let expected = Expected::node(Code::Unauthenticated, "bad_signature");
        (label, Bytes::Plain(bytes), expected)
    }

    fn expired(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let (label, expires_at_ms) = match index % 3 {
            0 => (
                "minutes ago",
                self.now - self.rng.gen_range(60_000..=HOUR_MS),
            ),
            1 => (
                "days ago",
                self.now - self.rng.gen_range(HOUR_MS..=365 * DAY_MS),
            ),
            _ => ("near the epoch", self.rng.gen_range(2..=DAY_MS)),
        };
        let lifetime_ms = self
            .rng
            .gen_range(1..=limits::MESSAGE_LIFETIME_MS_MAX.min(expires_at_ms));
        let envelope = self.memo_from(self.id(1), expires_at_ms - lifetime_ms, lifetime_ms);
        let bytes = envelope.seal(&self.net.keys[1]).bytes;
        let expected = Expected::node(Code::FailedPrecondition, "expired");
        (label, Bytes::Plain(bytes), expected)
    }

    /// A new original (delivered before the corpus), then a replay of it.
    fn replayed(&mut self, index: usize) -> (&'static str, Bytes, Expected) {
        let original = self.memo();
        let sealed = original.seal(&self.net.keys[1]).bytes;
        let number = self.originals.len();
        self.originals.push(original.clone());
        let replayed = Expected {
            code: Code::AlreadyExists,
            reason: Some("replayed"),
            receipt_of: Some(number),
        };
        match index % 3 {
            0 => ("the same bytes", Bytes::Plain(sealed), replayed),
            1 => {
                // The same body and signature with the outer fields in reverse
                // order: the same message in another byte form, which the node
                // refuses before it looks the id up (one message, one form).
                let signed = wire::decode_signed_envelope(&sealed).unwrap();
                let mut bytes = Vec::new();
                prost::encoding::string::encode(3, &signed.key_id.to_string(), &mut bytes);
                prost::encoding::bytes::encode(2, &signed.signature, &mut bytes);
                prost::encoding::bytes::encode(1, &signed.body, &mut bytes);
                ("fields reordered", Bytes::Plain(bytes), MALFORMED)
            }
            _ => {
                let mut other = original;
                other.payload = Payload::Memo(Memo {
                    subject: "corpus".into(),
                    text: self.text(16, 200),
                });
                let bytes = other.seal(&self.net.keys[1]).bytes;
                let expected = Expected::node(Code::AlreadyExists, "id_reused");
                ("the same id, another body", Bytes::Plain(bytes), expected)
            }
        }
    }
}

/// A `SignedEnvelope` with these fields, whatever they hold.
fn signed_raw(body: Vec<u8>, signature: Vec<u8>, key_id: String) -> Vec<u8> {
    pb::SignedEnvelope {
        body,
        signature,
        key_id,
    }
    .encode_to_vec()
}

/// `a + b` as 256-bit little-endian numbers, `None` on overflow.
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> Option<[u8; 32]> {
    let mut sum = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let total = u16::from(a[i]) + u16::from(b[i]) + carry;
        sum[i] = total as u8;
        carry = total >> 8;
    }
    (carry == 0).then_some(sum)
}

/// The process's resident memory (the nodes run in this process), in KiB.
fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The transport the corpus travels over, as node 1.
#[derive(Clone)]
enum Wire {
    Grpc(OperatorPeerClient<Channel>),
    Libp2p(P2pSender),
}

impl Wire {
    fn new(net: &TestNet, transports: Transports) -> Self {
        match transports {
            Transports::Grpc => Self::Grpc(net.peer_client(1, 0)),
            _ => {
                let node = net.nodes[0].as_ref().unwrap();
                Self::Libp2p(P2pSender::spawn(
                    &net.keys[1],
                    node.peer_id,
                    node.p2p_addrs[0].clone(),
                ))
            }
        }
    }
}

async fn send(wire: &Wire, envelope: Vec<u8>) -> Outcome {
    match wire {
        Wire::Grpc(client) => {
            let mut client = client.clone();
            let call = client.deliver(pb::DeliverRequest { envelope });
            match tokio::time::timeout(DEADLINE, call).await {
                Err(_) => Outcome::TimedOut,
                Ok(Ok(response)) => Outcome::Accepted(response.into_inner().receipt),
                Ok(Err(status)) => Outcome::Refused {
                    code: status.code(),
                    reason: status
                        .metadata()
                        .get(REASON_METADATA_KEY)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned),
                    details: status.details().to_vec(),
                },
            }
        }
        Wire::Libp2p(sender) => {
            match tokio::time::timeout(DEADLINE, sender.deliver(envelope)).await {
                Err(_) => Outcome::TimedOut,
                Ok(None) => Outcome::StreamFailed,
                Ok(Some(response)) => match response.kind {
                    Some(pb::peer_response::Kind::Deliver(d)) => Outcome::Accepted(d.receipt),
                    Some(pb::peer_response::Kind::Refusal(r)) => Outcome::Refused {
                        code: Code::from(i32::try_from(r.code).unwrap()),
                        reason: Some(r.reason),
                        details: r.receipt,
                    },
                    other => panic!("unexpected libp2p answer {other:?}"),
                },
            }
        }
    }
}

/// Whether `outcome` is the refusal `expected` asks for.
/// Over libp2p, a frame past the transport's limit is refused by the node
/// itself from the frame header (`oversized`), where tonic refuses it
/// without a reason; everything else is the same verdict on both.
fn over(expected: &Expected, wire: &Wire) -> Expected {
    match (wire, expected.reason) {
        (Wire::Libp2p(_), None) => Expected::node(Code::ResourceExhausted, "oversized"),
        _ => *expected,
    }
}

fn is_expected(outcome: &Outcome, expected: &Expected, receipts: &[Vec<u8>]) -> bool {
    let Outcome::Refused {
        code,
        reason,
        details,
    } = outcome
    else {
        return false;
    };
    let want_details: &[u8] = match expected.receipt_of {
        Some(i) => &receipts[i],
        None => &[],
    };
    *code == expected.code && reason.as_deref() == expected.reason && details == want_details
}

/// Per-category tallies for the summary.
#[derive(Default)]
struct Tally {
    cases: usize,
    /// Cases per sub-case label.
    labels: BTreeMap<&'static str, usize>,
    /// Cases per `code/reason` received.
    refusals: BTreeMap<String, usize>,
    latency_ms_total: f64,
    latency_ms_max: f64,
}

/// Three operators (node 0 receives, node 1 sends, node 2 is a member that
/// does not run), with a trust list v2 that also names a suspended and a
/// revoked member and gives node 1 an ended and a future key besides its own.
fn federation(rng: &mut StdRng, now: u64, transports: Transports) -> (TestNet, Extra) {
    let mut net = TestNet::over(3, transports);
    let extra = Extra {
        ended: SecretKey::generate(rng),
        future: SecretKey::generate(rng),
        suspended: SecretKey::generate(rng),
        revoked: SecretKey::generate(rng),
    };
    let sender = net.id(1);
    let scheme = net.peer_url(0).split("://").next().unwrap().to_owned();
    let v2 = net.sign_next(|draft| {
        let keys = &mut draft.member_mut(sender.as_str()).unwrap().keys;
        keys.push(DraftKey {
            public_key: extra.ended.public().to_hex(),
            not_before_ms: 0,
            not_after_ms: Some(now - HOUR_MS),
        });
        keys.push(DraftKey {
            public_key: extra.future.public().to_hex(),
            not_before_ms: now + DAY_MS,
            not_after_ms: None,
        });
        for (id, status, key) in [
            (SUSPENDED_ID, "suspended", &extra.suspended),
            (REVOKED_ID, "revoked", &extra.revoked),
        ] {
            draft
                .add_member(DraftMember {
                    operator_id: id.into(),
                    name: id.into(),
                    country: "XX".into(),
                    roles: vec!["operator".into()],
                    grpc_endpoint: format!("{scheme}://127.0.0.1:1"),
                    p2p_addrs: vec![],
                    status: status.into(),
                    sectors: vec![],
                    keys: vec![DraftKey {
                        public_key: key.public().to_hex(),
                        not_before_ms: 0,
                        not_after_ms: None,
                    }],
                })
                .unwrap();
        }
    });
    for config in &net.configs {
        std::fs::write(&config.trust_list, &v2).unwrap();
    }
    (net, extra)
}

/// The corpus: [`CASES`] split evenly over the categories, shuffled, each
/// distinct; and the originals its replays need delivered first.
fn corpus(generator: &mut Generator<'_>) -> (Vec<Case>, Vec<Envelope>) {
    let mut cases = Vec::with_capacity(CASES);
    for (c, &category) in CATEGORIES.iter().enumerate() {
        let count = CASES / CATEGORIES.len() + usize::from(c < CASES % CATEGORIES.len());
        for index in 0..count {
            cases.push(generator.case(category, index));
        }
    }
    cases.shuffle(&mut generator.rng);
    assert_eq!(cases.len(), CASES);
    let mut seen = HashSet::new();
    for case in &cases {
        assert!(
            seen.insert(case.bytes.identity()),
            "two {} cases ({}) are the same",
            case.category.name(),
            case.label
        );
    }
    (cases, std::mem::take(&mut generator.originals))
}

/// Delivers each of `envelopes` (valid) and returns their receipts, in order.
async fn deliver_all(wire: &Wire, envelopes: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = envelopes.len().div_ceil(CONCURRENCY).max(1);
    for (part, group) in envelopes.chunks(chunk).enumerate() {
        let wire = wire.clone();
        let group = group.to_vec();
        tasks.spawn(async move {
            let mut receipts = Vec::with_capacity(group.len());
            for envelope in group {
                let Outcome::Accepted(receipt) = send(&wire, envelope).await else {
                    panic!("an original was not applied");
                };
                receipts.push(receipt);
            }
            (part, receipts)
        });
    }
    let mut parts = tasks.join_all().await;
    parts.sort_by_key(|(part, _)| *part);
    let receipts: Vec<Vec<u8>> = parts.into_iter().flat_map(|(_, r)| r).collect();
    assert_eq!(receipts.len(), envelopes.len());
    assert!(receipts.iter().all(|r| !r.is_empty()));
    receipts
}

/// Sends every case, [`CONCURRENCY`] at a time over the one connection;
/// returns (case index, outcome, latency) in completion order.
async fn send_all(wire: &Wire, cases: &Arc<Vec<Case>>) -> Vec<(usize, Outcome, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let wire = wire.clone();
        let cases = Arc::clone(cases);
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut results = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else {
                    return results;
                };
                let bytes = case.bytes.build();
                let sent = Instant::now();
                let outcome = send(&wire, bytes).await;
                results.push((i, outcome, sent.elapsed()));
            }
        });
    }
    let results: Vec<_> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(results.len(), cases.len());
    results
}

/// Node 0 answers `GetStatus`, accepts a valid envelope from node 1 by hand
/// and receives a memo that node 1 sends through its API; and exactly the
/// `originals`, those two and nothing else were applied there.
async fn assert_healthy(
    net: &TestNet,
    wire: &Wire,
    generator: &mut Generator<'_>,
    originals: &[Envelope],
) {
    let status = net.admin(0).await.status().await.unwrap();
    assert_eq!(status.operator_id, net.id(0).as_str());
    generator.now = now_ms();
    let valid = generator.memo().seal(&net.keys[1]).bytes;
    let outcome = send(wire, valid).await;
    assert!(
        matches!(outcome, Outcome::Accepted(_)),
        "a valid envelope after the corpus: {outcome:?}"
    );
    let peer = net.admin(1).await;
    let id = peer
        .send_message(net.id(0).as_str(), "after the corpus", "still there?")
        .await
        .unwrap();
    until_delivered(&peer, id, DEADLINE).await;
    let admin = net.admin(0).await;
    let mut listed = Vec::new();
    loop {
        let after = listed.last().map_or(0, |m: &pb::ReceivedMessage| m.seq);
        let page = admin.messages(after, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        listed.extend(page);
    }
    assert_eq!(
        listed.len(),
        originals.len() + 2,
        "messages applied at node 0"
    );
    let originals: HashSet<&[u8; 16]> = originals.iter().map(|e| e.message_id.as_bytes()).collect();
    let applied = listed
        .iter()
        .filter(|m| {
            let id: &[u8; 16] = m.message_id.as_slice().try_into().unwrap();
            originals.contains(&id)
        })
        .count();
    assert_eq!(applied, originals.len());
}

/// Ten thousand hostile envelopes in eleven categories, each case distinct,
/// are each refused by a running node over the real peer transport with the
/// expected gRPC code and `mim4-reason` (and, for replays, the original
/// receipt); none is applied, and afterwards the node answers `GetStatus`,
/// accepts a valid envelope by hand and receives a memo sent by a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_is_refused_with_the_expected_reason_over_grpc() {
    hostile_corpus(Transports::Grpc).await;
}

/// The same corpus over libp2p (noise-authenticated as node 1, framed by
/// `/mim4/envelope/1`): the same verdict per case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_is_refused_with_the_expected_reason_over_libp2p() {
    hostile_corpus(Transports::Libp2p).await;
}

async fn hostile_corpus(transports: Transports) {
    let seed = std::env::var("MIM4_CORPUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED_DEFAULT);
    let mut rng = StdRng::seed_from_u64(seed);
    let now = now_ms();
    let (mut net, extra) = federation(&mut rng, now, transports);
    net.start(0).await;
    net.start(1).await;
    let rss_kib_started = memory_kib("VmRSS:");

    let started = Instant::now();
    let mut generator = Generator {
        rng,
        net: &net,
        extra: &extra,
        now,
        originals: Vec::new(),
    };
    let (cases, originals) = corpus(&mut generator);
    let generate_ms = started.elapsed().as_millis();

    // Node 1's connection to node 0 (over TLS with node 1's certificate, or
    // libp2p with node 1's key): every case claims node 1 as its sender, or
    // fails before that is compared.
    let client = Wire::new(&net, transports);
    let started = Instant::now();
    let sealed = originals
        .iter()
        .map(|e| e.seal(&net.keys[1]).bytes)
        .collect();
    let receipts = deliver_all(&client, sealed).await;
    let setup_ms = started.elapsed().as_millis();

    let rss_kib_before = memory_kib("VmRSS:");
    let started = Instant::now();
    let cases = Arc::new(cases);
    let results = send_all(&client, &cases).await;
    let corpus_ms = started.elapsed().as_millis();
    let rss_kib_after = memory_kib("VmRSS:");

    let mut tallies: BTreeMap<Category, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, outcome, latency) in &results {
        let case = &cases[*i];
        let tally = tallies.entry(case.category).or_default();
        tally.cases += 1;
        *tally.labels.entry(case.label).or_default() += 1;
        let received = match outcome {
            Outcome::Refused { code, reason, .. } => {
                format!("{code:?}/{}", reason.as_deref().unwrap_or("-"))
            }
            other => format!("{other:?}"),
        };
        *tally.refusals.entry(received).or_default() += 1;
        let ms = latency.as_secs_f64() * 1000.0;
        tally.latency_ms_total += ms;
        tally.latency_ms_max = tally.latency_ms_max.max(ms);
        let expected = over(&case.expected, &client);
        if !is_expected(outcome, &expected, &receipts) {
            failures.push(format!(
                "{} ({}): expected {:?}, got {outcome:?}",
                case.category.name(),
                case.label,
                expected
            ));
        }
    }

    let started = Instant::now();
    assert_healthy(&net, &client, &mut generator, &originals).await;
    let health_ms = started.elapsed().as_millis();
    let rss_kib_end = memory_kib("VmRSS:");
    let rss_kib_peak = memory_kib("VmHWM:");

    let categories: serde_json::Map<String, serde_json::Value> = tallies
        .iter()
        .map(|(category, tally)| {
            (
                category.name().to_owned(),
                serde_json::json!({
                    "cases": tally.cases,
                    "sub_cases": tally.labels,
                    "refusals": tally.refusals,
                    "latency_ms_mean": tally.latency_ms_total / tally.cases as f64,
                    "latency_ms_max": tally.latency_ms_max,
                }),
            )
        })
        .collect();
    let summary = serde_json::json!({
        "transport": format!("{transports:?}").to_lowercase(),
        "seed": seed,
        "cases": CASES,
        "concurrency": CONCURRENCY,
        "replay_originals_delivered": originals.len(),
        "mismatches": failures.len(),
        "categories": categories,
        "wall_ms": {
            "generate": generate_ms,
            "deliver_originals": setup_ms,
            "corpus": corpus_ms,
            "health_checks": health_ms,
        },
        "cases_per_second": CASES as f64 / (corpus_ms.max(1) as f64 / 1000.0),
        "rss_kib": {
            "nodes_started": rss_kib_started,
            "before_corpus": rss_kib_before,
            "after_corpus": rss_kib_after,
            "after_health_checks": rss_kib_end,
            "peak": rss_kib_peak,
        },
    });
    let text = serde_json::to_string_pretty(&summary).unwrap();
    let path = crate::util::reliability_dir().join(format!(
        "corpus-{}.json",
        format!("{transports:?}").to_lowercase()
    ));
    std::fs::write(&path, &text).unwrap();
    println!("{text}");
    println!(
        "resident memory: {rss_kib_before} KiB before the corpus, {rss_kib_after} KiB after; summary in {}",
        path.display()
    );

    let mut report = String::new();
    for failure in failures.iter().take(20) {
        writeln!(report, "  {failure}").unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {CASES} cases were not refused as expected:\n{report}",
        failures.len()
    );
    net.shutdown().await;
}
