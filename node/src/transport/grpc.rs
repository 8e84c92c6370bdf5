//! The `OperatorPeer` gRPC server (peers deliver envelopes here) and the
//! client side used by the delivery loop.
//!
//! Size limits are enforced by tonic before decoding (the request is a bytes
//! field of at most the message limit plus framing), and again by the core.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mim4_proto::v1 as pb;
use pb::operator_peer_client::OperatorPeerClient;
use pb::operator_peer_server::{OperatorPeer, OperatorPeerServer};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tracing::warn;

use crate::core::envelope::RejectReason;
use crate::limits;
use crate::node::{Error, Refusal, Shared};

/// Room for protobuf framing around the envelope bytes.
const FRAMING_BYTES: usize = 64;

struct PeerService {
    shared: Arc<Shared>,
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
        let bytes = request.into_inner().envelope;
        match self.shared.receive(&bytes).await {
            Ok(receipt) => Ok(Response::new(pb::DeliverResponse { receipt })),
            Err(refusal) => Err(refusal_status(refusal)),
        }
    }

    async fn call(
        &self,
        request: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let bytes = request.into_inner().envelope;
        match self.shared.answer_call(&bytes).await {
            Ok(envelope) => Ok(Response::new(pb::CallResponse { envelope })),
            Err(refusal) => Err(refusal_status(refusal)),
        }
    }

    async fn fetch_trust_list(
        &self,
        _request: Request<pb::FetchTrustListRequest>,
    ) -> Result<Response<pb::FetchTrustListResponse>, Status> {
        Ok(Response::new(pb::FetchTrustListResponse {
            trust_list: self.shared.trust().signed().encode(),
        }))
    }
}

/// The one conversion from a refusal to a gRPC status. A replay carries the
/// original receipt in the status details, so a retrying sender can finish.
fn refusal_status(refusal: Refusal) -> Status {
    let message = refusal.to_string();
    match refusal {
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
            match receipt {
                Some(receipt) => Status::with_details(code, message, receipt.into()),
                None => Status::new(code, message),
            }
        }
        Refusal::Unusable { .. } => Status::invalid_argument(message),
        Refusal::NotFound(_) => Status::not_found(message),
        Refusal::Unavailable(_) => Status::unavailable(message),
        Refusal::Store(_) => Status::unavailable(message),
    }
}

/// Serves `OperatorPeer` (and gRPC health) on `listener` until `cancel` fires.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let message_max = shared.config().envelope_limits.message_bytes_max + FRAMING_BYTES;
    // Requests are envelopes; responses are receipts or the trust list, which may be larger.
    let service = OperatorPeerServer::new(PeerService { shared })
        .max_decoding_message_size(message_max)
        .max_encoding_message_size(limits::TRUST_LIST_BYTES_MAX + FRAMING_BYTES);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OperatorPeerServer<PeerService>>()
        .await;
    let incoming = tokio_stream_from(listener);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(limits::STREAMS_PER_CONNECTION_MAX as usize)
        .max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX)
        .timeout(Duration::from_millis(limits::DELIVERY_TIMEOUT_MS))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
        .map_err(|e| Error::Server(format!("peer server: {e}")))
}

/// Adapts a bound listener to the stream tonic expects.
pub(crate) fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Cached gRPC clients, one per peer endpoint.
#[derive(Debug)]
pub struct PeerClients {
    message_max: usize,
    clients: Mutex<HashMap<String, OperatorPeerClient<Channel>>>,
}

impl PeerClients {
    /// An empty cache; `message_bytes_max` bounds what a peer may send back.
    pub fn new(message_bytes_max: usize) -> Self {
        Self {
            message_max: message_bytes_max + FRAMING_BYTES,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, endpoint: &str) -> Result<OperatorPeerClient<Channel>, String> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| "client cache poisoned".to_owned())?;
        if let Some(client) = clients.get(endpoint) {
            return Ok(client.clone());
        }
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| format!("bad endpoint {endpoint:?} in the trust list: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_millis(limits::DELIVERY_TIMEOUT_MS))
            .tcp_nodelay(true)
            .connect_lazy();
        // Answers may be a trust list, larger than an envelope; the core bounds receipts again.
        let client = OperatorPeerClient::new(channel)
            .max_decoding_message_size(limits::TRUST_LIST_BYTES_MAX + FRAMING_BYTES)
            .max_encoding_message_size(self.message_max);
        // The map is bounded by the trust list: one entry per member endpoint.
        if clients.len() >= limits::MEMBERS_MAX {
            clients.clear();
        }
        clients.insert(endpoint.to_owned(), client.clone());
        Ok(client)
    }

    /// Delivers encoded envelope bytes; returns the encoded receipt. A replay
    /// refusal that carries the original receipt counts as delivered.
    pub async fn deliver(&self, endpoint: &str, envelope: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut client = self.client(endpoint)?;
        match client.deliver(pb::DeliverRequest { envelope }).await {
            Ok(response) => Ok(response.into_inner().receipt),
            Err(status) if status.code() == Code::AlreadyExists && !status.details().is_empty() => {
                Ok(status.details().to_vec())
            }
            Err(status) => {
                if status.code() != Code::Unavailable {
                    warn!(code = ?status.code(), message = status.message(), "peer refused delivery");
                }
                Err(format!("{:?}: {}", status.code(), status.message()))
            }
        }
    }

    /// Makes a synchronous call; returns the encoded answer envelope.
    pub async fn call(&self, endpoint: &str, envelope: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut client = self.client(endpoint)?;
        client
            .call(pb::CallRequest { envelope })
            .await
            .map(|r| r.into_inner().envelope)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    /// Fetches a peer's current signed trust list.
    pub async fn fetch_trust_list(&self, endpoint: &str) -> Result<Vec<u8>, String> {
        let mut client = self.client(endpoint)?;
        client
            .fetch_trust_list(pb::FetchTrustListRequest {})
            .await
            .map(|r| r.into_inner().trust_list)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}
