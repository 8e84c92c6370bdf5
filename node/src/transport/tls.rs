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
//!   ([`VerifiedTrustList::active_member_with_key`], the rule the gRPC port
//!   applies again to every request and the libp2p swarm to every PeerId);
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
//! # Layout
//! - [`PeerTls`] (here): this node's identity and both configurations, built
//!   from the parts below.
//! - [`certificate`]: the self-signed certificate made from the operator key,
//!   the handshake signer, and [`certificate_key`] to read a peer's key back.
//! - [`verify`]: the client and server certificate verifiers, which read the
//!   trust list at each handshake.
//! - [`accept`](mod@accept): the bounded accept loop whose connections tonic
//!   serves ([`accept()`], [`PeerConnection`], [`PeerIdentity`]).
//! - [`connector`]: the [`Connector`] that tonic channels dial with.
//!
//! [`VerifiedTrustList::active_member_with_key`]: crate::core::trust::VerifiedTrustList::active_member_with_key

mod accept;
mod certificate;
mod connector;
mod verify;

pub use self::accept::{accept, PeerConnection, PeerIdentity};
pub use self::certificate::certificate_key;
pub use self::connector::Connector;

use std::fmt;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};

use self::verify::{ClientVerifier, ServerVerifier};
use crate::core::ids::OperatorId;
use crate::core::keys::SecretKey;
use crate::core::trust::{KeyHolderError, VerifiedTrustList};

/// Where the verifiers read the trust list in force, at each handshake.
pub type TrustSource = Arc<dyn Fn() -> Arc<VerifiedTrustList> + Send + Sync>;

/// HTTP/2 over TLS, the only application protocol gRPC peers speak.
const ALPN_H2: &[u8] = b"h2";

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
    /// The trust list does not let the key's holder connect (unknown key,
    /// not valid now, not allowed in its status, ambiguous, wrong member).
    #[error(transparent)]
    Trust(#[from] KeyHolderError),
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
        let certified = certificate::certified_key(operator, key)?;

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(ClientVerifier::new(
                trust.clone(),
                provider.clone(),
            )))
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
            .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(
                member.clone(),
                self.trust.clone(),
                self.provider.clone(),
            )))
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
        Ok(Connector::new(
            member.clone(),
            self.client_config(member)?,
            server_name,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::trust::{Member, MemberKey, MemberStatus, Role, TrustList};

    pub(super) fn member(
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

    pub(super) fn trust(members: Vec<Member>) -> VerifiedTrustList {
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
