//! Limits on the size of one subject's data, through a real node's API:
//! each accepts a call at the limit and refuses the next one with
//! `RESOURCE_EXHAUSTED` and the limit's own reason (`mim4-reason`), and the
//! node keeps serving. Mostly one node that is home, source and service
//! operator of its consents, so that no record is pushed anywhere; the
//! record limit is also checked against a peer's offers.

use mim4_node::api::clients::{self, ClientRole};
use mim4_node::limits;
use mim4_node::transport::grpc::REASON_METADATA_KEY;
use mim4_proto::v1 as pb;
use mim4_sdk::Terms;
use pb::operator_api_client::OperatorApiClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::util::TestNet;

const HOME: &str = "fi.helsinki";
const SERVICE: &str = "fi.helsinki/early-education";
const PURPOSE: &str = "dpv:ServiceProvision";

/// A raw admin API connection, so that tests see the exact code and reason.
struct Admin {
    inner: OperatorApiClient<Channel>,
    credential: String,
}

impl Admin {
    async fn connect(net: &TestNet) -> Self {
        let credential = clients::add(
            &net.configs[0].clients_file,
            "limits-admin",
            ClientRole::Admin,
            None,
            rand::random(),
            0,
        )
        .unwrap();
        Self {
            inner: OperatorApiClient::connect(net.api_url(0)).await.unwrap(),
            credential,
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let value = format!("Bearer {}", self.credential).parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    }

    async fn load(&self, json: String) -> Result<pb::LoadRegistryResponse, Status> {
        let request = self.request(pb::LoadRegistryRequest { json });
        Ok(self
            .inner
            .clone()
            .load_registry(request)
            .await?
            .into_inner())
    }

    async fn request_consent(&self, terms: pb::ConsentTerms) -> Result<Vec<u8>, Status> {
        let request = self.request(pb::RequestConsentRequest { terms: Some(terms) });
        let answer = self.inner.clone().request_consent(request).await?;
        Ok(answer.into_inner().consent_id)
    }

    async fn narrow(&self, id: &[u8], terms: pb::ConsentTerms, person: &str) -> Result<(), Status> {
        let request = self.request(pb::NarrowConsentRequest {
            consent_id: id.to_vec(),
            terms: Some(terms),
            person: person.to_owned(),
        });
        self.inner.clone().narrow_consent(request).await.map(drop)
    }

    async fn delegate(&self, principal: &str, agent: &str) -> Result<(), Status> {
        let request = self.request(pb::RecordDelegationRequest {
            principal: principal.to_owned(),
            agent: agent.to_owned(),
            kind: "guardian".to_owned(),
            ..Default::default()
        });
        self.inner
            .clone()
            .record_delegation(request)
            .await
            .map(drop)
    }
}

/// Asserts that `result` was refused with `RESOURCE_EXHAUSTED` and `reason`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, reason: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let got = status
        .metadata()
        .get(REASON_METADATA_KEY)
        .and_then(|v| v.to_str().ok());
    assert_eq!(got, Some(reason), "{status:?}");
}

/// A registry file of one subject with these (attribute, value) pairs.
fn registry_file(
    subject: &str,
    values: impl IntoIterator<Item = (String, serde_json::Value)>,
) -> String {
    let values: serde_json::Map<String, serde_json::Value> = values.into_iter().collect();
    serde_json::json!({ "subjects": { subject: values } }).to_string()
}

/// A JSON string of exactly `bytes` bytes of JSON (quotes included).
fn text(bytes: usize) -> serde_json::Value {
    serde_json::Value::from("x".repeat(bytes - 2))
}

/// A consent of `subject` for this node's own service, from this node.
fn terms(subject: &str) -> Terms {
    Terms::consent(subject, HOME, SERVICE, HOME)
        .read("income.gross_monthly")
        .purpose(PURPOSE)
        .valid(0, u64::MAX)
}

/// A registry load over any limit on one subject's data (one value's
/// bytes, attributes per subject, the subject's total bytes, also summed
/// with what an earlier file left) is refused with the limit's reason;
/// loads at each limit are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_loads_over_a_subject_limit_are_refused_with_their_reason() {
    let mut net = TestNet::new(1);
    net.start_all().await;
    let admin = Admin::connect(&net).await;
    let value_max = limits::ATTRIBUTE_VALUE_BYTES_MAX;

    let one = |bytes| registry_file("s:value", [("a.b".to_owned(), text(bytes))]);
    admin.load(one(value_max)).await.unwrap();
    assert_refused(admin.load(one(value_max + 1)).await, "value_too_large");

    let many = |count| {
        registry_file(
            "s:attributes",
            (0..count).map(|n| (format!("a.n{n}"), serde_json::json!(1))),
        )
    };
    admin
        .load(many(limits::ATTRIBUTES_PER_SUBJECT_MAX))
        .await
        .unwrap();
    assert_refused(
        admin
            .load(many(limits::ATTRIBUTES_PER_SUBJECT_MAX + 1))
            .await,
        "too_many_attributes",
    );

    // Whole values of the largest size, as many as fit in the subject's total.
    let full = limits::SUBJECT_DATA_BYTES_MAX / value_max;
    assert_eq!(full * value_max, limits::SUBJECT_DATA_BYTES_MAX);
    let large = |count| {
        registry_file(
            "s:total",
            (0..count).map(|n| (format!("a.n{n}"), text(value_max))),
        )
    };
    assert_refused(admin.load(large(full + 1)).await, "subject_too_large");
    admin.load(large(full)).await.unwrap();
    // One more byte in another file's attribute is over the total.
    let extra = registry_file("s:total", [("b.c".to_owned(), serde_json::json!(1))]);
    assert_refused(admin.load(extra).await, "subject_too_large");
    net.shutdown().await;
}

