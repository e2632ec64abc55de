"""Triton's HTTP client's model repository calls against a running ortserve.

Usage: python triton_repository.py HOST:PORT
Expects a server with enable_model_api=true serving `linear`, whose model
store also holds `spare` (the linear model, not loaded) and `declared`
(loaded from a declaration file). Exits non-zero on any mismatch.
"""

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def names(index):
    return sorted((entry["name"], entry["version"], entry["state"]) for entry in index)


def expect_error(call, status, fragment):
    try:
        call()
    except InferenceServerException as error:
        assert error.status() == str(status), (error.status(), error.message())
        assert fragment in error.message(), error.message()
        return
    raise AssertionError(f"no error (wanted {status} with {fragment!r})")


def linear_answer(client, model):
    values = np.array([[1, 2, 3, 4]], np.float32)
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(values)
    return client.infer(model, [tensor]).as_numpy("y")


def main(address):
    client = httpclient.InferenceServerClient(address)
    before = names(client.get_model_repository_index())
    assert ("linear", "1.0", "READY") in before, before
    assert not any(name == "spare" for name, _, _ in before), before

    client.load_model("spare")
    assert client.is_model_ready("spare")
    np.testing.assert_allclose(linear_answer(client, "spare"), linear_answer(client, "linear"))
    assert ("spare", "1.0", "READY") in names(client.get_model_repository_index())
    client.load_model("spare")  # a second load changes nothing
    print("tritonclient load_model: ok")

    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    assert not any(n == "spare" for n, _, _ in names(client.get_model_repository_index()))
    print("tritonclient unload_model: ok")

    expect_error(lambda: client.load_model("nowhere"), 400, "not found in the model store")
    expect_error(lambda: client.unload_model("declared"), 409, "is declared in declared.yaml")
    expect_error(lambda: client.unload_model("nowhere"), 404, "nowhere")
    expect_error(
        lambda: client.load_model("spare", config='{"backend": "onnxruntime"}'),
        400,
        "are not supported",
    )
    print("tritonclient repository errors: ok")


if __name__ == "__main__":
    main(sys.argv[1])
