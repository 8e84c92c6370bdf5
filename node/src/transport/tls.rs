//! TLS between operators: TLS 1.3 only, both sides authenticated, no public CA.
//!
//! Each node presents a self-signed X.509 certificate made at start-up from
//! its Ed25519 operator key, the key that signs its envelopes. The
//! certificate only carries that key: its names, dates and self-signature are
//! ignored, because the federation's trust list, not a CA, says which keys
//! belong to whom and when. A peer's certificate is accepted when its
//! SubjectPublicKeyInfo is an Ed25519 key that the trust list in force *at
//! handshake time* (read through a [`TrustSource`], so an update applies to
//! the next handshake) lists for a member, valid now:
//! - as a server, the client's key must belong to an **active** member
//!   ([`active_member_with_key`]);
//! - as a client, the server's key must belong to **the member it meant to
//!   dial**, which may be suspended but not revoked: a node pushes a new trust
//!   list to suspended members, so that they learn of their status.
//!
//! The TLS 1.3 `CertificateVerify` signature proves that the peer holds the
//! key; the ring provider checks it, with Ed25519 as the only scheme.
//! Session resumption is off on both sides, so every connection runs the full
//! handshake and these checks. A connection outlives trust-list changes, so
//! the gRPC server checks the peer's key again on every request, and the
//! client cache is emptied when the list changes.
//!
//! Also here: the accept loop (handshakes bounded in number and time, open
//! connections bounded in total and per peer key) whose connections tonic
//! serves, and the connector that tonic channels dial with.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, PeerMisbehaved,
    ServerConfig, SignatureAlgorithm, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Uri;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, PublicKey, SecretKey};
use crate::core::trust::{Member, MemberStatus, VerifiedTrustList};
use crate::limits;

/// Where the verifiers read the trust list in force, at each handshake.
pub type TrustSource = Arc<dyn Fn() -> Arc<VerifiedTrustList> + Send + Sync>;

/// HTTP/2 over TLS, the only application protocol gRPC peers speak.
const ALPN_H2: &[u8] = b"h2";

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key (RFC 8410):
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (no unused bits) },
/// followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Errors making this node's TLS identity and configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The certificate cannot be made from the operator key.
    #[error("cannot make the peer TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refuses the configuration.
    #[error("peer TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The endpoint's host is not a name TLS can carry.
    #[error("peer endpoint host {0:?} is not a DNS name or IP address")]
    Host(String),
}

/// Why a peer's certificate is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerKeyError {
    /// The certificate does not parse, or comes with a chain.
    #[error("malformed peer certificate: {0}")]
    Malformed(String),
    /// The certificate's key is not an Ed25519 key.
    #[error("the peer certificate's key is not an Ed25519 key")]
    NotEd25519,
    /// No member of the trust list holds this key.
    #[error("key {key_id} is not a key of any member of trust list version {version}")]
    UnknownKey {
        /// The presented key.
        key_id: KeyId,
        /// The trust list consulted.
        version: u64,
    },
    /// The key is listed, but outside its validity window now.
    #[error("key {key_id} of {member} is not valid now (trust list version {version})")]
    KeyNotValidNow {
        /// Its holder.
        member: OperatorId,
        /// The presented key.
        key_id: KeyId,
        /// The trust list consulted.
        version: u64,
    },
    /// The member may not connect in its current status.
    #[error("{member} is {} in trust list version {version}", .status.as_str())]
    NotAllowed {
        /// The member.
        member: OperatorId,
        /// Its status.
        status: MemberStatus,
        /// The trust list consulted.
        version: u64,
    },
    /// Several members hold the key, so it names no one.
    #[error("key {key_id} is listed for more than one member in trust list version {version}")]
    Ambiguous {
        /// The presented key.
        key_id: KeyId,
        /// The trust list consulted.
        version: u64,
    },
    /// The server is not the member this node dialled.
    #[error("the server presented key {key_id}, which is not a key of {expected}")]
    WrongMember {
        /// The member dialled.
        expected: OperatorId,
        /// The presented key.
        key_id: KeyId,
    },
}

/// The Ed25519 key a peer certificate carries.
pub fn certificate_key(certificate: &CertificateDer<'_>) -> Result<PublicKey, PeerKeyError> {
    let parsed = ParsedCertificate::try_from(certificate)
        .map_err(|e| PeerKeyError::Malformed(e.to_string()))?;
    let spki = parsed.subject_public_key_info();
    let key = spki
        .as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or(PeerKeyError::NotEd25519)?;
    PublicKey::from_bytes(key).map_err(|e| PeerKeyError::Malformed(e.to_string()))
}

