//! Ed25519 keys: the operator's signing key and the public keys in the trust list.
//!
//! A [`SecretKey`] zeroizes itself on drop and never prints its bytes. A
//! [`PublicKey`] is validated when constructed (a valid curve point, not a
//! weak key), and verifies with `verify_strict`, which rejects malleable
//! signatures. Every signature covers a domain-separation prefix so that a
//! signature made for one purpose (an envelope) can never be replayed as
//! another (a trust list).

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Domain-separation prefix of envelope signatures.
pub const ENVELOPE_DOMAIN: &[u8] = b"mim4/v1/envelope\0";
/// Domain-separation prefix of trust-list signatures.
pub const TRUST_LIST_DOMAIN: &[u8] = b"mim4/v1/trust-list\0";

/// Domain-separation prefix of consent-event signatures.
pub const CONSENT_EVENT_DOMAIN: &[u8] = b"mim4/v1/consent-event\0";

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Why bytes are not a usable key or signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key must be exactly 32 bytes.
    #[error("a key must be 32 bytes, got {0}")]
    BadLength(usize),
    /// The bytes are not a point on the curve.
    #[error("the public key is not a valid Ed25519 point")]
    NotAPoint,
    /// The key has small order, so anyone could forge signatures for it.
    #[error("the public key is weak (small order) and is refused")]
    Weak,
    /// The text is not hex.
    #[error("the key is not hex: {0}")]
    NotHex(String),
}

/// An operator's (or the governance body's) Ed25519 signing key.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Generates a key from the caller's cryptographic RNG.
    pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self(SigningKey::from_bytes(&seed))
    }

    /// Restores a key from its 32 secret bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .try_into()
                .map_err(|_| KeyError::BadLength(bytes.len()))?,
        );
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The 32 secret bytes, wiped when the returned value is dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `domain || message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        self.0.sign(&signed).to_bytes()
    }

    /// Signs an X.509 `TBSCertificate` or a TLS 1.3 `CertificateVerify` input
    /// as is, for the peer TLS certificate made from this key.
    ///
    /// These formats carry their own context, and neither can begin like
    /// anything else this key signs (a domain prefix `mim4/...`, or a JWS
    /// signing input, which is base64url text): a `TBSCertificate` is a DER
    /// SEQUENCE with a long-form length (0x30, then a byte of at least 0x81,
    /// which no ASCII text has), a `CertificateVerify` input opens with 64
    /// spaces. Anything else is refused (`None`), so a signature made here is
    /// never a valid envelope, trust-list, consent or receipt signature, and
    /// none of those can pass for a TLS handshake signature.
    pub fn sign_x509_or_tls13(&self, message: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
        const DER_SEQUENCE: u8 = 0x30;
        const DER_LONG_LENGTH_MIN: u8 = 0x81;
        const TLS13_PADDING: &[u8] = &[0x20; 64];
        let der = matches!(message, [DER_SEQUENCE, length, ..] if *length >= DER_LONG_LENGTH_MIN);
        let allowed = der || message.starts_with(TLS13_PADDING);
        allowed.then(|| self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(<secret>, public {})", self.public().key_id())
    }
}

/// A validated Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// The public key of an operator, as listed in the trust list.
pub type OperatorKey = PublicKey;

impl PublicKey {
    /// Validates 32 bytes as a strong Ed25519 public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadLength(bytes.len()))?;
        let key = VerifyingKey::from_bytes(&array).map_err(|_| KeyError::NotAPoint)?;
        if key.is_weak() {
            return Err(KeyError::Weak);
        }
        Ok(Self(key))
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|e| KeyError::NotHex(e.to_string()))?;
        Self::from_bytes(&bytes)
    }

    /// The 32 bytes of the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// The key's id: hex of the first 8 bytes of SHA-256 of the key.
    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::digest(self.to_bytes());
        KeyId(hex::encode(&digest[..8]))
    }

    /// Verifies a signature over `domain || message` with strict Ed25519 rules.
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        self.0.verify_strict(&signed, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// Identifier of a public key: 16 hex digits derived from the key itself, so
/// it cannot be chosen to collide with another member's key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Wraps a key id string as received on the wire (compared, never trusted).
    pub fn from_wire(text: &str) -> Self {
        Self(text.to_owned())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_with_domain_separation() {
        let key = SecretKey::from_bytes(&[1; 32]).unwrap();
        let signature = key.sign(ENVELOPE_DOMAIN, b"body");
        assert!(key.public().verify(ENVELOPE_DOMAIN, b"body", &signature));
        assert!(!key.public().verify(TRUST_LIST_DOMAIN, b"body", &signature));
        assert!(!key.public().verify(ENVELOPE_DOMAIN, b"bodY", &signature));
        assert!(!key
            .public()
            .verify(ENVELOPE_DOMAIN, b"body", &signature[..63]));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = SecretKey::from_bytes(&[0xab; 32]).unwrap();
        let printed = format!("{key:?}");
        assert!(!printed.contains("abab"), "{printed}");
    }

    #[test]
    fn weak_and_malformed_public_keys_are_refused() {
        // The identity point encodes as 1 followed by zeros: small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::Weak));
        assert_eq!(
            PublicKey::from_bytes(&[0; 31]),
            Err(KeyError::BadLength(31))
        );
        assert!(PublicKey::from_hex("not hex").is_err());
    }

    #[test]
    fn tls_signing_refuses_anything_but_x509_and_tls13_inputs() {
        let key = SecretKey::from_bytes(&[3; 32]).unwrap();
        let mut tls13 = vec![0x20; 64];
        tls13.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
        assert!(key.sign_x509_or_tls13(&tls13).is_some());
        assert!(key.sign_x509_or_tls13(&[0x30, 0x82, 0x01]).is_some());
        let refused: [&[u8]; 7] = [
            ENVELOPE_DOMAIN,
            TRUST_LIST_DOMAIN,
            b"eyJhbGciOi",
            b"0eyJ",
            &[0x30, 0x20],
            &[0x20; 63],
            b"",
        ];
        for refused in refused {
            assert!(key.sign_x509_or_tls13(refused).is_none(), "{refused:?}");
        }
    }

    #[test]
    fn key_id_is_derived_from_the_key() {
        let a = SecretKey::from_bytes(&[1; 32]).unwrap().public();
        let b = SecretKey::from_bytes(&[2; 32]).unwrap().public();
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().as_str().len(), 16);
    }
}
