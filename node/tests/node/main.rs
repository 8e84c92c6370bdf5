//! Integration tests of in-process nodes on loopback (real sled, real gRPC).

mod util;

mod exchange;
