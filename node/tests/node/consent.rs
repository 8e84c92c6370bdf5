//! Consent across real nodes: the home records, the source and the
//! consumer's operator receive every change, and the source decides.

use std::time::Duration;

use mim4_node::api::clients::ClientRole;
use mim4_sdk::{CallError, ConsentId, DecideQuery, Decision, Terms};

use crate::util::{eventually, until_delivered, TestNet, Transports};

const DEADLINE: Duration = Duration::from_secs(60);
const HOME: usize = 0; // fi.helsinki
const SOURCE: usize = 1; // fi.incomeregister
const CONSUMER: usize = 2; // se.stockholm
const SERVICE: &str = "se.stockholm/social-services";
const PURPOSE: &str = "dpv:ServiceProvision";
const ATTRIBUTE: &str = "income.gross_monthly";

fn query<'a>(subject: &'a str, service: &'a str) -> DecideQuery<'a> {
    DecideQuery {
        subject,
        service,
        source: "fi.incomeregister",
        attribute: ATTRIBUTE,
        action: "read",
        purpose: PURPOSE,
        at_ms: 0,
    }
}

/// Polls node `i` until its decision for `q` has `code` ("allow" or a deny code).
async fn until_decision(net: &TestNet, i: usize, q: DecideQuery<'_>, code: &str) {
    let admin = net.admin(i).await;
    eventually(&format!("node {i} to decide {code}"), DEADLINE, || {
        let admin = admin.clone();
        let q = q.clone();
        async move {
            let decision = admin.decide(q).await.ok()?;
            let got = match &decision {
                Decision::Allow { .. } => "allow",
                Decision::Deny { code, .. } => code.as_str(),
            };
            (got == code).then_some(())
        }
    })
    .await;
}

/// Waits until both parties acknowledged the home's latest version of
/// record `id` (`what` names the wait in the failure).
async fn until_every_party_has(home: &mim4_sdk::Client, id: ConsentId, what: &str) {
    eventually(what, DEADLINE, || async move {
        let view = home.consent(id).await.ok()?;
        let all = view.deliveries.len() == 2
            && view.deliveries.iter().all(|d| {
                d.events == view.events
                    && d.state == mim4_sdk::proto::OutgoingState::Delivered as i32
            });
        all.then_some(())
    })
    .await;
}

/// The consumer's service asks for a consent of `subject` (read the income,
/// for service provision, no end), the citizen grants it at home, and the
/// source and the consumer's operator allow.
async fn granted(net: &TestNet, subject: &str) -> ConsentId {
    let service = net
        .client(CONSUMER, "social", ClientRole::Service, Some(SERVICE))
        .await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;
    let terms = Terms::consent(subject, "fi.helsinki", SERVICE, "fi.incomeregister")
        .read(ATTRIBUTE)
        .purpose(PURPOSE)
        .valid(0, u64::MAX)
        .build();
    let id = service.request_consent(terms).await.unwrap();
    until_decision(net, HOME, query(subject, SERVICE), "awaiting-grantors").await;
    citizen.grant(id, subject, None).await.unwrap();
    for node in [SOURCE, CONSUMER] {
        until_decision(net, node, query(subject, SERVICE), "allow").await;
    }
    id
}

