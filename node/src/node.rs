//! The driver: owns the node's state, runs the servers and the delivery loop,
//! and carries out what the core decides.
//!
//! One message, received: `transport::grpc` hands the bytes to
//! [`Shared::receive`], which verifies them with the core, checks the replay
//! table, applies the payload and records it atomically in sled, flushes,
//! and returns the signed receipt. One message, sent: [`Shared::send`] seals an
//! envelope, stores it in the outbox, flushes, and wakes the delivery loop,
//! which retries with backoff until a valid receipt comes back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng as _, RngCore as _};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, info, info_span, warn, Instrument as _};

use crate::api::clients::Clients;
use crate::config::Config;
use crate::core::delivery::{self, Expected, SenderContext};
use crate::core::envelope::{Envelope, Payload, RejectReason, Rejection, Verifier};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::keys::SecretKey;
use crate::core::outbox::{Backoff, Scheduler};
use crate::core::trust::{MemberStatus, SignedTrustList, TrustListError, VerifiedTrustList};
use crate::limits;
use crate::sources::registry::{LoadError, LoadReport, Registry};
use crate::sources::DataSource;
use crate::store::{self, Outgoing, OutgoingState, Store};
use crate::transport::grpc::PeerClients;
use crate::transport::tls::PeerTls;
use crate::transport::{p2p, PeerError, Peers};
use crate::{api, identity, transport};

pub mod consent;
pub mod exchange;
mod trust_refresh;

use consent::ConsentState;

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key file cannot be used.
    #[error("operator key: {0}")]
    Key(#[from] identity::Error),
    /// The database cannot be opened or written.
    #[error("store: {0}")]
    Store(#[from] store::Error),
    /// The trust list file cannot be read.
    #[error("trust list {path}: {reason}")]
    TrustListFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The trust list does not verify or does not fit this node.
    #[error("trust list: {0}")]
    TrustList(#[from] TrustListError),
    /// This operator is not in the trust list, or its key is not listed.
    #[error("{0}")]
    NotAMember(String),
    /// A listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A server task failed.
    #[error("server failed: {0}")]
    Server(String),
    /// The data source cannot be opened or loaded.
    #[error("data source: {0}")]
    Source(String),
    /// The peer TLS certificate or configuration cannot be made.
    #[error("peer TLS: {0}")]
    Tls(#[from] transport::tls::Error),
    /// The libp2p swarm cannot be set up.
    #[error("libp2p: {0}")]
    P2p(#[from] p2p::Error),
}

/// Why a received envelope was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The envelope failed verification or replay checks.
    #[error("{rejection}")]
    Rejected {
        /// What and why.
        rejection: Rejection,
        /// For a replay: the receipt stored when the message was first applied.
        receipt: Option<Vec<u8>>,
    },
    /// The envelope is valid but its payload cannot be applied.
    #[error("message {message_id} from {sender} cannot be applied: {reason}")]
    Unusable {
        /// Message id.
        message_id: MessageId,
        /// Sender.
        sender: OperatorId,
        /// Why.
        reason: String,
    },
    /// The payload is valid but would take this node over one of
    /// [`limits`]' bounds (`RESOURCE_EXHAUSTED`, with the limit's reason).
    #[error("message {message_id} from {sender} is over a limit: {message}")]
    OverLimit {
        /// Message id.
        message_id: MessageId,
        /// Sender.
        sender: OperatorId,
        /// The limit's stable reason, e.g. `too_many_consents`.
        reason: &'static str,
        /// Text for people.
        message: String,
    },
    /// The node cannot answer now (its data source is down); retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A call asked for something this node does not hold.
    #[error("not found: {0}")]
    NotFound(String),
    /// The node failed to store it; the sender should retry.
    #[error("storage failure, retry later: {0}")]
    Store(#[from] store::Error),
    /// A valid envelope of another member than the one the TLS connection
    /// authenticated: a member delivers only envelopes it signed itself.
    #[error(
        "envelope {message_id} is signed by {sender}, but the TLS connection is \
         authenticated as {peer}; a member sends only its own envelopes"
    )]
    NotFromPeer {
        /// Message id.
        message_id: MessageId,
        /// The envelope's (verified) sender.
        sender: OperatorId,
        /// The member the connection authenticated.
        peer: OperatorId,
    },
}

/// Errors of [`Shared::send`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The recipient is not an active member.
    #[error("{0} is not an active member of the federation")]
    UnknownRecipient(OperatorId),
    /// A node does not send to itself.
    #[error("a node does not send messages to itself")]
    ToSelf,
    /// The envelope would exceed the size limit.
    #[error("message is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The node could not store the message.
    #[error("storage failure: {0}")]
    Store(#[from] store::Error),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The trust list held has expired: the node sends nothing until it has a newer one.
    #[error(
        "this node's trust list expired: version {version} was valid until {valid_until_ms} ms; \
         it sends nothing until it fetches a newer one from a peer or an admin installs one"
    )]
    TrustListExpired {
        /// Version of the expired list.
        version: u64,
        /// End of its validity.
        valid_until_ms: u64,
    },
}

/// Errors of [`Shared::call`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The trust list held has expired: the node calls no one until it has a newer one.
    #[error("{0}")]
    TrustListExpired(String),
    /// The callee is not an active member.
    #[error("{0} is not an active member of the federation")]
    NotAMember(OperatorId),
    /// The transports did not reach the callee, or it refused the call.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The answer does not verify.
    #[error("the answer does not verify: {0}")]
    BadAnswer(Rejection),
    /// A verified envelope, but not the callee's answer to this call.
    #[error("{0} answered with an envelope that does not answer this call")]
    NotTheAnswer(OperatorId),
}

impl CallError {
    /// The callee was not reached or could not answer (on every transport
    /// it offers), as opposed to a verdict on the call itself.
    pub fn is_unreachable(&self) -> bool {
        match self {
            CallError::Peer(PeerError::Unreachable(_)) => true,
            // The peer's own "unavailable" or deadline verdict, or a status
            // its stack produced without a verdict (`Unknown`).
            CallError::Peer(PeerError::Refused { code, .. }) => matches!(
                code,
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
            ),
            _ => false,
        }
    }

