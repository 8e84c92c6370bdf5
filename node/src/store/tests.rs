//! Tests of the store on real sled databases: opening after a crash,
//! crypto-erasure checked on the raw files, refusal of older formats, and the
//! golden bytes of every stored record (the rule in the module doc, "The
//! on-disk format").

use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::*;
use crate::core::consent::delegation::{Delegation, DelegationKind};
use crate::core::consent::{ConsentId, ConsentLog, SubjectId};
use crate::core::exchange::DataResponse;
use crate::core::ids::{MessageId, OperatorId};

/// `open`, again while sled's directory lock of a database just dropped
/// in this process is still held (sled's IO threads end a moment after
/// its last handle), for up to 10 s.
fn when_unlocked<T, E: std::fmt::Display>(
    mut open: impl FnMut() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let start = std::time::Instant::now();
    loop {
        match open() {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A snapshot that sled was still writing when the process was killed (an
/// empty `snap.*.generating` file) no longer keeps the database from
/// opening, and what was flushed before is still there.
#[test]
fn opens_after_a_kill_during_snapshot_writing() {
    let dir = tempfile::tempdir().unwrap();
    let key = StorageKey::generate();
    {
        let store = Store::open(dir.path(), &key).unwrap();
        store.set_trust_list(b"list").unwrap();
        store.flush_blocking().unwrap();
    }
    std::fs::write(dir.path().join("snap.7FFFFFFFFFFFFFFF.generating"), b"").unwrap();
    let store = Store::open(dir.path(), &key).unwrap();
    assert_eq!(store.trust_list().unwrap().as_deref(), Some(&b"list"[..]));
    assert!(!dir.path().join("snap.7FFFFFFFFFFFFFFF.generating").exists());
}

/// Occurrences of each needle in every file under `dir` (recursively), and
/// the bytes scanned.
fn scan(dir: &Path, needles: &[&[u8]]) -> (Vec<usize>, u64) {
    let mut hits = vec![0; needles.len()];
    let mut scanned = 0;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            scanned += bytes.len() as u64;
            for (needle, hits) in needles.iter().zip(&mut hits) {
                *hits += bytes.windows(needle.len()).filter(|w| w == needle).count();
            }
        }
    }
    (hits, scanned)
}

/// Crypto-erasure, checked on the raw files of the data directory: a
/// subject's values (a random 32-byte marker, in the registry, `served`,
/// `received`, a consent log, and messages in the inbox and outbox) and its
/// id (also in a delegation) are never on disk in clear; after
/// `erase_subject`, a flush and closing the store, the old keyring is in
/// no file, and the subject's wrapped data key (which sled may still keep
/// in an old segment) no longer unwraps with the keyring that remains,
/// while other subjects read as before.
#[test]
fn erased_subject_is_unrecoverable_from_the_files() {
    use crate::core::exchange::Released;
    use crate::sources::registry::Registry;
    use crate::sources::{DataSource as _, SourceError};
    use rand::RngCore as _;

    let random_hex = || {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    };
    let marker = random_hex();
    assert_eq!(marker.len(), 32);
    let erased = SubjectId::new(format!("fi:test:erased-{}", random_hex())).unwrap();
    let kept = SubjectId::new(format!("fi:test:kept-{}", random_hex())).unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let key = StorageKey::generate();
    let store = Store::open(&dir, &key).unwrap();
    let registry = Registry::new(store.registry_tree().unwrap(), store.vault().clone());
    let file = serde_json::json!({"subjects": {
        erased.as_str(): {"test.marker": marker, "income.gross_monthly": 3150},
        kept.as_str(): {"test.marker": "kept value"},
    }});
    registry.load_json(&file.to_string()).unwrap();
    let request_id = MessageId::from_bytes([9; 16]);
    let response = DataResponse {
        request_id,
        source: OperatorId::new("fi.helsinki").unwrap(),
        values: vec![Released {
            attribute: crate::core::consent::Attribute::new("test.marker").unwrap(),
            value: serde_json::json!(marker),
            consent_id: ConsentId::from_bytes([1; 16]),
            retrieved_at_ms: 1,
        }],
        answers: vec![],
        withheld: vec![],
    };
    let requester = OperatorId::new("fi.espoo").unwrap();
    store.put_served(&requester, &erased, &response).unwrap();
    store
        .put_received(&request_id, &erased, std::slice::from_ref(&response))
        .unwrap();
    // A consent log about the subject and a delegation it gave: both name
    // it, so both are sealed under its key.
    let consent_id = ConsentId::from_bytes([3; 16]);
    let log = ConsentLog {
        consent_id,
        events: vec![crate::core::consent::SignedEvent {
            body: format!("{} {marker}", erased.as_str()).into_bytes(),
            signature: vec![0; 64],
            key_id: crate::core::keys::KeyId::from_wire("0011223344556677"),
        }],
    };
    store.put_consent_log(&log, &erased).unwrap();
    let delegation = Delegation {
        id: ConsentId::from_bytes([4; 16]),
        principal: erased.clone(),
        agent: kept.clone(),
        kind: DelegationKind::Mandate,
        not_before_ms: 0,
        not_after_ms: u64::MAX,
        revoked: false,
    };
    store.put_delegation(&delegation).unwrap();
    assert_eq!(store.consent_log(&consent_id).unwrap(), Some(log.clone()));
    assert_eq!(store.consent_logs().unwrap(), vec![log]);
    assert_eq!(store.delegations().unwrap(), vec![delegation]);
    // Messages about the subject in the outbox and the inbox (consent
    // logs travel in envelopes) are sealed under its key; a memo to the
    // same peer, about no one, under the messages key.
    let envelope = format!("envelope about {} {marker}", erased.as_str()).into_bytes();
    let memo = b"a memo about no one".to_vec();
    let outgoing = |envelope: &[u8]| Outgoing {
        recipient: requester.clone(),
        envelope: envelope.to_vec(),
        body_sha256: [0; 32],
        envelope_sha256: Sha256::digest(envelope).into(),
        expires_at_ms: u64::MAX,
        state: OutgoingState::Pending,
        attempts: 0,
        last_error: None,
        receipt: None,
    };
    let (sent, sent_memo) = (
        MessageId::from_bytes([5; 16]),
        MessageId::from_bytes([7; 16]),
    );
    store
        .enqueue(sent, &outgoing(&envelope), Some(&erased))
        .unwrap();
    store.enqueue(sent_memo, &outgoing(&memo), None).unwrap();
    for id in [sent, sent_memo] {
        store
            .update_outgoing(&id, |o| o.attempts = 1)
            .unwrap()
            .unwrap();
        assert_eq!(store.outgoing(&id).unwrap().unwrap().attempts, 1);
    }
    assert_eq!(store.pending().unwrap().len(), 2);
    for (id, envelope, subject) in [(6, &envelope, Some(&erased)), (8, &memo, None)] {
        store
            .record_applied(AppliedMessage {
                message_id: MessageId::from_bytes([id; 16]),
                sender: &requester,
                body_sha256: [0; 32],
                expires_at_ms: u64::MAX,
                applied_at_ms: 1,
                envelope,
                // The replay entry keeps the receipt: sealed too.
                receipt: format!("receipt {marker}").as_bytes(),
                new_trust_list: None,
                subject,
            })
            .unwrap()
            .unwrap();
    }
    let received: Vec<_> = store.incoming(0, 10).unwrap();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].envelope, envelope);
    assert_eq!(store.stats().received, 2);
    assert_eq!(store.stats().pending, 2);
    assert_eq!(
        store.served(&requester, &request_id).unwrap(),
        Some(response.clone())
    );
    store.flush_blocking().unwrap();

    let hash = store.vault().hash(&erased);
    let wrapped = store
        .vault()
        .keys_tree()
        .get(hash.as_bytes())
        .unwrap()
        .unwrap()
        .to_vec();
    let old_keyring = std::fs::read(dir.join(at_rest::KEYRING_FILE)).unwrap();
    let needles: [&[u8]; 5] = [
        marker.as_bytes(),
        erased.as_str().as_bytes(),
        &wrapped,
        &old_keyring,
        // Control: attribute names are stored in clear, so the scan does find plaintext.
        b"test.marker",
    ];
    let (before, scanned_before) = scan(&dir, &needles);
    assert_eq!(before[0], 0, "the marker is on disk in clear");
    assert_eq!(before[1], 0, "the subject id is on disk in clear");
    assert!(before[2] >= 1, "the wrapped key is in the files");
    assert_eq!(before[3], 1, "the keyring is one file");
    assert!(before[4] >= 1, "the scan finds plaintext");

    let erasure = store.erase_subject(&erased).unwrap();
    assert_eq!(
        erasure,
        Erasure {
            had_key: true,
            records: 6,
            registry_entries: 3,
            keys_rewrapped: 1,
        }
    );
    assert_eq!((store.stats().received, store.stats().pending), (1, 1));
    store.flush_blocking().unwrap();
    drop(registry);
    drop(store);

    let (after, scanned_after) = scan(&dir, &needles);
    eprintln!(
        "raw scan of {}: before erasure {scanned_before} bytes, hits (marker, subject id, \
         wrapped key, keyring, control) = {before:?}; after erasure and close \
         {scanned_after} bytes, hits = {after:?}",
        dir.display()
    );
    assert_eq!(after[0], 0, "the marker is on disk in clear");
    assert_eq!(after[1], 0, "the subject id is on disk in clear");
    assert_eq!(after[3], 0, "the old keyring is still in a file");

    // Whatever copies of the wrapped key sled kept, the keyring that is
    // left (opened with the storage key) does not unwrap it.
    let store = Store::open(&dir, &key).unwrap();
    assert!(!store.vault().can_unwrap(&hash, &wrapped));
    assert!(store.vault().data_key(&hash).unwrap().is_none());
    assert_eq!(store.served(&requester, &request_id).unwrap(), None);
    assert_eq!(store.received(&request_id).unwrap(), None);
    assert_eq!(store.consent_log(&consent_id).unwrap(), None);
    assert!(store.consent_logs().unwrap().is_empty());
    assert!(store.delegations().unwrap().is_empty());
    assert!(store.consents.is_empty() && store.delegations.is_empty());
    // The messages about the subject went with it; the memo stays.
    let received = store.incoming(0, 10).unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].envelope, memo);
    let sent = store.all_outgoing().unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, &sent[0].1.envelope), (sent_memo, &memo));
    assert_eq!((store.stats().received, store.stats().pending), (1, 1));
    let registry = Registry::new(store.registry_tree().unwrap(), store.vault().clone());
    let attributes = [crate::core::consent::Attribute::new("test.marker").unwrap()];
    let read = |subject| futures::executor::block_on(registry.read(subject, &attributes));
    assert_eq!(read(&erased), Err(SourceError::UnknownSubject));
    assert_eq!(
        read(&kept).unwrap().values().next(),
        Some(&serde_json::json!("kept value"))
    );
    // Nothing of the subject is left in the trees.
    assert!(store.registry.scan_prefix(hash.as_bytes()).next().is_none());
    assert!(store
        .subject_records
        .scan_prefix(hash.as_bytes())
        .next()
        .is_none());
}