fn holds(member: &Member, key: &PublicKey) -> bool {
    member.keys.iter().any(|k| k.public_key == *key)
}

fn valid_now(member: &Member, key: &PublicKey, now_ms: u64) -> bool {
    member
        .keys
        .iter()
        .any(|k| k.public_key == *key && k.is_valid_at(now_ms))
}

/// The active member that holds `key`, valid at `now_ms`: the rule for a
/// client certificate, applied at the handshake and again to every request.
pub fn active_member_with_key(
    trust: &VerifiedTrustList,
    key: &PublicKey,
    now_ms: u64,
) -> Result<OperatorId, PeerKeyError> {
    let version = trust.version();
    let mut holders = trust.list().members.iter().filter(|m| holds(m, key));
    let Some(member) = holders.next() else {
        return Err(PeerKeyError::UnknownKey {
            key_id: key.key_id(),
            version,
        });
    };
    if holders.next().is_some() {
        return Err(PeerKeyError::Ambiguous {
            key_id: key.key_id(),
            version,
        });
    }
    if member.status != MemberStatus::Active {
        return Err(PeerKeyError::NotAllowed {
            member: member.operator_id.clone(),
            status: member.status,
            version,
        });
    }
    if !valid_now(member, key, now_ms) {
        return Err(PeerKeyError::KeyNotValidNow {
            member: member.operator_id.clone(),
            key_id: key.key_id(),
            version,
        });
    }
    Ok(member.operator_id.clone())
}

/// Checks that `key` is a key of `expected`, valid at `now_ms`, and that
/// `expected` is not revoked: the rule for the server this node dialled.
pub fn check_server_key(
    trust: &VerifiedTrustList,
    expected: &OperatorId,
    key: &PublicKey,
    now_ms: u64,
) -> Result<(), PeerKeyError> {
    let version = trust.version();
    let Some(member) = trust.member(expected).filter(|m| holds(m, key)) else {
        return Err(PeerKeyError::WrongMember {
            expected: expected.clone(),
            key_id: key.key_id(),
        });
    };
    if member.status == MemberStatus::Revoked {
        return Err(PeerKeyError::NotAllowed {
            member: expected.clone(),
            status: member.status,
            version,
        });
    }
    if !valid_now(member, key, now_ms) {
        return Err(PeerKeyError::KeyNotValidNow {
            member: expected.clone(),
            key_id: key.key_id(),
            version,
        });
    }
    Ok(())
}

/// The key of the single certificate a peer presents; a chain is refused,
/// since nothing in it could matter.
fn presented_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PublicKey, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(refused(PeerKeyError::Malformed(
            "a member presents one self-signed certificate, not a chain".into(),
        )));
    }
    certificate_key(end_entity).map_err(refused)
}

/// A refusal as rustls reports it: the handshake fails with a
/// `handshake_failure` alert, and the reason reaches the log of the side that
/// refused (and the caller's error on the dialling side).
fn refused(reason: PeerKeyError) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(reason)))
}

/// Verifies a TLS 1.3 handshake signature: Ed25519 only, by the provider.
fn verify_handshake_signature(
    provider: &CryptoProvider,
    message: &[u8],
    certificate: &CertificateDer<'_>,
    signed: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if signed.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    rustls::crypto::verify_tls13_signature(
        message,
        certificate,
        signed,
        &provider.signature_verification_algorithms,
    )
}

/// TLS 1.2 is never negotiated (the configurations allow TLS 1.3 only).
fn no_tls12() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not offered between operators".into())
}

/// The server's check of client certificates.
struct ClientVerifier {
    trust: TrustSource,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientVerifier(active members of the trust list)")
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = presented_key(end_entity, intermediates)?;
        // Milliseconds from the node's clock, as the trust list's key windows are.
        active_member_with_key(&(self.trust)(), &key, now_ms()).map_err(refused)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.provider, message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The client's check of the server it dialled.
struct ServerVerifier {
    expected: OperatorId,
    trust: TrustSource,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerVerifier(keys of {})", self.expected)
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = presented_key(end_entity, intermediates)?;
        check_server_key(&(self.trust)(), &self.expected, &key, now_ms()).map_err(refused)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.provider, message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The operator key as the signer of this node's handshakes. It owns a copy
/// of the secret key, which zeroizes itself on drop like the node's.
struct HandshakeKey {
    key: Arc<SecretKey>,
    spki: Vec<u8>,
}

impl fmt::Debug for HandshakeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandshakeKey({})", self.key.public().key_id())
    }
}