/// A consumer asks (the offer travels to the home), the citizen grants at
/// home, and the source and the consumer's operator both allow; a withdrawal
/// reaches every party, each acknowledges it with a signed receipt, and every
/// node denies. A party that is down during the withdrawal gets it after its
/// restart.
async fn grant_then_withdraw_reaches_every_party_even_one_that_was_down(transports: Transports) {
    let mut net = TestNet::over(3, transports);
    net.start_all().await;
    let subject = "fi:hetu:010180-1234";
    let service = net
        .client(CONSUMER, "social", ClientRole::Service, Some(SERVICE))
        .await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;

    let terms = Terms::consent(subject, "fi.helsinki", SERVICE, "fi.incomeregister")
        .read(ATTRIBUTE)
        .purpose(PURPOSE)
        .purpose_text("Social assistance needs the applicant's income")
        .valid(0, u64::MAX)
        .build();
    let id = service.request_consent(terms).await.unwrap();

    // The offer reaches the home, which records it and pushes it to the source.
    for node in [HOME, SOURCE, CONSUMER] {
        until_decision(&net, node, query(subject, SERVICE), "awaiting-grantors").await;
    }
    citizen.grant(id, subject, None).await.unwrap();
    for node in [HOME, SOURCE, CONSUMER] {
        until_decision(&net, node, query(subject, SERVICE), "allow").await;
    }
    // Another purpose or attribute is still denied, with the precise reason.
    let source = net.admin(SOURCE).await;
    let mut other = query(subject, SERVICE);
    other.purpose = "dpv:Marketing";
    assert!(
        matches!(source.decide(other).await.unwrap(), Decision::Deny { code, .. } if code == "purpose-not-covered")
    );
    let mut other = query(subject, SERVICE);
    other.attribute = "licence.driving.classes";
    assert!(
        matches!(source.decide(other).await.unwrap(), Decision::Deny { code, .. } if code == "attribute-not-covered")
    );

    // The consumer's node goes down; the withdrawal still reaches it later.
    net.stop(CONSUMER).await;
    let view = citizen.withdraw(id, subject, None).await.unwrap();
    assert_eq!(view.status, "withdrawn");
    for node in [HOME, SOURCE] {
        until_decision(&net, node, query(subject, SERVICE), "withdrawn").await;
    }
    let home = net.admin(HOME).await;
    let view = home.consent(id).await.unwrap();
    let missing: Vec<_> = view
        .deliveries
        .iter()
        .filter(|d| d.state != mim4_sdk::proto::OutgoingState::Delivered as i32)
        .map(|d| d.operator.clone())
        .collect();
    assert!(missing.contains(&"se.stockholm".to_owned()), "{view:?}");

    net.start(CONSUMER).await;
    until_decision(&net, CONSUMER, query(subject, SERVICE), "withdrawn").await;
    until_every_party_has(&home, id, "every party's receipt for the withdrawal").await;
    net.shutdown().await;
}

/// The home stores a new log durably before it queues the pushes to the
/// parties; a crash in between must not leave the parties behind for ever.
/// The crash window is recreated exactly: with the home stopped, a signed
/// withdrawal is appended to its stored log and nothing is queued. After the
/// home restarts, every party learns of the withdrawal.
async fn withdrawal_stored_but_not_pushed_before_a_crash_reaches_every_party_after_restart(
    transports: Transports,
) {
    use mim4_node::core::consent::{self as core, Actor, ConsentEvent, EventKind, SubjectId};

    let mut net = TestNet::over(3, transports);
    net.start_all().await;
    let subject = "fi:hetu:020280-4321";
    let id = granted(&net, subject).await;

    net.stop(HOME).await;
    let store = net.open_store(HOME).await;
    let consent_id = core::ConsentId::from_bytes(id.0);
    let mut log = store
        .consent_log(&consent_id)
        .unwrap()
        .expect("home holds the log");
    let person = SubjectId::new(subject.to_owned()).unwrap();
    let withdrawal = ConsentEvent {
        consent_id,
        seq: u32::try_from(log.events.len()).unwrap(),
        at_ms: mim4_node::clock::now_ms(),
        recorder: net.id(HOME),
        kind: EventKind::Withdrawn(Actor {
            person: person.clone(),
            for_grantor: person,
            delegations: vec![],
            authentication: "citizen-app:test".into(),
        }),
    };
    log.events.push(withdrawal.sign(&net.keys[HOME]));
    store
        .put_consent_log(&log, &SubjectId::new(subject.to_owned()).unwrap())
        .unwrap();
    store.flush_blocking().unwrap();
    drop(store);

    net.start(HOME).await;
    for node in [HOME, SOURCE, CONSUMER] {
        until_decision(&net, node, query(subject, SERVICE), "withdrawn").await;
    }
    net.shutdown().await;
}

