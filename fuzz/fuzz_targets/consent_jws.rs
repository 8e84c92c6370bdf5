//! The consent-receipt export parser: `verify_jws`, which checks a compact
//! JWS (a signed Kantara consent receipt) against the operator's key. The
//! input is tried as a token, and split at its first NUL into a header and a
//! payload that the key then signs, so the fuzzer reaches the header checks
//! and the payload parser behind the signature.
//!
//! Invariants: nothing panics; a token verifies only when its header is
//! EdDSA, names the key and lists nothing critical, and its payload is JSON,
//! which is then what comes back; a signed token with such a header and
//! payload always verifies.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use mim4_node::core::consent::export::{verify_jws, ExportError, JWS_BYTES_MAX};
use mim4_node::core::keys::KeyId;
use serde_json::Value;

/// Whether `header` is a JSON object saying EdDSA, naming `kid`, with no `crit`.
fn header_ok(header: &[u8], kid: &KeyId) -> bool {
    serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| h.as_object().cloned())
        .is_some_and(|h| {
            h.get("alg").and_then(Value::as_str) == Some("EdDSA")
                && h.get("kid").and_then(Value::as_str) == Some(kid.as_str())
                && !h.contains_key("crit")
        })
}

fuzz_target!(|data: &[u8]| {
    let key = &mim4_fuzz::world().sender.key;
    let public = key.public();
    let kid = public.key_id();

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(value) = verify_jws(text, &public) {
            let parts: Vec<&str> = text.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
            let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
            assert!(header_ok(&header, &kid));
            assert_eq!(serde_json::from_slice::<Value>(&payload).ok(), Some(value));
        }
    }

    let (header, payload) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = key.sign(b"", signing_input.as_bytes());
    let jws = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
    let header_ok = header_ok(header, &kid);
    let payload_json = serde_json::from_slice::<Value>(payload);
    match verify_jws(&jws, &public) {
        Ok(value) => {
            assert!(header_ok);
            assert_eq!(Some(&value), payload_json.as_ref().ok());
        }
        Err(ExportError::Payload(_)) => assert!(header_ok && payload_json.is_err()),
        Err(error) => assert!(!header_ok || jws.len() > JWS_BYTES_MAX, "{error}"),
    }
});
