//! Data requests across real nodes: the consumer's node routes each attribute
//! to its catalogued source, the holder checks consent per attribute and
//! answers signed.

use std::time::Duration;

use mim4_node::api::clients::ClientRole;
use mim4_sdk::{Client, ConsentId, RequestError, Terms};

use crate::util::{eventually, TestNet, Transports};

const HOME: usize = 0; // fi.helsinki: home of the citizens and the consumer
const REGISTER: usize = 1; // fi.incomeregister: the source
const SERVICE: &str = "fi.helsinki/early-education";
const PURPOSE: &str = "dpv:ServiceProvision";
const PARENT: &str = "fi:hetu:010180-1234";

/// A consent of `subject` for the early-education service to `scope`, granted at home;
/// waits until the register holds it.
async fn consent(net: &TestNet, subject: &str, read: &[&str], verify: &[&str]) -> ConsentId {
    let admin = net.admin(HOME).await;
    let mut terms =
        Terms::consent(subject, "fi.helsinki", SERVICE, "fi.incomeregister").purpose(PURPOSE);
    for a in read {
        terms = terms.read(a);
    }
    for a in verify {
        terms = terms.verify(a);
    }
    let id = admin.request_consent(terms.build()).await.unwrap();
    admin.grant(id, subject, None).await.unwrap();
    let register = net.admin(REGISTER).await;
    eventually(
        "the register to hold the consent",
        Duration::from_secs(60),
        || {
            let register = register.clone();
            async move { (register.consent(id).await.ok()?.status == "given").then_some(()) }
        },
    )
    .await;
    id
}

async fn service(net: &TestNet) -> Client {
    net.client(HOME, "early-education", ClientRole::Service, Some(SERVICE))
        .await
}

/// Allowed, partially allowed, predicate-only, denied and unknown-subject
/// requests each get the precise signed answer; a retried request is answered
/// once.
async fn holder_answers_per_attribute_under_consent(transports: Transports) {
    let mut net = TestNet::over(3, transports);
    net.start_all().await;
    let client = service(&net).await;
    let id = consent(&net, PARENT, &["income.gross_monthly"], &[]).await;

    // Allowed: the value with its provenance.
    let answer = client
        .request(PARENT)
        .service(SERVICE)
        .purpose(PURPOSE)
        .attributes(["income.gross_monthly"])
        .send()
        .await
        .unwrap();
    let value = answer.value("income.gross_monthly").unwrap();
    assert_eq!(value.value, serde_json::json!(3150));
    assert_eq!(value.source, "fi.incomeregister");
    assert_eq!(value.consent_id, id.to_string());
    let state = |net: &TestNet, request_id: &[u8]| {
        let id = mim4_node::core::ids::MessageId::from_slice(request_id).unwrap();
        let shared = &net.nodes[HOME].as_ref().unwrap().shared;
        shared
            .store()
            .request_state("requester", &id)
            .unwrap()
            .map(|(s, _)| s)
    };
    assert_eq!(
        state(&net, &answer.request_id),
        Some(mim4_node::store::RequestState::Fulfilled),
        "the requester persists the request's final state"
    );

    // Partially allowed: the employer is not covered and says why.
    let answer = client
        .request(PARENT)
        .service(SERVICE)
        .purpose(PURPOSE)
        .attributes(["income.gross_monthly", "income.employer"])
        .send()
        .await
        .unwrap();
    assert!(answer.value("income.gross_monthly").is_some());
    assert!(answer.value("income.employer").is_none());
    assert_eq!(answer.withheld.len(), 1);
    assert_eq!(
        answer.withheld[0].1, "attribute-not-covered",
        "{:?}",
        answer.withheld
    );

    // Predicate only (read covers verify): yes/no without the amount.
    let answer = client
        .request(PARENT)
        .service(SERVICE)
        .purpose(PURPOSE)
        .predicate("income.gross_monthly", "<=", 4000)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.holds("income.gross_monthly"), Some(true));
    assert!(answer.values.is_empty(), "no value in a predicate answer");

    // Denied: another subject without consent.
    let denied = client
        .request("fi:hetu:father")
        .service(SERVICE)
        .purpose(PURPOSE)
        .attributes(["income.gross_monthly"])
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(denied, RequestError::Denied(ref m) if m.contains("no consent")),
        "{denied}"
    );

    // Unknown to the holder, though consented.
    consent(&net, "fi:hetu:nobody", &["income.gross_monthly"], &[]).await;
    let unknown = client
        .request("fi:hetu:nobody")
        .service(SERVICE)
        .purpose(PURPOSE)
        .attributes(["income.gross_monthly"])
        .send()
        .await
        .unwrap_err();
    assert!(matches!(unknown, RequestError::NotFound(_)), "{unknown}");

    // Retried with the same idempotency key: answered from the stored result.
    let key = [7u8; 16];
    let first = client
        .request(PARENT)
        .service(SERVICE)
        .purpose(PURPOSE)
        .attributes(["income.gross_monthly"])
        .idempotency_key(key)
        .send()
        .await
        .unwrap();
    let second = client
        .request(PARENT)
        .service(SERVICE)
        .purpose(PURPOSE)
        .attributes(["income.gross_monthly"])
        .idempotency_key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        first.value("income.gross_monthly").unwrap().retrieved_at_ms,
        second
            .value("income.gross_monthly")
            .unwrap()
            .retrieved_at_ms,
        "the second answer is the stored first one"
    );
    net.shutdown().await;
}

