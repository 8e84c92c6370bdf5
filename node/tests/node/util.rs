//! A federation of in-process nodes on 127.0.0.1 with real sled databases in a
//! temporary folder: the one helper every fast integration test uses.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use mim4_node::api::clients::{self, ClientRole};
use mim4_node::clock::now_ms;
use mim4_node::config::Config;
use mim4_node::core::envelope::EnvelopeLimits;
use mim4_node::core::ids::OperatorId;
use mim4_node::core::keys::SecretKey;
use mim4_node::identity;
use mim4_node::limits;
use mim4_node::transport::grpc;
use mim4_node::transport::tls::PeerTls;
use mim4_node::trust_draft::{Draft, DraftKey, DraftMember};
use mim4_node::NodeHandle;
use mim4_proto::v1 as pb;
use mim4_proto::v1::operator_peer_client::OperatorPeerClient;
use tonic::transport::Channel;

/// The catalogue: (attribute, type, source).
pub(crate) const CATALOGUE: &[(&str, &str, &str)] = &[
    ("income.gross_monthly", "integer", "fi.incomeregister"),
    ("income.employer", "string", "fi.incomeregister"),
    ("skills.record", "string", "fi.incomeregister"),
    ("licence.driving.classes", "string-list", "se.stockholm"),
];

/// The service registry: (service, purpose).
pub(crate) const SERVICES: &[(&str, &str)] = &[
    ("fi.helsinki/early-education", "dpv:ServiceProvision"),
    ("se.stockholm/social-services", "dpv:ServiceProvision"),
    (
        "fr.iledefrance/training-platform",
        "dpv:EducationalTraining",
    ),
];

/// Sample data of the income register (node 1).
pub(crate) const REGISTRY_JSON: &str = r#"{"subjects": {
  "fi:hetu:010180-1234": {"income.gross_monthly": 3150, "income.employer": "Helsingin kaupunki"},
  "fi:hetu:mother": {"income.gross_monthly": 2800},
  "fi:hetu:father": {"income.gross_monthly": 4300}
}}"#;

/// Sector labels of each operator in the trust list.
pub(crate) const SECTORS: &[&[&str]] = &[
    &["education", "social"],
    &["registry"],
    &["social"],
    &["education"],
];

pub(crate) const OPERATORS: &[&str] = &[
    "fi.helsinki",
    "fi.incomeregister",
    "se.stockholm",
    "fr.iledefrance",
];

/// Which transports the members of a test federation offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transports {
    /// Every member: gRPC over TLS only.
    Grpc,
    /// Every member: libp2p over TCP (noise, yamux) only.
    Libp2p,
    /// Even members gRPC only, odd members libp2p only: each pair talks
    /// over the recipient's transport, so both carry traffic.
    Mixed,
    /// Every member: libp2p over QUIC only.
    Quic,
    /// Every member offers gRPC and libp2p (TCP) and prefers gRPC.
    Both,
}

impl Transports {
    /// Whether member `i` offers libp2p.
    fn libp2p(self, i: usize) -> bool {
        match self {
            Self::Grpc => false,
            Self::Libp2p | Self::Quic | Self::Both => true,
            Self::Mixed => i % 2 == 1,
        }
    }

    /// Whether member `i` offers gRPC.
    fn grpc(self, i: usize) -> bool {
        match self {
            Self::Grpc | Self::Both => true,
            Self::Libp2p | Self::Quic => false,
            Self::Mixed => i % 2 == 0,
        }
    }
}

pub(crate) struct TestNet {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) governance: SecretKey,
    pub(crate) keys: Vec<SecretKey>,
    pub(crate) configs: Vec<Config>,
    pub(crate) draft: Draft,
    pub(crate) nodes: Vec<Option<NodeHandle>>,
    credentials: Vec<String>,
}

impl TestNet {
    /// `n` operators with keys, configs on free loopback ports, admin
    /// credentials and a signed trust list v1 naming them all, talking TLS
    /// (`https://` endpoints). Nothing runs yet.
    pub(crate) fn new(n: usize) -> Self {
        Self::with_transport(n, false, Transports::Grpc)
    }

