//! The swarm's [`Behaviour`]: which libp2p protocols a node runs, each
//! configured from the node's limits, and how the swarm is built and bound.
//!
//! The [`gate`](super::gate) and connection limits come first, so that a
//! connection they deny never reaches the protocols; Kademlia and gossipsub
//! sit behind [`MembersOnly`](super::gate::MembersOnly), so a stranger cannot
//! even negotiate them.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, identity, kad, ping, Multiaddr, Swarm};

use super::codec::{self, Codec};
use super::{gate, Error, IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL};
use crate::limits;

use crate::limits::FRAMING_BYTES;

/// The libp2p protocols of a node.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) limits: libp2p::connection_limits::Behaviour,
    pub(super) gate: gate::Gate,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) envelope: request_response::Behaviour<Codec>,
    pub(super) members: gate::MembersOnly<MemberProtocols>,
}

/// The protocols a stranger cannot even negotiate ([`gate::MembersOnly`]).
#[derive(NetworkBehaviour)]
pub(super) struct MemberProtocols {
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) gossip: gossipsub::Behaviour,
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

/// The swarm of `keypair`: TCP (noise, yamux) and QUIC, running [`Behaviour`].
pub(super) fn swarm(
    keypair: identity::Keypair,
    message_bytes_max: usize,
    is_member: gate::IsMember,
) -> Result<Swarm<Behaviour>, Error> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
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
    Ok(swarm)
}

/// Binds every address of `listen`; returns the addresses bound (with the
/// actual ports) once each listener has one, or the first that failed.
pub(super) async fn listen(
    swarm: &mut Swarm<Behaviour>,
    listen: &[Multiaddr],
) -> Result<Vec<Multiaddr>, Error> {
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
    Ok(listen_addrs)
}
