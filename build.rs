//! Compiles the gRPC protocol files into Rust at build time with protox, a
//! protobuf compiler in Rust: no system `protoc`, and nothing generated is
//! committed. Clients are generated too, for the benchmark and the tests.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kserve_open_inference_protocol_grpc_v2.proto",
        "proto/torchserve/inference.proto",
        "proto/torchserve/management.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
