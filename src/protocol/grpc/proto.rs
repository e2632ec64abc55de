//! The messages, services and clients generated from `proto/` at build time
//! (see `build.rs`), in modules that follow the protobuf packages, because
//! the generated code names other packages by relative path. Public so that
//! benchmarks and tests drive the server with the same wire types.
//!
//! The protocols' own names (`BoolParam`, `Int64Param`, …) are kept, whatever
//! clippy thinks of them.

/// The Open Inference Protocol (KServe v2), with Triton's repository calls.
#[allow(clippy::enum_variant_names)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// `google.rpc.Status`, which TorchServe's streaming answers carry.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// TorchServe's gRPC inference and management APIs.
pub mod org {
    pub mod pytorch {
        pub mod serve {
            pub mod grpc {
                pub mod inference {
                    tonic::include_proto!("org.pytorch.serve.grpc.inference");
                }
                pub mod management {
                    tonic::include_proto!("org.pytorch.serve.grpc.management");
                }
            }
        }
    }
}
