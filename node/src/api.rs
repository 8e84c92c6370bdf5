//! The local API (`OperatorApi`) for cities, citizen apps and admins.
//!
//! Every call authenticates with a bearer credential from `clients.toml`, takes
//! a token from that client's rate bucket (`[limits] api_requests_per_second`;
//! the excess gets `RESOURCE_EXHAUSTED`, reason `rate_limited`) and is
//! authorised by the caller's role; refusals are logged with the caller.
//! At most [`limits::CONCURRENT_REQUESTS_MAX`] calls are served at once; more
//! get `RESOURCE_EXHAUSTED`, reason `busy`, at once
//! ([`crate::transport::grpc::InFlight`], as on the peer port).
//!
//! | call | roles |
//! |---|---|
//! | `GetStatus`, `ListPeers` | any |
//! | `SendMessage`, `GetOutgoing`, `ListMessages` | service, admin |
//! | `InstallTrustList`, `RecordDelegation` | admin |
//! | `RequestConsent`, `Decide`, `RequestData` | service (as its own service id), admin |
//! | `ActOnConsent`, `NarrowConsent`, `CreateArrangement` | citizen-app, admin |
//! | `ListConsents`, `GetConsent`, `PullConsent`, `ExportConsent` | any (a service sees only its own) |
//!
//! # Layout
//! - [`clients`]: the credential table and the `client` commands.

pub mod clients;
mod consent;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mim4_proto::v1 as pb;
use pb::operator_api_server::{OperatorApi, OperatorApiServer};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::api::clients::{AuthError, Caller, ClientRole, Clients};
use crate::core::envelope::{Payload, SignedEnvelope};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::reason::Reason;
use crate::core::wire;
use crate::limits;
use crate::node::{Error, Node, RegistryLoadError, SendError};
use crate::rate_limit::KeyedLimiter;
use crate::sources::registry::LoadError;
use crate::store::OutgoingState;
use crate::transport::grpc::{InFlight, REASON_METADATA_KEY};

pub(crate) struct ApiService {
    shared: Arc<Node>,
    /// The credential table (`clients.toml`), re-read when it changes.
    clients: Clients,
    /// Call rate per client id.
    rate: KeyedLimiter<String>,
}

/// A status carrying `reason` under [`REASON_METADATA_KEY`].
fn with_reason(mut status: Status, reason: Reason) -> Status {
    status.metadata_mut().insert(
        REASON_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(reason.as_str()),
    );
    status
}

impl std::fmt::Debug for ApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiService")
    }
}

impl ApiService {
    /// Authenticates the caller and checks that its role may make this call.
    pub(crate) fn authorize<T>(
        &self,
        request: &Request<T>,
        call: &'static str,
        allowed: &[ClientRole],
    ) -> Result<Caller, Status> {
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
        let caller = self.clients.authenticate(credential).map_err(|e| {
            warn!(call, error = %e, "API call refused: authentication");
            match e {
                AuthError::File(_) => Status::internal(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            }
        })?;
        if let Err(limited) = self.rate.check(&caller.id, Instant::now()) {
            // Per refusal only at debug: a flood must not become a log flood.
            debug!(call, client = %caller.id, "API call refused: rate limited");
            self.shared.counter_table().count(Reason::RateLimited);
            return Err(with_reason(
                Status::resource_exhausted(format!("rate limited: API client {limited}")),
                Reason::RateLimited,
            ));
        }
        if !allowed.contains(&caller.role) {
            warn!(call, client = %caller.id, role = %caller.role, "API call refused: role not allowed");
            let roles: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "client {} has role {}; {call} needs one of: {}",
                caller.id,
                caller.role,
                roles.join(", ")
            )));
        }
        Ok(caller)
    }
}

const ANY: &[ClientRole] = &[
    ClientRole::Service,
    ClientRole::CitizenApp,
    ClientRole::Admin,
];
const SENDERS: &[ClientRole] = &[ClientRole::Service, ClientRole::Admin];
const ADMIN: &[ClientRole] = &[ClientRole::Admin];

fn store_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("storage failure: {e}"))
}

/// A refused registry load: going over a limit on one subject's data is
/// `RESOURCE_EXHAUSTED` with the limit's reason; other bad files are
/// `INVALID_ARGUMENT`.
fn registry_status(error: RegistryLoadError) -> Status {
    let message = error.to_string();
    match error {
        RegistryLoadError::NoRegistry => Status::failed_precondition(message),
        RegistryLoadError::Invalid(LoadError::ValueTooLarge { .. }) => {
            with_reason(Status::resource_exhausted(message), Reason::ValueTooLarge)
        }
        RegistryLoadError::Invalid(LoadError::TooManyAttributes { .. }) => with_reason(
            Status::resource_exhausted(message),
            Reason::TooManyAttributes,
        ),
        RegistryLoadError::Invalid(LoadError::SubjectTooLarge { .. }) => {
            with_reason(Status::resource_exhausted(message), Reason::SubjectTooLarge)
        }
        RegistryLoadError::Invalid(_) => Status::invalid_argument(message),
        RegistryLoadError::Node(_) => Status::unavailable(message),
    }
}

