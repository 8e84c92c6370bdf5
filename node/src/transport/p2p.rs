//! libp2p between operators: the second transport. It carries the same
//! encoded signed envelopes as gRPC to the same driver entry points
//! ([`Shared::receive`], [`Shared::answer_call`], the trust list), so every
//! core check, receipt and deduplication rule is shared.
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
//! [`P2p`] is a cheap handle: it sends [`Command`]s over a bounded channel to
//! the [`Driver`], the one task that owns the swarm. Inbound requests are
//! served in a bounded `JoinSet` and their answers handed back to the swarm.

pub mod codec;
mod gate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, identity, kad, ping, Multiaddr, PeerId, StreamProtocol, Swarm};
use mim4_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::codec::{Codec, Inbound};
use super::Reason;
use super::{verdict, PeerError, Verdict};
use crate::clock::now_ms;
use crate::core::ids::OperatorId;
use crate::core::keys::{PublicKey, SecretKey};
use crate::core::trust::{Member, MemberStatus, VerifiedTrustList};
use crate::limits;

/// The identify protocol version nodes of this project announce.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/mim4/1.0.0";

/// The Kademlia protocol of the federation (not the public IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/mim4/kad/1.0.0");

use crate::limits::FRAMING_BYTES;

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

/// The libp2p keypair of an operator key (the same Ed25519 key).
pub fn keypair(key: &SecretKey) -> Result<identity::Keypair, Error> {
    let mut bytes = key.to_bytes();
    // `ed25519_from_bytes` zeroizes its input; `bytes` is zeroized on drop too.
    identity::Keypair::ed25519_from_bytes(&mut *bytes).map_err(|e| Error::Key(e.to_string()))
}

/// The PeerId of an operator public key.
pub fn peer_id(key: &PublicKey) -> PeerId {
    match identity::ed25519::PublicKey::try_from_bytes(&key.to_bytes()) {
        Ok(public) => identity::PublicKey::from(public).to_peer_id(),
        // A `PublicKey` is a valid Ed25519 point by construction.
        Err(_) => PeerId::random(),
    }
}

/// The operator key a PeerId inlines, if it is an Ed25519 PeerId.
fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Ed25519 PeerIds are "identity" multihashes (code 0) of the protobuf key.
    if multihash.code() != 0 {
        return None;
    }
    let public = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    PublicKey::from_bytes(&ed25519.to_bytes()).ok()
}

/// The active member whose key (valid now) this PeerId is derived from.
pub fn member_of(
    trust: &VerifiedTrustList,
    peer: &PeerId,
    now_ms: u64,
) -> Result<OperatorId, String> {
    let key = public_key_of(peer)
        .ok_or_else(|| format!("PeerId {peer} does not carry an Ed25519 operator key"))?;
    super::tls::active_member_with_key(trust, &key, now_ms).map_err(|e| e.to_string())
}

/// PeerIds of `member`'s keys valid now, the most recently started key first
/// (during a rotation the member runs on the new key as soon as it restarts).
pub fn candidate_peers(member: &Member, now_ms: u64) -> Vec<PeerId> {
    let mut keys: Vec<_> = member
        .keys
        .iter()
        .filter(|k| k.is_valid_at(now_ms))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.not_before_ms));
    keys.iter().map(|k| peer_id(&k.public_key)).collect()
}

/// The multiaddrs of `member` to dial `peer` at: its listed addresses, without
/// any `/p2p/` suffix, skipping those pinned to another PeerId or unparsable.
fn dial_addrs(member: &Member, peer: &PeerId) -> Vec<Multiaddr> {
    member
        .p2p_addrs
        .iter()
        .filter_map(|text| text.parse::<Multiaddr>().ok())
        .filter_map(|mut addr| match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(pinned)) if pinned != *peer => None,
            Some(libp2p::multiaddr::Protocol::P2p(_)) => {
                addr.pop();
                Some(addr)
            }
            _ => Some(addr),
        })
        .collect()
}