    /// The callee refused the call with `code`.
    pub fn is_refused_with(&self, code: Code) -> bool {
        matches!(self, CallError::Peer(PeerError::Refused { code: c, .. }) if *c == code)
    }
}

/// 16 random bytes for a new message, consent or delegation id (the core
/// reads no RNG; the driver supplies it from the operating system).
pub(crate) fn random_id_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A newly stored outgoing message, announced to the delivery loop.
#[derive(Debug)]
struct Enqueued {
    id: MessageId,
    recipient: OperatorId,
    expires_at_ms: u64,
}

/// State shared by the servers and the delivery loop.
#[derive(Debug)]
pub struct Shared {
    config: Config,
    key: SecretKey,
    store: Store,
    /// The trust list in force; shared with the peer TLS verifiers, which
    /// read it at every handshake.
    trust: Arc<RwLock<Arc<VerifiedTrustList>>>,
    clients: Clients,
    /// Clients of both transports (gRPC and libp2p).
    peers: Peers,
    enqueued: mpsc::Sender<Enqueued>,
    started: Instant,
    /// Highest trust-list version offered to each peer, so an older peer gets one update per version.
    offered: Mutex<HashMap<OperatorId, u64>>,
    /// Trust-list fetches running, one per peer at most.
    fetching: Mutex<std::collections::HashSet<OperatorId>>,
    /// Background tasks (trust-list offers and fetches); taken at shutdown.
    tasks: Mutex<Option<JoinSet<()>>>,
    /// The consent decision index and delegation registry.
    consents: RwLock<ConsentState>,
    /// Serialises changes to consent records (one event at a time per node).
    consent_writer: tokio::sync::Mutex<()>,
    /// The source this node answers data requests from.
    source: Arc<dyn DataSource>,
    /// The built-in registry behind `source`, unless the node answers from NGSI-LD.
    registry: Option<Registry>,
    /// Request buckets of peer operators, shared by both transports.
    peer_rate: crate::rate_limit::KeyedLimiter<transport::RateKey>,
    /// Counts of refused requests and withheld attributes, by reason.
    counters: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Why an admin's registry load was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryLoadError {
    /// The node answers from an NGSI-LD broker.
    #[error(
        "this node answers from an NGSI-LD context broker; it has no built-in registry to load"
    )]
    NoRegistry,
    /// The document is not valid registry JSON.
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// The store failed.
    #[error(transparent)]
    Node(#[from] Error),
}

/// A running node. Dropping it does not stop it: call [`NodeHandle::shutdown`].
#[derive(Debug)]
pub struct NodeHandle {
    /// Address of the `OperatorPeer` server.
    pub peer_addr: SocketAddr,
    /// Address of the `OperatorApi` server.
    pub api_addr: SocketAddr,
    /// The libp2p listen addresses (with their actual ports); empty if none are configured.
    pub p2p_addrs: Vec<libp2p::Multiaddr>,
    /// The libp2p PeerId, derived from the operator key.
    pub peer_id: libp2p::PeerId,
    /// The node's state (for in-process tests and tools).
    pub shared: Arc<Shared>,
    tasks: JoinSet<Result<(), Error>>,
    cancel: CancellationToken,
}

impl NodeHandle {
    /// Stops the servers and the delivery loop, and flushes the store.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.cancel.cancel();
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(Error::Server(e.to_string())),
                Ok(Ok(())) => {}
            }
        }
        let background = self.shared.tasks.lock().ok().and_then(|mut t| t.take());
        if let Some(mut background) = background {
            background.shutdown().await;
        }
        self.shared.store.idle().await;
        self.shared.store.flush_blocking()?;
        // The database (and its lock) is released when the last holder of
        // `Shared` is gone: wait for tasks still winding down, so that the
        // node can be opened again at once, and say so if some never end.
        let deadline = Instant::now() + SHUTDOWN_RELEASE_WAIT;
        while Arc::strong_count(&self.shared) > 1 {
            if Instant::now() >= deadline {
                warn!(
                    holders = Arc::strong_count(&self.shared) - 1,
                    "tasks still hold the node's state after shutdown; the database stays open until they end"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        result
    }

    /// Waits until a server task ends (an error) or `cancel` fires.
    pub async fn wait(mut self, stop: CancellationToken) -> Result<(), Error> {
        tokio::select! {
            () = stop.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                let outcome = match joined {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(Error::Server(e.to_string())),
                };
                outcome?;
            }
        }
        self.shutdown().await
    }
}

