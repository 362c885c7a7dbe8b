//! Generates the prost types of the vendored Istio protos (`proto/`, see its README) with
//! protox, a pure-Rust protobuf compiler, so building meshd needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: [&str; 2] = [
        "proto/workloadapi/workload.proto",
        "proto/workloadapi/security/authorization.proto",
    ];
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(FILES, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
