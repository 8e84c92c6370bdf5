//! The sans-IO protocol core: identities, envelopes, the trust list, delivery
//! rules and the outbox scheduler.
//!
//! Nothing here performs I/O, reads the clock or draws randomness: time comes
//! in as `now_ms` arguments and randomness as bytes or values from the caller.
//! The edges (`transport`, `api`, `store`) and the driver (`node`) carry out
//! what the core decides, which keeps every rule testable without sockets.
//!
//! # Layout
//! - [`ids`]: operator ids and message ids.
//! - [`keys`]: Ed25519 keys, key ids and domain-separated signatures.
//! - [`trust`]: the federation trust list and the rules for accepting a newer one.
//! - [`envelope`]: sealing and verifying signed envelopes.
//! - [`exchange`]: data requests, predicates and the holder's per-attribute plan.
//! - [`delivery`]: exactly-once application, receipts and their checks.
//! - [`outbox`]: retry scheduling with backoff and bounded concurrency.
//! - [`receive`]: the receive decision (verify, replay, apply, record, flush, answer) as a state machine.
//! - [`reason`]: every machine-readable refusal reason, one enum.
//! - [`consent`]: consent records, arrangements, delegation and the decision index.
//! - [`wire`]: the one place that converts to and from the protobuf wire types.

pub mod consent;
pub mod delivery;
pub mod envelope;
pub mod exchange;
pub mod ids;
pub mod keys;
pub mod outbox;
pub mod reason;
pub mod receive;
pub mod trust;
pub mod wire;

#[cfg(test)]
mod tests;
