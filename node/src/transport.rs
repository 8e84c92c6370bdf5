//! Transports between operators. Each carries the same encoded signed
//! envelope bytes and hands them to the driver unchanged.
//!
//! # Layout
//! - [`grpc`]: the `OperatorPeer` gRPC server and its client.
//! - [`tls`]: TLS 1.3 between operators, certificates pinned to trust-list keys.

pub mod grpc;
pub mod tls;
