//! Transports between operators. Each carries the same encoded signed
//! envelope bytes and hands them to the driver unchanged.
//!
//! # Layout
//! - [`grpc`]: the `OperatorPeer` gRPC server and its client.

pub mod grpc;
