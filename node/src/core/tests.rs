//! Unit tests of the sans-IO core, run synchronously on a fixed clock.
//!
//! # Layout
//! - `util`: the shared fixture (governance key, three operators, a verified
//!   trust list) and helpers to seal and tamper with envelopes.
//! - `consent`: every consent transition (legal and illegal), terms, signed
//!   logs, wire round trips, decisions, and the index-equals-naive property.
//! - `ed25519`: the ed25519-speccheck cases and Wycheproof vectors through the
//!   node's verification, and small-order keys refused, also in trust lists.
//! - `envelope`: every reason `Verifier::verify` refuses an envelope, replay
//!   checks and receipt checks.
//! - `properties`: property tests that altered or random bytes never verify,
//!   and that the decoders (envelopes, predicates, consent-receipt JWS, trust
//!   lists) return a value or a typed error for any input, never panic.
//! - `sim`: a deterministic simulation of nodes (the core plus a model of the
//!   driver and of sled) under seeded crashes, partitions and clock offsets,
//!   checked like Jepsen's total queue; a broken receiver must be caught.
//! - `trust`: governance signatures, trust-list updates, key rotation and
//!   trust-list validation on decode.

mod consent;
mod ed25519;
mod envelope;
mod properties;
mod sim;
mod trust;
mod util;
