//! libp2p between operators: the second transport. It carries the same
//! encoded signed envelopes as gRPC to the same driver entry points (the
//! [`Inbound`](super::Inbound) trait: deliver, call, the trust list), so
//! every core check, receipt and deduplication rule is shared.
//!
//! # Identity
//! The swarm's keypair is the operator's Ed25519 key: its PeerId is derived
//! from the public key the trust list names, and noise authenticates it at
//! every connection. A request's PeerId is mapped back to that key and then
//! to the member that lists it ([`member_of`]), checked again on every request.
//!
//! # Protocols
//! TCP + noise + yamux, and QUIC v1; identify (`/ipfs/id/1.0.0`, protocol
//! version `/mim4/1.0.0`); ping; `/mim4/envelope/1` (request-response:
//! `Deliver`, `Call`, `FetchTrustList`, framed by [`codec`] within the node's
//! message limit); Kademlia (`/mim4/kad/1.0.0`) to find members' current
//! addresses; gossipsub (topic `mim4/<federation>/trust-list/1`) announcing
//! trust-list versions. Consents, withdrawals and data never travel by
//! gossip: they go point to point with receipts.
//!
//! # Who gets what
//! Active members get everything. Any other PeerId: few connections, closed
//! soon ([`gate`]); identify and ping; each envelope request refused with a
//! reason (`not_a_member`); Kademlia and gossipsub not even negotiable on its
//! connections ([`gate::MembersOnly`]), so it is never in the routing table
//! and never hears or spreads gossip.
//!
//! # Shape
//! [`P2p`] is a cheap handle: it sends `Command`s over a bounded channel to
//! the [`Driver`], the one task that owns the swarm. Inbound requests are
//! served in a bounded `JoinSet` and their answers handed back to the swarm.
//!
//! # Layout
//! - [`P2p`] and [`start`] (here): the handle the node uses, and the start
//!   that builds the swarm and returns it with its driver.
//! - [`identity`](mod@identity): operator key ↔ keypair and PeerId, a PeerId's
//!   member ([`member_of`]), the PeerIds and addresses to dial a member at.
//! - [`behaviour`]: the protocols the swarm runs and how it is built and bound.
//! - [`driver`]: the swarm task ([`Driver`]): requests both ways, gossip,
//!   Kademlia, and the upward hand-off ([`Upward`]).
//! - [`codec`]: the framing of `/mim4/envelope/1` within the message limit.
//! - [`gate`]: who may hold a connection, and for how long.

mod behaviour;
pub mod codec;
mod driver;
mod gate;
mod identity;

pub use self::driver::{Driver, Upward};
pub use self::identity::{candidate_peers, check_listed_addr, keypair, member_of, peer_id};

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use mim4_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use self::identity::dial_addrs;
use super::PeerError;
use crate::clock::now_ms;
use crate::core::keys::SecretKey;
use crate::core::trust::{Member, VerifiedTrustList};
use crate::limits;

/// The identify protocol version nodes of this project announce.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/mim4/1.0.0";

/// The Kademlia protocol of the federation (not the public IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/mim4/kad/1.0.0");

/// Reads the trust list in force.
pub(crate) type TrustSource = Arc<dyn Fn() -> Arc<VerifiedTrustList> + Send + Sync>;

/// Errors setting up the swarm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operator key does not convert to a libp2p keypair.
    #[error("operator key as libp2p keypair: {0}")]
    Key(String),
    /// The swarm cannot be built.
    #[error("libp2p swarm: {0}")]
    Build(String),
    /// A listen address cannot be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// What the node asks of the swarm.
#[derive(Debug)]
enum Command {
    /// Sends a request to the first of `peers` that can be reached.
    Request {
        peers: Vec<PeerId>,
        /// Where to dial each candidate.
        addrs: HashMap<PeerId, Vec<Multiaddr>>,
        request: pb::PeerRequest,
        reply: oneshot::Sender<Result<pb::PeerResponse, PeerError>>,
    },
    /// Reports the peers connected now.
    Connected(oneshot::Sender<Vec<PeerId>>),
}

/// A cheap, cloneable handle to the swarm task.
#[derive(Clone, Debug)]
pub struct P2p {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
}