/// Consent terms over a list limit, a log at its event limit, a subject at
/// its record limit and an agent at its delegation limit are each refused
/// with their own reason, after the call at the limit was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_limits_over_the_api_are_refused_with_their_reason() {
    let mut net = TestNet::new(1);
    net.start_all().await;
    let admin = Admin::connect(&net).await;

    // Grantors: at the limit, then one more.
    let grantors: Vec<String> = (0..=limits::CONSENT_GRANTORS_MAX)
        .map(|n| format!("fi:hetu:grantor-{n}"))
        .collect();
    let names = |count: usize| grantors[..count].iter().map(String::as_str);
    let subject = "fi:hetu:grantor-0";
    let at_limit = terms(subject).grantors(names(limits::CONSENT_GRANTORS_MAX));
    admin.request_consent(at_limit.build()).await.unwrap();
    let over = terms(subject).grantors(names(limits::CONSENT_GRANTORS_MAX + 1));
    assert_refused(admin.request_consent(over.build()).await, "terms_too_large");

    // Events: a request and narrowings up to the limit, then one more.
    let subject = "fi:hetu:events";
    let id = admin.request_consent(terms(subject).build()).await.unwrap();
    let same = || {
        let mut terms = terms(subject).build();
        terms.consent_id = id.clone();
        terms
    };
    for _ in 1..limits::CONSENT_EVENTS_MAX {
        admin.narrow(&id, same(), subject).await.unwrap();
    }
    assert_refused(admin.narrow(&id, same(), subject).await, "too_many_events");

    // Records per subject: up to the limit, then one more.
    let subject = "fi:hetu:records";
    for _ in 0..limits::CONSENTS_PER_SUBJECT_MAX {
        admin.request_consent(terms(subject).build()).await.unwrap();
    }
    assert_refused(
        admin.request_consent(terms(subject).build()).await,
        "too_many_consents",
    );
    // Another subject is not affected.
    admin
        .request_consent(terms("fi:hetu:other").build())
        .await
        .unwrap();

    // Delegations per agent: up to the limit, then one more.
    for n in 0..limits::DELEGATIONS_PER_AGENT_MAX {
        admin
            .delegate(&format!("fi:hetu:child-{n}"), "fi:hetu:guardian")
            .await
            .unwrap();
    }
    assert_refused(
        admin.delegate("fi:hetu:one-more", "fi:hetu:guardian").await,
        "too_many_delegations",
    );
    net.shutdown().await;
}

/// The record limit holds on the peer port too: a consent offer from a
/// member's service for a subject whose home holds
/// [`limits::CONSENTS_PER_SUBJECT_MAX`] records is refused with
/// `RESOURCE_EXHAUSTED` and `too_many_consents` (not as an unusable
/// message), after the offer that reached the limit was acknowledged; the
/// home keeps the records it had and still takes offers about others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_offer_over_the_subjects_record_limit_is_refused_on_the_peer_port() {
    use mim4_node::core::consent::SubjectId;
    use mim4_node::core::envelope::Payload;
    use mim4_node::core::wire;
    use mim4_sdk::ConsentId;

    // Node 0 is home; node 2 (se.stockholm) runs the service that asks.
    let (home, asker) = (0, 2);
    let mut net = TestNet::new(3);
    net.start(home).await;
    net.start(asker).await;
    let admin = Admin::connect(&net).await;
    let subject = "fi:hetu:offers";
    for _ in 1..limits::CONSENTS_PER_SUBJECT_MAX {
        admin.request_consent(terms(subject).build()).await.unwrap();
    }
    let offer = |subject: &str| {
        let terms = Terms::consent(subject, HOME, "se.stockholm/social-services", HOME)
            .id(ConsentId(rand::random()))
            .read("income.gross_monthly")
            .purpose(PURPOSE)
            .valid(0, u64::MAX)
            .build();
        let payload = Payload::ConsentOffer(wire::terms_from_pb(terms).unwrap());
        net.sealed(asker, home, payload)
    };
    let peer = net.peer_client(asker, home);
    let deliver = |envelope: Vec<u8>| {
        let request = pb::DeliverRequest { envelope };
        let mut peer = peer.clone();
        async move { peer.deliver(request).await.map(drop) }
    };

    deliver(offer(subject))
        .await
        .expect("the offer at the limit");
    let shared = net.nodes[home].as_ref().unwrap().shared.clone();
    let held = || shared.consents_of(&SubjectId::new(subject).unwrap()).len();
    assert_eq!(held(), limits::CONSENTS_PER_SUBJECT_MAX);
    assert_refused(deliver(offer(subject)).await, "too_many_consents");
    assert_eq!(held(), limits::CONSENTS_PER_SUBJECT_MAX);
    deliver(offer("fi:hetu:someone-else"))
        .await
        .expect("an offer about another subject");
    drop(shared);
    net.shutdown().await;
}
