//! Typed async client for the local API (`OperatorApi`) of a MIM4 operator node.
//!
//! Cities, citizen-app backends and admins use it to talk to *their own*
//! operator's node; the node does the federation work. Every call carries the
//! credential that the operator issued with `mim4-node client add`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = mim4_sdk::Client::connect("http://127.0.0.1:7402", "mim4:edu:<secret>").await?;
//! let status = client.status().await?;
//! println!("{} holds trust list v{}", status.operator_id, status.trust_list_version);
//! let id = client.send_message("se.stockholm", "hello", "first contact").await?;
//! let delivered = client.wait_delivered(id, std::time::Duration::from_secs(30)).await?;
//! println!("receipt: {} bytes", delivered.receipt.len());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Client`]: the connection and its calls.
//! - [`ConnectError`], [`CallError`]: what can go wrong.
//! - [`data`]: data requests ([`Client::request`] builder, [`DataAnswer`], [`RequestError`]).
//! - [`consent`]: consent calls ([`Terms`] builder, [`Decision`]).
//! - [`proto`]: the wire types, re-exported for callers that need them.
#![warn(missing_docs)]

use std::fmt;
use std::time::Duration;

use mim4_proto::v1 as pb;
use pb::operator_api_client::OperatorApiClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// The wire types of `mim4.v1`.
pub use mim4_proto::v1 as proto;

pub mod consent;
pub mod data;
pub use consent::{ConsentId, DecideQuery, Decision, Terms};
pub use data::{DataAnswer, DataRequestBuilder, RequestError};

/// Largest response the client accepts (a page of received messages).
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a valid endpoint.
    #[error("invalid node URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The credential cannot be sent as a header.
    #[error("the credential contains characters that cannot be sent in a header")]
    InvalidCredential,
    /// The node cannot be reached.
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Why a call failed.
///
/// One enum serves every call because every call can fail for the same
/// reasons (the node's answer codes); the variant says which.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The credential is missing, unknown, wrong or revoked.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The client's role may not make this call.
    #[error("not allowed: {0}")]
    PermissionDenied(String),
    /// The request is invalid (bad id, too large, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The thing asked for does not exist (unknown recipient, message).
    #[error("not found: {0}")]
    NotFound(String),
    /// The node refuses in its current state (e.g. an older trust list).
    #[error("refused: {0}")]
    FailedPrecondition(String),
    /// The node cannot be reached or is overloaded; retry later.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// A deadline passed before the outcome was known.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Anything else the node answered.
    #[error("node error ({code:?}): {message}")]
    Other {
        /// gRPC status code.
        code: Code,
        /// The node's message.
        message: String,
    },
}

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => CallError::Unauthenticated(message),
            Code::PermissionDenied => CallError::PermissionDenied(message),
            Code::InvalidArgument | Code::OutOfRange => CallError::InvalidRequest(message),
            Code::NotFound => CallError::NotFound(message),
            Code::FailedPrecondition => CallError::FailedPrecondition(message),
            Code::Unavailable | Code::ResourceExhausted => CallError::Unavailable(message),
            Code::DeadlineExceeded => CallError::Timeout(message),
            code => CallError::Other { code, message },
        }
    }
}

/// A 128-bit message id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    fn from_wire(bytes: &[u8]) -> Result<Self, CallError> {
        <[u8; 16]>::try_from(bytes)
            .map(Self)
            .map_err(|_| CallError::Other {
                code: Code::Internal,
                message: "node returned a message id that is not 16 bytes".into(),
            })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Delivery state of a message this node sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Stored and being delivered.
    Pending,
    /// Delivered: the recipient's signed receipt is available.
    Delivered,
    /// Expired before delivery.
    Expired,
}

/// A message this node sent, with its receipt once delivered.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The id.
    pub message_id: MessageId,
    /// The recipient operator.
    pub recipient: String,
    /// Its state.
    pub state: Delivery,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Last delivery error, if any.
    pub last_error: Option<String>,
    /// The encoded signed envelope as sent.
    pub envelope: Vec<u8>,
    /// The recipient's encoded signed receipt (empty until delivered).
    pub receipt: Vec<u8>,
}

/// A connection to one node's local API. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: OperatorApiClient<Channel>,
    credential: MetadataValue<tonic::metadata::Ascii>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Client { credential: <redacted> }")
    }
}

