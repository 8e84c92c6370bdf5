//! The driver: the node's state, split by job, and the I/O the core asks for.
//!
//! [`Node`] is what the servers and background loops share. Each job owns its
//! state in its own module, and the `impl Node` block there holds the steps
//! that job takes (some of which need another job's part, through `Node`):
//!
//! # Layout
//! - [`receiving`]: envelopes and calls from the transports ([`crate::transport::Inbound`]),
//!   run through the core's receive decision; the replay table's pruning.
//! - [`outbox`]: sending: the outbox, the delivery loop, calls to peers.
//! - [`trust`]: the trust list in force, offers, fetches and the refresh loop.
//! - [`consent`]: consent records at the home and at the other parties; expiry and re-push loops.
//! - [`exchange`]: data requests served and made; the data source.
//!
//! Starting a node (opening the store, binding the servers, spawning the
//! loops) is [`crate::boot`]'s; the driver imports neither the API nor boot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::core::ids::OperatorId;
use crate::core::keys::SecretKey;
use crate::core::trust::{TrustListError, VerifiedTrustList};
use crate::counters::Counters;
use crate::identity;
use crate::store::{self, Store};
use crate::transport::{self, p2p, Admission};

pub mod consent;
pub mod exchange;
pub(crate) mod outbox;
mod receiving;
mod trust;

pub(crate) use consent::{expiry_loop, repush_loop};
pub use exchange::RegistryLoadError;
pub(crate) use outbox::DeliveryLoop;
pub use outbox::{CallError, SendError};
pub(crate) use receiving::prune_loop;
pub(crate) use trust::{refresh_loop, TrustKeeper};

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

/// The node's state, shared by the servers and the background loops; each
/// part belongs to one job (see the module's layout).
#[derive(Debug)]
pub struct Node {
    config: Config,
    key: SecretKey,
    store: Store,
    started: Instant,
    /// The trust list in force and its upkeep.
    trust: trust::TrustKeeper,
    /// The sending side: transports' clients and the delivery loop's queue.
    outbox: outbox::Outbox,
    /// Consent records' in-memory state and their writer lock.
    consents: consent::Consents,
    /// The data source.
    exchange: exchange::Exchange,
    /// The admission step of both transports (rate buckets per member).
    admission: Arc<Admission>,
    /// Counts of refused requests and withheld attributes, by reason.
    counters: Arc<Counters>,
}

/// The parts [`Node::new`] joins, opened by [`crate::boot`].
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) trust: TrustKeeper,
    pub(crate) consents: consent::ConsentState,
    pub(crate) source: Arc<dyn crate::sources::DataSource>,
    pub(crate) registry: Option<crate::sources::registry::Registry>,
}

impl Node {
    /// Joins the opened parts; also returns the delivery loop to run.
    pub(crate) fn new(
        parts: Parts,
        key: SecretKey,
        p2p: p2p::P2p,
        tls: Option<Arc<transport::tls::PeerTls>>,
    ) -> Result<(Arc<Self>, DeliveryLoop), Error> {
        let counters = Arc::new(Counters::default());
        let peers = transport::Peers {
            grpc: transport::grpc::PeerClients::new(
                parts.config.envelope_limits.message_bytes_max,
                tls,
            ),
            p2p,
            prefer: parts.config.prefer,
        };
        let (outbox, woken) = outbox::Outbox::new(peers);
        let node = Arc::new(Self {
            admission: Arc::new(Admission::new(
                parts.config.limits.peer_rate,
                counters.clone(),
            )),
            counters,
            started: Instant::now(),
            trust: parts.trust,
            outbox,
            consents: consent::Consents::new(parts.consents),
            exchange: exchange::Exchange {
                source: parts.source,
                registry: parts.registry,
            },
            config: parts.config,
            key,
            store: parts.store,
        });
        let delivery = DeliveryLoop::new(node.clone(), woken)?;
        Ok((node, delivery))
    }

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

    /// The admission step both transports share.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// The libp2p swarm's handle.
    pub fn p2p(&self) -> &p2p::P2p {
        &self.outbox.peers.p2p
    }

    /// The trust list in force.
    pub fn trust(&self) -> Arc<VerifiedTrustList> {
        self.trust.current()
    }

    /// A reader of the trust list in force, for the transports' verifiers.
    pub fn trust_source(&self) -> transport::tls::TrustSource {
        self.trust.source()
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counters of refusals and withholdings.
    pub fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.counters.snapshot()
    }

    /// Where refusals and withholdings are counted.
    pub fn counter_table(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Ends the background work the node started by itself (trust-list
    /// offers and fetches) and flushes the store: the last step of a shutdown,
    /// once the servers and loops have stopped.
    pub(crate) async fn close(&self) -> Result<(), store::Error> {
        self.trust.shutdown().await;
        self.store.idle().await;
        self.store.flush_blocking()
    }
}