/// A child's consent needs both guardians; a mandated person may act for one
/// of them through a recorded delegation; others may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_guardians_must_grant_and_a_delegate_may_act_for_one() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let admin = net.admin(HOME).await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;
    let child = "fi:hetu:150320A111X";
    let service = "fi.helsinki/early-education";
    let terms = Terms::consent(child, "fi.helsinki", service, "fi.incomeregister")
        .grantors(["fi:hetu:mother", "fi:hetu:father"])
        .read(ATTRIBUTE)
        .purpose(PURPOSE)
        .lawful_basis("dpv:PublicTask")
        .valid(0, u64::MAX)
        .build();
    let id = admin.request_consent(terms).await.unwrap();

    let view = citizen.grant(id, "fi:hetu:mother", None).await.unwrap();
    assert_eq!(view.status, "requested");
    assert_eq!(view.missing_grantors, vec!["fi:hetu:father".to_owned()]);
    until_decision(&net, SOURCE, query(child, service), "awaiting-grantors").await;

    // A stranger cannot act for the father.
    let refused = citizen
        .grant(id, "fi:hetu:stranger", Some("fi:hetu:father"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CallError::PermissionDenied(_)),
        "{refused}"
    );
    // The same grantor twice is refused.
    let twice = citizen.grant(id, "fi:hetu:mother", None).await.unwrap_err();
    assert!(
        matches!(twice, CallError::FailedPrecondition(ref m) if m.contains("already granted")),
        "{twice}"
    );

    admin
        .record_delegation("fi:hetu:father", "fi:hetu:grandmother", "mandate", 0, 0)
        .await
        .unwrap();
    let view = citizen
        .grant(id, "fi:hetu:grandmother", Some("fi:hetu:father"))
        .await
        .unwrap();
    assert_eq!(view.status, "given");
    until_decision(&net, SOURCE, query(child, service), "allow").await;

    // After one guardian withdraws, the other can no longer grant.
    citizen.withdraw(id, "fi:hetu:mother", None).await.unwrap();
    let late = citizen.grant(id, "fi:hetu:father", None).await.unwrap_err();
    assert!(matches!(late, CallError::FailedPrecondition(_)), "{late}");
    until_decision(&net, SOURCE, query(child, service), "withdrawn").await;
    net.shutdown().await;
}

/// A permission arrangement for a sector lets any member with that label
/// read, for the stated purpose, and no one else.
async fn arrangement_for_a_sector_is_evaluated_like_a_consent(transports: Transports) {
    let mut net = TestNet::over(4, transports);
    net.start_all().await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;
    let subject = "fr:learner:42";
    let terms =
        Terms::arrangement_for_sector(subject, "fi.helsinki", "education", "fi.incomeregister")
            .read("skills.record")
            .purpose("dpv:EducationalTraining")
            .valid(0, u64::MAX)
            .build();
    let view = citizen.create_arrangement(terms, subject).await.unwrap();
    assert_eq!(view.status, "given");
    let q = |service| DecideQuery {
        subject,
        service,
        source: "fi.incomeregister",
        attribute: "skills.record",
        action: "read",
        purpose: "dpv:EducationalTraining",
        at_ms: 0,
    };
    // fr.iledefrance carries "education"; se.stockholm does not.
    until_decision(&net, SOURCE, q("fr.iledefrance/training-platform"), "allow").await;
    let source = net.admin(SOURCE).await;
    let denied = source
        .decide(q("se.stockholm/social-services"))
        .await
        .unwrap();
    assert!(
        matches!(denied, Decision::Deny { ref code, .. } if code == "no-consent"),
        "{denied:?}"
    );
    // Someone else cannot set an arrangement for the subject.
    let terms =
        Terms::arrangement_for_sector(subject, "fi.helsinki", "education", "fi.incomeregister")
            .read("skills.record")
            .purpose("dpv:EducationalTraining")
            .build();
    let refused = citizen
        .create_arrangement(terms, "fr:learner:99")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CallError::PermissionDenied(_)),
        "{refused}"
    );
    net.shutdown().await;
}

/// Status can be pulled: a node that holds no copy asks the home for it.
async fn status_can_be_pulled_from_the_home(transports: Transports) {
    let mut net = TestNet::over(2, transports);
    net.start(HOME).await;
    let admin = net.admin(HOME).await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;
    let subject = "fi:hetu:020202-2222";
    let service = "fi.helsinki/early-education";
    let terms = Terms::consent(subject, "fi.helsinki", service, "fi.incomeregister")
        .read(ATTRIBUTE)
        .purpose(PURPOSE)
        .build();
    let id = admin.request_consent(terms).await.unwrap();
    citizen.grant(id, subject, None).await.unwrap();
    // The source starts later and pulls the record before the push arrives.
    net.start(SOURCE).await;
    let source = net.admin(SOURCE).await;
    let view = source.pull_consent(id, "fi.helsinki").await.unwrap();
    assert_eq!(view.status, "given");
    assert_eq!(source.consent(id).await.unwrap().events, 2);
    let unknown = source
        .pull_consent(ConsentId([9; 16]), "fi.helsinki")
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, CallError::NotFound(ref m) if m.contains("no consent")),
        "{unknown}"
    );
    net.shutdown().await;
}