/// Checks a multiaddr a member lists in the trust list: it parses, runs
/// over TCP or QUIC v1, and a `/p2p/` suffix names the PeerId of one of the
/// member's `keys`.
pub fn check_listed_addr<'a>(
    text: &str,
    keys: impl IntoIterator<Item = &'a PublicKey>,
) -> Result<(), String> {
    use libp2p::multiaddr::Protocol;
    let addr: Multiaddr = text
        .parse()
        .map_err(|e| format!("libp2p address {text:?}: {e}"))?;
    let transport = addr
        .iter()
        .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1));
    if !transport {
        return Err(format!(
            "libp2p address {text:?} is neither TCP (/tcp/PORT) nor QUIC (/udp/PORT/quic-v1)"
        ));
    }
    if let Some(Protocol::P2p(pinned)) = addr.iter().last() {
        if !keys.into_iter().any(|k| peer_id(k) == pinned) {
            return Err(format!(
                "libp2p address {text:?} names PeerId {pinned}, which is not derived from any of the member's keys"
            ));
        }
    }
    Ok(())
}

/// The gossipsub topic of trust-list versions in `federation`.
fn trust_topic(federation: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("mim4/{federation}/trust-list/1"))
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

/// The libp2p protocols of a node.
#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    gate: gate::Gate,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    envelope: request_response::Behaviour<Codec>,
    members: gate::MembersOnly<MemberProtocols>,
}

/// The protocols a stranger cannot even negotiate ([`gate::MembersOnly`]).
#[derive(NetworkBehaviour)]
struct MemberProtocols {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossip: gossipsub::Behaviour,
}

fn behaviour(
    key: &identity::Keypair,
    message_bytes_max: usize,
    is_member: gate::IsMember,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(limits::P2P_PENDING_INCOMING_MAX))
        .with_max_established(Some(limits::P2P_CONNECTIONS_MAX))
        .with_max_established_per_peer(Some(limits::P2P_CONNECTIONS_PER_PEER_MAX));
    let codec = Codec {
        request_bytes_max: message_bytes_max + FRAMING_BYTES,
        response_bytes_max: limits::TRUST_LIST_BYTES_MAX + FRAMING_BYTES,
    };
    let envelope = request_response::Behaviour::with_codec(
        codec,
        [(codec::PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_millis(limits::DELIVERY_TIMEOUT_MS))
            .with_max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX as usize),
    );
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        // Only members' addresses enter the routing table, put there by the driver.
        .set_kbucket_inserts(kad::BucketInserts::Manual)
        .set_query_timeout(Duration::from_millis(limits::P2P_LOOKUP_TIMEOUT_MS))
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
    let mut kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    kad.set_mode(Some(kad::Mode::Server));
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(limits::P2P_GOSSIP_BYTES_MAX)
        .build()?;
    let gossip = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?;
    Ok(Behaviour {
        limits: libp2p::connection_limits::Behaviour::new(limits),
        gate: gate::Gate::new(is_member.clone()),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.into(), key.public())
                .with_agent_version(format!("mim4-node/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        envelope,
        members: gate::MembersOnly::new(MemberProtocols { kad, gossip }, is_member),
    })
}

/// The swarm task: owns the swarm, carries out [`Command`]s and serves requests.
pub struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    trust: TrustSource,
    /// Requests sent, awaiting an answer.
    pending: HashMap<OutboundRequestId, Pending>,
    /// Requests whose peer could not be dialled, waiting for a Kademlia lookup.
    lookups: HashMap<kad::QueryId, Vec<Pending>>,
    /// Inbound requests being answered, with the channel to answer on.
    serving: JoinSet<Answered>,
    /// Rate-limited requests whose refusal is held back
    /// ([`limits::RATE_LIMITED_HOLD_MS`]); apart from `serving`, so that a
    /// flooding member's held refusals take no room from the others.
    holding: JoinSet<Answered>,
    /// The trust-list version the routing table and topic were set up for.
    trust_version: u64,
    /// A member joined the topic: announce the version at the next tick.
    announce_soon: bool,
    topic: gossipsub::IdentTopic,
}

/// An inbound request's response, with the channel to answer on.
type Answered = (
    request_response::ResponseChannel<pb::PeerResponse>,
    pb::PeerResponse,
);

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("pending", &self.pending.len())
            .field("serving", &self.serving.len())
            .field("holding", &self.holding.len())
            .finish()
    }
}