/// How long [`NodeHandle::shutdown`] waits for the last tasks holding the
/// node's state (connections being closed) before it returns anyway.
const SHUTDOWN_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Starts a node: opens the store, loads the trust list, binds both servers
/// and starts the delivery loop. Returns once both servers listen.
pub async fn start(config: Config) -> Result<NodeHandle, Error> {
    let key = identity::read_secret_key(&config.key_file)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::TrustListFile {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let storage_key = identity::open_storage_key(
        &identity::storage_key_file(&config.key_file),
        &config.data_dir,
    )?;
    let store = Store::open(&config.data_dir, &storage_key)?;
    drop(storage_key);
    let trust = load_trust_list(&config, &store)?;
    check_membership(&config, &key, &trust)?;
    let consents = consent::load(&store, &trust, &config.operator_id)?;
    let (source, registry) = open_source(&config, &store)?;

    let peer_listener = tokio::net::TcpListener::bind(config.peer_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.peer_listen,
            source,
        })?;
    let api_listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.api_listen,
            source,
        })?;
    let peer_addr = local_addr(&peer_listener, config.peer_listen)?;
    let api_addr = local_addr(&api_listener, config.api_listen)?;
    if !api_addr.ip().is_loopback() {
        // Config refuses this unless `[listen] api_remote = true`.
        warn!(%api_addr, "{}", crate::config::API_REMOTE_WARNING);
    }

    let trust = Arc::new(RwLock::new(Arc::new(trust)));
    let tls = peer_tls(&config, &key, &trust)?;
    let trust_source = trust.clone();
    let (p2p, p2p_driver) = p2p::start(
        &key,
        &config.p2p_listen,
        config.envelope_limits.message_bytes_max,
        Arc::new(move || read_trust(&trust_source)),
    )
    .await?;
    let p2p_addrs = p2p.listen_addrs().to_vec();
    let peer_id = p2p.peer_id();

    let cancel = CancellationToken::new();
    let (enqueued_tx, enqueued_rx) = mpsc::channel(limits::OUTBOX_WAKE_QUEUE);
    let shared = Arc::new(Shared {
        peers: Peers {
            grpc: PeerClients::new(config.envelope_limits.message_bytes_max, tls.clone()),
            p2p,
            prefer: config.prefer,
        },
        clients: Clients::new(config.clients_file.clone()),
        peer_rate: crate::rate_limit::KeyedLimiter::new(config.limits.peer_rate),
        config,
        key,
        store,
        trust,
        enqueued: enqueued_tx,
        started: Instant::now(),
        offered: Mutex::new(HashMap::new()),
        fetching: Mutex::new(std::collections::HashSet::new()),
        tasks: Mutex::new(Some(JoinSet::new())),
        consents: RwLock::new(consents),
        consent_writer: tokio::sync::Mutex::new(()),
        source,
        registry,
        counters: Mutex::new(std::collections::BTreeMap::new()),
    });
    let me = shared.config.operator_id.clone();
    info!(operator = %me, %peer_addr, %api_addr, %peer_id, p2p_addrs = ?p2p_addrs, prefer = %shared.config.prefer, trust_list_version = shared.trust().version(), "node started");

    let mut tasks = JoinSet::new();
    tasks.spawn(transport::grpc::serve(
        shared.clone(),
        peer_listener,
        tls,
        cancel.clone(),
    ));
    tasks.spawn(api::serve(shared.clone(), api_listener, cancel.clone()));
    tasks.spawn(
        p2p_driver
            .run(shared.clone(), cancel.clone())
            .instrument(info_span!("p2p", operator = %me)),
    );
    let driver = DeliveryLoop::new(shared.clone(), enqueued_rx)?;
    tasks.spawn(
        driver
            .run(cancel.clone())
            .instrument(info_span!("outbox", operator = %me)),
    );
    tasks.spawn(prune_loop(shared.clone(), cancel.clone()));
    tasks.spawn(expiry_loop(shared.clone(), cancel.clone()));
    tasks.spawn(repush_loop(shared.clone(), cancel.clone()));
    tasks.spawn(trust_refresh::run(shared.clone(), cancel.clone()));
    Ok(NodeHandle {
        peer_addr,
        api_addr,
        p2p_addrs,
        peer_id,
        shared,
        tasks,
        cancel,
    })
}

/// The peer TLS identity made from the operator key, whose verifiers read
/// `trust` at every handshake; `None`, loudly, with `insecure_plaintext`.
fn peer_tls(
    config: &Config,
    key: &SecretKey,
    trust: &Arc<RwLock<Arc<VerifiedTrustList>>>,
) -> Result<Option<Arc<PeerTls>>, Error> {
    let me = &config.operator_id;
    let endpoint = read_trust(trust)
        .member(me)
        .map(|m| m.grpc_endpoint.clone())
        .unwrap_or_default();
    let listed_tls = transport::grpc::parse_endpoint(&endpoint).map(|e| e.tls);
    if config.insecure_plaintext {
        warn!(
            operator = %me,
            "[transport] insecure_plaintext = true: peer traffic is NEITHER ENCRYPTED NOR \
             AUTHENTICATED by TLS; for development federations only, never with real data"
        );
        if listed_tls != Ok(false) {
            warn!(%endpoint, "this operator's endpoint in the trust list is not http://; TLS peers cannot reach a plaintext node");
        }
        return Ok(None);
    }
    if listed_tls != Ok(true) && !endpoint.is_empty() {
        warn!(%endpoint, "this operator's endpoint in the trust list is not https://; peers will not reach it over TLS");
    }
    let source = trust.clone();
    let tls = PeerTls::new(me, key, Arc::new(move || read_trust(&source)))?;
    info!(key_id = %key.public().key_id(), "peer port serves TLS 1.3 with a certificate of the operator key");
    Ok(Some(Arc::new(tls)))
}

/// The list in `trust`, also after a writer panicked (a list is replaced whole).
fn read_trust(trust: &RwLock<Arc<VerifiedTrustList>>) -> Arc<VerifiedTrustList> {
    match trust.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The built-in registry in the node's database, (re)loaded from the JSON
/// files the configuration names; loading is an idempotent upsert.
fn open_source(
    config: &Config,
    store: &Store,
) -> Result<(Arc<dyn DataSource>, Option<Registry>), Error> {
    if let Some(ngsi) = &config.ngsi_ld {
        return Ok((open_ngsi_ld(ngsi)?, None));
    }
    let registry = Registry::new(store.registry_tree()?, store.vault().clone());
    for path in &config.registry_files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Source(format!("{}: {e}", path.display())))?;
        let report = registry
            .load_json(&text)
            .map_err(|e| Error::Source(format!("{}: {e}", path.display())))?;
        info!(file = %path.display(), ?report, "registry data loaded");
    }
    store.flush_blocking()?;
    Ok((Arc::new(registry.clone()), Some(registry)))
}