/// The decision index is rebuilt from sled at start: after a restart the
/// source still allows a given consent and still denies a withdrawn one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_is_rebuilt_after_restart() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let admin = net.admin(HOME).await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;
    let service = "fi.helsinki/early-education";
    let (kept, withdrawn) = ("fi:hetu:kept", "fi:hetu:withdrawn");
    for subject in [kept, withdrawn] {
        let terms = Terms::consent(subject, "fi.helsinki", service, "fi.incomeregister")
            .read(ATTRIBUTE)
            .purpose(PURPOSE)
            .build();
        let id = admin.request_consent(terms).await.unwrap();
        citizen.grant(id, subject, None).await.unwrap();
        if subject == withdrawn {
            citizen.withdraw(id, subject, None).await.unwrap();
        }
    }
    until_decision(&net, SOURCE, query(kept, service), "allow").await;
    until_decision(&net, SOURCE, query(withdrawn, service), "withdrawn").await;
    net.stop(SOURCE).await;
    net.start(SOURCE).await;
    let source = net.admin(SOURCE).await;
    assert!(matches!(
        source.decide(query(kept, service)).await.unwrap(),
        Decision::Allow { .. }
    ));
    assert!(matches!(
        source.decide(query(withdrawn, service)).await.unwrap(),
        Decision::Deny { code, .. } if code == "withdrawn"
    ));
    net.shutdown().await;
}

/// A record exports as a Kantara v1.1 receipt in a compact JWS that verifies
/// with the home operator's key, and as ISO/IEC TS 27560 JSON-LD; an unknown
/// format is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_export_as_signed_kantara_receipts_and_27560_json_ld() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let admin = net.admin(HOME).await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;
    let subject = "fi:hetu:030303-3333";
    let terms = Terms::consent(
        subject,
        "fi.helsinki",
        "fi.helsinki/early-education",
        "fi.incomeregister",
    )
    .read(ATTRIBUTE)
    .purpose(PURPOSE)
    .build();
    let id = admin.request_consent(terms).await.unwrap();
    citizen.grant(id, subject, None).await.unwrap();

    let jws = admin.export_consent(id, "kantara").await.unwrap();
    let receipt =
        mim4_node::core::consent::export::verify_jws(&jws, &net.keys[HOME].public()).unwrap();
    assert_eq!(receipt["version"], "KI-CR-v1.1.0");
    assert_eq!(receipt["piiPrincipalId"], subject);
    assert!(
        mim4_node::core::consent::export::verify_jws(&jws, &net.keys[SOURCE].public()).is_err(),
        "another operator's key does not verify it"
    );

    let jsonld: serde_json::Value =
        serde_json::from_str(&admin.export_consent(id, "iso27560").await.unwrap()).unwrap();
    assert!(jsonld["@context"].is_object(), "inline context: {jsonld}");
    assert!(jsonld.to_string().contains("ConsentGiven"), "{jsonld}");

    let unknown = admin.export_consent(id, "pdf").await.unwrap_err();
    assert!(
        matches!(unknown, CallError::FailedPrecondition(ref m) if m.contains("kantara")),
        "{unknown}"
    );
    net.shutdown().await;
}

