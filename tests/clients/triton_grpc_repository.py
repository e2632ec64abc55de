"""Triton's gRPC client's model repository calls against a running ortserve.

Usage: python triton_grpc_repository.py HOST:PORT
Expects a server with enable_model_api=true serving `linear` and `spare` (both
the linear test model, y = x·Wᵀ + b, from the model store) and nothing else.
Checks the exact index, that an unloaded model is gone (not ready, not
indexed, not served), that loading it back serves the exact answer again, and
the errors: a `config` override, an unknown name. Exits non-zero on any
mismatch.
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient

from triton_grpc import expect_error

# W·x + b for x = [10, 0, 0, 0]: 10·W[:, 0] + b, exact in float32 whichever
# way the products are rounded or fused.
X = np.array([[10, 0, 0, 0]], np.float32)
Y = np.array([[0.5, 5.0, 9.5]], np.float32)


def index(client):
    return [(m.name, m.version, m.state, m.reason) for m in client.get_model_repository_index().models]


def infer(client, model):
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer(model, [tensor]).as_numpy("y")


def main(address):
    client = grpcclient.InferenceServerClient(address)
    both = [("linear", "1.0", "READY", ""), ("spare", "1.0", "READY", "")]
    assert index(client) == both, index(client)
    print("tritonclient.grpc get_model_repository_index: ok")

    client.unload_model("spare")
    expect_error(lambda: client.is_model_ready("spare"), "StatusCode.NOT_FOUND", "spare")
    assert index(client) == both[:1], index(client)
    expect_error(lambda: infer(client, "spare"), "StatusCode.NOT_FOUND", "Model not found: spare")
    assert client.is_model_ready("linear")
    print("tritonclient.grpc unload_model: ok")

    client.load_model("spare")
    assert client.is_model_ready("spare")
    assert index(client) == both, index(client)
    got = infer(client, "spare")
    assert got.dtype == np.float32 and np.array_equal(got, Y), got
    client.load_model("spare")  # a second load changes nothing
    assert index(client) == both, index(client)
    print("tritonclient.grpc load_model: ok")

    expect_error(
        lambda: client.load_model("spare", config='{"backend": "onnxruntime"}'),
        "StatusCode.INVALID_ARGUMENT",
        'parameters ["config"] are not supported',
    )
    expect_error(lambda: client.load_model("nowhere"), "StatusCode.INVALID_ARGUMENT", "not found in the model store")
    expect_error(lambda: client.unload_model("nowhere"), "StatusCode.NOT_FOUND", "nowhere")
    assert index(client) == both, index(client)
    print("tritonclient.grpc repository errors: ok")


if __name__ == "__main__":
    main(sys.argv[1])