impl rustls::sign::SigningKey for HandshakeKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(HandshakeSigner(self.key.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct HandshakeSigner(Arc<SecretKey>);

impl rustls::sign::Signer for HandshakeSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign_x509_or_tls13(message)
            .map(|signature| signature.to_vec())
            .ok_or_else(|| {
                rustls::Error::General("refused to sign other than a TLS 1.3 handshake".into())
            })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The operator key as rcgen's signer of the self-signed certificate.
struct CertificateSigner<'a> {
    key: &'a SecretKey,
    public: [u8; 32],
}

impl rcgen::PublicKeyData for CertificateSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for CertificateSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign_x509_or_tls13(message)
            .map(|signature| signature.to_vec())
            .ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// A self-signed certificate for `key`, naming `operator` (for people reading
/// it with other tools; peers look only at the key).
fn self_signed_certificate(
    operator: &OperatorId,
    key: &SecretKey,
) -> Result<CertificateDer<'static>, Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, operator.as_str());
    let public = key.public().to_bytes();
    // rcgen without its crypto backend cannot draw a random serial; derive a
    // positive one from the key (peers identify certificates by key, not serial).
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&public[..16]);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let signer = CertificateSigner { key, public };
    Ok(params.self_signed(&signer)?.der().clone())
}

/// This node's TLS identity (its certificate and key) and the trust list its
/// verifiers read: the server configuration, and a client configuration per
/// member dialled.
pub struct PeerTls {
    certified: Arc<CertifiedKey>,
    trust: TrustSource,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("trust_list_version", &(self.trust)().version())
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Makes the certificate for `key` and both configurations. `trust` is
    /// read at every handshake.
    pub fn new(operator: &OperatorId, key: &SecretKey, trust: TrustSource) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = self_signed_certificate(operator, key)?;
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&key.public().to_bytes());
        let signing_key = HandshakeKey {
            key: Arc::new(SecretKey::from_bytes(&key.to_bytes()[..]).map_err(|e| {
                rustls::Error::General(format!("copying the operator key failed: {e}"))
            })?),
            spki,
        };
        let certified = Arc::new(CertifiedKey::new(vec![certificate], Arc::new(signing_key)));
        // Paired check: the certificate just made carries the key that signs.
        certified.keys_match()?;

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                trust: trust.clone(),
                provider: provider.clone(),
            }))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone())));
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption: a resumed session would skip the trust-list check.
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(Self {
            certified,
            trust,
            provider,
            server: Arc::new(server),
        })
    }

    /// The configuration of the peer server.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that accepts only `member`'s keys.
    pub fn client_config(&self, member: &OperatorId) -> Result<Arc<ClientConfig>, Error> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                expected: member.clone(),
                trust: self.trust.clone(),
                provider: self.provider.clone(),
            }))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// A connector for tonic that dials `member` at `host` (the endpoint's
    /// host, sent as the TLS server name; the check is on the key).
    pub fn connector(&self, member: &OperatorId, host: &str) -> Result<Connector, Error> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name =
            ServerName::try_from(bare.to_owned()).map_err(|_| Error::Host(host.to_owned()))?;
        Ok(Connector {
            member: member.clone(),
            config: self.client_config(member)?,
            server_name,
        })
    }
}

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
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
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
        let acceptor = acceptor.clone();
        let accepted = accepted.clone();
        let open = open.clone();
        handshakes.spawn(async move {
            let _slot = slot;
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
        });
    }
    handshakes.shutdown().await;
}