/// Bad input gets a precise error and is counted: unknown attributes, too
/// many attributes, a purpose the service is not registered for, another
/// service's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_errors() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let client = service(&net).await;
    let check = |result: Result<mim4_sdk::DataAnswer, RequestError>, needle: &str| match result {
        Err(RequestError::Invalid(m)) => assert!(m.contains(needle), "{m} should mention {needle}"),
        other => panic!("expected an invalid-request error mentioning {needle}, got {other:?}"),
    };
    let base = || client.request(PARENT).service(SERVICE).purpose(PURPOSE);
    check(
        base().attributes(["income.favourite_colour"]).send().await,
        "not in the federation's catalogue",
    );
    let many: Vec<String> = (0..40).map(|i| format!("income.a{i}")).collect();
    check(
        base()
            .attributes(many.iter().map(String::as_str))
            .send()
            .await,
        "more than the 32 allowed",
    );
    check(
        client
            .request(PARENT)
            .service(SERVICE)
            .purpose("dpv:Marketing")
            .attributes(["income.gross_monthly"])
            .send()
            .await,
        "not registered for purpose",
    );
    check(base().send().await, "asks for nothing");
    let other = client
        .request(PARENT)
        .service("se.stockholm/social-services")
        .purpose(PURPOSE)
        .attributes(["income.gross_monthly"])
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            other,
            RequestError::Call(mim4_sdk::CallError::PermissionDenied(_))
        ),
        "{other}"
    );
    let status = net.admin(HOME).await.status().await.unwrap();
    assert!(
        status
            .refusals
            .get("data_request_invalid")
            .copied()
            .unwrap_or(0)
            >= 4,
        "{:?}",
        status.refusals
    );
    net.shutdown().await;
}

/// A holder that is offline gives a clear "unreachable" error, without hanging.
async fn offline_holder_is_reported_unreachable(transports: Transports) {
    let mut net = TestNet::over(2, transports);
    net.start_all().await;
    let client = service(&net).await;
    consent(&net, PARENT, &["income.gross_monthly"], &[]).await;
    net.stop(REGISTER).await;
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        client
            .request(PARENT)
            .service(SERVICE)
            .purpose(PURPOSE)
            .attributes(["income.gross_monthly"])
            .send(),
    )
    .await
    .expect("no hang")
    .unwrap_err();
    assert!(
        matches!(error, RequestError::Unreachable(ref m) if m.contains("fi.incomeregister")),
        "{error}"
    );
    net.shutdown().await;
}

/// A fake holder that answers with an envelope it cannot sign properly.
struct ForgingHolder {
    key: mim4_node::core::keys::SecretKey,
    /// Sign with the holder's real key but answer another request id.
    wrong_request: bool,
}

