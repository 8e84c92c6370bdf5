//! The `OperatorPeer` gRPC server (peers deliver envelopes here) and the
//! client side used by the delivery loop.
//!
//! Size limits are enforced by tonic before decoding (the request is a bytes
//! field of at most the message limit plus framing), and again by the core.
//!
//! Peers talk over TLS ([`super::tls`]) unless the node runs with
//! `[transport] insecure_plaintext`. Over TLS, every request is checked
//! against the connection's authenticated key under the trust list in force
//! now, and an envelope is accepted only from the member the connection
//! belongs to: a member delivers and calls with envelopes it signed itself.
//! `FetchTrustList` needs the same authenticated active member; the list is
//! not secret, but the peer port serves members only (a suspended member
//! learns of its status from the list pushed to it).
//!
//! Every request then takes a token from its peer's bucket (keyed by the
//! authenticated operator, before the envelope is decoded); the excess is
//! refused with `RESOURCE_EXHAUSTED` and reason `rate_limited`, which the
//! sender's outbox retries with backoff.
//!
//! Both gRPC servers (this one and the API's) serve at most
//! [`limits::CONCURRENT_REQUESTS_MAX`] requests at once each ([`InFlight`];
//! [`crate::config::Limits::concurrent_requests_max`]): a request over the
//! cap is refused at once with `RESOURCE_EXHAUSTED` and reason `busy`, as on
//! libp2p.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mim4_proto::v1 as pb;
use pb::operator_peer_client::OperatorPeerClient;
use pb::operator_peer_server::{OperatorPeer, OperatorPeerServer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tracing::{debug, warn};

use super::tls::{self, PeerIdentity, PeerTls};
use super::{Admission, Inbound, Operation, PeerError, RateKey, Reason, Refusal};
use crate::clock::now_ms;
use crate::core::ids::OperatorId;
use crate::counters::Counters;
use crate::limits;

use crate::limits::FRAMING_BYTES;

struct PeerService {
    /// The driver, which verifies and applies what arrives.
    inbound: Arc<dyn Inbound>,
    admission: Arc<Admission>,
    /// Whether connections are TLS: then every request must carry a [`PeerIdentity`].
    tls: bool,
}

impl PeerService {
    /// The member this request's connection is authenticated as, checked
    /// against the trust list in force now (the connection may predate a
    /// suspension or the end of a key); `None` in plaintext mode.
    fn peer<T>(&self, request: &Request<T>) -> Result<Option<OperatorId>, Status> {
        if !self.tls {
            return Ok(None);
        }
        let identity = request.extensions().get::<PeerIdentity>().ok_or_else(|| {
            Status::unauthenticated("no authenticated TLS peer on this connection")
        })?;
        self.inbound
            .trust()
            .active_member_with_key(&identity.key, now_ms())
            .map(Some)
            .map_err(|e| {
                warn!(remote_addr = %identity.remote_addr, reason = %e, "request from a TLS peer no longer allowed");
                verdict_status(self.admission.refuse(
                    Code::PermissionDenied,
                    Reason::TlsPeerRefused,
                    format!("TLS peer refused: {e}"),
                ))
            })
    }
}

impl PeerService {
    /// Takes a token from the bucket of `peer` (or, in plaintext mode, of the
    /// remote address): checked before the envelope is decoded, so a flood
    /// costs this node a map lookup per request.
    ///
    /// A refused request is answered only after [`limits::RATE_LIMITED_HOLD_MS`]:
    /// a sender that retries at once (a flood) is slowed to a refusal per
    /// hold per stream instead of costing the node one per round trip, and
    /// its HTTP/2 streams stay taken meanwhile (backpressure). During the
    /// hold the request is dropped and its [`InFlightSlot`] given back: a
    /// held refusal costs a timer, and a flooding peer's held refusals
    /// cannot take the slots of the other peers' requests.
    async fn admit<T>(
        &self,
        request: Request<T>,
        peer: Option<&OperatorId>,
    ) -> Result<Request<T>, Status> {
        let Err(refused) = self.check_rate(&request, peer) else {
            return Ok(request);
        };
        if let Some(slot) = request.extensions().get::<InFlightSlot>() {
            slot.release();
        }
        drop(request);
        tokio::time::sleep(super::rate_limited_hold()).await;
        Err(refused)
    }

    /// Admits a request carrying an envelope (`bytes` takes it out), hands
    /// it to the driver as `operation`, and wraps its answer with `response`.
    async fn serve<T, R>(
        &self,
        request: Request<T>,
        bytes: impl FnOnce(T) -> Vec<u8>,
        operation: Operation,
        response: impl FnOnce(Vec<u8>) -> R,
    ) -> Result<Response<R>, Status> {
        let peer = self.peer(&request)?;
        let request = self.admit(request, peer.as_ref()).await?;
        let bytes = bytes(request.into_inner());
        let answer = self.inbound.clone().handle(operation, bytes, peer).await;
        answer
            .map(|answer| Response::new(response(answer)))
            .map_err(refusal_status)
    }

    fn check_rate<T>(&self, request: &Request<T>, peer: Option<&OperatorId>) -> Result<(), Status> {
        let key = match peer {
            Some(peer) => RateKey::Member(peer.clone()),
            None => RateKey::Address(request.remote_addr().map(|a| a.ip())),
        };
        self.admission.take_token(&key).map_err(verdict_status)
    }
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerService")
    }
}

