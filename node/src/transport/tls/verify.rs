//! The verifiers rustls calls at each handshake: they read the trust list in
//! force through a [`TrustSource`] and apply its rules to the key of the one
//! certificate the peer presents.
//!
//! - [`ClientVerifier`] (the server's check): the client's key belongs to an
//!   **active** member ([`VerifiedTrustList::active_member_with_key`]).
//! - [`ServerVerifier`] (the client's check): the server's key belongs to the
//!   member this node dialled, not revoked
//!   ([`VerifiedTrustList::check_dialled_key`]).
//!
//! [`VerifiedTrustList::active_member_with_key`]: crate::core::trust::VerifiedTrustList::active_member_with_key
//! [`VerifiedTrustList::check_dialled_key`]: crate::core::trust::VerifiedTrustList::check_dialled_key

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, OtherError, PeerMisbehaved, SignatureScheme,
};

use super::certificate::certificate_key;
use super::{PeerKeyError, TrustSource};
use crate::clock::now_ms;
use crate::core::ids::OperatorId;
use crate::core::keys::PublicKey;

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

/// The handshake-signature methods both verifier traits require, the same
/// for the client's and the server's check: TLS 1.3 only, Ed25519 only,
/// checked with the provider's verifier. One definition, used in both impls.
macro_rules! handshake_signatures {
    () => {
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
    };
}

/// The server's check of client certificates.
pub(super) struct ClientVerifier {
    trust: TrustSource,
    provider: Arc<CryptoProvider>,
}

impl ClientVerifier {
    /// A verifier that admits active members of the list `trust` reads.
    pub(super) fn new(trust: TrustSource, provider: Arc<CryptoProvider>) -> Self {
        Self { trust, provider }
    }
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
        (self.trust)()
            .active_member_with_key(&key, now_ms())
            .map_err(|e| refused(e.into()))?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The client's check of the server it dialled.
pub(super) struct ServerVerifier {
    expected: OperatorId,
    trust: TrustSource,
    provider: Arc<CryptoProvider>,
}

impl ServerVerifier {
    /// A verifier that admits only `expected`'s keys in the list `trust` reads.
    pub(super) fn new(
        expected: OperatorId,
        trust: TrustSource,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            expected,
            trust,
            provider,
        }
    }
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
        (self.trust)()
            .check_dialled_key(&self.expected, &key, now_ms())
            .map_err(|e| refused(e.into()))?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
