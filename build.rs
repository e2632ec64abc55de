//! Compiles the gRPC protocol files into Rust at build time with protox, a
//! protobuf compiler in Rust: no system `protoc`, and nothing generated is
//! committed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/kserve_open_inference_protocol_grpc_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
