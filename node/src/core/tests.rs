//! Unit tests of the sans-IO core, run synchronously on a fixed clock.
//!
//! # Layout
//! - `util`: the shared fixture (governance key, three operators, a verified
//!   trust list) and helpers to seal and tamper with envelopes.
//! - `consent`: every consent transition (legal and illegal), terms, signed
//!   logs, wire round trips, decisions, and the index-equals-naive property.
//! - `envelope`: every reason `Verifier::verify` refuses an envelope, replay
//!   checks and receipt checks.
//! - `properties`: property tests that altered or random bytes never verify.
//! - `trust`: governance signatures, trust-list updates, key rotation and
//!   trust-list validation on decode.

mod consent;
mod envelope;
mod properties;
mod trust;
mod util;
