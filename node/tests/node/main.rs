//! Integration tests of in-process nodes on loopback (real sled, real gRPC).

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod api_access;
mod clock_skew;
mod consent;
mod corpus;
mod exchange;
mod exchange_data;
mod hostile;
mod limits;
mod rotation;
mod tls;