#[tonic::async_trait]
impl OperatorPeer for PeerService {
    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let receipt = |receipt| pb::DeliverResponse { receipt };
        self.serve(request, |r| r.envelope, Operation::Deliver, receipt)
            .await
    }

    async fn call(
        &self,
        request: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let answer = |envelope| pb::CallResponse { envelope };
        self.serve(request, |r| r.envelope, Operation::Call, answer)
            .await
    }

    async fn fetch_trust_list(
        &self,
        request: Request<pb::FetchTrustListRequest>,
    ) -> Result<Response<pb::FetchTrustListResponse>, Status> {
        let peer = self.peer(&request)?;
        self.admit(request, peer.as_ref()).await?;
        Ok(Response::new(pb::FetchTrustListResponse {
            trust_list: self.inbound.trust().signed().encode(),
        }))
    }
}

/// Metadata key of the machine-readable refusal reason: a stable snake_case
/// name ([`Reason::as_str`]), so a peer or a test
/// tells refusals apart without parsing the message meant for people.
pub const REASON_METADATA_KEY: &str = "mim4-reason";

/// The conversion from a refusal to a gRPC status ([`super::verdict`] decides
/// code and reason for every transport). A replay carries the original
/// receipt in the status details, so a retrying sender can finish; every
/// refusal names its reason under [`REASON_METADATA_KEY`].
fn refusal_status(refusal: Refusal) -> Status {
    verdict_status(super::verdict(refusal))
}

/// A verdict as a gRPC status, its reason under [`REASON_METADATA_KEY`].
pub(crate) fn verdict_status(verdict: super::Verdict) -> Status {
    let mut status = match verdict.receipt {
        Some(receipt) => Status::with_details(verdict.code, verdict.message, receipt.into()),
        None => Status::new(verdict.code, verdict.message),
    };
    status.metadata_mut().insert(
        REASON_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(verdict.reason.as_str()),
    );
    status
}

/// Caps the requests a gRPC service serves at once, across all connections
/// (tonic's per-connection limit only queues): a request that finds all
/// slots taken is answered at once with [`super::busy`] (`RESOURCE_EXHAUSTED`,
/// reason `busy`), before its body is read, so the excess costs neither
/// memory nor a place in a queue.
///
/// A request holds its slot from its headers until its response is ready
/// (the body of a unary answer is built by then); the slot is in the
/// request's extensions ([`InFlightSlot`]), so the service may give it back
/// earlier. Wraps one service, not the router: gRPC health stays answerable
/// on a busy node.
#[derive(Clone)]
pub(crate) struct InFlight<S> {
    inner: S,
    slots: Arc<Semaphore>,
    /// The number of slots, for the refusal's text.
    max: usize,
    /// Where refusals are counted (`busy`, shown in `GetStatus`).
    counters: Arc<Counters>,
}

