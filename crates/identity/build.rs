//! Compiles the vendored SPIRE Delegated Identity API protos (`proto/`, see its README) with
//! protox, a pure-Rust protobuf compiler, so building meshd needs no `protoc`, and generates
//! the tonic client for `identity.spireDelegated`.

use std::error::Error;

const PROTOS: &[&str] = &["proto/spire/api/agent/delegatedidentity/v1/delegatedidentity.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
