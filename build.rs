//! Compiles the gRPC protocol files into Rust at build time with protox, a
//! protobuf compiler in Rust: no system `protoc`, and nothing generated is
//! committed. Clients are generated too, for the benchmark and the tests.
//! It also records the git revision being built, for `ortserve --version`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kserve_open_inference_protocol_grpc_v2.proto",
        "proto/torchserve/inference.proto",
        "proto/torchserve/management.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    record_git_revision();
    pack_relative_relocations();
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_transport(false)
        // tonic's own codec starts every call with two 8 KiB buffers.
        .codec_path("crate::protocol::grpc::codec::SizedProstCodec")
        // Raw tensor bytes are slices of the call's read buffer, not copies.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        // An input's typed contents (eleven lists) make the input 312 bytes,
        // and prost makes room for four inputs at the first: 1,248 bytes,
        // past glibc's per-thread cache, for a call that sends raw bytes.
        .boxed(".inference.ModelInferRequest.InferInputTensor.contents")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Links the binary with its relative relocations packed (`DT_RELR`): the
/// loader then reads 9 KB of them at start instead of about 1 MB of
/// `.rela.dyn` that stayed resident (idle RSS; the binary stays
/// position-independent). Needs glibc 2.36 at run time, which the image's
/// Debian bookworm has; an older GNU ld ignores the option with a warning.
fn pack_relative_relocations() {
    let target = |key| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// `ORTSERVE_GIT_REVISION`: the commit being built, or `unknown` outside a
/// git checkout (a source tarball, an image built from copied files).
/// Uncommitted changes are not flagged: watching git's index for them would
/// rebuild the crate after every `git status`. Only paths that exist are
/// watched: cargo counts a missing one as changed, and `.git/packed-refs`
/// is missing from many checkouts until git packs its refs, which rebuilt
/// the whole crate on every cargo command there.
fn record_git_revision() {
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ORTSERVE_GIT_REVISION={revision}");
}
