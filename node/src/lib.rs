//! The federation node for personal data operators under OASC MIM4.
//!
//! Each operator runs one node. Nodes exchange signed envelopes over gRPC,
//! keep their state in sled, and accept only members of the federation's
//! signed trust list. See `ARCHITECTURE.md` at the repository root for the
//! map and the flow of one message.
//!
//! # Layout
//! - [`core`]: the sans-IO protocol (envelopes, trust list, delivery rules, outbox scheduling).
//! - [`store`]: sled persistence with group-committed flushes.
//! - [`transport`]: node-to-node transports (gRPC, libp2p) and their shared admission step.
//! - [`api`]: the local `OperatorApi` and its credentials.
//! - [`boot`]: starting a node: opening its parts, binding ports, spawning servers and loops.
//! - [`node`]: the driver: the node's state by job, and the I/O the core asks for.
//! - [`clock`]: the wall clock and random ids (the core reads neither).
//! - [`counters`]: refusals and withholdings by reason.
//! - [`sources`]: the registries a node answers data requests from.
//! - [`config`]: the `node.toml` file.
//! - [`identity`]: key files.
//! - [`trust_draft`]: governance's editable trust-list draft.
//! - [`limits`]: every limit, with its reason.
//! - [`rate_limit`]: token buckets per peer and per API client.
#![warn(missing_docs)]

pub mod api;
pub mod boot;
pub mod clock;
pub mod config;
pub mod core;
pub mod counters;
pub mod identity;
pub mod limits;
pub mod node;
pub mod rate_limit;
pub mod sources;
pub mod store;
pub mod transport;
pub mod trust_draft;

pub use boot::{start, NodeHandle};
pub use config::Config;
