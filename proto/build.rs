//! Generates the Rust types and gRPC stubs from `proto/mim4/v1/mim4.proto`
//! (and the bench-only echo service in `proto/mim4/bench/v1/echo.proto`).
//!
//! The protobuf compiler comes from `protoc-bin-vendored`, so a fresh machine
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded, so setting the variable here races with nothing.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &["proto/mim4/v1/mim4.proto", "proto/mim4/bench/v1/echo.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto/mim4/v1/mim4.proto");
    println!("cargo:rerun-if-changed=proto/mim4/bench/v1/echo.proto");
    Ok(())
}
