//! The trust list in force and its upkeep: installing a newer list (pushed,
//! fetched or given by an admin), offering ours to an older peer, fetching a
//! newer one, and the periodic refresh.
//!
//! Refresh, in the manner of X-Road's periodic download of the global
//! configuration: every `[limits] trust_refresh_interval_ms` (plus jitter) the
//! node asks a few random active peers for their list (`FetchTrustList`) and
//! installs a newer valid one under the unchanged update rule (same
//! federation, higher version, not expired, signed by `threshold` of the
//! current governance keys).
//!
//! This is the pull half of spreading a list; the push half is the offer a
//! node sends every peer when an admin installs a list, and the offer or fetch
//! on a version mismatch seen in any envelope. The pull alone reaches a node
//! that missed the push (down, partitioned, or holding an expired list, which
//! refuses every pushed envelope), so a revocation installed at any node is in
//! force everywhere within about two intervals.
//!
//! While the list held is expired the node refuses all traffic (fail closed),
//! says so at error level once per [`limits::TRUST_EXPIRED_LOG_INTERVAL_MS`],
//! and keeps refreshing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom as _;
use rand::Rng as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Error, Node};
use crate::clock::now_ms;
use crate::core::envelope::Payload;
use crate::core::ids::OperatorId;
use crate::core::trust::{MemberStatus, SignedTrustList, TrustListError, VerifiedTrustList};
use crate::limits;
use crate::transport::tls::TrustSource;

/// What the trust side owns: the list in force and the offers, fetches and
/// their tasks in progress.
#[derive(Debug)]
pub(crate) struct TrustKeeper {
    /// The list in force; shared with the peer TLS verifiers and the libp2p
    /// swarm, which read it at every handshake.
    list: Arc<RwLock<Arc<VerifiedTrustList>>>,
    /// Highest version offered to each peer, so an older peer gets one update per version.
    offered: Mutex<HashMap<OperatorId, u64>>,
    /// Fetches running, one per peer at most.
    fetching: Mutex<HashSet<OperatorId>>,
    /// The offers and fetches in progress; taken and joined at shutdown.
    tasks: Mutex<Option<JoinSet<()>>>,
}

/// The list in `list`, also after a writer panicked (a list is replaced whole).
fn read(list: &RwLock<Arc<VerifiedTrustList>>) -> Arc<VerifiedTrustList> {
    match list.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl TrustKeeper {
    /// Keeps `list` in force until a newer one replaces it.
    pub(crate) fn new(list: VerifiedTrustList) -> Self {
        Self {
            list: Arc::new(RwLock::new(Arc::new(list))),
            offered: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashSet::new()),
            tasks: Mutex::new(Some(JoinSet::new())),
        }
    }

    /// The list in force, also after a writer panicked (a list is replaced whole).
    pub(super) fn current(&self) -> Arc<VerifiedTrustList> {
        read(&self.list)
    }

    /// A reader of the list in force, for the transports' verifiers.
    pub(crate) fn source(&self) -> TrustSource {
        let list = self.list.clone();
        Arc::new(move || read(&list))
    }

    /// Puts `newer` in force unless the list in force is as new: a refresh
    /// and a pushed update may race, and a node never steps back.
    fn replace(&self, newer: VerifiedTrustList) -> bool {
        let mut guard = match self.list.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.version() >= newer.version() {
            return false;
        }
        *guard = Arc::new(newer);
        true
    }

    /// Stops the offers and fetches in progress and waits for them to end.
    pub(super) async fn shutdown(&self) {
        let tasks = self.tasks.lock().ok().and_then(|mut t| t.take());
        if let Some(mut tasks) = tasks {
            tasks.shutdown().await;
        }
    }
}

/// Runs refresh rounds until `cancel` fires. Cancel-safe: a round in progress
/// is dropped, and a list is installed only after it is stored and flushed.
pub(crate) async fn refresh_loop(
    shared: Arc<Node>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let interval_ms = shared.config.limits.trust_refresh_interval_ms;
    let mut expired_logged: Option<Instant> = None;
    loop {
        let jitter_ms = rand::thread_rng().gen_range(0..=interval_ms / 5);
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(interval_ms + jitter_ms)) => {}
        }
        log_if_expired(&shared, &mut expired_logged);
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = shared.refresh_trust_list() => {}
        }
    }
}

/// Logs an expired list at error level, at most once per interval.
fn log_if_expired(shared: &Node, logged: &mut Option<Instant>) {
    let trust = shared.trust();
    if trust.is_current(now_ms()) {
        *logged = None;
        return;
    }
    let due = logged.is_none_or(|at| {
        at.elapsed() >= Duration::from_millis(limits::TRUST_EXPIRED_LOG_INTERVAL_MS)
    });
    if due {
        error!(
            version = trust.version(),
            valid_until_ms = trust.list().valid_until_ms,
            "trust list expired: refusing to send and to accept envelopes and calls \
             until a newer list is fetched from a peer or installed by an admin"
        );
        *logged = Some(Instant::now());
    }
}

impl Node {
    /// One refresh round: asks up to [`limits::TRUST_REFRESH_PEERS_PER_ROUND`]
    /// random active peers, one after the other (each within the delivery
    /// deadline), and stops at the first that gives a newer list.
    async fn refresh_trust_list(self: &Arc<Self>) {
        let peers: Vec<OperatorId> = {
            let trust = self.trust();
            let candidates: Vec<&OperatorId> = trust
                .list()
                .members
                .iter()
                .filter(|m| {
                    m.status == MemberStatus::Active && &m.operator_id != self.operator_id()
                })
                .map(|m| &m.operator_id)
                .collect();
            candidates
                .choose_multiple(
                    &mut rand::thread_rng(),
                    limits::TRUST_REFRESH_PEERS_PER_ROUND,
                )
                .map(|&id| id.clone())
                .collect()
        };
        let deadline = Duration::from_millis(limits::DELIVERY_TIMEOUT_MS);
        for peer in peers {
            match tokio::time::timeout(deadline, self.fetch_trust_list(&peer)).await {
                Ok(Ok(Some(version))) => {
                    info!(%peer, version, "trust list refreshed from a peer");
                    return;
                }
                Ok(Ok(None)) => {}
                // Peers come and go; a failed refresh is retried next round.
                Ok(Err(e)) => debug!(%peer, error = %e, "trust-list refresh: fetch failed"),
                Err(_) => debug!(%peer, "trust-list refresh: no answer in time"),
            }
        }
    }

    /// Puts a verified (and stored) trust list in force.
    pub(super) fn install_trust(&self, newer: VerifiedTrustList) {
        let version = newer.version();
        if !self.trust.replace(newer) {
            return;
        }
        // Connections were authenticated under the old list: dial afresh.
        self.outbox.peers.grpc.forget_all();
        info!(version, "trust list updated");
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
            let Ok(mut offered) = self.trust.offered.lock() else {
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
        let Ok(mut guard) = self.trust.tasks.lock() else {
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
                .trust
                .fetching
                .lock()
                .map(|mut f| f.insert(peer.clone()))
                .unwrap_or(false);
            if started {
                set.spawn(async move {
                    if let Err(e) = shared.fetch_trust_list(&peer).await {
                        warn!(%peer, error = %e, "trust-list fetch failed");
                    }
                    if let Ok(mut f) = shared.trust.fetching.lock() {
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
            .outbox
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
}