impl<S> InFlight<S> {
    /// `inner`, serving at most `max` requests at once.
    pub(crate) fn new(inner: S, max: usize, counters: Arc<Counters>) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            counters,
        }
    }
}

impl<S> std::fmt::Debug for InFlight<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("max", &self.max)
            .field("free", &self.slots.available_permits())
            .finish()
    }
}

impl<S: NamedService> NamedService for InFlight<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for InFlight<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            // Per refusal only at debug: a flood must not become a log flood.
            debug!(service = S::NAME, max = self.max, "request refused: busy");
            self.counters.count(Reason::Busy);
            let response = verdict_status(super::busy(self.max)).into_http();
            return Box::pin(std::future::ready(Ok(response)));
        };
        let slot = InFlightSlot(Arc::new(Mutex::new(Some(permit))));
        request.extensions_mut().insert(slot.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(slot);
            response
        })
    }
}

/// A request's slot among those [`InFlight`] admits, in the request's
/// extensions; given back when the response is ready, or earlier by
/// [`InFlightSlot::release`].
#[derive(Clone, Debug)]
pub(crate) struct InFlightSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl InFlightSlot {
    /// Gives the slot back now, for a request that waits without holding
    /// anything worth bounding (a held rate-limited refusal).
    pub(crate) fn release(&self) {
        let mut permit = match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        permit.take();
    }
}

/// How the peer server is bounded (from `[limits]`).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// The largest envelope, in bytes.
    pub message_bytes_max: usize,
    /// Requests served at once; the excess is refused `busy`.
    pub in_flight_max: usize,
}

/// Serves `OperatorPeer` (and gRPC health) on `listener` until `cancel`
/// fires: over TLS with `tls`, in plaintext without. Every admitted request
/// goes to `inbound`.
pub async fn serve(
    inbound: Arc<dyn Inbound>,
    admission: Arc<Admission>,
    bounds: ServeLimits,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<PeerTls>>,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let message_max = bounds.message_bytes_max + FRAMING_BYTES;
    let counters = admission.counters().clone();
    // Requests are envelopes; responses are receipts or the trust list, which may be larger.
    let service = OperatorPeerServer::new(PeerService {
        inbound,
        admission,
        tls: tls.is_some(),
    })
    .max_decoding_message_size(message_max)
    .max_encoding_message_size(limits::TRUST_LIST_BYTES_MAX + FRAMING_BYTES);
    let service = InFlight::new(service, bounds.in_flight_max, counters);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<InFlight<OperatorPeerServer<PeerService>>>()
        .await;
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(limits::STREAMS_PER_CONNECTION_MAX as usize)
        .max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX)
        .timeout(Duration::from_millis(limits::DELIVERY_TIMEOUT_MS))
        .add_service(health_service)
        .add_service(service);
    let served = match tls {
        None => {
            router
                .serve_with_incoming_shutdown(tokio_stream_from(listener), cancel.cancelled_owned())
                .await
        }
        Some(tls) => {
            // Handshakes run in the accept loop; tonic serves what it hands over.
            let (accepted, incoming) = tokio::sync::mpsc::channel(limits::TLS_HANDSHAKES_MAX);
            let accepting = tls::accept(listener, tls.server_config(), accepted, cancel.clone());
            let serving = router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                cancel.cancelled_owned(),
            );
            let ((), served) = tokio::join!(accepting, serving);
            served
        }
    };
    served
}

