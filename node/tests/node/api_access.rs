//! The local API's gate: who is let in (credentials from `clients.toml`),
//! what each role may call, how bad requests are refused, and that a refused
//! trust list leaves the node on the version it had. Calls go through the raw
//! generated `OperatorApiClient`, so each test sees the exact gRPC code.

use std::time::{Duration, SystemTime};

use mim4_node::api::clients::{self, ClientRole};
use mim4_node::clock::now_ms;
use mim4_node::core::keys::SecretKey;
use mim4_node::limits;
use mim4_proto::v1 as pb;
use pb::operator_api_client::OperatorApiClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::util::TestNet;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// A raw API connection that sends `credential` (or nothing) as its bearer token.
struct Api {
    inner: OperatorApiClient<Channel>,
    credential: Option<String>,
}

impl Api {
    async fn connect(net: &TestNet, i: usize, credential: Option<&str>) -> Self {
        Self {
            inner: OperatorApiClient::connect(net.api_url(i)).await.unwrap(),
            credential: credential.map(str::to_owned),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(credential) = &self.credential {
            let value = format!("Bearer {credential}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    async fn status(&self) -> Result<pb::GetStatusResponse, Status> {
        let request = self.request(pb::GetStatusRequest {});
        Ok(self.inner.clone().get_status(request).await?.into_inner())
    }

    async fn send(&self, recipient: &str, subject: &str, text: &str) -> Result<Vec<u8>, Status> {
        let request = self.request(pb::SendMessageRequest {
            recipient: recipient.to_owned(),
            memo: Some(pb::Memo {
                subject: subject.to_owned(),
                text: text.to_owned(),
            }),
        });
        Ok(self
            .inner
            .clone()
            .send_message(request)
            .await?
            .into_inner()
            .message_id)
    }

    async fn call(&self, call: &Call) -> Result<(), Status> {
        let mut inner = self.inner.clone();
        match call {
            Call::GetStatus => inner
                .get_status(self.request(pb::GetStatusRequest {}))
                .await
                .map(drop),
            Call::ListPeers => inner
                .list_peers(self.request(pb::ListPeersRequest {}))
                .await
                .map(drop),
            Call::SendMessage(recipient) => self.send(recipient, "hello", "").await.map(drop),
            Call::GetOutgoing(id) => {
                let request = self.request(pb::GetOutgoingRequest {
                    message_id: id.clone(),
                });
                inner.get_outgoing(request).await.map(drop)
            }
            Call::ListMessages => {
                let request = self.request(pb::ListMessagesRequest {
                    after_seq: 0,
                    limit: 10,
                });
                inner.list_messages(request).await.map(drop)
            }
            Call::InstallTrustList(list) => {
                let request = self.request(pb::InstallTrustListRequest {
                    trust_list: list.clone(),
                });
                inner.install_trust_list(request).await.map(drop)
            }
        }
    }
}

/// One API call with its argument.
#[derive(Debug)]
enum Call {
    GetStatus,
    ListPeers,
    SendMessage(String),
    GetOutgoing(Vec<u8>),
    ListMessages,
    InstallTrustList(Vec<u8>),
}

/// Expects `outcome` to be refused with `expected`, with a message that
/// contains every one of `words`.
fn check<T: std::fmt::Debug>(outcome: Result<T, Status>, expected: Code, words: &[&str]) {
    let status = match outcome {
        Ok(value) => panic!("expected {expected:?}, got Ok({value:?})"),
        Err(status) => status,
    };
    assert_eq!(status.code(), expected, "{status:?}");
    for word in words {
        assert!(
            status.message().contains(word),
            "{word:?} missing from {status:?}"
        );
    }
}

/// The refusal a table row expects: its code and words of its message;
/// `None` when the call succeeds.
type Refused<'a> = Option<(Code, &'a [&'a str])>;

/// Adds a client with `role` to node `i`'s clients file and returns its credential.
fn add_client(net: &TestNet, i: usize, id: &str, role: ClientRole, secret: u8) -> String {
    clients::add(
        &net.configs[i].clients_file,
        id,
        role,
        None,
        [secret; 32],
        0,
    )
    .unwrap()
}

/// Calls without a credential, with a malformed one, and with wrong secrets
/// are Unauthenticated; the missing case says how to create a credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_unauthenticated() {
    let mut net = TestNet::new(1);
    let good = add_client(&net, 0, "root", ClientRole::Admin, 0x21);
    net.start_all().await;
    let wrong_secret = format!("mim4:root:{}", "0".repeat(64));
    let unknown_client = format!("mim4:nobody:{}", hex::encode([0x21; 32]));
    let short_secret = "mim4:root:abcd".to_owned();
    let cases: &[(Option<&str>, &[&str])] = &[
        (None, &["no credential", "mim4-node client add"]),
        (Some("garbage"), &["malformed"]),
        (Some(&short_secret), &["malformed"]),
        (Some(&wrong_secret), &["not recognised"]),
        (Some(&unknown_client), &["not recognised"]),
    ];
    for (credential, words) in cases {
        let api = Api::connect(&net, 0, *credential).await;
        check(api.status().await, Code::Unauthenticated, words);
    }
    let api = Api::connect(&net, 0, Some(&good)).await;
    assert_eq!(api.status().await.unwrap().caller_id, "root");
    net.shutdown().await;
}

/// The role table of `node/src/api.rs`: every role may read the status and
/// peers, only services and admins send and read messages, only admins install
/// trust lists; a refusal names the client's role and the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_client_may_call() {
    let mut net = TestNet::new(2);
    let citizen = add_client(&net, 0, "wallet", ClientRole::CitizenApp, 0x31);
    let service = add_client(&net, 0, "edu", ClientRole::Service, 0x32);
    let admin = add_client(&net, 0, "root", ClientRole::Admin, 0x33);
    let v2 = net.sign_next(|_| {});
    net.start_all().await;
    let citizen = Api::connect(&net, 0, Some(&citizen)).await;
    let service = Api::connect(&net, 0, Some(&service)).await;
    let admin = Api::connect(&net, 0, Some(&admin)).await;
    assert_eq!(citizen.status().await.unwrap().caller_role, "citizen-app");
    assert_eq!(service.status().await.unwrap().caller_role, "service");

    let sent = service
        .send(net.id(1).as_str(), "from a service", "")
        .await
        .unwrap();
    let peer = net.id(1).to_string();
    // Who may make each call, in the order citizen-app, service, admin: the
    // role table of `node/src/api.rs`. The one admin install comes last,
    // because it succeeds once only.
    let table: &[(Call, [bool; 3])] = &[
        (Call::GetStatus, [true, true, true]),
        (Call::ListPeers, [true, true, true]),
        (Call::SendMessage(peer), [false, true, true]),
        (Call::GetOutgoing(sent), [false, true, true]),
        (Call::ListMessages, [false, true, true]),
        (Call::InstallTrustList(v2), [false, false, true]),
    ];
    let callers = [
        ("citizen-app", &citizen),
        ("service", &service),
        ("admin", &admin),
    ];
    for (call, allowed) in table {
        for ((role, api), allowed) in callers.iter().zip(allowed) {
            let outcome = api.call(call).await;
            if *allowed {
                assert!(outcome.is_ok(), "{role} {call:?}: {outcome:?}");
            } else {
                let name = format!("{call:?}");
                let name = name.split('(').next().unwrap();
                check(
                    outcome,
                    Code::PermissionDenied,
                    &[&format!("role {role}"), name],
                );
            }
        }
    }
    assert_eq!(admin.status().await.unwrap().trust_list_version, 2);
    net.shutdown().await;
}

/// A client revoked with `clients::revoke` while the node runs is refused on
/// its very next call; other clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_is_refused_on_its_next_call() {
    let mut net = TestNet::new(1);
    let edu = add_client(&net, 0, "edu", ClientRole::Service, 0x41);
    let root = add_client(&net, 0, "root", ClientRole::Admin, 0x42);
    net.start_all().await;
    let edu = Api::connect(&net, 0, Some(&edu)).await;
    let root = Api::connect(&net, 0, Some(&root)).await;
    assert_eq!(edu.status().await.unwrap().caller_id, "edu");

    let path = &net.configs[0].clients_file;
    clients::revoke(path, "edu").unwrap();
    // The node notices the change by the file's modification time; move it
    // forward explicitly so that a coarse file-system clock cannot hide the write.
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    drop(file);

    check(
        edu.status().await,
        Code::Unauthenticated,
        &["edu", "revoked"],
    );
    check(
        edu.call(&Call::ListMessages).await,
        Code::Unauthenticated,
        &["revoked"],
    );
    assert_eq!(root.status().await.unwrap().caller_id, "root");
    net.shutdown().await;
}

/// Bad `SendMessage` and `GetOutgoing` requests: unknown recipient is
/// NotFound; sending to itself, a bad recipient id, an over-long subject or
/// text, a missing memo and a message id that is not 16 bytes are
/// InvalidArgument. A subject of exactly the limit is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_right_code() {
    let mut net = TestNet::new(2);
    let root = add_client(&net, 0, "root", ClientRole::Admin, 0x51);
    net.start_all().await;
    let api = Api::connect(&net, 0, Some(&root)).await;
    let peer = net.id(1).to_string();
    let me = net.id(0).to_string();
    let subject_max = "s".repeat(limits::MEMO_SUBJECT_BYTES_MAX);
    let subject_over = "s".repeat(limits::MEMO_SUBJECT_BYTES_MAX + 1);
    let text_over = "t".repeat(limits::MEMO_TEXT_BYTES_MAX + 1);
    let cases: &[(&str, &str, &str, Refused<'_>)] = &[
        (
            "xx.nowhere",
            "hi",
            "",
            Some((Code::NotFound, &["xx.nowhere", "not an active member"])),
        ),
        (&me, "hi", "", Some((Code::InvalidArgument, &["itself"]))),
        (
            "Not An Id!",
            "hi",
            "",
            Some((Code::InvalidArgument, &["recipient"])),
        ),
        (
            &peer,
            &subject_over,
            "",
            Some((Code::InvalidArgument, &["subject", "201", "200"])),
        ),
        (
            &peer,
            "hi",
            &text_over,
            Some((Code::InvalidArgument, &["text"])),
        ),
        (&peer, &subject_max, "", None),
    ];
    for (recipient, subject, text, expected) in cases {
        let outcome = api.send(recipient, subject, text).await;
        match expected {
            None => assert_eq!(outcome.unwrap().len(), 16),
            Some((code, words)) => check(outcome, *code, words),
        }
    }

    let no_memo = api.request(pb::SendMessageRequest {
        recipient: peer.clone(),
        memo: None,
    });
    check(
        api.inner.clone().send_message(no_memo).await,
        Code::InvalidArgument,
        &["memo"],
    );

    let cases: &[(Vec<u8>, Code, &[&str])] = &[
        (vec![1, 2, 3], Code::InvalidArgument, &["16 bytes"]),
        (Vec::new(), Code::InvalidArgument, &["16 bytes"]),
        (vec![7; 16], Code::NotFound, &["no outgoing message"]),
    ];
    for (id, code, words) in cases {
        check(api.call(&Call::GetOutgoing(id.clone())).await, *code, words);
    }
    net.shutdown().await;
}

/// `InstallTrustList` with an older or equal version, a list signed by a key
/// that is not governance's, an expired list, another federation's list or
/// garbage is FailedPrecondition, and the node keeps its version; a proper
/// next version still installs afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_trust_lists_leave_the_version_unchanged() {
    let mut net = TestNet::new(2);
    let root = add_client(&net, 0, "root", ClientRole::Admin, 0x61);
    let v1 = std::fs::read(&net.configs[0].trust_list).unwrap();
    let v2 = net.sign_next(|_| {});
    net.start_all().await;
    let api = Api::connect(&net, 0, Some(&root)).await;
    let install = |list: Vec<u8>| Call::InstallTrustList(list);
    api.call(&install(v2.clone())).await.unwrap();
    assert_eq!(api.status().await.unwrap().trust_list_version, 2);