/// One request in progress and the candidates left to try.
#[derive(Debug)]
struct Pending {
    peers: Vec<PeerId>,
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    request: pb::PeerRequest,
    reply: oneshot::Sender<Result<pb::PeerResponse, PeerError>>,
    /// Why earlier candidates failed.
    errors: Vec<String>,
    /// Whether a Kademlia lookup was tried already.
    looked_up: bool,
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
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| Error::Build(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| behaviour(key, message_bytes_max, is_member))
        .map_err(|e| Error::Build(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_millis(limits::P2P_IDLE_CONNECTION_MS))
        })
        .build();
    let mut waiting = HashMap::new();
    for addr in listen {
        let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        waiting.insert(id, addr.clone());
    }
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some()).await;
        match event {
            Ok(SwarmEvent::NewListenAddr {
                listener_id,
                address,
            }) => {
                waiting.remove(&listener_id);
                listen_addrs.push(address);
            }
            Ok(SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            }) => {
                if let Some(addr) = waiting.remove(&listener_id) {
                    return Err(Error::Listen {
                        addr,
                        reason: format!("{reason:?}"),
                    });
                }
            }
            Ok(SwarmEvent::ListenerError { listener_id, error }) => {
                if let Some(addr) = waiting.remove(&listener_id) {
                    return Err(Error::Listen {
                        addr,
                        reason: error.to_string(),
                    });
                }
            }
            Ok(_) => {}
            Err(_) => {
                let addr = waiting
                    .into_values()
                    .next()
                    .unwrap_or_else(Multiaddr::empty);
                return Err(Error::Listen {
                    addr,
                    reason: "no address within 10 s".into(),
                });
            }
        }
    }
    let federation = trust().list().federation_id.clone();
    let (commands_tx, commands) = mpsc::channel(limits::P2P_COMMAND_QUEUE);
    let handle = P2p {
        commands: commands_tx,
        peer_id,
        listen_addrs,
    };
    let driver = Driver {
        swarm,
        commands,
        trust,
        pending: HashMap::new(),
        lookups: HashMap::new(),
        serving: JoinSet::new(),
        holding: JoinSet::new(),
        trust_version: 0,
        announce_soon: false,
        topic: trust_topic(&federation),
    };
    Ok((handle, driver))
}

/// Whether `response` refuses a request for its rate.
fn is_rate_limited(response: &pb::PeerResponse) -> bool {
    matches!(&response.kind, Some(pb::peer_response::Kind::Refusal(r)) if r.reason == Reason::RateLimited.as_str())
}

/// A refusal response.
fn refusal(
    code: tonic::Code,
    reason: Reason,
    message: String,
    receipt: Option<Vec<u8>>,
) -> pb::PeerResponse {
    pb::PeerResponse {
        kind: Some(pb::peer_response::Kind::Refusal(pb::PeerRefusal {
            code: code as u32,
            reason: reason.as_str().to_owned(),
            message,
            receipt: receipt.unwrap_or_default(),
        })),
    }
}

fn from_verdict(v: Verdict) -> pb::PeerResponse {
    refusal(v.code, v.reason, v.message, v.receipt)
}

/// Answers one request from an authenticated member through the driver.
async fn answer(
    inbound: Arc<dyn super::Inbound>,
    member: OperatorId,
    request: pb::PeerRequest,
) -> pb::PeerResponse {
    use pb::peer_request::Kind as Req;
    use pb::peer_response::Kind as Resp;
    let kind = match request.kind {
        Some(Req::Deliver(d)) => match inbound.clone().deliver(d.envelope, Some(member)).await {
            Ok(receipt) => Resp::Deliver(pb::DeliverResponse { receipt }),
            Err(refused) => return from_verdict(verdict(refused)),
        },
        Some(Req::Call(c)) => match inbound.clone().call(c.envelope, Some(member)).await {
            Ok(envelope) => Resp::Call(pb::CallResponse { envelope }),
            Err(refused) => return from_verdict(verdict(refused)),
        },
        Some(Req::FetchTrustList(_)) => Resp::FetchTrustList(pb::FetchTrustListResponse {
            trust_list: inbound.trust().signed().encode(),
        }),
        None => {
            return refusal(
                tonic::Code::InvalidArgument,
                Reason::Malformed,
                "empty request".into(),
                None,
            )
        }
    };
    pb::PeerResponse { kind: Some(kind) }
}

/// What the swarm task hands admitted requests to, and how it bounds them.
pub struct Upward {
    /// The driver, which verifies and applies what arrives.
    pub inbound: Arc<dyn super::Inbound>,
    /// The admission step shared with the gRPC port.
    pub admission: Arc<super::Admission>,
    /// Inbound requests served at once (and held rate-limited ones).
    pub in_flight_max: usize,
    /// How often the trust-list version is announced by gossip.
    pub announce_every: Duration,
}