/// A database whose consent logs were written in clear (by a version
/// before they were sealed) or in the previous sealed format is refused
/// with an error that says so; a new one is marked and opens again.
#[test]
fn databases_of_older_formats_are_refused() {
    let key = StorageKey::generate();
    for marker in [None, Some(&b"sealed-consents-messages-1"[..])] {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), &key).unwrap());
        drop(when_unlocked(|| Store::open(dir.path(), &key)).unwrap());
        {
            let db = when_unlocked(|| sled::open(dir.path())).unwrap();
            match marker {
                None => db.remove(b"format").unwrap(),
                Some(marker) => db.insert(b"format", marker).unwrap(),
            };
            db.open_tree("consents")
                .unwrap()
                .insert([1u8; 16], b"a log in clear".as_slice())
                .unwrap();
            db.flush().unwrap();
        }
        let Err(err) = when_unlocked(|| Store::open(dir.path(), &key)) else {
            panic!("opened a database of format {marker:?}");
        };
        let Error::OldFormat { found, .. } = &err else {
            panic!("{err}");
        };
        let expected = marker.map_or("none".into(), |m| String::from_utf8_lossy(m));
        assert_eq!(found.as_str(), expected);
        assert!(err.to_string().contains("older mim4-node"), "{err}");
    }
}

