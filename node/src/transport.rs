//! Transports between operators. Each carries the same encoded signed
//! envelope bytes and hands them to the driver unchanged; a refusal is the
//! same [`Verdict`] on both.
//!
//! # Layout
//! - [`grpc`]: the `OperatorPeer` gRPC server and its client.
//! - [`tls`]: TLS 1.3 between operators, certificates pinned to trust-list keys.
//! - [`p2p`]: libp2p (TCP + noise + yamux, QUIC), the same three operations.
//! - [`Peers`]: which transport reaches a member, with fallback.

pub mod grpc;
pub mod p2p;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tonic::codegen::BoxFuture;
use tonic::Code;
use tracing::debug;

pub use crate::config::TransportKind as Kind;
use crate::core::envelope::RejectReason;
use crate::core::ids::OperatorId;
pub use crate::core::reason::Reason;
pub use crate::core::receive::Refusal;
use crate::core::trust::{Member, VerifiedTrustList};
use crate::counters::Counters;
use crate::rate_limit::KeyedLimiter;

/// What a transport hands authenticated inbound requests to: the driver
/// implements it, so a transport knows nothing of the driver's types (imports
/// point down only: the driver imports the transports, never the reverse).
///
/// `peer` is the member the connection authenticated (TLS or noise), `None`
/// only on a plaintext gRPC port; the driver refuses an envelope signed by
/// anyone else.
pub trait Inbound: Send + Sync + 'static {
    /// A notice ([`Operation::Deliver`]: verified, applied once, recorded and
    /// flushed; the encoded signed receipt) or a call ([`Operation::Call`]:
    /// verified and answered; the encoded signed answer), or why not.
    fn handle(
        self: Arc<Self>,
        operation: Operation,
        envelope: Vec<u8>,
        peer: Option<OperatorId>,
    ) -> BoxFuture<Vec<u8>, Refusal>;

    /// The trust list in force.
    fn trust(&self) -> Arc<VerifiedTrustList>;

    /// A member said (by gossip) that it holds trust-list `version`.
    fn heard_trust_version(self: Arc<Self>, member: &OperatorId, version: u64);
}

/// The admission step both transports run before a request reaches the
/// driver, cheapest first: the connection's member (checked by each transport
/// against its own credential: the TLS key or the noise PeerId), a token from
/// the member's bucket (one bucket per member for both transports), room to
/// serve it. Every refusal here is counted under its [`Reason`] and becomes a
/// [`Verdict`], the same on both transports.
#[derive(Debug)]
pub struct Admission {
    /// Request buckets of peer operators, shared by both transports.
    rate: KeyedLimiter<RateKey>,
    /// Where refusals are counted (shown in `GetStatus`).
    counters: Arc<Counters>,
}

impl Admission {
    /// An admission step with `rate` per peer, counting into `counters`.
    pub fn new(rate: crate::rate_limit::Rate, counters: Arc<Counters>) -> Self {
        Self {
            rate: KeyedLimiter::new(rate),
            counters,
        }
    }

    /// Takes a token from `key`'s bucket, before anything of the request is
    /// decoded: a flood costs a map lookup per request. The refusal is
    /// `RESOURCE_EXHAUSTED` / [`Reason::RateLimited`], sent after
    /// [`rate_limited_hold`].
    pub fn take_token(&self, key: &RateKey) -> Result<(), Verdict> {
        self.rate.check(key, Instant::now()).map_err(|limited| {
            // Per refusal only at debug: a flood must not become a log flood.
            debug!(%key, "peer request refused: rate limited");
            self.refuse(
                Code::ResourceExhausted,
                Reason::RateLimited,
                format!("rate limited: {limited}"),
            )
        })
    }

    /// The verdict for a request that found `in_flight` requests, the most,
    /// being served: [`busy`], counted.
    pub fn busy(&self, in_flight: usize) -> Verdict {
        // Per refusal only at debug: a flood must not become a log flood.
        debug!(in_flight, "request refused: busy");
        self.counters.count(Reason::Busy);
        busy(in_flight)
    }

