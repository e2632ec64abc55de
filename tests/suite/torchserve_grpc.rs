//! TorchServe's gRPC APIs (`InferenceAPIsService` on the gRPC inference
//! listener, `ManagementAPIsService` on the gRPC management listener) driven
//! the way TorchServe's docs drive them: Python stubs generated from its
//! protos with grpcio-tools (tests/clients/torchserve_grpc.py).

use crate::common::*;
use crate::real_clients::run;

#[tokio::test]
async fn torchserves_generated_stubs_predict_and_manage() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\n"))
        .dir_model("spare", "linear", None);
    let launch = Launch::store(&store, "linear").arg("--enable-model-api");
    let server = Server::healthy(launch).await;
    let inference = server.grpc_address();
    let management = server.grpc_management_address();
    let protos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    tokio::task::spawn_blocking(move || {
        run(
            "torchserve_grpc.py",
            &[&inference, &management, protos.to_str().unwrap()],
        )
    })
    .await
    .unwrap();
}