/// A member's peer endpoint as the trust list gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEndpoint {
    /// `https://`: TLS; `http://`: plaintext, for development federations only.
    pub tls: bool,
    /// Host name or IP address (an IPv6 address in brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Why a peer endpoint is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer endpoint {endpoint:?}: {reason}")]
pub struct EndpointError {
    /// The endpoint as given.
    pub endpoint: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a peer endpoint: `https://host:port`, or `http://host:port` for a
/// development federation whose nodes run with `insecure_plaintext`.
pub fn parse_endpoint(text: &str) -> Result<PeerEndpoint, EndpointError> {
    let error = |reason| EndpointError {
        endpoint: text.to_owned(),
        reason,
    };
    let uri: tonic::transport::Uri = text
        .parse()
        .map_err(|_| error("not a URL such as https://peer.example.org:7401"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(error(
                "the scheme must be https:// (http:// only without TLS)",
            ))
        }
    };
    let authority = uri.authority().ok_or_else(|| error("no host"))?;
    if authority.as_str().contains('@') {
        return Err(error("user information is not allowed"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(error("no host"));
    }
    let port = authority
        .port_u16()
        .ok_or_else(|| error("the port must be given, e.g. https://peer.example.org:7401"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(error("a path or query is not allowed"));
    }
    Ok(PeerEndpoint {
        tls,
        host: host.to_owned(),
        port,
    })
}

/// A lazily connecting channel to `member`'s peer server at `endpoint`:
/// over TLS that accepts only `member`'s keys when `tls` is given, else in
/// plaintext. The endpoint's scheme must agree, so a TLS node never falls
/// back to plaintext.
pub fn channel(
    endpoint: &str,
    member: &OperatorId,
    tls: Option<&PeerTls>,
) -> Result<Channel, String> {
    let parsed = parse_endpoint(endpoint).map_err(|e| format!("{member}: {e}"))?;
    let builder = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("bad endpoint {endpoint:?} in the trust list: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_millis(limits::DELIVERY_TIMEOUT_MS))
        .tcp_nodelay(true);
    match (tls, parsed.tls) {
        (Some(tls), true) => {
            let connector = tls
                .connector(member, &parsed.host)
                .map_err(|e| format!("{member}: {e}"))?;
            Ok(builder.connect_with_connector_lazy(connector))
        }
        (None, false) => Ok(builder.connect_lazy()),
        (Some(_), false) => Err(format!(
            "{member}'s endpoint {endpoint} is plaintext (http://), but this node talks to \
             peers over TLS only: governance must list an https:// endpoint"
        )),
        (None, true) => Err(format!(
            "{member}'s endpoint {endpoint} is https://, but this node runs with \
             [transport] insecure_plaintext = true"
        )),
    }
}

/// Adapts a bound listener to the stream tonic expects.
pub(crate) fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A failed call as one line: code and message, then for a transport
/// failure its causes, which say why (say, the peer refused this node's
/// certificate: `received fatal alert: HandshakeFailure`).
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Cached gRPC clients, one per (member, endpoint): a TLS channel is pinned
/// to the member it dials.
#[derive(Debug)]
pub struct PeerClients {
    message_max: usize,
    /// This node's TLS identity; `None` in plaintext mode.
    tls: Option<Arc<PeerTls>>,
    clients: Mutex<HashMap<(OperatorId, String), OperatorPeerClient<Channel>>>,
}

impl PeerClients {
    /// An empty cache; `message_bytes_max` bounds what a peer may send back.
    /// Peers are dialled over TLS with `tls`, in plaintext without.
    pub fn new(message_bytes_max: usize, tls: Option<Arc<PeerTls>>) -> Self {
        Self {
            message_max: message_bytes_max + FRAMING_BYTES,
            tls,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Drops every cached client, so that later calls connect, and run the
    /// TLS checks, again: for when the trust list changes.
    pub fn forget_all(&self) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.clear();
        }
    }

    fn client(
        &self,
        member: &OperatorId,
        endpoint: &str,
    ) -> Result<OperatorPeerClient<Channel>, PeerError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| PeerError::Unreachable("client cache poisoned".to_owned()))?;
        let cache_key = (member.clone(), endpoint.to_owned());
        if let Some(client) = clients.get(&cache_key) {
            return Ok(client.clone());
        }
        let channel =
            channel(endpoint, member, self.tls.as_deref()).map_err(PeerError::Unreachable)?;
        // Answers may be a trust list, larger than an envelope; the core bounds receipts again.
        let client = OperatorPeerClient::new(channel)
            .max_decoding_message_size(limits::TRUST_LIST_BYTES_MAX + FRAMING_BYTES)
            .max_encoding_message_size(self.message_max);
        // The map is bounded by the trust list: one entry per member endpoint.
        if clients.len() >= limits::MEMBERS_MAX {
            clients.clear();
        }
        clients.insert(cache_key, client.clone());
        Ok(client)
    }

    /// Delivers encoded envelope bytes; returns the encoded receipt. A replay
    /// refusal that carries the original receipt counts as delivered.
    pub async fn deliver(
        &self,
        member: &OperatorId,
        endpoint: &str,
        envelope: Vec<u8>,
    ) -> Result<Vec<u8>, PeerError> {
        let mut client = self.client(member, endpoint)?;
        match client.deliver(pb::DeliverRequest { envelope }).await {
            Ok(response) => Ok(response.into_inner().receipt),
            Err(status) if status.code() == Code::AlreadyExists && !status.details().is_empty() => {
                Ok(status.details().to_vec())
            }
            Err(status) => {
                let error = peer_error(&status);
                // A rate-limited or busy attempt is retried from the outbox like an unreachable peer.
                let expected = matches!(&error, PeerError::Unreachable(_))
                    || matches!(
                        &error,
                        PeerError::Refused {
                            code: Code::Unavailable,
                            ..
                        }
                    )
                    || matches!(&error, PeerError::Refused { reason, .. }
                        if reason == Reason::RateLimited.as_str() || reason == Reason::Busy.as_str());
                if !expected {
                    warn!(code = ?status.code(), message = status.message(), "peer refused delivery");
                }
                Err(error)
            }
        }
    }

    /// Makes a synchronous call; returns the encoded answer envelope.
    pub async fn call(
        &self,
        member: &OperatorId,
        endpoint: &str,
        envelope: Vec<u8>,
    ) -> Result<Vec<u8>, PeerError> {
        let mut client = self.client(member, endpoint)?;
        client
            .call(pb::CallRequest { envelope })
            .await
            .map(|r| r.into_inner().envelope)
            .map_err(|s| peer_error(&s))
    }

    /// Fetches a peer's current signed trust list.
    pub async fn fetch_trust_list(
        &self,
        member: &OperatorId,
        endpoint: &str,
    ) -> Result<Vec<u8>, PeerError> {
        let mut client = self.client(member, endpoint)?;
        client
            .fetch_trust_list(pb::FetchTrustListRequest {})
            .await
            .map(|r| r.into_inner().trust_list)
            .map_err(|s| peer_error(&s))
    }
}

/// A failed gRPC request as a [`PeerError`]: a transport failure (no
/// connection, TLS refused, deadline) is [`PeerError::Unreachable`], so
/// another transport may be tried; a status the peer sent is its verdict.
fn peer_error(status: &Status) -> PeerError {
    let transport = std::error::Error::source(status).is_some();
    let reason = status
        .metadata()
        .get(REASON_METADATA_KEY)
        .and_then(|r| r.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let unreachable = transport
        || status.code() == Code::DeadlineExceeded
        || (status.code() == Code::Unavailable && reason.is_empty());
    if unreachable {
        PeerError::Unreachable(describe(status))
    } else {
        PeerError::Refused {
            code: status.code(),
            reason,
            message: status.message().to_owned(),
        }
    }
}
