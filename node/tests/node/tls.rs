//! Transport security on the peer port: TLS 1.3 with certificates pinned to
//! the trust list's keys, the TLS peer bound to the envelope's signer, and
//! the plaintext development mode. Every other test in this binary runs over
//! TLS too, since `TestNet::new` uses it.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mim4_node::core::envelope::{Memo, Payload};
use mim4_node::core::ids::OperatorId;
use mim4_node::core::keys::SecretKey;
use mim4_node::transport::grpc;
use mim4_proto::v1 as pb;
use pb::operator_peer_client::OperatorPeerClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{until_delivered, TestNet};

/// How long any wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// A valid memo from node `from` to node `to`, signed with `from`'s key.
fn memo(net: &TestNet, from: usize, to: usize) -> Vec<u8> {
    let memo = Memo {
        subject: "by hand".into(),
        text: String::new(),
    };
    net.sealed(from, to, Payload::Memo(memo))
}

async fn deliver(
    client: &mut OperatorPeerClient<Channel>,
    envelope: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    client
        .deliver(pb::DeliverRequest { envelope })
        .await
        .map(|response| response.into_inner().receipt)
}

async fn fetch_trust_list(client: &mut OperatorPeerClient<Channel>) -> Result<(), tonic::Status> {
    client
        .fetch_trust_list(pb::FetchTrustListRequest {})
        .await
        .map(|_| ())
}

/// The call failed in the transport, with no answer from the node's
/// service: the client made the status from a connection error, which it
/// carries as its source. (The code depends on when the refusal arrives: TLS
/// 1.3 lets the client finish its handshake first, and a plaintext client
/// reads the server's TLS alert as a broken HTTP/2 frame.)
fn assert_no_answer(status: &tonic::Status) {
    let transport = std::error::Error::source(status)
        .is_some_and(|source| source.is::<tonic::transport::Error>());
    assert!(transport, "expected a transport failure, got {status:?}");
}

/// An error and all its sources, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A certificate from a key that no member holds is refused by the server at
/// the handshake (a TLS alert, before any HTTP/2 or gRPC), and the node goes
/// on serving members. A client that dials one member and meets another's key
/// refuses the server in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_outside_the_trust_list_is_refused_at_the_handshake() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let rogue = SecretKey::generate(&mut rand::rngs::OsRng);
    let rogue_id = OperatorId::new("xx.rogue").unwrap();

    // Raw TLS: in TLS 1.3 the client finishes its side first, and the
    // server's verdict on its certificate arrives as a fatal alert.
    let config = net
        .peer_tls(&rogue_id, &rogue, 0)
        .client_config(&net.id(0))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(net.configs[0].peer_listen)
        .await
        .unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let outcome: io::Result<usize> = async {
        let mut stream = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await?;
        let mut buffer = [0u8; 64];
        stream.read(&mut buffer).await
    }
    .await;
    let error = outcome.expect_err("a key outside the trust list must be refused");
    assert!(chain(&error).contains("alert"), "{}", chain(&error));

    // gRPC over such a connection: nothing gets through.
    let mut client = net.peer_client_with_key(&rogue_id, &rogue, 0);
    let status = fetch_trust_list(&mut client).await.unwrap_err();
    assert_no_answer(&status);

    // The node goes on serving members.
    let receipt = deliver(&mut net.peer_client(1, 0), memo(&net, 1, 0))
        .await
        .unwrap();
    assert!(!receipt.is_empty());

    // Node 1's identity, dialling node 0's address as if it were node 1:
    // node 0's key is not node 1's, so the client refuses the server.
    let tls = net.peer_tls(&net.id(1), &net.keys[1], 1);
    let channel = grpc::channel(&net.peer_url(0), &net.id(1), Some(&tls)).unwrap();
    let status = fetch_trust_list(&mut OperatorPeerClient::new(channel))
        .await
        .unwrap_err();
    assert_no_answer(&status);
    assert!(
        chain(&status).contains("is not a key of fi.incomeregister"),
        "{}",
        chain(&status)
    );
    net.shutdown().await;
}

