//! Starting a node: opening the key, the store, the trust list and the data
//! source, binding the peer and API ports and the libp2p swarm, and spawning
//! the servers and loops, all owned by the [`NodeHandle`] that stops them.
//!
//! Boot sits above everything it joins (the driver, the transports, the API),
//! so none of those imports another's startup code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument as _};

use crate::api::{self, clients::Clients};
use crate::clock::now_ms;
use crate::config::Config;
use crate::core::keys::SecretKey;
use crate::core::trust::{MemberStatus, SignedTrustList, TrustListError, VerifiedTrustList};
use crate::identity;
use crate::node::{self, Error, Node, Parts, TrustKeeper};
use crate::sources::registry::Registry;
use crate::sources::DataSource;
use crate::store::Store;
use crate::transport::tls::{PeerTls, TrustSource};
use crate::transport::{self, grpc, p2p};

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
    pub shared: Arc<Node>,
    tasks: JoinSet<Result<(), Error>>,
    cancel: CancellationToken,
}

impl NodeHandle {
    /// Stops the servers, the libp2p swarm and every loop, waits for each to
    /// end (they are all in this handle's task set, and the node's own
    /// background work in [`Node::close`]), and flushes the store.
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
        self.shared.close().await?;
        if Arc::strong_count(&self.shared) > 1 {
            // Only a caller's own clone can be left: every task is joined.
            warn!(
                holders = Arc::strong_count(&self.shared) - 1,
                "the node's state is still held outside its tasks; the database stays open until it is dropped"
            );
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

/// Starts a node: opens the store, loads the trust list, binds both servers
/// and the libp2p swarm, and starts every loop. Returns once all listen.
pub async fn start(config: Config) -> Result<NodeHandle, Error> {
    let (parts, key) = open_parts(config)?;
    let config = &parts.config;
    let peer_listener = bind(config.peer_listen).await?;
    let api_listener = bind(config.api_listen).await?;
    let peer_addr = local_addr(&peer_listener, config.peer_listen)?;
    let api_addr = local_addr(&api_listener, config.api_listen)?;
    if !api_addr.ip().is_loopback() {
        // Config refuses this unless `[listen] api_remote = true`.
        warn!(%api_addr, "{}", crate::config::API_REMOTE_WARNING);
    }
    let tls = peer_tls(config, &key, parts.trust.source())?;
    let (p2p, swarm) = p2p::start(
        &key,
        &config.p2p_listen,
        config.envelope_limits.message_bytes_max,
        parts.trust.source(),
    )
    .await?;
    let (p2p_addrs, peer_id) = (p2p.listen_addrs().to_vec(), p2p.peer_id());
    let clients = Clients::new(config.clients_file.clone());
    let (shared, delivery) = Node::new(parts, key, p2p, tls.clone())?;
    let config = shared.config();
    info!(operator = %config.operator_id, %peer_addr, %api_addr, %peer_id, p2p_addrs = ?p2p_addrs, prefer = %config.prefer, trust_list_version = shared.trust().version(), "node started");

    let cancel = CancellationToken::new();
    let listeners = Listeners {
        peer: peer_listener,
        api: api_listener,
        tls,
        clients,
    };
    let tasks = spawn(&shared, listeners, swarm, delivery, &cancel);
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

/// Opens what a node is made of: the key, the store, the trust list (checked
/// to list this operator and key), the consent state and the data source.
fn open_parts(config: Config) -> Result<(Parts, SecretKey), Error> {
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
    let consents = node::consent::load(&store, &trust, &config.operator_id)?;
    let (source, registry) = open_source(&config, &store)?;
    let parts = Parts {
        config,
        store,
        trust: TrustKeeper::new(trust),
        consents,
        source,
        registry,
    };
    Ok((parts, key))
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// What the servers serve on.
struct Listeners {
    peer: tokio::net::TcpListener,
    api: tokio::net::TcpListener,
    tls: Option<Arc<PeerTls>>,
    clients: Clients,
}

/// Spawns the servers, the swarm and every loop into one task set, all
/// stopped by `cancel`.
fn spawn(
    shared: &Arc<Node>,
    listeners: Listeners,
    swarm: p2p::Driver,
    delivery: node::DeliveryLoop,
    cancel: &CancellationToken,
) -> JoinSet<Result<(), Error>> {
    let config = shared.config();
    let me = config.operator_id.clone();
    let mut tasks = JoinSet::new();
    let inbound: Arc<dyn transport::Inbound> = shared.clone();
    let admission = shared.admission().clone();
    let bounds = grpc::ServeLimits {
        message_bytes_max: config.envelope_limits.message_bytes_max,
        in_flight_max: config.limits.concurrent_requests_max,
    };
    let peer = grpc::serve(
        inbound.clone(),
        admission.clone(),
        bounds,
        listeners.peer,
        listeners.tls,
        cancel.clone(),
    );
    tasks.spawn(async move {
        peer.await
            .map_err(|e| Error::Server(format!("peer server: {e}")))
    });
    let api = api::serve(
        shared.clone(),
        listeners.clients,
        listeners.api,
        cancel.clone(),
    );
    tasks.spawn(api);
    let upward = p2p::Upward {
        inbound,
        admission,
        in_flight_max: config.limits.p2p_inbound_in_flight_max,
        announce_every: Duration::from_millis(config.limits.trust_refresh_interval_ms),
    };
    let swarm = swarm.run(upward, cancel.clone());
    let swarm = async move {
        swarm.await;
        Ok(())
    };
    tasks.spawn(swarm.instrument(info_span!("p2p", operator = %me)));
    let delivery = delivery.run(cancel.clone());
    tasks.spawn(delivery.instrument(info_span!("outbox", operator = %me)));
    tasks.spawn(node::prune_loop(shared.clone(), cancel.clone()));
    tasks.spawn(node::expiry_loop(shared.clone(), cancel.clone()));
    tasks.spawn(node::repush_loop(shared.clone(), cancel.clone()));
    tasks.spawn(node::refresh_loop(shared.clone(), cancel.clone()));
    tasks
}

/// The peer TLS identity made from the operator key, whose verifiers read
/// `trust` at every handshake; `None`, loudly, with `insecure_plaintext`.
fn peer_tls(
    config: &Config,
    key: &SecretKey,
    trust: TrustSource,
) -> Result<Option<Arc<PeerTls>>, Error> {
    let me = &config.operator_id;
    let endpoint = trust()
        .member(me)
        .map(|m| m.grpc_endpoint.clone())
        .unwrap_or_default();
    let listed_tls = grpc::parse_endpoint(&endpoint).map(|e| e.tls);
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
    let tls = PeerTls::new(me, key, trust)?;
    info!(key_id = %key.public().key_id(), "peer port serves TLS 1.3 with a certificate of the operator key");
    Ok(Some(Arc::new(tls)))
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