/// A database written before encryption at rest (data, no keyring) is
/// refused with an error that says to re-create it; another storage key is
/// refused too.
#[test]
fn older_database_or_other_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("trust")
            .unwrap()
            .insert(TRUST_KEY, b"list")
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), &StorageKey::generate()).unwrap_err();
    assert!(
        err.to_string().contains("without encryption at rest"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), &StorageKey::generate()).unwrap());
    let err = Store::open(dir.path(), &StorageKey::generate()).unwrap_err();
    assert!(err.to_string().contains("another storage.key"), "{err}");
}

/// The golden rule of the on-disk format (module doc, "The on-disk format"):
/// every record kind the store writes, encoded the way the store encodes it,
/// gives the bytes written here, and these bytes decode to the same value. A
/// changed field number, type, order or variant of a stored record (of a Rust
/// type, or of a message in `mim4.proto`) fails here, with what to do. Every
/// field of every message holds a value other than its default, because
/// proto3 does not write defaults and a renumbered field would not show.
#[test]
fn stored_record_formats_are_unchanged() {
    let failures: Vec<String> = [
        golden_messages(),
        golden_consents(),
        golden_exchange(),
        golden_keyring(),
    ]
    .iter()
    .flatten()
    .filter_map(Golden::failure)
    .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// One stored record kind for [`stored_record_formats_are_unchanged`]: its
/// bytes as the store encodes them (before sealing), its golden bytes, and
/// whether the golden bytes decode back to the value.
struct Golden {
    kind: &'static str,
    encoded: Vec<u8>,
    golden_hex: &'static str,
    decodes_back: std::result::Result<(), String>,
}

impl Golden {
    /// Encodes nothing itself: `encoded` is what the store's own encoder gave
    /// for `value`, and `decode` is the store's own decoder.
    fn new<T: PartialEq + std::fmt::Debug, E: std::fmt::Display>(
        kind: &'static str,
        value: &T,
        encoded: Vec<u8>,
        decode: impl Fn(&[u8]) -> std::result::Result<T, E>,
        golden_hex: &'static str,
    ) -> Self {
        let decodes_back = match hex::decode(golden_hex) {
            Err(e) => Err(format!("the golden hex does not parse: {e}")),
            Ok(golden) => match decode(&golden) {
                Ok(decoded) if &decoded == value => Ok(()),
                Ok(decoded) => Err(format!("they decode to {decoded:?}, not {value:?}")),
                Err(e) => Err(format!("they no longer decode: {e}")),
            },
        };
        Self {
            kind,
            encoded,
            golden_hex,
            decodes_back,
        }
    }

    /// What is wrong, with the rule to follow, or `None`.
    fn failure(&self) -> Option<String> {
        let encoded = hex::encode(&self.encoded);
        let wrong = match &self.decodes_back {
            _ if encoded != self.golden_hex => format!("it encodes to\n    {encoded}"),
            Err(why) => format!("the golden bytes fail: {why}"),
            Ok(()) => return None,
        };
        Some(format!(
            "the on-disk encoding of {kind} changed: if this is intended, bump the store format \
             marker `FORMAT` in node/src/store.rs (now {format:?}) and make `Store::check_format` \
             handle or refuse older databases, then update its golden bytes in \
             node/src/store/tests.rs; {wrong}",
            kind = self.kind,
            format = String::from_utf8_lossy(FORMAT),
        ))
    }
}

/// The replay window, the inbox and the outbox (postcard, then sealed).
fn golden_messages() -> Vec<Golden> {
    use super::messages::Seen;

    let operator = OperatorId::new("fi.espoo").unwrap();
    let seen = Seen {
        sender: operator.clone(),
        body_sha256: [0x11; 32],
        applied_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_600_000,
        receipt: b"receipt".to_vec(),
    };
    let incoming = Incoming {
        seq: 7,
        message_id: MessageId::from_bytes([0x22; 16]),
        sender: operator.clone(),
        received_at_ms: 1_700_000_000_001,
        envelope: b"envelope".to_vec(),
        envelope_sha256: [0x33; 32],
    };
    let outgoing = Outgoing {
        recipient: operator,
        envelope: b"envelope".to_vec(),
        body_sha256: [0x44; 32],
        envelope_sha256: [0x55; 32],
        expires_at_ms: 1_700_000_600_000,
        state: OutgoingState::Delivered,
        attempts: 3,
        last_error: Some("timeout".into()),
        receipt: Some(b"receipt".to_vec()),
    };
    let states = [
        OutgoingState::Pending,
        OutgoingState::Delivered,
        OutgoingState::Expired,
    ];
    vec![
        Golden::new(
            "a replay entry (`seen`)",
            &seen,
            encode(&seen).unwrap(),
            |bytes| decode::<Seen>("seen", bytes),
            "0866692e6573706f6f11111111111111111111111111111111111111111111111111111111111111\
             1180d095ffbc31c09fbaffbc310772656365697074",
        ),
        Golden::new(
            "an inbox entry (`Incoming`)",
            &incoming,
            encode(&incoming).unwrap(),
            |bytes| decode::<Incoming>("inbox", bytes),
            "0710222222222222222222222222222222220866692e6573706f6f81d095ffbc3108656e76656c6f\
             70653333333333333333333333333333333333333333333333333333333333333333",
        ),
        Golden::new(
            "an outbox entry (`Outgoing`)",
            &outgoing,
            encode(&outgoing).unwrap(),
            |bytes| decode::<Outgoing>("outbox", bytes),
            "0866692e6573706f6f08656e76656c6f706544444444444444444444444444444444444444444444\
             44444444444444444444555555555555555555555555555555555555555555555555555555555555\
             5555c09fbaffbc310103010774696d656f7574010772656365697074",
        ),
        Golden::new(
            "the outbox states (`OutgoingState`)",
            &states,
            encode(&states).unwrap(),
            |bytes| decode::<[OutgoingState; 3]>("outbox", bytes),
            "000102",
        ),
    ]
}

/// Consent deliveries and delegations (postcard), consent logs (proto
/// `ConsentRecordUpdate`).
fn golden_consents() -> Vec<Golden> {
    use super::consents::{
        consent_log_bytes, consent_log_from_bytes, delegation_bytes, delegation_from_bytes,
    };
    use crate::core::consent::SignedEvent;
    use crate::core::keys::KeyId;

    let delivery = ConsentDelivery {
        operator: OperatorId::new("fi.espoo").unwrap(),
        events: 2,
        message_id: MessageId::from_bytes([0x22; 16]),
    };
    let delegation = Delegation {
        id: ConsentId::from_bytes([0x66; 16]),
        principal: SubjectId::new("fi:test:principal").unwrap(),
        agent: SubjectId::new("fi:test:agent").unwrap(),
        kind: DelegationKind::Mandate,
        not_before_ms: 1_600_000_000_000,
        not_after_ms: 1_800_000_000_000,
        revoked: true,
    };
    let log = ConsentLog {
        consent_id: ConsentId::from_bytes([0x77; 16]),
        events: vec![SignedEvent {
            body: b"event".to_vec(),
            signature: vec![0x88; 64],
            key_id: KeyId::from_wire("0011223344556677"),
        }],
    };
    vec![
        Golden::new(
            "a consent delivery (`consent_deliveries`)",
            &delivery,
            encode(&delivery).unwrap(),
            |bytes| decode::<ConsentDelivery>("consent_deliveries", bytes),
            "0866692e6573706f6f021022222222222222222222222222222222",
        ),
        Golden::new(
            "a delegation (`delegations`)",
            &delegation,
            delegation_bytes(&delegation).unwrap(),
            delegation_from_bytes,
            "666666666666666666666666666666661166693a746573743a7072696e636970616c0d66693a7465\
             73743a6167656e74076d616e646174658080babbc82e80a0f1c2b13401",
        ),
        Golden::new(
            "a consent log (`consents`, proto `ConsentRecordUpdate`)",
            &log,
            consent_log_bytes(&log),
            consent_log_from_bytes,
            "0a1077777777777777777777777777777777125b0a056576656e7412408888888888888888888888\
             88888888888888888888888888888888888888888888888888888888888888888888888888888888\
             888888888888888888888888881a1030303131323233333434353536363737",
        ),
    ]
}

/// Request states (postcard), served and received responses (proto
/// `DataResponse`, `ReceivedData`).
fn golden_exchange() -> Vec<Golden> {
    use super::exchange::{received_bytes, received_from_bytes, served_bytes, served_from_bytes};
    use crate::core::consent::Attribute;
    use crate::core::exchange::{Answer, Op, Predicate, Released, Withheld};

    let state = (RequestState::Fulfilled, 1_700_000_000_002_u64);
    let states = [
        RequestState::Requested,
        RequestState::Authorised,
        RequestState::Fulfilled,
        RequestState::Denied,
        RequestState::Failed,
    ];
    let attribute = Attribute::new("income.gross_monthly").unwrap();
    let response = DataResponse {
        request_id: MessageId::from_bytes([0x99; 16]),
        source: OperatorId::new("fi.helsinki").unwrap(),
        values: vec![Released {
            attribute: attribute.clone(),
            value: serde_json::json!(3150),
            consent_id: ConsentId::from_bytes([0xaa; 16]),
            retrieved_at_ms: 1_700_000_000_003,
        }],
        answers: vec![Answer {
            predicate: Predicate {
                attribute: attribute.clone(),
                op: Op::Greater,
                operand: serde_json::json!(3000),
            },
            holds: true,
            consent_id: ConsentId::from_bytes([0xbb; 16]),
        }],
        withheld: vec![Withheld {
            attribute,
            code: "no-consent".into(),
            reason: "no consent covers it".into(),
            predicate: true,
        }],
    };
    vec![
        Golden::new(
            "a request state (`request_states`)",
            &state,
            encode(&state).unwrap(),
            |bytes| decode::<(RequestState, u64)>("request_states", bytes),
            "0282d095ffbc31",
        ),
        Golden::new(
            "the request states (`RequestState`)",
            &states,
            encode(&states).unwrap(),
            |bytes| decode::<[RequestState; 5]>("request_states", bytes),
            "0001020304",
        ),
        Golden::new(
            "a served response (`served`, proto `DataResponse`)",
            &response,
            served_bytes(&response),
            served_from_bytes,
            "0a1099999999999999999999999999999999120b66692e68656c73696e6b691a350a14696e636f6d\
             652e67726f73735f6d6f6e74686c791204333135301a10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa20\
             83d095ffbc3122350a1f0a14696e636f6d652e67726f73735f6d6f6e74686c7912013e1a04333030\
             3010011a10bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2a3a0a14696e636f6d652e67726f73735f6d6f\
             6e74686c79120a6e6f2d636f6e73656e741a146e6f20636f6e73656e7420636f7665727320697420\
             01",
        ),
        Golden::new(
            "the received responses (`received`, proto `ReceivedData`)",
            &vec![response.clone()],
            received_bytes(std::slice::from_ref(&response)),
            received_from_bytes,
            "0ac9010a1099999999999999999999999999999999120b66692e68656c73696e6b691a350a14696e\
             636f6d652e67726f73735f6d6f6e74686c791204333135301a10aaaaaaaaaaaaaaaaaaaaaaaaaaaa\
             aaaa2083d095ffbc3122350a1f0a14696e636f6d652e67726f73735f6d6f6e74686c7912013e1a04\
             3330303010011a10bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2a3a0a14696e636f6d652e67726f7373\
             5f6d6f6e74686c79120a6e6f2d636f6e73656e741a146e6f20636f6e73656e7420636f7665727320\
             69742001",
        ),
    ]
}

/// The keyring file's plaintext (postcard, then sealed into the file).
fn golden_keyring() -> Vec<Golden> {
    let keyring = vec![(1_u32, [0xcc; 32]), (2, [0xdd; 32])];
    vec![Golden::new(
        "the keyring file's plaintext (`at_rest`)",
        &keyring,
        at_rest::keyring_bytes(&keyring).unwrap().to_vec(),
        at_rest::keyring_from_bytes,
        "0201cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc02dddddddddd\
             dddddddddddddddddddddddddddddddddddddddddddddddddddddd",
    )]
}