    /// A refusal of the admission step, counted under `reason`.
    pub fn refuse(&self, code: Code, reason: Reason, message: String) -> Verdict {
        self.counters.count(reason);
        Verdict {
            code,
            reason,
            message,
            receipt: None,
        }
    }

    /// The counters refusals are counted in.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

/// Whose bucket a peer request takes a token from: one per member, shared by
/// both transports (a member cannot double its quota by using both).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The member a TLS connection or a noise handshake authenticated.
    Member(OperatorId),
    /// In plaintext gRPC mode, where no one is authenticated: the remote address.
    Address(Option<std::net::IpAddr>),
}

impl fmt::Display for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Member(id) => write!(f, "peer operator {id}"),
            Self::Address(Some(ip)) => write!(f, "unauthenticated peer at {ip}"),
            Self::Address(None) => f.write_str("unauthenticated peer"),
        }
    }
}

/// How long to hold a rate-limited request before refusing it:
/// [`crate::limits::RATE_LIMITED_HOLD_MS`], spread by ±50 % so that the
/// requests of a flood held together do not all come back at once.
pub fn rate_limited_hold() -> std::time::Duration {
    use rand::Rng as _;
    let hold = crate::limits::RATE_LIMITED_HOLD_MS;
    std::time::Duration::from_millis(rand::thread_rng().gen_range(hold / 2..=hold + hold / 2))
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer was not reached on this transport (connect, handshake,
    /// timeout, connection lost); another transport may reach it.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered with a refusal: its verdict, the same on every transport.
    #[error("{code:?} ({reason}): {message}")]
    Refused {
        /// The gRPC code of the refusal.
        code: Code,
        /// The stable reason (`mim4-reason`), empty if the peer gave none.
        reason: String,
        /// Text for people.
        message: String,
    },
}

/// A refusal as it travels: code, stable reason, text, and for a replay the
/// original receipt. [`verdict`] is the one mapping from [`Refusal`].
#[derive(Debug)]
pub struct Verdict {
    /// The gRPC status code.
    pub code: Code,
    /// The stable reason ([`Refusal::reason`], or the admission step's).
    pub reason: Reason,
    /// Text for people.
    pub message: String,
    /// For a replay: the receipt stored when the message was first applied.
    pub receipt: Option<Vec<u8>>,
}

/// The one conversion from a refusal to what a peer is told, on every transport.
pub fn verdict(refusal: Refusal) -> Verdict {
    let message = refusal.to_string();
    let reason = refusal.reason();
    let (code, receipt) = match refusal {
        Refusal::Rejected { rejection, receipt } => {
            let code = match rejection.reason {
                RejectReason::Oversized { .. } => Code::ResourceExhausted,
                RejectReason::Malformed(_)
                | RejectReason::UnsupportedProtocol(_)
                | RejectReason::WrongRecipient(_)
                | RejectReason::BadLifetime { .. } => Code::InvalidArgument,
                RejectReason::UnknownSender
                | RejectReason::UnknownKey(_)
                | RejectReason::KeyNotValidNow { .. }
                | RejectReason::BadSignature => Code::Unauthenticated,
                RejectReason::SenderNotActive(_) => Code::PermissionDenied,
                RejectReason::TrustListExpired { .. }
                | RejectReason::Expired { .. }
                | RejectReason::ClockSkew { .. } => Code::FailedPrecondition,
                RejectReason::Replayed { .. } | RejectReason::IdReused => Code::AlreadyExists,
            };
            (code, receipt)
        }
        Refusal::Unusable { .. } => (Code::InvalidArgument, None),
        Refusal::OverLimit { .. } => (Code::ResourceExhausted, None),
        Refusal::NotFound(_) => (Code::NotFound, None),
        Refusal::Unavailable(_) | Refusal::Store(_) => (Code::Unavailable, None),
        Refusal::NotFromPeer { .. } => (Code::PermissionDenied, None),
    };
    Verdict {
        code,
        reason,
        message,
        receipt,
    }
}

/// What a request is told when `in_flight` requests, the server's most, are
/// being served already: `RESOURCE_EXHAUSTED` with [`Reason::Busy`], at once
/// (it is not queued), on every transport. A sender's outbox retries it
/// with backoff.
pub fn busy(in_flight: usize) -> Verdict {
    Verdict {
        code: Code::ResourceExhausted,
        reason: Reason::Busy,
        message: format!(
            "{in_flight} requests in progress, the most this node serves; retry later"
        ),
        receipt: None,
    }
}

/// The two operations that carry an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A notice, answered by a receipt.
    Deliver,
    /// A request, answered by an envelope.
    Call,
}

