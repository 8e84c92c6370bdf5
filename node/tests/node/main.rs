//! Integration tests of in-process nodes on loopback (real sled, real gRPC).

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

/// Runs each named `async fn test(transports)` once per kind of federation
/// (gRPC, libp2p, mixed) from the same test code: `mod test { grpc, libp2p, mixed }`.
macro_rules! over_transports {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use crate::util::Transports;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn grpc() {
                super::$test(Transports::Grpc).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn libp2p() {
                super::$test(Transports::Libp2p).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mixed() {
                super::$test(Transports::Mixed).await;
            }
        }
    )*};
}

mod api_access;
mod clock_skew;
mod consent;
mod corpus;
mod exchange;
mod exchange_data;
mod hostile;
mod limits;
mod p2p;
mod rotation;
mod subject_limits;
mod tls;
