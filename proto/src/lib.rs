//! Wire types and gRPC services of the MIM4 operator federation.
//!
//! Everything here is generated from `proto/mim4/v1/mim4.proto` by prost and
//! tonic; there is no logic. The node converts these wire types to its domain
//! types in one module (`mim4_node::core::wire`); the SDK exposes them to
//! local API clients.
//!
//! # Layout
//! - [`v1`]: package `mim4.v1` (envelopes, trust list, `OperatorPeer`, `OperatorApi`).
//! - [`bench`]: package `mim4.bench.v1`, an unsigned echo that `mim4-testnet bench`
//!   measures as the ceiling; no node serves it.

/// Package `mim4.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("mim4.v1");
}

/// Bench-only packages (not part of the federation protocol).
pub mod bench {
    /// Package `mim4.bench.v1`: the unsigned echo used as the benchmark ceiling.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("mim4.bench.v1");
    }
}