impl Client {
    /// Connects to the node at `url` (e.g. `http://127.0.0.1:7402`) with a
    /// credential from `mim4-node client add`.
    pub async fn connect(url: &str, credential: &str) -> Result<Self, ConnectError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ConnectError::InvalidUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ConnectError::Unreachable {
                url: url.to_owned(),
                reason: error_chain(&e),
            })?;
        let credential = format!("Bearer {}", credential.trim())
            .parse()
            .map_err(|_| ConnectError::InvalidCredential)?;
        Ok(Self {
            inner: OperatorApiClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX),
            credential,
        })
    }

    pub(crate) fn with_credential<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.credential.clone());
        request
    }

    /// The node's status: operator id, trust-list version, counters, and who you are.
    pub async fn status(&self) -> Result<pb::GetStatusResponse, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .get_status(self.with_credential(pb::GetStatusRequest {}))
            .await?
            .into_inner())
    }

    /// The federation's members as the node sees them.
    pub async fn peers(&self) -> Result<Vec<pb::Peer>, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .list_peers(self.with_credential(pb::ListPeersRequest {}))
            .await?
            .into_inner()
            .peers)
    }

    /// Sends a memo to another operator. Returns once the node has stored it
    /// durably; delivery continues in the background (see [`Client::outgoing`]).
    pub async fn send_message(
        &self,
        recipient: &str,
        subject: &str,
        text: &str,
    ) -> Result<MessageId, CallError> {
        let mut inner = self.inner.clone();
        let response = inner
            .send_message(self.with_credential(pb::SendMessageRequest {
                recipient: recipient.to_owned(),
                memo: Some(pb::Memo {
                    subject: subject.to_owned(),
                    text: text.to_owned(),
                }),
            }))
            .await?
            .into_inner();
        MessageId::from_wire(&response.message_id)
    }

    /// The delivery state of a message this node sent.
    pub async fn outgoing(&self, id: MessageId) -> Result<Outgoing, CallError> {
        let mut inner = self.inner.clone();
        let r = inner
            .get_outgoing(self.with_credential(pb::GetOutgoingRequest {
                message_id: id.0.to_vec(),
            }))
            .await?
            .into_inner();
        let state = match pb::OutgoingState::try_from(r.state) {
            Ok(pb::OutgoingState::Delivered) => Delivery::Delivered,
            Ok(pb::OutgoingState::Expired) => Delivery::Expired,
            _ => Delivery::Pending,
        };
        Ok(Outgoing {
            message_id: MessageId::from_wire(&r.message_id)?,
            recipient: r.recipient,
            state,
            attempts: r.attempts,
            last_error: (!r.last_error.is_empty()).then_some(r.last_error),
            envelope: r.envelope,
            receipt: r.receipt,
        })
    }

    /// Polls [`Client::outgoing`] until the message is delivered or expired,
    /// or `timeout` passes ([`CallError::Timeout`]).
    pub async fn wait_delivered(
        &self,
        id: MessageId,
        timeout: Duration,
    ) -> Result<Outgoing, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let outgoing = self.outgoing(id).await?;
            if outgoing.state != Delivery::Pending {
                return Ok(outgoing);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CallError::Timeout(format!(
                    "message {id} not delivered after {} ms ({} attempts, last error: {})",
                    timeout.as_millis(),
                    outgoing.attempts,
                    outgoing.last_error.as_deref().unwrap_or("none")
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Messages received by the node with a sequence number above `after_seq`.
    pub async fn messages(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<pb::ReceivedMessage>, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .list_messages(self.with_credential(pb::ListMessagesRequest { after_seq, limit }))
            .await?
            .into_inner()
            .messages)
    }

    /// Installs a newer signed trust list (admin only); the node spreads it to its peers.
    pub async fn install_trust_list(&self, signed: Vec<u8>) -> Result<u64, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .install_trust_list(
                self.with_credential(pb::InstallTrustListRequest { trust_list: signed }),
            )
            .await?
            .into_inner()
            .version)
    }

    /// Loads subjects into the node's built-in registry (admin): JSON of the form
    /// `{"subjects": {"<subject id>": {"<attribute>": <value>}}}`, authoritative
    /// for the subjects and attributes it lists. Returns (subjects, values) written.
    pub async fn load_registry(&self, json: &str) -> Result<(u64, u64), CallError> {
        let mut inner = self.inner.clone();
        let r = inner
            .load_registry(self.with_credential(pb::LoadRegistryRequest { json: json.into() }))
            .await?
            .into_inner();
        Ok((r.subjects, r.values))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
