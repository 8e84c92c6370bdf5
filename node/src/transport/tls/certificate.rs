//! This node's certificate and the key a peer's certificate carries.
//!
//! The certificate is self-signed, made at start-up from the operator's
//! Ed25519 key, and only carries that key (its names, dates and
//! self-signature mean nothing to peers). The same key, held in a copy that
//! zeroizes itself on drop, signs this node's TLS 1.3 handshakes.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::{Error, PeerKeyError};
use crate::core::ids::OperatorId;
use crate::core::keys::{PublicKey, SecretKey};

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key (RFC 8410):
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (no unused bits) },
/// followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

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

/// This node's certificate for `operator`'s `key`, with the key that signs
/// its handshakes: what both configurations present.
pub(super) fn certified_key(
    operator: &OperatorId,
    key: &SecretKey,
) -> Result<Arc<CertifiedKey>, Error> {
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
    Ok(certified)
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
pub(super) fn self_signed_certificate(
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

#[cfg(test)]
mod tests {
    use super::super::tests::{member, trust};
    use super::*;
    use crate::core::trust::{KeyHolderError, MemberStatus};

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
        assert_eq!(list.active_member_with_key(&a.public(), 5).unwrap(), id_a);
        assert!(matches!(
            list.active_member_with_key(&b.public(), 5),
            Err(KeyHolderError::NotAllowed { .. })
        ));
        assert!(matches!(
            list.active_member_with_key(&stranger.public(), 5),
            Err(KeyHolderError::UnknownKey { .. })
        ));
        let id_b = OperatorId::new("fi.b").unwrap();
        // A suspended member may be dialled (to learn of its status), within its key window.
        assert!(list.check_dialled_key(&id_b, &b.public(), 5).is_ok());
        assert!(matches!(
            list.check_dialled_key(&id_b, &b.public(), 2_000),
            Err(KeyHolderError::KeyNotValidNow { .. })
        ));
        assert!(matches!(
            list.check_dialled_key(&id_b, &a.public(), 5),
            Err(KeyHolderError::WrongMember { .. })
        ));
    }
}
