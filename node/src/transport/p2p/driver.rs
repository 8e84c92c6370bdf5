//! The swarm task: the one [`Driver`] that owns the swarm.
//!
//! It runs one loop over the handle's [`Command`]s, the swarm's events, the
//! answers of inbound requests and a one-second tick. Outbound requests go to
//! the first reachable candidate PeerId, then through a Kademlia lookup of
//! the member's current addresses. Inbound requests pass the shared
//! admission step ([`Admission`](crate::transport::Admission)) and are served
//! in a bounded `JoinSet` by the driver above ([`Upward`]). Trust-list
//! versions are announced and heard by gossip; a new list refreshes the
//! routing table and closes the connections of former members.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, Multiaddr, PeerId, Swarm};
use mim4_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::behaviour::{Behaviour, BehaviourEvent, MemberProtocolsEvent};
use super::codec::Inbound;
use super::identity::{candidate_peers, dial_addrs, member_of};
use super::{Command, TrustSource};
use crate::clock::now_ms;
use crate::core::ids::OperatorId;
use crate::core::trust::{Member, MemberStatus};
use crate::limits;
use crate::transport::Operation;
use crate::transport::{self, verdict, PeerError, Reason, Verdict};

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
    inbound: Arc<dyn transport::Inbound>,
    member: OperatorId,
    request: pb::PeerRequest,
) -> pb::PeerResponse {
    use pb::peer_request::Kind as Req;
    use pb::peer_response::Kind as Resp;
    let (operation, envelope) = match request.kind {
        Some(Req::Deliver(d)) => (Operation::Deliver, d.envelope),
        Some(Req::Call(c)) => (Operation::Call, c.envelope),
        Some(Req::FetchTrustList(_)) => {
            let trust_list = inbound.trust().signed().encode();
            let kind = Resp::FetchTrustList(pb::FetchTrustListResponse { trust_list });
            return pb::PeerResponse { kind: Some(kind) };
        }
        None => {
            return refusal(
                tonic::Code::InvalidArgument,
                Reason::Malformed,
                "empty request".into(),
                None,
            )
        }
    };
    let kind = match inbound.handle(operation, envelope, Some(member)).await {
        Ok(receipt) if operation == Operation::Deliver => {
            Resp::Deliver(pb::DeliverResponse { receipt })
        }
        Ok(envelope) => Resp::Call(pb::CallResponse { envelope }),
        Err(refused) => return from_verdict(verdict(refused)),
    };
    pb::PeerResponse { kind: Some(kind) }
}

/// What the swarm task hands admitted requests to, and how it bounds them.
pub struct Upward {
    /// The driver, which verifies and applies what arrives.
    pub inbound: Arc<dyn transport::Inbound>,
    /// The admission step shared with the gRPC port.
    pub admission: Arc<transport::Admission>,
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
    /// The task for `swarm`, taking `commands` from the handle, with the
    /// trust list `trust` reads.
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        trust: TrustSource,
    ) -> Self {
        let federation = trust().list().federation_id.clone();
        Self {
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
        }
    }

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
                    tokio::time::sleep(transport::rate_limited_hold()).await;
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
            .take_token(&transport::RateKey::Member(member.clone()))
            .map_err(from_verdict)?;
        let refuse =
            |code, reason, message| Err(from_verdict(admission.refuse(code, reason, message)));
        let request = match request {
            Inbound::Request(request) => request,
            Inbound::Oversized { len, max } => {
                warn!(%member, len, max, "libp2p frame refused: oversized");
                let message = format!("frame of {len} bytes exceeds the limit of {max}; not read");
                return refuse(tonic::Code::ResourceExhausted, Reason::Oversized, message);
            }
            Inbound::Malformed(e) => {
                warn!(%member, error = %e, "libp2p request refused: malformed");
                let message = format!("not a PeerRequest: {e}");
                return refuse(tonic::Code::InvalidArgument, Reason::Malformed, message);
            }
        };
        if self.serving.len() >= shared.in_flight_max {
            return Err(from_verdict(admission.busy(self.serving.len())));
        }
        Ok((member, request))
    }
}

/// The gossipsub topic of trust-list versions in `federation`.
fn trust_topic(federation: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("mim4/{federation}/trust-list/1"))
}