/// Dials one member for a tonic channel: TCP to the endpoint's host and
/// port, then a TLS handshake that accepts only that member's keys.
#[derive(Clone)]
pub struct Connector {
    member: OperatorId,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({})", self.member)
    }
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let invalid =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {uri}"));
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host in peer endpoint"))?;
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("no port in peer endpoint"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let deadline = Duration::from_millis(limits::TLS_HANDSHAKE_TIMEOUT_MS);
            let handshake = tokio_rustls::TlsConnector::from(connector.config)
                .connect(connector.server_name, tcp);
            match tokio::time::timeout(deadline, handshake).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => {
                    warn!(peer = %connector.member, endpoint = %uri, error = %e, "TLS handshake with peer failed");
                    Err(e)
                }
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake with {} timed out", connector.member),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::trust::{MemberKey, Role, TrustList};

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

    fn member(
        id: &str,
        key: &SecretKey,
        status: MemberStatus,
        not_after_ms: Option<u64>,
    ) -> Member {
        Member {
            operator_id: OperatorId::new(id).unwrap(),
            name: id.into(),
            country: "FI".into(),
            roles: vec![Role::Operator],
            keys: vec![MemberKey {
                public_key: key.public(),
                not_before_ms: 0,
                not_after_ms,
            }],
            grpc_endpoint: "https://127.0.0.1:1".into(),
            p2p_addrs: vec![],
            status,
            sectors: vec![],
        }
    }

    fn trust(members: Vec<Member>) -> VerifiedTrustList {
        let governance = SecretKey::from_bytes(&[9; 32]).unwrap();
        let list = TrustList {
            federation_id: "f".into(),
            version: 1,
            issued_at_ms: 0,
            valid_until_ms: u64::MAX,
            rulebook_version: "r".into(),
            governance_keys: vec![crate::core::trust::GovernanceKey {
                public_key: governance.public(),
            }],
            threshold: 1,
            members,
            attributes: vec![],
            services: vec![],
        };
        VerifiedTrustList::verify_with_anchor(list.sign(&[&governance]), &[governance.public()], 1)
            .unwrap()
    }

    /// The certificate carries exactly the operator key, which the member
    /// rules then accept or refuse by status, window and holder.
    #[test]
    fn certificate_carries_the_operator_key_and_rules_apply() {
        let a = SecretKey::from_bytes(&[1; 32]).unwrap();
        let b = SecretKey::from_bytes(&[2; 32]).unwrap();
        let stranger = SecretKey::from_bytes(&[3; 32]).unwrap();
        let id_a = OperatorId::new("fi.a").unwrap();
        let certificate = self_signed_certificate(&id_a, &a).unwrap();
        assert_eq!(certificate_key(&certificate).unwrap(), a.public());

        let list = trust(vec![
            member("fi.a", &a, MemberStatus::Active, None),
            member("fi.b", &b, MemberStatus::Suspended, Some(1_000)),
        ]);
        assert_eq!(active_member_with_key(&list, &a.public(), 5).unwrap(), id_a);
        assert!(matches!(
            active_member_with_key(&list, &b.public(), 5),
            Err(PeerKeyError::NotAllowed { .. })
        ));
        assert!(matches!(
            active_member_with_key(&list, &stranger.public(), 5),
            Err(PeerKeyError::UnknownKey { .. })
        ));
        let id_b = OperatorId::new("fi.b").unwrap();
        // A suspended member may be dialled (to learn of its status), within its key window.
        assert!(check_server_key(&list, &id_b, &b.public(), 5).is_ok());
        assert!(matches!(
            check_server_key(&list, &id_b, &b.public(), 2_000),
            Err(PeerKeyError::KeyNotValidNow { .. })
        ));
        assert!(matches!(
            check_server_key(&list, &id_b, &a.public(), 5),
            Err(PeerKeyError::WrongMember { .. })
        ));
    }

    /// Both configurations build from an operator key, TLS 1.3 only.
    #[test]
    fn configurations_build() {
        let a = SecretKey::from_bytes(&[1; 32]).unwrap();
        let list = Arc::new(trust(vec![member("fi.a", &a, MemberStatus::Active, None)]));
        let source: TrustSource = Arc::new(move || list.clone());
        let tls = PeerTls::new(&OperatorId::new("fi.a").unwrap(), &a, source).unwrap();
        assert_eq!(tls.server_config().alpn_protocols, vec![b"h2".to_vec()]);
        let client = tls
            .client_config(&OperatorId::new("fi.a").unwrap())
            .unwrap();
        assert!(client.alpn_protocols.contains(&b"h2".to_vec()));
        assert!(tls
            .connector(&OperatorId::new("fi.a").unwrap(), "127.0.0.1")
            .is_ok());
        assert!(tls
            .connector(&OperatorId::new("fi.a").unwrap(), "[::1]")
            .is_ok());
    }
}
