//! Compiles the vendored protos with protox (pure Rust: no `protoc` on the machine) and feeds
//! the descriptors to tonic-prost-build for the client stubs.

use std::error::Error;

const PROTOS: &[&str] = &[
    "proto/envoy/service/discovery/v3/discovery.proto",
    "proto/istio/v1/auth/ca.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