#[tonic::async_trait]
impl OperatorApi for ApiService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let caller = self.authorize(&request, "GetStatus", ANY)?;
        let trust = self.shared.trust();
        let me = self.shared.operator_id();
        let stats = self.shared.store().stats();
        let peers = trust
            .list()
            .members
            .iter()
            .filter(|m| {
                &m.operator_id != me && m.status == crate::core::trust::MemberStatus::Active
            })
            .count();
        Ok(Response::new(pb::GetStatusResponse {
            operator_id: me.to_string(),
            trust_list_version: trust.version(),
            trust_list_valid_until_ms: trust.list().valid_until_ms,
            trust_list_expired: !trust.is_current(crate::clock::now_ms()),
            federation_id: trust.list().federation_id.clone(),
            peers: u32::try_from(peers).unwrap_or(u32::MAX),
            messages_received: stats.received,
            outbox_pending: stats.pending,
            outbox_delivered: stats.delivered,
            outbox_expired: stats.expired,
            uptime_ms: u64::try_from(self.shared.uptime().as_millis()).unwrap_or(u64::MAX),
            caller_id: caller.id,
            caller_role: caller.role.to_string(),
            node_version: env!("CARGO_PKG_VERSION").to_owned(),
            refusals: self.shared.counters().into_iter().collect(),
            peer_id: self.shared.p2p().peer_id().to_string(),
            p2p_listen_addrs: self
                .shared
                .p2p()
                .listen_addrs()
                .iter()
                .map(ToString::to_string)
                .collect(),
            p2p_connected: self
                .shared
                .p2p()
                .connected()
                .await
                .iter()
                .map(ToString::to_string)
                .collect(),
        }))
    }

    async fn list_peers(
        &self,
        request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        self.authorize(&request, "ListPeers", ANY)?;
        let trust = self.shared.trust();
        let peers = trust
            .list()
            .members
            .iter()
            .map(|m| pb::Peer {
                operator_id: m.operator_id.to_string(),
                name: m.name.clone(),
                country: m.country.clone(),
                status: wire::status_to_pb(m.status) as i32,
                grpc_endpoint: m.grpc_endpoint.clone(),
                roles: m
                    .roles
                    .iter()
                    .map(|r| wire::role_to_pb(*r) as i32)
                    .collect(),
                p2p_addrs: m.p2p_addrs.clone(),
                peer_ids: crate::transport::p2p::candidate_peers(m, crate::clock::now_ms())
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListPeersResponse { peers }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = self.authorize(&request, "SendMessage", SENDERS)?;
        let request = request.into_inner();
        let recipient = OperatorId::new(request.recipient)
            .map_err(|e| Status::invalid_argument(format!("recipient: {e}")))?;
        let memo = request
            .memo
            .ok_or_else(|| Status::invalid_argument("memo is missing"))?;
        let memo = wire::memo_from_pb(memo).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = self
            .shared
            .send(recipient.clone(), Payload::Memo(memo))
            .await
            .map_err(|e| match e {
                SendError::UnknownRecipient(_) => Status::not_found(e.to_string()),
                SendError::ToSelf | SendError::TooLarge { .. } => {
                    Status::invalid_argument(e.to_string())
                }
                SendError::ShuttingDown => Status::unavailable(e.to_string()),
                SendError::TrustListExpired { .. } => with_reason(
                    Status::failed_precondition(e.to_string()),
                    Reason::TrustListExpired,
                ),
                _ => store_status(e),
            })?;
        info!(client = %caller.id, message_id = %id, %recipient, "message queued");
        Ok(Response::new(pb::SendMessageResponse {
            message_id: id.as_bytes().to_vec(),
        }))
    }

    async fn get_outgoing(
        &self,
        request: Request<pb::GetOutgoingRequest>,
    ) -> Result<Response<pb::GetOutgoingResponse>, Status> {
        self.authorize(&request, "GetOutgoing", SENDERS)?;
        let id = MessageId::from_slice(&request.get_ref().message_id)
            .ok_or_else(|| Status::invalid_argument("message_id must be 16 bytes"))?;
        let outgoing = self
            .shared
            .store()
            .outgoing(&id)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no outgoing message {id}")))?;
        let state = match outgoing.state {
            OutgoingState::Pending => pb::OutgoingState::Pending,
            OutgoingState::Delivered => pb::OutgoingState::Delivered,
            OutgoingState::Expired => pb::OutgoingState::Expired,
        };
        Ok(Response::new(pb::GetOutgoingResponse {
            message_id: id.as_bytes().to_vec(),
            recipient: outgoing.recipient.to_string(),
            state: state as i32,
            attempts: outgoing.attempts,
            last_error: outgoing.last_error.unwrap_or_default(),
            envelope: outgoing.envelope,
            receipt: outgoing.receipt.unwrap_or_default(),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        self.authorize(&request, "ListMessages", SENDERS)?;
        let request = request.into_inner();
        let limit = match request.limit {
            0 => limits::LIST_MESSAGES_MAX,
            n => n.min(limits::LIST_MESSAGES_MAX),
        };
        let incoming = self
            .shared
            .store()
            .incoming(request.after_seq, limit as usize)
            .map_err(store_status)?;
        let messages = incoming
            .into_iter()
            .map(|m| {
                let memo = wire::decode_signed_envelope(&m.envelope)
                    .ok()
                    .and_then(|s: SignedEnvelope| wire::decode_envelope(&s.body).ok())
                    .and_then(|e| match e.payload {
                        Payload::Memo(memo) => Some(wire::memo_to_pb(&memo)),
                        _ => None,
                    });
                pb::ReceivedMessage {
                    seq: m.seq,
                    message_id: m.message_id.as_bytes().to_vec(),
                    sender: m.sender.to_string(),
                    received_at_ms: m.received_at_ms,
                    memo,
                    envelope: m.envelope,
                }
            })
            .collect();
        Ok(Response::new(pb::ListMessagesResponse { messages }))
    }

    async fn install_trust_list(
        &self,
        request: Request<pb::InstallTrustListRequest>,
    ) -> Result<Response<pb::InstallTrustListResponse>, Status> {
        let caller = self.authorize(&request, "InstallTrustList", ADMIN)?;
        let version = self
            .shared
            .install_trust_list(&request.into_inner().trust_list)
            .await
            .map_err(|e| match e {
                Error::TrustList(e) => Status::failed_precondition(e.to_string()),
                other => Status::unavailable(other.to_string()),
            })?;
        info!(client = %caller.id, version, "trust list installed by admin");
        Ok(Response::new(pb::InstallTrustListResponse { version }))
    }

    async fn load_registry(
        &self,
        request: Request<pb::LoadRegistryRequest>,
    ) -> Result<Response<pb::LoadRegistryResponse>, Status> {
        let caller = self.authorize(&request, "LoadRegistry", ADMIN)?;
        let report = self
            .shared
            .load_registry(request.into_inner().json)
            .await
            .map_err(registry_status)?;
        info!(client = %caller.id, subjects = report.subjects, values = report.values, "registry data loaded by admin");
        Ok(Response::new(pb::LoadRegistryResponse {
            subjects: report.subjects as u64,
            values: report.values as u64,
        }))
    }

    async fn request_consent(
        &self,
        request: Request<pb::RequestConsentRequest>,
    ) -> Result<Response<pb::ConsentIdResponse>, Status> {
        self.request_consent_impl(request).await
    }

    async fn act_on_consent(
        &self,
        request: Request<pb::ActOnConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        self.act_on_consent_impl(request).await
    }

    async fn narrow_consent(
        &self,
        request: Request<pb::NarrowConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        self.narrow_consent_impl(request).await
    }

    async fn create_arrangement(
        &self,
        request: Request<pb::CreateArrangementRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        self.create_arrangement_impl(request).await
    }

    async fn record_delegation(
        &self,
        request: Request<pb::RecordDelegationRequest>,
    ) -> Result<Response<pb::ConsentIdResponse>, Status> {
        self.record_delegation_impl(request).await
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        self.list_consents_impl(request).await
    }

    async fn get_consent(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        self.get_consent_impl(request).await
    }

    async fn pull_consent(
        &self,
        request: Request<pb::PullConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        self.pull_consent_impl(request).await
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        self.decide_impl(request).await
    }

    async fn export_consent(
        &self,
        request: Request<pb::ExportConsentRequest>,
    ) -> Result<Response<pb::ExportConsentResponse>, Status> {
        self.export_consent_impl(request).await
    }

    async fn request_data(
        &self,
        request: Request<pb::RequestDataRequest>,
    ) -> Result<Response<pb::RequestDataResponse>, Status> {
        self.request_data_impl(request).await
    }
}

/// Serves `OperatorApi` (and gRPC health) on `listener` until `cancel` fires.
pub(crate) async fn serve(
    shared: Arc<Node>,
    clients: Clients,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let rate = KeyedLimiter::new(shared.config().limits.api_rate);
    let in_flight_max = shared.config().limits.concurrent_requests_max;
    let service = OperatorApiServer::new(ApiService {
        shared: shared.clone(),
        clients,
        rate,
    })
    .max_decoding_message_size(limits::TRUST_LIST_BYTES_MAX + 64)
    .max_encoding_message_size(
        limits::LIST_MESSAGES_MAX as usize * (limits::MESSAGE_BYTES_MAX / 8),
    );
    let service = InFlight::new(service, in_flight_max, shared.counter_table().clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<InFlight<OperatorApiServer<ApiService>>>()
        .await;
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(limits::STREAMS_PER_CONNECTION_MAX as usize)
        .max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX)
        .timeout(Duration::from_millis(limits::API_CALL_TIMEOUT_MS))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(
            crate::transport::grpc::tokio_stream_from(listener),
            cancel.cancelled_owned(),
        )
        .await
        .map_err(|e| Error::Server(format!("API server: {e}")))
}
