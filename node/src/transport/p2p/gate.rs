//! Who may hold a libp2p connection to this node, and for how long.
//!
//! An active member (a PeerId derived from a key the trust list in force
//! lists for an active member, valid now) may connect as often as the
//! connection limits allow. Any other PeerId gets at most
//! [`limits::P2P_NON_MEMBER_CONNECTIONS_MAX`] connections at once, and each is
//! closed after [`limits::P2P_NON_MEMBER_CONNECTION_MS`], long enough for
//! identify and ping and nothing more; the driver refuses every envelope
//! request such a peer makes (`not_a_member`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    dummy, CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm,
    NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;

use crate::limits;

/// Whether a PeerId is an active member now.
pub(crate) type IsMember = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// Why a non-member's connection was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{peer} is not an active member of the federation and {open} non-member connections \
     are open already (the most allowed)"
)]
pub(crate) struct TooManyNonMembers {
    /// The refused peer.
    pub peer: PeerId,
    /// Non-member connections open.
    pub open: usize,
}

/// The gate: counts and times out non-member connections.
pub(crate) struct Gate {
    is_member: IsMember,
    /// Open non-member connections and when each must close.
    non_members: HashMap<ConnectionId, (PeerId, Instant)>,
    /// Wakes `poll` to close connections whose time is up.
    tick: tokio::time::Interval,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("non_members", &self.non_members.len())
            .finish()
    }
}

impl Gate {
    /// A gate asking `is_member` about each new connection.
    pub(crate) fn new(is_member: IsMember) -> Self {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            is_member,
            non_members: HashMap::new(),
            tick,
        }
    }

    fn admit(&mut self, connection: ConnectionId, peer: PeerId) -> Result<(), ConnectionDenied> {
        if (self.is_member)(&peer) {
            return Ok(());
        }
        let open = self.non_members.len();
        if open >= limits::P2P_NON_MEMBER_CONNECTIONS_MAX {
            return Err(ConnectionDenied::new(TooManyNonMembers { peer, open }));
        }
        let until = Instant::now() + Duration::from_millis(limits::P2P_NON_MEMBER_CONNECTION_MS);
        self.non_members.insert(connection, (peer, until));
        Ok(())
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(connection, peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(connection, peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            self.non_members.remove(&connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while self.tick.poll_tick(cx).is_ready() {}
        let now = Instant::now();
        let due = self
            .non_members
            .iter()
            .find(|(_, (_, until))| *until <= now)
            .map(|(id, (peer, _))| (*id, *peer));
        if let Some((connection, peer_id)) = due {
            // Removed once, so each connection is closed once; the
            // ConnectionClosed event that follows finds nothing to remove.
            self.non_members.remove(&connection);
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(connection),
            });
        }
        Poll::Pending
    }
}

/// Wraps the protocols that only members get (Kademlia, gossipsub): on a
/// connection of a PeerId that is not an active member when it is
/// established, `B` gets no handler at all (a `dummy` one stands in), so the
/// stranger cannot even negotiate those protocols, and `B` never hears of
/// the connection. Identify, ping and the envelope protocol (which refuses
/// strangers with a reason) stay outside.
pub(crate) struct MembersOnly<B> {
    /// The members-only protocols.
    pub(crate) inner: B,
    is_member: IsMember,
    /// Connections `inner` knows nothing of.
    strangers: std::collections::HashSet<ConnectionId>,
}

impl<B> std::fmt::Debug for MembersOnly<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembersOnly")
            .field("strangers", &self.strangers.len())
            .finish()
    }
}

impl<B> MembersOnly<B> {
    /// `inner` for members only, as `is_member` says.
    pub(crate) fn new(inner: B, is_member: IsMember) -> Self {
        Self {
            inner,
            is_member,
            strangers: std::collections::HashSet::new(),
        }
    }

    /// Whether `event` concerns a connection `inner` was kept out of.
    fn hides(&mut self, event: &FromSwarm) -> bool {
        match event {
            FromSwarm::ConnectionEstablished(e) => self.strangers.contains(&e.connection_id),
            FromSwarm::ConnectionClosed(e) => self.strangers.remove(&e.connection_id),
            FromSwarm::AddressChange(e) => self.strangers.contains(&e.connection_id),
            _ => false,
        }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for MembersOnly<B> {
    type ConnectionHandler = either::Either<THandler<B>, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !(self.is_member)(&peer) {
            self.strangers.insert(connection);
            return Ok(either::Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(connection, peer, local, remote)
            .map(either::Either::Left)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(connection, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !(self.is_member)(&peer) {
            self.strangers.insert(connection);
            return Ok(either::Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(connection, peer, addr, role, port_use)
            .map(either::Either::Left)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if !self.hides(&event) {
            self.inner.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            either::Either::Left(event) => {
                self.inner
                    .on_connection_handler_event(peer, connection, event);
            }
            either::Either::Right(never) => match never {},
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner
            .poll(cx)
            .map(|event| event.map_in(either::Either::Left))
    }
}