/// A member with a valid certificate may not hand over another member's
/// envelope: the envelope verifies, but its signer is not the TLS peer, so it
/// is PermissionDenied, for Deliver and Call alike. The same bytes from their
/// signer are accepted, so the binding is the only thing that was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_of_another_member_than_the_tls_peer_is_permission_denied() {
    let mut net = TestNet::new(3);
    net.start_all().await;
    let of_node_2 = memo(&net, 2, 0);
    let mut as_node_1 = net.peer_client(1, 0);

    let status = deliver(&mut as_node_1, of_node_2.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.metadata().get(grpc::REASON_METADATA_KEY).unwrap(),
        "not_from_peer"
    );
    assert!(
        status.message().contains("signed by se.stockholm")
            && status
                .message()
                .contains("authenticated as fi.incomeregister"),
        "{status:?}"
    );

    let status = as_node_1
        .call(pb::CallRequest {
            envelope: of_node_2.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // From its signer, the same call gets past the binding (and is refused
    // only because a memo is not a call).
    let status = net
        .peer_client(2, 0)
        .call(pb::CallRequest {
            envelope: of_node_2.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let receipt = deliver(&mut net.peer_client(2, 0), of_node_2)
        .await
        .unwrap();
    assert!(!receipt.is_empty());
    let listed = net.admin(0).await.messages(0, 100).await.unwrap();
    assert_eq!(listed.len(), 1, "applied once, from its signer");
    net.shutdown().await;
}

/// A plaintext gRPC client gets nothing from a TLS node (the bytes are not a
/// TLS handshake), nothing is applied, and the node goes on serving; a TLS
/// node never dials a plaintext endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_gets_nothing_from_a_tls_node() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let plaintext_url = format!("http://{}", net.configs[0].peer_listen);
    let channel = tonic::transport::Endpoint::from_shared(plaintext_url.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let mut plaintext = OperatorPeerClient::new(channel);
    let status = deliver(&mut plaintext, memo(&net, 1, 0)).await.unwrap_err();
    assert_no_answer(&status);
    let status = fetch_trust_list(&mut plaintext).await.unwrap_err();
    assert_no_answer(&status);

    let tls = net.peer_tls(&net.id(1), &net.keys[1], 0);
    let error = grpc::channel(&plaintext_url, &net.id(0), Some(&tls)).unwrap_err();
    assert!(error.contains("plaintext"), "{error}");

    deliver(&mut net.peer_client(1, 0), memo(&net, 1, 0))
        .await
        .unwrap();
    let listed = net.admin(0).await.messages(0, 100).await.unwrap();
    assert_eq!(listed.len(), 1, "only the memo sent over TLS was applied");
    net.shutdown().await;
}

/// Log lines written by a test's own subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

/// With `[transport] insecure_plaintext = true` (and `http://` endpoints)
/// nodes deliver to each other in plaintext, and each start warns about it;
/// a TLS node's start does not. (One runtime thread, so that every log line
/// of the nodes reaches this test's subscriber.)
#[tokio::test(flavor = "current_thread")]
async fn plaintext_nodes_work_when_configured_and_warn() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    const WARNING: &str = "insecure_plaintext = true";

    let mut net = TestNet::plaintext(2);
    net.start_all().await;
    assert_eq!(logs.count(WARNING), 2, "one warning per node start");

    let sender = net.admin(0).await;
    let id = sender
        .send_message(net.id(1).as_str(), "over plaintext", "")
        .await
        .unwrap();
    until_delivered(&sender, id, DEADLINE).await;
    // A plaintext peer needs no certificate.
    deliver(&mut net.peer_client(1, 0), memo(&net, 1, 0))
        .await
        .unwrap();
    net.stop(0).await;
    net.start(0).await;
    assert_eq!(logs.count(WARNING), 3, "the warning repeats at every start");
    net.shutdown().await;

    let mut tls = TestNet::new(1);
    tls.start_all().await;
    assert_eq!(logs.count(WARNING), 3, "a TLS node does not warn");
    tls.shutdown().await;
}

/// Once a trust list suspending a member is in force, a new connection with
/// that member's certificate is refused at the handshake, and a connection it
/// opened before the update is refused request by request (PermissionDenied,
/// naming the suspension). Active members are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_member_is_refused_once_the_update_is_in_force() {
    let mut net = TestNet::new(3);
    net.start_all().await;
    let mut opened_before = net.peer_client(2, 0);
    fetch_trust_list(&mut opened_before).await.unwrap();

    let v2 = net.sign_next(|draft| {
        draft.member_mut("se.stockholm").unwrap().status = "suspended".into();
    });
    assert_eq!(net.admin(0).await.install_trust_list(v2).await.unwrap(), 2);

    let status = fetch_trust_list(&mut net.peer_client(2, 0))
        .await
        .unwrap_err();
    assert_no_answer(&status);

    let status = fetch_trust_list(&mut opened_before).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("suspended"), "{status:?}");
    assert_eq!(
        status.metadata().get(grpc::REASON_METADATA_KEY).unwrap(),
        "tls_peer_refused"
    );
    let status = deliver(&mut opened_before, memo(&net, 2, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    fetch_trust_list(&mut net.peer_client(1, 0)).await.unwrap();
    net.shutdown().await;
}
