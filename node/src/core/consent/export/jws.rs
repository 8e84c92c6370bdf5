//! Compact JWS (RFC 7515) with Ed25519 (RFC 8037): how the operator signs a
//! receipt so that any JOSE library can check it, and the strict check of
//! such a token that arrives from outside.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::ExportError;
use crate::core::keys::{PublicKey, SecretKey, SIGNATURE_LEN};
pub use crate::limits::JWS_BYTES_MAX;

/// The domain prefix of JWS signatures: none, because RFC 7515 signs exactly
/// `base64url(header) "." base64url(payload)`, and a JOSE library elsewhere
/// must be able to check the receipt. Domain separation still holds: that
/// input is all base64url characters and dots, while every domain-separated
/// message in [`crate::core::keys`] starts with `mim4/v1/` (a `/` is not
/// base64url), so no signature can be replayed from one use to the other.
const JWS_DOMAIN: &[u8] = b"";

/// Signs `payload` as a compact JWS (RFC 7515) with Ed25519 (`"alg":"EdDSA"`,
/// RFC 8037), naming the key by its [`KeyId`](crate::core::keys::KeyId) in `kid`.
pub fn sign_jws(payload: &Value, key: &SecretKey) -> String {
    let header = json!({
        "alg": "EdDSA",
        "kid": key.public().key_id().as_str(),
        "typ": "JWT",
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = key.sign(JWS_DOMAIN, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Checks a compact JWS made by [`sign_jws`] against `key` and returns its
/// payload. Strict: the token is bounded, every part must be canonical
/// unpadded base64url, the header must say `EdDSA`, name `key` and list no
/// critical extensions, and the signature must pass `verify_strict`. The
/// payload is parsed only after the signature has verified.
pub fn verify_jws(jws: &str, key: &PublicKey) -> Result<Value, ExportError> {
    if jws.len() > JWS_BYTES_MAX {
        return Err(ExportError::TooLong(jws.len()));
    }
    let parts = jws.split('.').count();
    let malformed = ExportError::Malformed(parts);
    if parts != 3 {
        return Err(malformed);
    }
    let (signing_input, signature_b64) = jws.rsplit_once('.').ok_or(malformed.clone())?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(malformed)?;
    let header = decode_part(header_b64, "header")?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|e| ExportError::Header(e.to_string()))?;
    let Value::Object(header) = header else {
        return Err(ExportError::Header("not an object".into()));
    };
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "EdDSA" => {}
        other => {
            return Err(ExportError::Algorithm(
                other.map_or_else(String::new, Value::to_string),
            ))
        }
    }
    if let Some(crit) = header.get("crit") {
        return Err(ExportError::Critical(crit.to_string()));
    }
    let expected = key.key_id();
    match header.get("kid") {
        Some(Value::String(kid)) if kid == expected.as_str() => {}
        other => {
            return Err(ExportError::KeyMismatch {
                expected,
                got: other.map(|kid| kid.as_str().map_or_else(|| kid.to_string(), str::to_owned)),
            })
        }
    }
    let signature = decode_part(signature_b64, "signature")?;
    if signature.len() != SIGNATURE_LEN
        || !key.verify(JWS_DOMAIN, signing_input.as_bytes(), &signature)
    {
        return Err(ExportError::BadSignature);
    }
    let payload = decode_part(payload_b64, "payload")?;
    serde_json::from_slice(&payload).map_err(|e| ExportError::Payload(e.to_string()))
}

/// Decodes one part of a compact JWS, canonical unpadded base64url only.
fn decode_part(part: &str, name: &'static str) -> Result<Vec<u8>, ExportError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ExportError::Base64(name))
}