/// The NGSI-LD adapter configured in `[ngsi_ld]`.
fn open_ngsi_ld(config: &crate::config::NgsiLdConfig) -> Result<Arc<dyn DataSource>, Error> {
    use crate::core::consent::Attribute;
    use crate::sources::ngsi_ld::{self, Mapping, NgsiLdSource, SubjectKey};
    let bad = |e: &dyn std::fmt::Display| Error::Source(format!("[ngsi_ld]: {e}"));
    let mut mapping = Mapping::new(
        &config.entity_type,
        SubjectKey::Attribute(config.subject_attribute.clone()),
    )
    .map_err(|e| bad(&e))?;
    for (attribute, name) in &config.attributes {
        let attribute = Attribute::new(attribute.clone()).map_err(|e| bad(&e))?;
        mapping = mapping
            .with_attribute(attribute, name)
            .map_err(|e| bad(&e))?;
    }
    let source = NgsiLdSource::new(ngsi_ld::Config::new(config.base_url.clone(), mapping))
        .map_err(|e| bad(&e))?;
    info!(base_url = %config.base_url, "answering data requests from an NGSI-LD broker");
    Ok(Arc::new(source))
}

fn local_addr(listener: &tokio::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr, Error> {
    listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })
}

/// The newest of: the list stored in the database, the list in the file.
/// Each must verify against the configured governance keys; the stored list
/// counts only when it is newer (the file may be an old copy after an update).
fn load_trust_list(config: &Config, store: &Store) -> Result<VerifiedTrustList, Error> {
    let file_error = |reason: String| Error::TrustListFile {
        path: config.trust_list.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(&config.trust_list).map_err(|e| file_error(e.to_string()))?;
    let signed = SignedTrustList::decode(&bytes)?;
    let from_file = VerifiedTrustList::verify_with_anchor(
        signed,
        &config.governance_keys,
        config.governance_threshold,
    )?;
    let stored = match store.trust_list()? {
        Some(bytes) => {
            // The stored list was verified before it was stored; verify again
            // after reading it back (paired check) against the file's list.
            let signed = SignedTrustList::decode(&bytes)?;
            match from_file.check_update(signed, 0) {
                Ok(newer) => Some(newer),
                Err(TrustListError::NotNewer { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    let list = stored.unwrap_or(from_file);
    store.set_trust_list(&list.signed().encode())?;
    store.flush_blocking()?;
    Ok(list)
}

fn check_membership(
    config: &Config,
    key: &SecretKey,
    trust: &VerifiedTrustList,
) -> Result<(), Error> {
    let me = &config.operator_id;
    let member = trust.member(me).ok_or_else(|| {
        Error::NotAMember(format!(
            "operator {me} is not in trust list version {}; ask governance to add it \
             (mim4-node trust add-member) and install the signed list",
            trust.version()
        ))
    })?;
    let Some(listed) = member.key(&key.public().key_id()) else {
        return Err(Error::NotAMember(format!(
            "the key in {} (id {}) is not one of {me}'s keys in trust list version {}",
            config.key_file.display(),
            key.public().key_id(),
            trust.version()
        )));
    };
    if !listed.is_valid_at(now_ms()) {
        return Err(Error::NotAMember(format!(
            "the key in {} (id {}) is outside its validity window in trust list version {} \
             (from {} ms until {}); peers would refuse every message: switch key_file to \
             {me}'s current key",
            config.key_file.display(),
            key.public().key_id(),
            trust.version(),
            listed.not_before_ms,
            listed
                .not_after_ms
                .map_or("no end".to_owned(), |t| format!("{t} ms")),
        )));
    }
    if member.status != MemberStatus::Active {
        warn!(operator = %me, status = member.status.as_str(), "this operator is not active in the trust list; peers will refuse its messages");
    }
    Ok(())
}

impl Shared {
    /// This node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's operator id.
    pub fn operator_id(&self) -> &OperatorId {
        &self.config.operator_id
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The API credential table.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The request buckets of peer operators (both transports take from them).
    pub(crate) fn peer_rate(&self) -> &crate::rate_limit::KeyedLimiter<transport::RateKey> {
        &self.peer_rate
    }

    /// The libp2p swarm's handle.
    pub fn p2p(&self) -> &p2p::P2p {
        &self.peers.p2p
    }

    /// The trust list in force.
    pub fn trust(&self) -> Arc<VerifiedTrustList> {
        read_trust(&self.trust)
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A verifier of envelopes addressed to this node under `trust`.
    fn verifier<'a>(&'a self, trust: &'a VerifiedTrustList) -> Verifier<'a> {
        Verifier {
            me: &self.config.operator_id,
            trust,
            limits: self.config.envelope_limits,
        }
    }

    fn sender_context(&self, trust_list_version: u64) -> SenderContext<'_> {
        SenderContext {
            me: &self.config.operator_id,
            rulebook_version: &self.config.rulebook_version,
            trust_list_version,
            lifetime_ms: self.config.message_lifetime_ms,
        }
    }

    /// Verifies, applies and durably records a received envelope, and returns
    /// the encoded signed receipt. Cancel-safe up to the flush: if the caller
    /// goes away after the write, the write is still flushed by the next one.
    ///
    /// `peer` is the member the TLS connection authenticated (`None` only in
    /// plaintext mode); an envelope signed by anyone else is refused.
    pub async fn receive(
        self: &Arc<Self>,
        bytes: &[u8],
        peer: Option<&OperatorId>,
    ) -> Result<Vec<u8>, Refusal> {
        let now = now_ms();
        let trust = self.trust();
        let verifier = self.verifier(&trust);
        let verified = verifier.verify(bytes, now).map_err(|rejection| {
            warn!(message_id = ?rejection.message_id.map(|id| id.to_string()), sender = ?rejection.sender.as_ref().map(|s| s.to_string()), reason = %rejection.reason, "envelope refused");
            Refusal::Rejected {
                rejection,
                receipt: None,
            }
        })?;
        let envelope = verified.envelope();
        check_sent_by_peer(envelope.message_id, &envelope.sender, peer)?;
        let span = info_span!("receive", message_id = %envelope.message_id, sender = %envelope.sender, kind = envelope.payload.kind());
        let _entered = span.enter();
        let replay = |reason: RejectReason, receipt: Option<Vec<u8>>| {
            warn!(%reason, "envelope refused");
            Refusal::Rejected {
                rejection: Rejection {
                    message_id: Some(envelope.message_id),
                    sender: Some(envelope.sender.clone()),
                    reason,
                },
                receipt,
            }
        };
        let prior = self.store.applied(&envelope.message_id)?;
        if let Err(reason) = delivery::check_replay(&verified, prior.as_ref().map(|(a, _)| a)) {
            let receipt = matches!(reason, RejectReason::Replayed { .. })
                .then(|| prior.map(|(_, r)| r))
                .flatten();
            #[cfg(not(feature = "broken-ack-before-flush"))]
            if receipt.is_some() {
                // The first copy's write may still wait for its flush (a
                // retry or a duplicate arriving meanwhile): its receipt is an
                // acknowledgement, so it goes out only once that write is
                // durable. Found by the simulation (core/tests/sim.rs, seed 27).
                self.store.durable().await?;
            }
            return Err(replay(reason, receipt));
        }

        // Apply the payload (deciding only; the write happens below, atomically).
        let mut new_trust = None;
        match &envelope.payload {
            Payload::Memo(_) => {}
            Payload::Receipt(_) => {
                return Err(Refusal::Unusable {
                    message_id: envelope.message_id,
                    sender: envelope.sender.clone(),
                    reason: "receipts travel in Deliver responses, not as messages".into(),
                })
            }
            Payload::ConsentOffer(_) | Payload::ConsentRecord(_) => {
                // Idempotent effects (a repeated offer or an older log change
                // nothing), written before the replay entry and made durable
                // by the same flush.
                if let Err(error) = self
                    .apply_consent_payload(&envelope.sender, &envelope.payload)
                    .await
                {
                    warn!(%error, "consent notice refused");
                    return Err(notice_refusal(envelope, error));
                }
            }
            Payload::ConsentStatusQuery(_)
            | Payload::ConsentStatusAnswer(_)
            | Payload::DataRequest(_)
            | Payload::DataResponse(_) => {
                return Err(Refusal::Unusable {
                    message_id: envelope.message_id,
                    sender: envelope.sender.clone(),
                    reason: "status queries and data requests are calls, not notices".into(),
                })
            }
            Payload::TrustListUpdate(signed) => match trust.check_update(signed.clone(), now) {
                Ok(newer) => new_trust = Some(newer),
                Err(TrustListError::NotNewer { current, got }) => {
                    debug!(
                        current,
                        got, "trust-list update not newer; acknowledged without effect"
                    );
                }
                Err(e) => {
                    return Err(Refusal::Unusable {
                        message_id: envelope.message_id,
                        sender: envelope.sender.clone(),
                        reason: format!("trust-list update refused: {e}"),
                    })
                }
            },
        }

        let receipt = self
            .sender_context(trust.version())
            .receipt(MessageId::from_bytes(random_id_bytes()), &verified, now)
            .seal(&self.key);
        let recorded = self.store.record_applied(store::AppliedMessage {
            message_id: envelope.message_id,
            sender: &envelope.sender,
            body_sha256: verified.body_sha256(),
            expires_at_ms: envelope.expires_at_ms,
            applied_at_ms: now,
            envelope: bytes,
            receipt: &receipt.bytes,
            new_trust_list: new_trust.as_ref().map(|t| t.signed().encode()).as_deref(),
            subject: envelope.payload.subject().as_ref(),
        })?;
        if recorded.is_none() {
            // A concurrent copy of the same message won the race; answer as a
            // replay, once the winner's write is durable (see above).
            #[cfg(not(feature = "broken-ack-before-flush"))]
            self.store.durable().await?;
            let stored = self.store.applied(&envelope.message_id)?;
            let first = stored.as_ref().map_or(now, |(a, _)| a.applied_at_ms);
            return Err(replay(
                RejectReason::Replayed {
                    first_applied_at_ms: first,
                },
                stored.map(|(_, r)| r),
            ));
        }
        // The test-only `broken-ack-before-flush` feature answers before the
        // write is durable, so the crash loop can show that it catches the bug.
        #[cfg(not(feature = "broken-ack-before-flush"))]
        self.store.durable().await?;
        info!("applied");

        if let Some(newer) = new_trust {
            self.install_trust(newer);
        }
        self.reconcile_trust_version(&envelope.sender, envelope.trust_list_version);
        Ok(receipt.bytes)
    }

    /// Puts a verified (and stored) trust list in force.
    fn install_trust(&self, newer: VerifiedTrustList) {
        let version = newer.version();
        {
            let mut guard = match self.trust.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            // A refresh and a pushed update may race: never step back.
            if guard.version() >= version {
                return;
            }
            *guard = Arc::new(newer);
        }
        // Connections were authenticated under the old list: dial afresh.
        self.peers.grpc.forget_all();
        info!(version, "trust list updated");
    }

    /// Loads registry JSON (admin API): parsed and checked whole, written in
    /// one batch, and flushed before this returns.
    pub async fn load_registry(&self, json: String) -> Result<LoadReport, RegistryLoadError> {
        let registry = self.registry.clone().ok_or(RegistryLoadError::NoRegistry)?;
        let report = tokio::task::spawn_blocking(move || registry.load_json(&json))
            .await
            .map_err(|e| Error::Source(format!("registry load task: {e}")))??;
        self.store.durable().await.map_err(Error::from)?;
        Ok(report)
    }

    /// Installs a newer signed trust list (admin API) and offers it to every peer.
    pub async fn install_trust_list(self: &Arc<Self>, bytes: &[u8]) -> Result<u64, Error> {
        let signed = SignedTrustList::decode(bytes)?;
        let newer = self.trust().check_update(signed, now_ms())?;
        self.store.set_trust_list(&newer.signed().encode())?;
        self.store.durable().await?;
        let version = newer.version();
        self.install_trust(newer);
        let peers: Vec<OperatorId> = self
            .trust()
            .list()
            .members
            .iter()
            // Suspended members get the list too, so they learn of their own status.
            .filter(|m| m.status != MemberStatus::Revoked && &m.operator_id != self.operator_id())
            .map(|m| m.operator_id.clone())
            .collect();
        for peer in peers {
            self.offer_trust_list(peer).await;
        }
        Ok(version)
    }

    async fn offer_trust_list(self: &Arc<Self>, peer: OperatorId) {
        let trust = self.trust();
        let version = trust.version();
        {
            let Ok(mut offered) = self.offered.lock() else {
                return;
            };
            if offered.get(&peer).is_some_and(|&v| v >= version) {
                return;
            }
            offered.insert(peer.clone(), version);
        }
        let payload = Payload::TrustListUpdate(trust.signed().clone());
        match self.send(peer.clone(), payload).await {
            Ok(id) => info!(%peer, version, message_id = %id, "offered trust list"),
            Err(e) => warn!(%peer, version, error = %e, "could not offer trust list"),
        }
    }

    /// Compares a peer's trust-list version with ours: offer ours to an older
    /// peer, fetch from a newer one.
    pub(crate) fn reconcile_trust_version(self: &Arc<Self>, peer: &OperatorId, peer_version: u64) {
        let ours = self.trust().version();
        if peer_version == ours {
            return;
        }
        let Ok(mut guard) = self.tasks.lock() else {
            return;
        };
        // `None` once shutdown has taken the set: start nothing new.
        let Some(set) = guard.as_mut() else {
            return;
        };
        let shared = self.clone();
        let peer = peer.clone();
        if peer_version < ours {
            set.spawn(async move { shared.offer_trust_list(peer).await });
        } else {
            let started = self
                .fetching
                .lock()
                .map(|mut f| f.insert(peer.clone()))
                .unwrap_or(false);
            if started {
                set.spawn(async move {
                    if let Err(e) = shared.fetch_trust_list(&peer).await {
                        warn!(%peer, error = %e, "trust-list fetch failed");
                    }
                    if let Ok(mut f) = shared.fetching.lock() {
                        f.remove(&peer);
                    }
                });
            }
        }
        // Reap finished background tasks so the set stays small.
        while set.try_join_next().is_some() {}
    }

    /// Fetches `peer`'s trust list and installs it if it is a valid update:
    /// `Ok(Some(version))` when installed, `Ok(None)` when not newer (or
    /// refused, which is logged here), `Err` when the fetch itself failed.
    async fn fetch_trust_list(self: &Arc<Self>, peer: &OperatorId) -> Result<Option<u64>, String> {
        let Some(member) = self.trust().member(peer).cloned() else {
            return Err(format!("{peer} is not in the trust list"));
        };
        let bytes = self
            .peers
            .fetch_trust_list(&member)
            .await
            .map_err(|e| e.to_string())?;
        let result = async {
            let signed = SignedTrustList::decode(&bytes)?;
            let newer = self.trust().check_update(signed, now_ms())?;
            self.store.set_trust_list(&newer.signed().encode())?;
            self.store.durable().await?;
            Ok::<_, Error>(newer)
        }
        .await;
        match result {
            Ok(newer) => {
                let version = newer.version();
                self.install_trust(newer);
                Ok(Some(version))
            }
            Err(Error::TrustList(TrustListError::NotNewer { .. })) => Ok(None),
            Err(e) => {
                warn!(%peer, error = %e, "trust list fetched from peer refused");
                Ok(None)
            }
        }
    }

    /// Seals a message to `recipient`, stores it durably in the outbox and
    /// hands it to the delivery loop. Returns once it is durable.
    pub async fn send(
        self: &Arc<Self>,
        recipient: OperatorId,
        payload: Payload,
    ) -> Result<MessageId, SendError> {
        if &recipient == self.operator_id() {
            return Err(SendError::ToSelf);
        }
        let trust = self.trust();
        let now = now_ms();
        if !trust.is_current(now) {
            return Err(SendError::TrustListExpired {
                version: trust.version(),
                valid_until_ms: trust.list().valid_until_ms,
            });
        }
        // Notices go to active members; a trust-list update also reaches suspended ones.
        let reachable = |status| match &payload {
            Payload::TrustListUpdate(_) => status != MemberStatus::Revoked,
            _ => status == MemberStatus::Active,
        };
        if !trust
            .member(&recipient)
            .is_some_and(|m| reachable(m.status))
        {
            return Err(SendError::UnknownRecipient(recipient));
        }
        let subject = payload.subject();
        let envelope = self.sender_context(trust.version()).envelope(
            MessageId::from_bytes(random_id_bytes()),
            recipient.clone(),
            now,
            None,
            payload,
        );
        let sealed = envelope.seal(&self.key);
        if sealed.bytes.len() > self.config.envelope_limits.message_bytes_max {
            return Err(SendError::TooLarge {
                size: sealed.bytes.len(),
                max: self.config.envelope_limits.message_bytes_max,
            });
        }
        let outgoing = Outgoing {
            recipient: recipient.clone(),
            envelope_sha256: sha256(&sealed.bytes),
            envelope: sealed.bytes,
            body_sha256: sealed.body_sha256,
            expires_at_ms: envelope.expires_at_ms,
            state: OutgoingState::Pending,
            attempts: 0,
            last_error: None,
            receipt: None,
        };
        self.store
            .enqueue(sealed.message_id, &outgoing, subject.as_ref())?;
        self.store.durable().await?;
        debug!(message_id = %sealed.message_id, %recipient, "stored in outbox");
        self.enqueued
            .send(Enqueued {
                id: sealed.message_id,
                recipient,
                expires_at_ms: envelope.expires_at_ms,
            })
            .await
            .map_err(|_| SendError::ShuttingDown)?;
        Ok(sealed.message_id)
    }

    /// Sends a synchronous request to `to` and returns its verified answer.
    pub async fn call(
        self: &Arc<Self>,
        to: OperatorId,
        payload: Payload,
    ) -> Result<Payload, CallError> {
        let trust = self.trust();
        if !trust.is_current(now_ms()) {
            return Err(CallError::TrustListExpired(trust_expired_message(&trust)));
        }
        let member = trust
            .member(&to)
            .filter(|m| m.status == MemberStatus::Active)
            .ok_or_else(|| CallError::NotAMember(to.clone()))?;
        let request_id = MessageId::from_bytes(random_id_bytes());
        let sealed = self
            .sender_context(trust.version())
            .envelope(request_id, to.clone(), now_ms(), None, payload)
            .seal(&self.key);
        let answer = self.peers.call(member, sealed.bytes).await?;
        let verified = self
            .verifier(&trust)
            .verify(&answer, now_ms())
            .map_err(CallError::BadAnswer)?;
        let envelope = verified.into_envelope();
        if envelope.sender != to || envelope.in_reply_to != Some(request_id) {
            return Err(CallError::NotTheAnswer(to));
        }
        Ok(envelope.payload)
    }

    /// Answers a call: verifies the request (calls read and change nothing, so
    /// no replay entry is kept) and returns the signed answer.
    /// `peer` is as for [`Shared::receive`].
    pub async fn answer_call(
        self: &Arc<Self>,
        bytes: &[u8],
        peer: Option<&OperatorId>,
    ) -> Result<Vec<u8>, Refusal> {
        let trust = self.trust();
        let verifier = self.verifier(&trust);
        let verified = verifier.verify(bytes, now_ms()).map_err(|rejection| {
            warn!(reason = %rejection.reason, "call refused");
            Refusal::Rejected {
                rejection,
                receipt: None,
            }
        })?;
        let request = verified.into_envelope();
        check_sent_by_peer(request.message_id, &request.sender, peer)?;
        let unusable = |reason: String| Refusal::Unusable {
            message_id: request.message_id,
            sender: request.sender.clone(),
            reason,
        };
        let answer = match &request.payload {
            Payload::ConsentStatusQuery(id) => {
                self.answer_status_query(id).map_err(Refusal::NotFound)?
            }
            Payload::DataRequest(data_request) => {
                match self
                    .serve_data_request(&request.sender, data_request.clone())
                    .await
                {
                    Ok(response) => Payload::DataResponse(response),
                    Err(exchange::ExchangeError::Invalid(e)) => {
                        return Err(unusable(e.to_string()))
                    }
                    Err(exchange::ExchangeError::Source(e)) => {
                        return Err(Refusal::Unavailable(e.to_string()))
                    }
                    Err(exchange::ExchangeError::Store(e)) => return Err(Refusal::Store(e)),
                }
            }
            other => return Err(unusable(format!("a {} is not a call", other.kind()))),
        };
        let sealed = self
            .sender_context(trust.version())
            .envelope(
                MessageId::from_bytes(random_id_bytes()),
                request.sender.clone(),
                now_ms(),
                Some(request.message_id),
                answer,
            )
            .seal(&self.key);
        Ok(sealed.bytes)
    }

    /// One delivery attempt: send the stored bytes, check the receipt, mark delivered.
    async fn deliver_once(self: Arc<Self>, id: MessageId) -> Result<(), String> {
        let outgoing = self.store.outgoing(&id).map_err(|e| e.to_string())?;
        let Some(outgoing) = outgoing else {
            // Gone with the erasure of the citizen it was about: nothing to send.
            debug!(message_id = %id, "no longer in the outbox (its subject was erased)");
            return Ok(());
        };
        if outgoing.state != OutgoingState::Pending {
            return Ok(());
        }
        let trust = self.trust();
        if !trust.is_current(now_ms()) {
            // Kept in the outbox, retried with backoff once a newer list is in force.
            return Err(trust_expired_message(&trust));
        }
        let member = trust
            .member(&outgoing.recipient)
            .ok_or_else(|| format!("{} is no longer in the trust list", outgoing.recipient))?;
        let receipt = self
            .peers
            .deliver(member, outgoing.envelope.clone())
            .await
            .map_err(|error: PeerError| {
                let error = error.to_string();
                // Over TLS a peer refuses a suspended member at the handshake,
                // before any reason can travel back: name the likely cause.
                match trust.member(self.operator_id()).map(|m| m.status) {
                    Some(MemberStatus::Active) => error,
                    Some(status) => format!(
                        "{error} (this operator is {} in trust list version {}, so peers refuse it)",
                        status.as_str(),
                        trust.version()
                    ),
                    None => format!(
                        "{error} (this operator is not in trust list version {})",
                        trust.version()
                    ),
                }
            })?;
        let expected = Expected {
            message_id: id,
            recipient: &outgoing.recipient,
            body_sha256: outgoing.body_sha256,
        };
        let (verified, _) = delivery::check_receipt(
            &self.config.operator_id,
            &trust,
            self.config.envelope_limits,
            &receipt,
            &expected,
            now_ms(),
        )
        .map_err(|e| e.to_string())?;
        self.store
            .update_outgoing(&id, |o| {
                o.state = OutgoingState::Delivered;
                o.attempts = o.attempts.saturating_add(1);
                o.receipt = Some(receipt.clone());
                o.last_error = None;
            })
            .map_err(|e| e.to_string())?;
        info!(message_id = %id, recipient = %outgoing.recipient, "delivered; receipt verified");
        self.reconcile_trust_version(&outgoing.recipient, verified.envelope().trust_list_version);
        Ok(())
    }
}

/// Why nothing goes out under an expired list, naming the list.
fn trust_expired_message(trust: &VerifiedTrustList) -> String {
    format!(
        "trust_list_expired: this node's trust list version {} was valid until {} ms; \
         nothing is sent until a newer one is in force",
        trust.version(),
        trust.list().valid_until_ms
    )
}

/// Why a consent notice was not applied, as the peer is told: over a limit
/// with the limit's reason, a storage failure as one (the sender retries),
/// anything else as unusable.
fn notice_refusal(envelope: &Envelope, error: consent::ConsentError) -> Refusal {
    if let Some(reason) = error.limit_reason() {
        return Refusal::OverLimit {
            message_id: envelope.message_id,
            sender: envelope.sender.clone(),
            reason,
            message: error.to_string(),
        };
    }
    match error {
        consent::ConsentError::Store(e) => Refusal::Store(e),
        other => Refusal::Unusable {
            message_id: envelope.message_id,
            sender: envelope.sender.clone(),
            reason: other.to_string(),
        },
    }
}

/// Refuses a verified envelope whose sender is not `peer`, the member the TLS
/// connection authenticated (no check in plaintext mode, where `peer` is `None`).
fn check_sent_by_peer(
    message_id: MessageId,
    sender: &OperatorId,
    peer: Option<&OperatorId>,
) -> Result<(), Refusal> {
    match peer {
        Some(peer) if peer != sender => {
            warn!(%message_id, %sender, %peer, "envelope refused: not signed by the TLS peer");
            Err(Refusal::NotFromPeer {
                message_id,
                sender: sender.clone(),
                peer: peer.clone(),
            })
        }
        _ => Ok(()),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Runs the outbox: starts attempts when due, records outcomes, expires the undeliverable.
struct DeliveryLoop {
    shared: Arc<Shared>,
    scheduler: Scheduler,
    enqueued: mpsc::Receiver<Enqueued>,
    attempts: JoinSet<(MessageId, Result<(), String>)>,
}

impl DeliveryLoop {
    fn new(shared: Arc<Shared>, enqueued: mpsc::Receiver<Enqueued>) -> Result<Self, Error> {
        let mut scheduler = Scheduler::new(
            Backoff {
                initial_ms: limits::RETRY_DELAY_MS_INITIAL,
                max_ms: limits::RETRY_DELAY_MS_MAX,
            },
            limits::IN_FLIGHT_PER_PEER_MAX,
            limits::IN_FLIGHT_TOTAL_MAX,
        );
        let pending = shared.store.pending()?;
        if !pending.is_empty() {
            info!(
                count = pending.len(),
                "resuming delivery of pending messages"
            );
        }
        let now = now_ms();
        for (id, outgoing) in pending {
            scheduler.handle_enqueued(
                id,
                outgoing.recipient,
                outgoing.expires_at_ms,
                outgoing.attempts,
                now,
            );
        }
        Ok(Self {
            shared,
            scheduler,
            enqueued,
            attempts: JoinSet::new(),
        })
    }

    async fn run(mut self, cancel: CancellationToken) -> Result<(), Error> {
        loop {
            let now = now_ms();
            while let Some(id) = self.scheduler.poll_expired(now) {
                warn!(message_id = %id, "message expired before a receipt came back");
                self.shared.store.update_outgoing(&id, |o| {
                    o.state = OutgoingState::Expired;
                })?;
            }
            while let Some((id, recipient)) = self.scheduler.poll_due(now) {
                let shared = self.shared.clone();
                self.attempts.spawn(
                    async move {
                        let timeout = Duration::from_millis(limits::DELIVERY_TIMEOUT_MS);
                        let outcome =
                            match tokio::time::timeout(timeout, shared.deliver_once(id)).await {
                                Ok(outcome) => outcome,
                                Err(_) => Err(format!(
                                    "no answer within {} ms",
                                    limits::DELIVERY_TIMEOUT_MS
                                )),
                            };
                        (id, outcome)
                    }
                    .instrument(info_span!("deliver", message_id = %id, %recipient)),
                );
            }
            let sleep_ms = self
                .scheduler
                .poll_timeout()
                .map_or(60_000, |t| t.saturating_sub(now).max(1));
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(event) = self.enqueued.recv() => {
                    self.scheduler.handle_enqueued(event.id, event.recipient, event.expires_at_ms, 0, now_ms());
                }
                Some(joined) = self.attempts.join_next() => {
                    match joined {
                        Ok((id, Ok(()))) => self.scheduler.handle_attempt_succeeded(id),
                        Ok((id, Err(error))) => {
                            let jitter: f64 = rand::thread_rng().gen();
                            let attempts = self.scheduler.handle_attempt_failed(id, now_ms(), jitter);
                            debug!(message_id = %id, attempts, %error, "delivery attempt failed; will retry");
                            self.shared.store.update_outgoing(&id, |o| {
                                o.attempts = attempts;
                                o.last_error = Some(error.clone());
                            })?;
                        }
                        Err(e) => warn!(error = %e, "delivery task failed"),
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            }
        }
        self.attempts.shutdown().await;
        Ok(())
    }
}

/// Once a second, records the expiry of consents this node is home of whose
/// validity ended, so every party is told. Decisions never wait for this:
/// every copy denies from `not_after` on by itself.
async fn expiry_loop(shared: Arc<Shared>, cancel: CancellationToken) -> Result<(), Error> {
    const BATCH: usize = 256;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let recorded = shared.expire_due(now_ms(), BATCH).await;
        if recorded > 0 {
            info!(
                recorded,
                "consent expiries recorded and pushed to every party"
            );
        }
    }
}

/// Pushes consent records again to parties that lack their latest version:
/// once at start (a crash may have come between storing a log and queuing its
/// pushes), then every `REPUSH_EVERY` (pushes that expired while a party was away).
async fn repush_loop(shared: Arc<Shared>, cancel: CancellationToken) -> Result<(), Error> {
    const REPUSH_EVERY: Duration = Duration::from_secs(300);
    loop {
        match shared.repush_lagging().await {
            Ok(0) => {}
            Ok(queued) => info!(
                queued,
                "consent records pushed again to parties that lacked them"
            ),
            Err(e) => warn!(error = %e, "could not scan consent records for lagging parties"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(REPUSH_EVERY) => {}
        }
    }
}

/// Deletes replay-table entries whose messages have expired (plus the clock
/// skew), in bounded batches, once a minute.
async fn prune_loop(shared: Arc<Shared>, cancel: CancellationToken) -> Result<(), Error> {
    const BATCH: usize = 10_000;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let before = now_ms().saturating_sub(shared.config.envelope_limits.clock_skew_ms_max);
        let pruned = shared.store.prune_seen(before, BATCH)?;
        if pruned > 0 {
            debug!(pruned, "pruned expired message ids from the replay window");
        }
    }
}