    /// As [`TestNet::new`], with members offering `transports`.
    pub(crate) fn over(n: usize, transports: Transports) -> Self {
        Self::with_transport(n, false, transports)
    }

    /// As [`TestNet::new`], but every node runs with `insecure_plaintext` and
    /// the trust list gives `http://` endpoints.
    pub(crate) fn plaintext(n: usize) -> Self {
        Self::with_transport(n, true, Transports::Grpc)
    }

    fn with_transport(n: usize, insecure_plaintext: bool, transports: Transports) -> Self {
        let scheme = if insecure_plaintext { "http" } else { "https" };
        let dir = tempfile::tempdir().unwrap();
        let governance = SecretKey::from_bytes(&[0x60; 32]).unwrap();
        let mut draft = Draft::new("test-federation", &[governance.public()]);
        let listeners: Vec<TcpListener> = (0..3 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let udp: Vec<std::net::UdpSocket> = (0..n)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let udp_ports: Vec<u16> = udp.iter().map(|s| s.local_addr().unwrap().port()).collect();
        drop(udp);
        let mut keys = Vec::new();
        let mut configs = Vec::new();
        let mut credentials = Vec::new();
        for (i, id) in OPERATORS.iter().take(n).enumerate() {
            let op_dir = dir.path().join(id);
            std::fs::create_dir_all(&op_dir).unwrap();
            let key = SecretKey::generate(&mut rand::rngs::OsRng);
            identity::write_secret_key(&op_dir.join("operator.key"), &key).unwrap();
            let peer_listen = SocketAddr::from(([127, 0, 0, 1], ports[3 * i]));
            let api_listen = SocketAddr::from(([127, 0, 0, 1], ports[3 * i + 1]));
            let p2p_listen: libp2p::Multiaddr = if transports == Transports::Quic {
                format!("/ip4/127.0.0.1/udp/{}/quic-v1", udp_ports[i])
            } else {
                format!("/ip4/127.0.0.1/tcp/{}", ports[3 * i + 2])
            }
            .parse()
            .unwrap();
            let peer_id = mim4_node::transport::p2p::peer_id(&key.public());
            let libp2p = transports.libp2p(i);
            let grpc_endpoint = if transports.grpc(i) {
                format!("{scheme}://{peer_listen}")
            } else {
                String::new()
            };
            let p2p_addrs = if libp2p {
                vec![format!("{p2p_listen}/p2p/{peer_id}")]
            } else {
                vec![]
            };
            draft
                .add_member(DraftMember {
                    operator_id: (*id).to_owned(),
                    name: format!("Operator {id}"),
                    country: id[..2].to_uppercase(),
                    roles: vec!["operator".into()],
                    grpc_endpoint,
                    p2p_addrs,
                    status: "active".into(),
                    sectors: SECTORS[i].iter().map(|s| (*s).to_owned()).collect(),
                    keys: vec![DraftKey {
                        public_key: key.public().to_hex(),
                        not_before_ms: 0,
                        not_after_ms: None,
                    }],
                })
                .unwrap();
            let clients_file = op_dir.join("clients.toml");
            credentials.push(
                clients::add(
                    &clients_file,
                    "admin",
                    ClientRole::Admin,
                    None,
                    [i as u8 + 1; 32],
                    0,
                )
                .unwrap(),
            );
            configs.push(Config {
                operator_id: OperatorId::new(*id).unwrap(),
                key_file: op_dir.join("operator.key"),
                data_dir: op_dir.join("data"),
                trust_list: op_dir.join("trust-list.pb"),
                governance_keys: vec![governance.public()],
                governance_threshold: 1,
                clients_file,
                peer_listen,
                api_listen,
                api_remote: false,
                envelope_limits: EnvelopeLimits::default(),
                message_lifetime_ms: limits::MESSAGE_LIFETIME_MS_DEFAULT,
                rulebook_version: "mim4-rulebook-1.0".into(),
                log_filter: "info".into(),
                registry_files: Vec::new(),
                ngsi_ld: None,
                insecure_plaintext,
                p2p_listen: if libp2p { vec![p2p_listen] } else { vec![] },
                prefer: if !transports.grpc(i) {
                    mim4_node::transport::Kind::Libp2p
                } else {
                    mim4_node::transport::Kind::Grpc
                },
                limits: Default::default(),
                controller: Some(mim4_node::config::Controller {
                    name: format!("Operator {id}"),
                    contact: "Data Protection Officer".into(),
                    street_address: "Pohjoisesplanadi 11-13".into(),
                    postal_code: "00170".into(),
                    locality: "Helsinki".into(),
                    country: "FI".into(),
                    email: "dpo@example.org".into(),
                    phone: "+358-9-310-1691".into(),
                    policy_url: "https://example.org/privacy".into(),
                    language: "en".into(),
                }),
            });
            keys.push(key);
        }
        for (name, value_type, source) in CATALOGUE {
            draft
                .attributes
                .push(mim4_node::trust_draft::DraftAttribute {
                    name: (*name).to_owned(),
                    value_type: (*value_type).to_owned(),
                    unit: String::new(),
                    sensitivity: "normal".into(),
                    description: String::new(),
                    sources: vec![(*source).to_owned()],
                });
        }
        for (service, purpose) in SERVICES {
            draft.services.push(mim4_node::trust_draft::DraftService {
                service_id: (*service).to_owned(),
                name: (*service).to_owned(),
                purposes: vec![(*purpose).to_owned()],
            });
        }
        // The income register holds sample data.
        if n > 1 {
            let file = dir.path().join("income-register.json");
            std::fs::write(&file, REGISTRY_JSON).unwrap();
            configs[1].registry_files = vec![file];
        }
        let mut net = Self {
            dir,
            governance,
            keys,
            configs,
            draft,
            nodes: (0..n).map(|_| None).collect(),
            credentials,
        };
        let v1 = net.sign_next(|_| {});
        for config in &net.configs {
            std::fs::write(&config.trust_list, &v1).unwrap();
        }
        net
    }

    /// Applies `edit` to the draft and signs the next version; returns its encoding.
    pub(crate) fn sign_next(&mut self, edit: impl FnOnce(&mut Draft)) -> Vec<u8> {
        edit(&mut self.draft);
        self.draft
            .sign_next(&[&self.governance], now_ms(), 24 * 60 * 60 * 1000)
            .unwrap()
            .encode()
    }

    /// Starts node `i` in this process.
    ///
    /// A restarted node binds the address the trust list names; meanwhile a
    /// parallel test's outgoing connection may hold that port as its
    /// ephemeral one, so a busy port is retried for a while.
    pub(crate) async fn start(&mut self, i: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let handle = loop {
            match mim4_node::start(self.configs[i].clone()).await {
                Ok(handle) => break handle,
                Err(mim4_node::node::Error::Bind { addr, source })
                    if std::time::Instant::now() < deadline =>
                {
                    eprintln!("node {i}: {addr} busy ({source}); retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(mim4_node::node::Error::P2p(e)) if std::time::Instant::now() < deadline => {
                    eprintln!("node {i}: libp2p listener busy ({e}); retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) if is_db_lock(&e.to_string()) && std::time::Instant::now() < deadline => {
                    eprintln!("node {i}: database still locked by its last run ({e}); retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node {i} did not start: {e}"),
            }
        };
        self.nodes[i] = Some(handle);
    }

    /// Opens stopped node `i`'s store offline, once sled has let go of it.
    pub(crate) async fn open_store(&self, i: usize) -> mim4_node::store::Store {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let config = &self.configs[i];
        let key =
            identity::read_storage_key(&identity::storage_key_file(&config.key_file)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match mim4_node::store::Store::open(&config.data_dir, &key) {
                Ok(store) => return store,
                Err(e) if is_db_lock(&e.to_string()) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node {i}'s store does not open: {e}"),
            }
        }
    }

    /// Starts every node.
    pub(crate) async fn start_all(&mut self) {
        for i in 0..self.configs.len() {
            self.start(i).await;
        }
    }

    /// Stops node `i` cleanly.
    pub(crate) async fn stop(&mut self, i: usize) {
        if let Some(handle) = self.nodes[i].take() {
            handle.shutdown().await.unwrap();
        }
    }

    /// A new client of node `i` with `role` (and `service_id` for services).
    pub(crate) async fn client(
        &self,
        i: usize,
        id: &str,
        role: ClientRole,
        service_id: Option<&str>,
    ) -> mim4_sdk::Client {
        let secret: [u8; 32] = rand::random();
        let credential = clients::add(
            &self.configs[i].clients_file,
            id,
            role,
            service_id.map(str::to_owned),
            secret,
            0,
        )
        .unwrap();
        mim4_sdk::Client::connect(&self.api_url(i), &credential)
            .await
            .unwrap()
    }

    /// An admin SDK client of node `i`.
    pub(crate) async fn admin(&self, i: usize) -> mim4_sdk::Client {
        mim4_sdk::Client::connect(&self.api_url(i), &self.credentials[i])
            .await
            .unwrap()
    }

    pub(crate) fn api_url(&self, i: usize) -> String {
        format!("http://{}", self.configs[i].api_listen)
    }

    /// Node `i`'s peer endpoint, as the trust list gives it.
    pub(crate) fn peer_url(&self, i: usize) -> String {
        let scheme = if self.configs[i].insecure_plaintext {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.configs[i].peer_listen)
    }

    /// A client of node `to`'s peer port as node `from` would dial it: over
    /// TLS with the key `from` is configured with now (after a rotation, the
    /// new one), or in plaintext if `to` runs so.
    pub(crate) fn peer_client(&self, from: usize, to: usize) -> OperatorPeerClient<Channel> {
        if self.configs[to].insecure_plaintext {
            let channel = grpc::channel(&self.peer_url(to), &self.id(to), None).unwrap();
            return OperatorPeerClient::new(channel);
        }
        let key = identity::read_secret_key(&self.configs[from].key_file).unwrap();
        self.peer_client_with_key(&self.id(from), &key, to)
    }

    /// A TLS client of node `to`'s peer port that presents a certificate of
    /// `key` (named `name`) and accepts only node `to`'s keys.
    pub(crate) fn peer_client_with_key(
        &self,
        name: &OperatorId,
        key: &SecretKey,
        to: usize,
    ) -> OperatorPeerClient<Channel> {
        let tls = self.peer_tls(name, key, to);
        let channel = grpc::channel(&self.peer_url(to), &self.id(to), Some(&tls)).unwrap();
        OperatorPeerClient::new(channel)
    }

    /// A TLS identity for `key` whose verifiers read running node `i`'s trust list.
    pub(crate) fn peer_tls(&self, name: &OperatorId, key: &SecretKey, i: usize) -> PeerTls {
        let shared = &self.nodes[i].as_ref().expect("node is running").shared;
        // A weak reference: a client kept across a restart must not keep the
        // stopped node's state (and its database lock) alive; it then uses
        // the list of the time it was made.
        let node = Arc::downgrade(shared);
        let then = shared.trust();
        let trust = move || node.upgrade().map_or_else(|| then.clone(), |s| s.trust());
        PeerTls::new(name, key, Arc::new(trust)).unwrap()
    }

    /// Waits until node `i` holds trust-list `version` (`what` names the
    /// wait in the failure), failing after `deadline`.
    pub(crate) async fn until_trust_version(
        &self,
        i: usize,
        version: u64,
        what: &str,
        deadline: Duration,
    ) {
        let client = self.admin(i).await;
        eventually(what, deadline, || {
            let client = client.clone();
            async move { (client.status().await.ok()?.trust_list_version == version).then_some(()) }
        })
        .await;
    }

    pub(crate) fn id(&self, i: usize) -> OperatorId {
        self.configs[i].operator_id.clone()
    }

    /// A valid envelope of `payload` from node `from` to node `to`, signed
    /// with `from`'s key under trust-list version 1, living an hour.
    pub(crate) fn sealed(
        &self,
        from: usize,
        to: usize,
        payload: mim4_node::core::envelope::Payload,
    ) -> Vec<u8> {
        mim4_node::core::delivery::SenderContext {
            me: &self.id(from),
            rulebook_version: "mim4-rulebook-1.0",
            trust_list_version: 1,
            lifetime_ms: 60 * 60 * 1000,
        }
        .envelope(
            mim4_node::core::ids::MessageId::from_bytes(rand::random()),
            self.id(to),
            now_ms(),
            None,
            payload,
        )
        .seal(&self.keys[from])
        .bytes
    }

    pub(crate) async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// The folder of the reliability suites' JSON summaries (README "Reliability
/// suites"): `$CARGO_TARGET_DIR/reliability`, or `target/reliability` of the
/// workspace; created if missing.
pub(crate) fn reliability_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("reliability");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A memo from `from` to `to`, sealed with `key` under trust-list `version`
/// (for benchmarks that send envelopes by hand).
#[allow(dead_code)] // Used by the benches that include this file, not by the tests.
pub(crate) fn sealed_memo(
    from: &OperatorId,
    to: &OperatorId,
    key: &SecretKey,
    version: u64,
    subject: &str,
    text: &str,
) -> Vec<u8> {
    use mim4_node::core::delivery::SenderContext;
    use mim4_node::core::envelope::{Memo, Payload};
    SenderContext {
        me: from,
        rulebook_version: "mim4-rulebook-1.0",
        trust_list_version: version,
        lifetime_ms: 60 * 60 * 1000,
    }
    .envelope(
        mim4_node::core::ids::MessageId::from_bytes(rand::random()),
        to.clone(),
        now_ms(),
        None,
        Payload::Memo(Memo {
            subject: subject.into(),
            text: text.into(),
        }),
    )
    .seal(key)
    .bytes
}

/// Polls `probe` until it returns `Some`, failing after `deadline`.
/// Waits until `client`'s outgoing message `id` is delivered (a verified
/// receipt came back), failing after `deadline`; returns it.
pub(crate) async fn until_delivered(
    client: &mim4_sdk::Client,
    id: mim4_sdk::MessageId,
    deadline: Duration,
) -> mim4_sdk::Outgoing {
    eventually(
        &format!("message {id} delivered"),
        deadline,
        || async move {
            let outgoing = client.outgoing(id).await.ok()?;
            (outgoing.state == mim4_sdk::Delivery::Delivered).then_some(outgoing)
        },
    )
    .await
}

/// sled's directory lock, still held for a moment after a stopped node's
/// last handle went: sled's own IO threads end after the database is dropped.
fn is_db_lock(error: &str) -> bool {
    error.contains("could not acquire lock")
}

pub(crate) async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A libp2p request codec for tests: writes the given bytes as the request
/// (so a test can send a frame the node's own codec would never write), in
/// chunks, and stops writing without failing if the node closes the stream
/// early (as it does after refusing a frame from its header); reads the
/// response with the node's codec.
#[derive(Clone)]
pub(crate) struct RawCodec(mim4_node::transport::p2p::codec::Codec);

#[async_trait::async_trait]
impl libp2p::request_response::Codec for RawCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = pb::PeerResponse;

    async fn read_request<T>(&mut self, _: &Self::Protocol, _: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("the test client serves nothing"))
    }

    async fn read_response<T>(
        &mut self,
        protocol: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<pb::PeerResponse>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        self.0.read_response(protocol, io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt as _;
        for chunk in bytes.chunks(64 * 1024) {
            if io.write_all(chunk).await.is_err() {
                return Ok(());
            }
        }
        let _ = io.close().await;
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: pb::PeerResponse,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Err(std::io::Error::other("the test client serves nothing"))
    }
}

/// A bare libp2p client with `key`: TCP + noise + yamux and the envelope protocol only.
pub(crate) fn raw_client(
    key: libp2p::identity::Keypair,
) -> libp2p::Swarm<libp2p::request_response::Behaviour<RawCodec>> {
    use libp2p::request_response::{self, ProtocolSupport};
    let codec = RawCodec(mim4_node::transport::p2p::codec::Codec {
        request_bytes_max: 4 * 1024 * 1024,
        response_bytes_max: 8 * 1024 * 1024,
    });
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                codec,
                [(
                    mim4_node::transport::p2p::codec::PROTOCOL,
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(256),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Sends `bytes` as one request to `peer` at `addr` and returns the response.
pub(crate) async fn raw_request(
    swarm: &mut libp2p::Swarm<libp2p::request_response::Behaviour<RawCodec>>,
    peer: libp2p::PeerId,
    addr: libp2p::Multiaddr,
    bytes: Vec<u8>,
) -> pb::PeerResponse {
    use futures::StreamExt as _;
    use libp2p::request_response::{Event, Message};
    use libp2p::swarm::SwarmEvent;
    swarm
        .behaviour_mut()
        .send_request_with_addresses(&peer, bytes, vec![addr]);
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(Event::Message {
                    message: Message::Response { response, .. },
                    ..
                }) => return response,
                SwarmEvent::Behaviour(Event::OutboundFailure { error, .. }) => {
                    panic!("request failed: {error}")
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("an answer within 60 s")
}

/// A framed `PeerRequest` as the node's codec writes it.
pub(crate) fn frame(request: &pb::PeerRequest) -> Vec<u8> {
    use prost::Message as _;
    let body = request.encode_to_vec();
    let mut bytes = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// A `Deliver` request for `envelope`.
pub(crate) fn deliver_request(envelope: Vec<u8>) -> pb::PeerRequest {
    pb::PeerRequest {
        kind: Some(pb::peer_request::Kind::Deliver(pb::DeliverRequest {
            envelope,
        })),
    }
}

/// Many requests at once over one libp2p connection: a task owns the client
/// swarm and answers each request with its response (`None` if the stream
/// failed). Ends when every clone is dropped.
#[derive(Clone)]
pub(crate) struct P2pSender {
    requests: tokio::sync::mpsc::Sender<(
        Vec<u8>,
        tokio::sync::oneshot::Sender<Option<pb::PeerResponse>>,
    )>,
}

impl P2pSender {
    /// A sender with `key`'s identity to `peer` at `addr`.
    pub(crate) fn spawn(key: &SecretKey, peer: libp2p::PeerId, addr: libp2p::Multiaddr) -> Self {
        use futures::StreamExt as _;
        use libp2p::request_response::{Event, Message};
        use libp2p::swarm::SwarmEvent;
        let mut swarm = raw_client(mim4_node::transport::p2p::keypair(key).unwrap());
        let (requests, mut incoming) = tokio::sync::mpsc::channel::<(
            Vec<u8>,
            tokio::sync::oneshot::Sender<Option<pb::PeerResponse>>,
        )>(256);
        tokio::spawn(async move {
            let mut pending = std::collections::HashMap::new();
            loop {
                tokio::select! {
                    request = incoming.recv() => {
                        let Some((bytes, reply)) = request else { break };
                        let id = swarm.behaviour_mut().send_request_with_addresses(&peer, bytes, vec![addr.clone()]);
                        pending.insert(id, reply);
                    }
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(Event::Message { message: Message::Response { request_id, response }, .. }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Some(response));
                            }
                        }
                        SwarmEvent::Behaviour(Event::OutboundFailure { request_id, error, .. }) => {
                            eprintln!("libp2p test request failed: {error}");
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(None);
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
        Self { requests }
    }

    /// Delivers `envelope` and returns the node's response.
    pub(crate) async fn deliver(&self, envelope: Vec<u8>) -> Option<pb::PeerResponse> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests
            .send((frame(&deliver_request(envelope)), reply))
            .await
            .ok()?;
        answer.await.ok().flatten()
    }
}
