//! Trust-list refresh, in the manner of X-Road's periodic download of the
//! global configuration: every `[limits] trust_refresh_interval_ms` (plus
//! jitter) the node asks a few random active peers for their list
//! (`FetchTrustList`) and installs a newer valid one under the unchanged
//! update rule (same federation, higher version, not expired, signed by
//! `threshold` of the current governance keys).
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom as _;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::{now_ms, Error, Shared};
use crate::core::ids::OperatorId;
use crate::core::trust::MemberStatus;
use crate::limits;

/// Runs refresh rounds until `cancel` fires. Cancel-safe: a round in progress
/// is dropped, and a list is installed only after it is stored and flushed.
pub(super) async fn run(shared: Arc<Shared>, cancel: CancellationToken) -> Result<(), Error> {
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
fn log_if_expired(shared: &Shared, logged: &mut Option<Instant>) {
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

impl Shared {
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
}