/// Expiry takes effect at its instant everywhere, and the home then records
/// it and pushes it to every party, which acknowledge it with receipts.
async fn expiry_is_pushed_to_every_party(transports: Transports) {
    let mut net = TestNet::over(3, transports);
    net.start_all().await;
    let service = net
        .client(CONSUMER, "social", ClientRole::Service, Some(SERVICE))
        .await;
    let citizen = net
        .client(HOME, "citizen-app", ClientRole::CitizenApp, None)
        .await;
    let subject = "fi:hetu:040404-4444";
    let not_after = mim4_node::clock::now_ms() + 3_000;
    let terms = Terms::consent(subject, "fi.helsinki", SERVICE, "fi.incomeregister")
        .read(ATTRIBUTE)
        .purpose(PURPOSE)
        .valid(0, not_after)
        .build();
    let id = service.request_consent(terms).await.unwrap();
    let home = net.admin(HOME).await;
    eventually("the offer at home", DEADLINE, || {
        let home = home.clone();
        async move { home.consent(id).await.ok() }
    })
    .await;
    citizen.grant(id, subject, None).await.unwrap();
    // Every party denies from the instant on (asking for that instant directly).
    let mut at_end = query(subject, SERVICE);
    at_end.at_ms = not_after;
    until_decision(&net, SOURCE, at_end.clone(), "expired").await;
    // After the instant, the home records the expiry and every party gets it.
    eventually("expiry delivered to every party", DEADLINE, || {
        let home = home.clone();
        async move {
            let view = home.consent(id).await.ok()?;
            let done = view.status == "expired"
                && view.events == 3
                && view.deliveries.len() == 2
                && view.deliveries.iter().all(|d| {
                    d.events == 3 && d.state == mim4_sdk::proto::OutgoingState::Delivered as i32
                });
            done.then_some(())
        }
    })
    .await;
    for node in [SOURCE, CONSUMER] {
        let view = net.admin(node).await.consent(id).await.unwrap();
        assert_eq!(view.events, 3, "node {node} holds the expiry event");
        assert_eq!(view.status, "expired");
    }
    net.shutdown().await;
}

/// The consent messages a node keeps (offers and records in its inbox and
/// outbox) are sealed under their citizen's key: erasing the citizen, with
/// the nodes stopped, takes every one of them with it at every node, while
/// a memo about no one stays; before, each node held some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_messages_go_with_their_citizens_erasure() {
    use mim4_node::core::consent::SubjectId;
    use mim4_node::core::wire;
    use mim4_node::store::Store;

    let mut net = TestNet::new(3);
    net.start_all().await;
    let subject = "fi:hetu:050505-5555";
    let id = granted(&net, subject).await;
    // A memo about no one, from every node to the next.
    let memos = [(HOME, SOURCE), (SOURCE, CONSUMER), (CONSUMER, HOME)];
    for (from, to) in memos {
        let admin = net.admin(from).await;
        let memo = admin
            .send_message(net.id(to).as_str(), "about no one", "")
            .await
            .unwrap();
        until_delivered(&admin, memo, DEADLINE).await;
    }
    let home = net.admin(HOME).await;
    until_every_party_has(&home, id, "every push of the record delivered").await;
    for i in 0..3 {
        net.stop(i).await;
    }

    let kinds = |store: &Store| -> Vec<&'static str> {
        let sent = store
            .all_outgoing()
            .unwrap()
            .into_iter()
            .map(|(_, o)| o.envelope);
        let received = store
            .incoming(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|m| m.envelope);
        sent.chain(received)
            .map(|bytes| {
                let signed = wire::decode_signed_envelope(&bytes).unwrap();
                wire::decode_envelope(&signed.body).unwrap().payload.kind()
            })
            .collect()
    };
    let person = SubjectId::new(subject.to_owned()).unwrap();
    for i in 0..net.configs.len() {
        let store = net.open_store(i).await;
        let before = kinds(&store);
        let consent_messages = before.iter().filter(|k| k.starts_with("consent")).count();
        assert!(
            consent_messages > 0,
            "node {i} keeps no consent message: {before:?}"
        );
        assert_eq!(
            before.iter().filter(|&&k| k == "memo").count(),
            2,
            "node {i}: {before:?}"
        );
        let erasure = store.erase_subject(&person).unwrap();
        assert!(erasure.records >= consent_messages, "node {i}: {erasure:?}");
        let after = kinds(&store);
        assert_eq!(after, vec!["memo", "memo"], "node {i}: before {before:?}");
        drop(store);
        // And so after reopening (what the node would see at its next start).
        let store = net.open_store(i).await;
        assert_eq!(kinds(&store), vec!["memo", "memo"], "node {i}");
        assert_eq!(
            store.stats().received + store.stats().delivered,
            2,
            "node {i}"
        );
    }
}

over_transports!(
    grant_then_withdraw_reaches_every_party_even_one_that_was_down,
    withdrawal_stored_but_not_pushed_before_a_crash_reaches_every_party_after_restart,
    arrangement_for_a_sector_is_evaluated_like_a_consent,
    status_can_be_pulled_from_the_home,
    expiry_is_pushed_to_every_party,
);