#[tonic::async_trait]
impl mim4_proto::v1::operator_peer_server::OperatorPeer for ForgingHolder {
    async fn deliver(
        &self,
        _: tonic::Request<mim4_proto::v1::DeliverRequest>,
    ) -> Result<tonic::Response<mim4_proto::v1::DeliverResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("not today"))
    }

    async fn fetch_trust_list(
        &self,
        _: tonic::Request<mim4_proto::v1::FetchTrustListRequest>,
    ) -> Result<tonic::Response<mim4_proto::v1::FetchTrustListResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("not today"))
    }

    async fn call(
        &self,
        request: tonic::Request<mim4_proto::v1::CallRequest>,
    ) -> Result<tonic::Response<mim4_proto::v1::CallResponse>, tonic::Status> {
        use mim4_node::core::envelope::Payload;
        use mim4_node::core::exchange::{DataResponse, Released};
        use mim4_node::core::wire;
        let signed = wire::decode_signed_envelope(&request.into_inner().envelope).unwrap();
        let asked = wire::decode_envelope(&signed.body).unwrap();
        let Payload::DataRequest(data_request) = asked.payload else {
            return Err(tonic::Status::invalid_argument("expected a data request"));
        };
        let request_id = if self.wrong_request {
            mim4_node::core::ids::MessageId::from_bytes([1; 16])
        } else {
            data_request.request_id
        };
        let forged = DataResponse {
            request_id,
            source: asked.recipient.clone(),
            values: vec![Released {
                attribute: data_request.attributes[0].clone(),
                value: serde_json::json!(999_999),
                consent_id: mim4_node::core::consent::ConsentId::from_bytes([2; 16]),
                retrieved_at_ms: 0,
            }],
            answers: vec![],
            withheld: vec![],
        };
        let envelope = mim4_node::core::delivery::SenderContext {
            me: &asked.recipient,
            rulebook_version: "mim4-rulebook-1.0",
            trust_list_version: 1,
            lifetime_ms: 60_000,
        }
        .envelope(
            mim4_node::core::ids::MessageId::from_bytes(rand::random()),
            asked.sender.clone(),
            mim4_node::clock::now_ms(),
            Some(asked.message_id),
            Payload::DataResponse(forged),
        )
        .seal(&self.key);
        Ok(tonic::Response::new(mim4_proto::v1::CallResponse {
            envelope: envelope.bytes,
        }))
    }
}

/// The requester checks every answer: a response signed by a key that is
/// not the holder's, or one answering another request, is refused and no
/// value reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_mismatched_answers_are_refused_by_the_requester() {
    for (key, wrong_request, needle) in [
        (
            mim4_node::core::keys::SecretKey::from_bytes(&[66; 32]).unwrap(),
            false,
            "key",
        ),
        (
            mim4_node::core::keys::SecretKey::from_bytes(&[0; 32]).unwrap(),
            true,
            "another request",
        ),
    ] {
        let mut net = TestNet::new(2);
        net.start(HOME).await;
        // The fake listens where the register should be; for the mismatch
        // case it signs with the register's real key.
        let key = if wrong_request {
            mim4_node::core::keys::SecretKey::from_bytes(&net.keys[REGISTER].to_bytes()[..])
                .unwrap()
        } else {
            key
        };
        let listener = tokio::net::TcpListener::bind(net.configs[REGISTER].peer_listen)
            .await
            .unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        // The fake holds the register's TLS identity (the connection is the
        // register's); only the answers it signs are forged.
        let register_key =
            mim4_node::core::keys::SecretKey::from_bytes(&net.keys[REGISTER].to_bytes()[..])
                .unwrap();
        let tls = net.peer_tls(&net.id(REGISTER), &register_key, HOME);
        let (accepted, incoming) = tokio::sync::mpsc::channel(8);
        let accepting = mim4_node::transport::tls::accept(
            listener,
            tls.server_config(),
            accepted,
            cancel.clone(),
        );
        let serving = tonic::transport::Server::builder()
            .add_service(
                mim4_proto::v1::operator_peer_server::OperatorPeerServer::new(ForgingHolder {
                    key,
                    wrong_request,
                }),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                cancel.clone().cancelled_owned(),
            );
        let server = tokio::spawn(async move { tokio::join!(accepting, serving).1 });
        let client = service(&net).await;
        let answer = client
            .request(PARENT)
            .service(SERVICE)
            .purpose(PURPOSE)
            .attributes(["income.gross_monthly"])
            .send()
            .await;
        match answer {
            Err(RequestError::Invalid(reason)) => assert!(reason.contains(needle), "{reason}"),
            other => panic!("a forged answer must be refused, got {other:?}"),
        }
        cancel.cancel();
        server.await.unwrap().unwrap();
        net.shutdown().await;
    }
}

over_transports!(
    holder_answers_per_attribute_under_consent,
    offline_holder_is_reported_unreachable,
);