impl P2p {
    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the swarm listens on (with the actual ports).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The PeerIds this node holds a connection to now.
    pub async fn connected(&self) -> Vec<PeerId> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Connected(reply)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    async fn request(
        &self,
        member: &Member,
        request: pb::PeerRequest,
    ) -> Result<pb::PeerResponse, PeerError> {
        let peers = candidate_peers(member, now_ms());
        if peers.is_empty() {
            return Err(PeerError::Unreachable(format!(
                "{} has no key valid now",
                member.operator_id
            )));
        }
        let addrs = peers.iter().map(|p| (*p, dial_addrs(member, p))).collect();
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request {
                peers,
                addrs,
                request,
                reply,
            })
            .await
            .map_err(|_| PeerError::Unreachable("the libp2p swarm has stopped".into()))?;
        answer
            .await
            .map_err(|_| PeerError::Unreachable("the libp2p swarm dropped the request".into()))?
    }

    /// Delivers encoded envelope bytes; returns the encoded receipt. A replay
    /// refusal that carries the original receipt counts as delivered.
    pub async fn deliver(&self, member: &Member, envelope: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        let request = pb::PeerRequest {
            kind: Some(pb::peer_request::Kind::Deliver(pb::DeliverRequest {
                envelope,
            })),
        };
        match self.request(member, request).await?.kind {
            Some(pb::peer_response::Kind::Deliver(d)) => Ok(d.receipt),
            other => answer_error(other, |r| {
                (r.code == tonic::Code::AlreadyExists as u32 && !r.receipt.is_empty())
                    .then(|| r.receipt.clone())
            }),
        }
    }

    /// Makes a synchronous call; returns the encoded answer envelope.
    pub async fn call(&self, member: &Member, envelope: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        let request = pb::PeerRequest {
            kind: Some(pb::peer_request::Kind::Call(pb::CallRequest { envelope })),
        };
        match self.request(member, request).await?.kind {
            Some(pb::peer_response::Kind::Call(c)) => Ok(c.envelope),
            other => answer_error(other, |_| None),
        }
    }

    /// Fetches a peer's current signed trust list.
    pub async fn fetch_trust_list(&self, member: &Member) -> Result<Vec<u8>, PeerError> {
        let request = pb::PeerRequest {
            kind: Some(pb::peer_request::Kind::FetchTrustList(
                pb::FetchTrustListRequest {},
            )),
        };
        match self.request(member, request).await?.kind {
            Some(pb::peer_response::Kind::FetchTrustList(t)) => Ok(t.trust_list),
            other => answer_error(other, |_| None),
        }
    }
}

/// A response of the wrong kind, or a refusal: the error (or, where
/// `accept` says so, the bytes a refusal carries, such as a replay's receipt).
fn answer_error(
    kind: Option<pb::peer_response::Kind>,
    accept: impl Fn(&pb::PeerRefusal) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, PeerError> {
    match kind {
        Some(pb::peer_response::Kind::Refusal(refusal)) => {
            if let Some(bytes) = accept(&refusal) {
                return Ok(bytes);
            }
            Err(PeerError::Refused {
                code: tonic::Code::from(i32::try_from(refusal.code).unwrap_or(2)),
                reason: refusal.reason,
                message: refusal.message,
            })
        }
        _ => Err(PeerError::Refused {
            code: tonic::Code::Internal,
            reason: "wrong_answer".into(),
            message: "the peer answered with another kind of response".into(),
        }),
    }
}

/// Builds the swarm from the operator key and binds every listen address;
/// returns once each listener has an address (so the ports are known).
pub async fn start(
    key: &SecretKey,
    listen: &[Multiaddr],
    message_bytes_max: usize,
    trust: TrustSource,
) -> Result<(P2p, Driver), Error> {
    let keypair = keypair(key)?;
    let peer_id = keypair.public().to_peer_id();
    let membership = trust.clone();
    let is_member: gate::IsMember =
        Arc::new(move |peer| member_of(&membership(), peer, now_ms()).is_ok());
    let mut swarm = behaviour::swarm(keypair, message_bytes_max, is_member)?;
    let listen_addrs = behaviour::listen(&mut swarm, listen).await?;
    let (commands_tx, commands) = mpsc::channel(limits::P2P_COMMAND_QUEUE);
    let handle = P2p {
        commands: commands_tx,
        peer_id,
        listen_addrs,
    };
    Ok((handle, Driver::new(swarm, commands, trust)))
}