impl std::fmt::Debug for Upward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upward")
            .field("in_flight_max", &self.in_flight_max)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Runs the swarm until `cancel` fires.
    pub async fn run(mut self, upward: Upward, cancel: CancellationToken) {
        let shared = &upward;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let announce_every = upward.announce_every;
        let mut announced = Instant::now();
        self.on_trust_change();
        self.connect_to_members();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(command) = self.commands.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => self.on_swarm_event(shared, event),
                Some(joined) = self.serving.join_next() => self.on_answered(joined),
                Some(joined) = self.holding.join_next() => self.on_answered(joined),
                _ = tick.tick() => {
                    if (self.trust)().version() != self.trust_version {
                        self.on_trust_change();
                        self.announce();
                        announced = Instant::now();
                    } else if self.announce_soon || announced.elapsed() >= announce_every {
                        self.announce();
                        announced = Instant::now();
                    }
                }
            }
        }
        self.serving.shutdown().await;
        self.holding.shutdown().await;
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(PeerError::Unreachable(
                "the node is shutting down".into(),
            )));
        }
    }

    /// Puts the members of the new trust list in the routing table, drops
    /// connections of peers that are no longer members, and joins the topic.
    fn on_trust_change(&mut self) {
        let trust = (self.trust)();
        self.trust_version = trust.version();
        let now = now_ms();
        let me = *self.swarm.local_peer_id();
        for member in &trust.list().members {
            if member.status != MemberStatus::Active {
                continue;
            }
            for peer in candidate_peers(member, now) {
                if peer == me {
                    continue;
                }
                for addr in dial_addrs(member, &peer) {
                    self.swarm
                        .behaviour_mut()
                        .members
                        .inner
                        .kad
                        .add_address(&peer, addr);
                }
            }
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in connected {
            if member_of(&trust, &peer, now).is_err() {
                info!(%peer, version = trust.version(), "closing libp2p connections of a peer that is no longer an active member");
                let _ = self.swarm.disconnect_peer_id(peer);
                self.swarm
                    .behaviour_mut()
                    .members
                    .inner
                    .kad
                    .remove_peer(&peer);
            }
        }
        self.topic = trust_topic(&trust.list().federation_id);
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .members
            .inner
            .gossip
            .subscribe(&self.topic)
        {
            warn!(error = %e, "cannot subscribe to the trust-list topic");
        }
    }

    /// Dials up to [`limits::P2P_CONNECT_AT_START_MAX`] random active members
    /// that offer libp2p, so that gossip (and Kademlia) have peers from the
    /// start: a node that comes back with a newer trust list announces it at once.
    fn connect_to_members(&mut self) {
        use rand::seq::SliceRandom as _;
        let trust = (self.trust)();
        let now = now_ms();
        let me = *self.swarm.local_peer_id();
        let mut members: Vec<&Member> = trust
            .list()
            .members
            .iter()
            .filter(|m| m.status == MemberStatus::Active && !m.p2p_addrs.is_empty())
            .collect();
        members.shuffle(&mut rand::thread_rng());
        let mut dialled = 0;
        for member in members {
            let Some(peer) = candidate_peers(member, now).into_iter().next() else {
                continue;
            };
            if peer == me || dialled >= limits::P2P_CONNECT_AT_START_MAX {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(dial_addrs(member, &peer))
                .extend_addresses_through_behaviour()
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "could not dial a member at start");
            }
            dialled += 1;
        }
    }

    /// Announces this node's trust-list version to the members by gossip.
    fn announce(&mut self) {
        self.announce_soon = false;
        let version = (self.trust)().version();
        let topic = self.topic.clone();
        match self
            .swarm
            .behaviour_mut()
            .members
            .inner
            .gossip
            .publish(topic, version.to_be_bytes().to_vec())
        {
            Ok(_) => debug!(version, "trust-list version announced"),
            // No member connected yet, or the same announcement seen recently.
            Err(e) => debug!(version, error = %e, "trust-list version not announced"),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                mut peers,
                addrs,
                request,
                reply,
            } => {
                // A candidate already connected goes first.
                peers.sort_by_key(|p| !self.swarm.is_connected(p));
                self.send(Pending {
                    peers,
                    addrs,
                    request,
                    reply,
                    errors: Vec::new(),
                    looked_up: false,
                });
            }
            Command::Connected(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
        }
    }

    /// Sends `pending` to its first candidate.
    fn send(&mut self, pending: Pending) {
        let Some(peer) = pending.peers.first().copied() else {
            let message = pending.errors.join("; ");
            let _ = pending.reply.send(Err(PeerError::Unreachable(message)));
            return;
        };
        let addrs = pending.addrs.get(&peer).cloned().unwrap_or_default();
        let id = self
            .swarm
            .behaviour_mut()
            .envelope
            .send_request_with_addresses(&peer, Inbound::Request(pending.request.clone()), addrs);
        self.pending.insert(id, pending);
    }

    fn on_swarm_event(&mut self, shared: &Upward, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Envelope(event)) => {
                self.on_envelope_event(shared, event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Members(MemberProtocolsEvent::Kad(event))) => {
                self.on_kad_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if member_of(&(self.trust)(), &peer_id, now_ms()).is_ok() => {
                // A member's own listen addresses keep the routing table
                // current when it moves; nobody else's enter it.
                for addr in info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .members
                        .inner
                        .kad
                        .add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Members(MemberProtocolsEvent::Gossip(
                gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                },
            ))) => self.on_gossip(shared, propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Members(MemberProtocolsEvent::Gossip(
                gossipsub::Event::Subscribed { topic, .. },
            ))) if topic == self.topic.hash() => {
                // A member joined the topic (it just connected): tell it our
                // version at the next tick (one announcement for a burst of joins).
                self.announce_soon = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let trust = (self.trust)();
                match member_of(&trust, &peer_id, now_ms()) {
                    Ok(member) => {
                        debug!(%peer_id, %member, addr = %endpoint.get_remote_address(), "libp2p connection")
                    }
                    Err(reason) => {
                        debug!(%peer_id, %reason, "libp2p connection of a non-member: identify and ping only");
                        self.swarm
                            .behaviour_mut()
                            .members
                            .inner
                            .gossip
                            .blacklist_peer(&peer_id);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                debug!(%send_back_addr, %error, "incoming libp2p connection failed");
            }
            _ => {}
        }
    }

    fn on_envelope_event(
        &mut self,
        shared: &Upward,
        event: request_response::Event<Inbound, pb::PeerResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.on_request(shared, peer, request, channel);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(pending) = self.pending.remove(&request_id) {
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                let Some(mut pending) = self.pending.remove(&request_id) else {
                    return;
                };
                pending.errors.push(format!("{peer}: {error}"));
                let dial_failed = matches!(error, OutboundFailure::DialFailure);
                if dial_failed && pending.peers.len() > 1 {
                    pending.peers.remove(0);
                    self.send(pending);
                } else if dial_failed && !pending.looked_up {
                    // Not at its listed addresses: ask the members for its current ones.
                    pending.looked_up = true;
                    let query = self
                        .swarm
                        .behaviour_mut()
                        .members
                        .inner
                        .kad
                        .get_closest_peers(peer);
                    debug!(%peer, "not reachable at its listed addresses; looking it up");
                    self.lookups.entry(query).or_default().push(pending);
                } else {
                    let message = pending.errors.join("; ");
                    let _ = pending.reply.send(Err(PeerError::Unreachable(message)));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound libp2p request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        let kad::QueryResult::GetClosestPeers(result) = result else {
            return;
        };
        let peers = match &result {
            Ok(ok) => ok.peers.clone(),
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers.clone(),
        };
        let Some(waiting) = self.lookups.get_mut(&id) else {
            return;
        };
        let mut found: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for info in peers {
            found.entry(info.peer_id).or_default().extend(info.addrs);
        }
        let mut retry = Vec::new();
        let mut keep = Vec::new();
        for mut pending in waiting.drain(..) {
            let Some(target) = pending.peers.first().copied() else {
                continue;
            };
            match found.get(&target) {
                Some(addrs) if !addrs.is_empty() => {
                    info!(peer = %target, addrs = ?addrs, "found a member's current addresses through Kademlia");
                    pending.addrs.insert(target, addrs.clone());
                    retry.push(pending);
                }
                _ => keep.push(pending),
            }
        }
        *waiting = keep;
        let finished = step.last || waiting.is_empty();
        let unresolved = if finished {
            self.lookups.remove(&id).unwrap_or_default()
        } else {
            Vec::new()
        };
        for (peer, addrs) in &found {
            if member_of(&(self.trust)(), peer, now_ms()).is_ok() {
                for addr in addrs {
                    self.swarm
                        .behaviour_mut()
                        .members
                        .inner
                        .kad
                        .add_address(peer, addr.clone());
                }
            }
        }
        for pending in retry {
            self.send(pending);
        }
        for mut pending in unresolved {
            pending
                .errors
                .push("no member knows another address".into());
            let message = pending.errors.join("; ");
            let _ = pending.reply.send(Err(PeerError::Unreachable(message)));
        }
    }

    fn on_gossip(
        &mut self,
        shared: &Upward,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let trust = (self.trust)();
        let now = now_ms();
        let publisher = message.source.map(|p| member_of(&trust, &p, now));
        let version = <[u8; 8]>::try_from(message.data.as_slice()).map(u64::from_be_bytes);
        let acceptance = match (publisher, version) {
            (Some(Ok(member)), Ok(version)) if message.topic == self.topic.hash() => {
                // Only a hint: a newer list is fetched and verified like any other.
                shared.inbound.clone().heard_trust_version(&member, version);
                gossipsub::MessageAcceptance::Accept
            }
            _ => {
                debug!(%source, "gossip refused: not a member's trust-list version");
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.swarm
            .behaviour_mut()
            .members
            .inner
            .gossip
            .report_message_validation_result(&id, &source, acceptance);
    }

    fn on_answered(&mut self, joined: Result<Answered, tokio::task::JoinError>) {
        match joined {
            Ok((channel, response)) => self.respond(channel, response),
            Err(e) => warn!(error = %e, "libp2p request task failed"),
        }
    }

    fn respond(
        &mut self,
        channel: request_response::ResponseChannel<pb::PeerResponse>,
        response: pb::PeerResponse,
    ) {
        let envelope = &mut self.swarm.behaviour_mut().envelope;
        if envelope.send_response(channel, response).is_err() {
            debug!("the requester went away before the answer");
        }
    }

    fn on_request(
        &mut self,
        shared: &Upward,
        peer: PeerId,
        request: Inbound,
        channel: request_response::ResponseChannel<pb::PeerResponse>,
    ) {
        match self.admit(shared, peer, request) {
            Ok((member, request)) => {
                let inbound = shared.inbound.clone();
                self.serving
                    .spawn(async move { (channel, answer(inbound, member, request).await) });
            }
            Err(response)
                if is_rate_limited(&response) && self.holding.len() < shared.in_flight_max =>
            {
                // Held like on the gRPC port (limits::RATE_LIMITED_HOLD_MS),
                // at most as many as may be served; beyond, refused at once.
                self.holding.spawn(async move {
                    tokio::time::sleep(super::rate_limited_hold()).await;
                    (channel, response)
                });
            }
            Err(response) => self.respond(channel, response),
        }
    }

    /// The checks before a request is served, cheapest first: an active
    /// member, within its rate, a frame within the limit that decodes, room
    /// to serve it. Each refusal is the response to send.
    fn admit(
        &mut self,
        shared: &Upward,
        peer: PeerId,
        request: Inbound,
    ) -> Result<(OperatorId, pb::PeerRequest), pb::PeerResponse> {
        let admission = &shared.admission;
        let member = member_of(&(self.trust)(), &peer, now_ms()).map_err(|reason| {
            warn!(%peer, %reason, "libp2p envelope request refused: not an active member");
            from_verdict(admission.refuse(
                tonic::Code::PermissionDenied,
                Reason::NotAMember,
                format!("refused: {reason}"),
            ))
        })?;
        admission
            .take_token(&super::RateKey::Member(member.clone()))
            .map_err(from_verdict)?;
        let request = match request {
            Inbound::Request(request) => request,
            Inbound::Oversized { len, max } => {
                warn!(%member, len, max, "libp2p frame refused: oversized");
                let message = format!("frame of {len} bytes exceeds the limit of {max}; not read");
                let code = tonic::Code::ResourceExhausted;
                return Err(from_verdict(admission.refuse(
                    code,
                    Reason::Oversized,
                    message,
                )));
            }
            Inbound::Malformed(e) => {
                warn!(%member, error = %e, "libp2p request refused: malformed");
                let message = format!("not a PeerRequest: {e}");
                let code = tonic::Code::InvalidArgument;
                return Err(from_verdict(admission.refuse(
                    code,
                    Reason::Malformed,
                    message,
                )));
            }
        };
        if self.serving.len() >= shared.in_flight_max {
            return Err(from_verdict(admission.busy(self.serving.len())));
        }
        Ok((member, request))
    }
}