    let now = now_ms();
    let next = net.draft.version + 1;
    let rogue = SecretKey::generate(&mut rand::rngs::OsRng);
    let by_rogue = net
        .draft
        .to_trust_list(next, now, now + DAY_MS)
        .unwrap()
        .sign(&[&rogue]);
    let expired = net
        .draft
        .to_trust_list(next, now - 2 * DAY_MS, now - DAY_MS)
        .unwrap()
        .sign(&[&net.governance]);
    let mut other_draft = net.draft.clone();
    other_draft.federation_id = "another-federation".into();
    let other = other_draft
        .to_trust_list(next, now, now + DAY_MS)
        .unwrap()
        .sign(&[&net.governance]);
    let cases: &[(&str, Vec<u8>, &[&str])] = &[
        ("older", v1, &["not newer", "version 1"]),
        ("equal", v2, &["not newer", "version 2"]),
        (
            "signed by a non-governance key",
            by_rogue.encode(),
            &["0 valid governance signature"],
        ),
        ("expired", expired.encode(), &["expired"]),
        ("other federation", other.encode(), &["another-federation"]),
        ("garbage", b"not a trust list".to_vec(), &["malformed"]),
    ];
    for (case, list, words) in cases {
        println!("case: {case}");
        check(
            api.call(&install(list.clone())).await,
            Code::FailedPrecondition,
            words,
        );
        assert_eq!(
            api.status().await.unwrap().trust_list_version,
            2,
            "after {case}"
        );
    }

    let v3 = net.sign_next(|_| {});
    api.call(&install(v3)).await.unwrap();
    assert_eq!(api.status().await.unwrap().trust_list_version, 3);
    net.shutdown().await;
}
