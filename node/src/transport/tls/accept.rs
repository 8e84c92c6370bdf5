//! The peer port's accept loop and the connections it hands to tonic.
//!
//! Handshakes are bounded in number ([`limits::TLS_HANDSHAKES_MAX`], a slot
//! taken before `accept`, so excess connections wait in the kernel's queue)
//! and in time ([`limits::TLS_HANDSHAKE_TIMEOUT_MS`]); authenticated
//! connections are bounded in total and per peer key ([`ConnectionSlot`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::certificate::certificate_key;
use crate::core::keys::{KeyId, PublicKey};
use crate::limits;

/// The authenticated peer of a connection, in the extensions of every
/// request served on it (tonic's connect info).
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The key its certificate carries, checked at the handshake.
    pub key: PublicKey,
}

/// A peer connection whose handshake succeeded.
#[derive(Debug)]
pub struct PeerConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    identity: PeerIdentity,
    /// Counts this connection as open until it is dropped.
    _slot: ConnectionSlot,
}

/// Open authenticated connections on the peer port, in total and per key.
#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_key: std::collections::HashMap<KeyId, usize>,
}

/// One open connection's place in [`OpenConnections`], given back on drop.
#[derive(Debug)]
struct ConnectionSlot {
    open: Arc<std::sync::Mutex<OpenConnections>>,
    key_id: KeyId,
}

impl ConnectionSlot {
    /// Counts a new connection of `key_id`, or says which bound it would exceed
    /// ([`limits::PEER_CONNECTIONS_MAX`], [`limits::PEER_CONNECTIONS_PER_KEY_MAX`]).
    fn take(open: &Arc<std::sync::Mutex<OpenConnections>>, key_id: KeyId) -> Result<Self, String> {
        Self::take_within(
            open,
            key_id,
            limits::PEER_CONNECTIONS_MAX,
            limits::PEER_CONNECTIONS_PER_KEY_MAX,
        )
    }

    fn take_within(
        open: &Arc<std::sync::Mutex<OpenConnections>>,
        key_id: KeyId,
        total_max: usize,
        per_key_max: usize,
    ) -> Result<Self, String> {
        let mut counts = match open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if counts.total >= total_max {
            return Err(format!(
                "{total_max} peer connections are open, the most this node keeps"
            ));
        }
        let of_key = counts.per_key.entry(key_id.clone()).or_insert(0);
        if *of_key >= per_key_max {
            return Err(format!(
                "key {key_id} already holds {per_key_max} connections, the most one peer may"
            ));
        }
        *of_key += 1;
        counts.total += 1;
        Ok(Self {
            open: open.clone(),
            key_id,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_key.get_mut(&self.key_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_key.remove(&self.key_id);
            }
        }
    }
}

impl tonic::transport::server::Connected for PeerConnection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener`, runs their TLS handshakes (at most
/// [`limits::TLS_HANDSHAKES_MAX`] at once, each within
/// [`limits::TLS_HANDSHAKE_TIMEOUT_MS`]) and hands the authenticated ones to
/// `accepted`, until `cancel` fires. A refused handshake is logged with the
/// peer's address and reason, and costs nothing more. Serve the connections
/// with tonic's `serve_with_incoming_shutdown` over a `ReceiverStream` of the
/// other end of `accepted`.
pub async fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    accepted: mpsc::Sender<Result<PeerConnection, io::Error>>,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(limits::TLS_HANDSHAKES_MAX));
    let open = Arc::new(std::sync::Mutex::new(OpenConnections::default()));
    let mut handshakes = JoinSet::new();
    loop {
        // The slot is taken before accepting: excess connections wait in the kernel's queue.
        let slot = tokio::select! {
            () = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, remote_addr) = tokio::select! {
            () = cancel.cancelled() => break,
            incoming = listener.accept() => match incoming {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(error = %e, "peer port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while handshakes.try_join_next().is_some() {}
        handshakes.spawn(handshake(
            acceptor.clone(),
            tcp,
            remote_addr,
            open.clone(),
            accepted.clone(),
            slot,
        ));
    }
    handshakes.shutdown().await;
}

/// Runs one accepted connection's TLS handshake and, if the peer is
/// authenticated and has room ([`ConnectionSlot`]), hands the connection to
/// `accepted`. The handshake `_slot` is held until then.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    open: Arc<std::sync::Mutex<OpenConnections>>,
    accepted: mpsc::Sender<Result<PeerConnection, io::Error>>,
    _slot: OwnedSemaphorePermit,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(%remote_addr, error = %e, "cannot set TCP_NODELAY");
    }
    let deadline = Duration::from_millis(limits::TLS_HANDSHAKE_TIMEOUT_MS);
    let stream = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            warn!(%remote_addr, error = %e, "peer TLS handshake refused");
            return;
        }
        Err(_) => {
            warn!(%remote_addr, "peer TLS handshake timed out");
            return;
        }
    };
    // The verifier accepted exactly one certificate with an Ed25519 key.
    let key = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(certificate_key);
    let Some(Ok(key)) = key else {
        warn!(%remote_addr, "peer TLS connection without a usable certificate; closed");
        return;
    };
    let slot = match ConnectionSlot::take(&open, key.key_id()) {
        Ok(slot) => slot,
        Err(reason) => {
            warn!(%remote_addr, key_id = %key.key_id(), %reason, "peer TLS connection closed: too many open");
            return;
        }
    };
    debug!(%remote_addr, key_id = %key.key_id(), "peer TLS connection authenticated");
    let identity = PeerIdentity { remote_addr, key };
    let connection = PeerConnection {
        stream,
        identity,
        _slot: slot,
    };
    // A closed channel means the server is shutting down; the connection just closes.
    let _ = accepted.send(Ok(connection)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound on all peer connections holds across keys, each key's bound
    /// within it, and a dropped connection gives its place back to any key.
    /// (The node test `limits::a_member_key_holds_at_most_its_tls_connections`
    /// shows the per-key bound on real connections; 1,024 real ones would
    /// only be slower.)
    #[test]
    fn connection_slots_hold_the_total_and_per_key_bounds() {
        let open = Arc::new(std::sync::Mutex::new(OpenConnections::default()));
        let key = |n: u8| KeyId::from_wire(&format!("{n:016x}"));
        let take = |k: u8| ConnectionSlot::take_within(&open, key(k), 5, 2);
        let a = [take(1).unwrap(), take(1).unwrap()];
        assert!(take(1).unwrap_err().contains("already holds 2"));
        let b = [take(2).unwrap(), take(2).unwrap()];
        let c = take(3).unwrap();
        let full = take(4).unwrap_err();
        assert!(full.contains("5 peer connections are open"), "{full}");
        assert!(take(1).is_err() && take(3).is_err());
        drop(c);
        let d = take(4).unwrap();
        assert!(take(5).is_err());
        drop(a);
        let _e = [take(1).unwrap(), take(6).unwrap()];
        assert!(take(7).is_err());
        assert_eq!(open.lock().unwrap().total, 5);
        drop((b, d, _e));
        assert_eq!(open.lock().unwrap().total, 0);
        assert!(open.lock().unwrap().per_key.is_empty());
    }
}