/// The clients of both transports, and which one to try first.
///
/// A request goes over the preferred transport if the member offers it,
/// else the other; when the first one cannot reach the member
/// ([`PeerError::Unreachable`]) the same bytes go over the other. A refusal
/// is the peer's verdict and is not retried elsewhere. Resending the same
/// envelope is safe: the receiver applies a message id once and answers a
/// repeat with the stored receipt.
#[derive(Debug)]
pub struct Peers {
    /// gRPC clients.
    pub grpc: grpc::PeerClients,
    /// The libp2p swarm.
    pub p2p: p2p::P2p,
    /// The transport tried first.
    pub prefer: Kind,
}

impl Peers {
    /// Delivers encoded envelope bytes to `member`; returns the encoded receipt.
    pub async fn deliver(&self, member: &Member, envelope: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        self.send(member, envelope, Operation::Deliver).await
    }

    /// Makes a synchronous call; returns the encoded answer envelope.
    pub async fn call(&self, member: &Member, envelope: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        self.send(member, envelope, Operation::Call).await
    }

    async fn send(
        &self,
        member: &Member,
        envelope: Vec<u8>,
        operation: Operation,
    ) -> Result<Vec<u8>, PeerError> {
        let (id, endpoint) = (&member.operator_id, member.grpc_endpoint.as_str());
        self.each(member, |kind| {
            let envelope = envelope.clone();
            async move {
                match (kind, operation) {
                    (Kind::Grpc, Operation::Deliver) => {
                        self.grpc.deliver(id, endpoint, envelope).await
                    }
                    (Kind::Grpc, Operation::Call) => self.grpc.call(id, endpoint, envelope).await,
                    (Kind::Libp2p, Operation::Deliver) => self.p2p.deliver(member, envelope).await,
                    (Kind::Libp2p, Operation::Call) => self.p2p.call(member, envelope).await,
                }
            }
        })
        .await
    }

    /// Fetches `member`'s current signed trust list.
    pub async fn fetch_trust_list(&self, member: &Member) -> Result<Vec<u8>, PeerError> {
        self.each(member, |kind| async move {
            match kind {
                Kind::Grpc => {
                    self.grpc
                        .fetch_trust_list(&member.operator_id, &member.grpc_endpoint)
                        .await
                }
                Kind::Libp2p => self.p2p.fetch_trust_list(member).await,
            }
        })
        .await
    }

    /// Runs `attempt` over each transport `member` offers, preferred first,
    /// until one reaches it.
    async fn each<F, Fut>(&self, member: &Member, attempt: F) -> Result<Vec<u8>, PeerError>
    where
        F: Fn(Kind) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, PeerError>>,
    {
        let kinds = Kind::offered_by(member, self.prefer);
        if kinds.is_empty() {
            return Err(PeerError::Unreachable(format!(
                "{} lists neither a gRPC endpoint nor a libp2p address in the trust list",
                member.operator_id
            )));
        }
        let mut failures = Vec::new();
        for kind in kinds {
            match attempt(kind).await {
                Err(PeerError::Unreachable(e)) => {
                    tracing::debug!(member = %member.operator_id, transport = %kind, error = %e, "not reached; trying the next transport");
                    failures.push(format!("{kind}: {e}"));
                }
                outcome => return outcome,
            }
        }
        Err(PeerError::Unreachable(failures.join("; ")))
    }
}
