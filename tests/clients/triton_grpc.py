"""Triton's gRPC client (tritonclient.grpc) against a running ortserve.

Usage: python triton_grpc.py HOST:PORT
Expects the models `linear` (jobQueueSize at least 6000) and `types` (tests/models/identity_types: one
input and one output per OIP datatype), as triton_http.py does, and `slow`
(tests/models/slow_loop, one worker, responseTimeout 60), on a server without
enable_model_api. Exits non-zero on any mismatch.
"""

import sys

import grpc
import ml_dtypes
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from triton_http import TENSORS

W = np.array([[(i * 4 + j + 1) / 10 for j in range(4)] for i in range(3)], np.float32)
B = np.array([-0.5, 0, 0.5], np.float32)


def expect_error(call, code, fragment):
    try:
        call()
    except InferenceServerException as error:
        assert error.status() == code, (error.status(), error.message())
        assert fragment in error.message(), error.message()
        return
    raise AssertionError(f"no error (wanted {code} with {fragment!r})")


def health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and client.is_model_ready("linear", "1.0")
    expect_error(lambda: client.is_model_ready("nowhere"), "StatusCode.NOT_FOUND", "nowhere")
    server = client.get_server_metadata()
    assert server.name == "ortserve", server
    # The extensions this service answers, and no other.
    assert list(server.extensions) == ["model_repository"], server
    metadata = client.get_model_metadata("linear")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("linear", ["1.0"], "onnxruntime_onnx"), metadata
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 4])], metadata
    print("tritonclient.grpc health and metadata: ok")


def every_datatype(client):
    inputs = []
    for suffix, datatype, values in TENSORS:
        tensor = grpcclient.InferInput(f"x_{suffix}", list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(f"y_{s}") for s, _, _ in reversed(TENSORS)]
    result = client.infer("types", inputs, outputs=outputs, request_id="grpc-1")
    response = result.get_response()
    assert response.id == "grpc-1", response.id
    # The outputs come back in the order asked for.
    assert [o.name for o in response.outputs] == [f"y_{s}" for s, _, _ in reversed(TENSORS)]
    for suffix, datatype, values in TENSORS:
        got = result.as_numpy(f"y_{suffix}")
        assert got.shape == values.shape, (suffix, got.shape)
        if datatype == "BF16":
            got, values = got.astype(np.float32), values.astype(np.float32)
        assert (got == values).all(), (suffix, got, values)
    print("tritonclient.grpc every datatype, raw contents: ok")


def linear(client):
    x = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], np.float32)
    tensor = grpcclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("linear", [tensor], model_version="1.0")
    np.testing.assert_allclose(result.as_numpy("y"), x @ W.T + B, rtol=1e-6)
    # 72 KB of output: more than one HTTP/2 frame, which ortserve gives
    # hyper in frame-sized pieces.
    x = np.arange(6000 * 4, dtype=np.float32).reshape(6000, 4) / 1000
    tensor = grpcclient.InferInput("x", [6000, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("linear", [tensor])
    np.testing.assert_allclose(result.as_numpy("y"), x @ W.T + B, rtol=1e-5)
    print("tritonclient.grpc linear: ok")


def typed_contents(address):
    """The typed `contents` fields in, typed contents out (no raw bytes)."""
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    request = pb.ModelInferRequest(model_name="linear", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents, response
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", "FP32", [1, 3]), output
    want = np.array([[1, 2, 3, 4]], np.float32) @ W.T + B
    np.testing.assert_allclose(np.array(output.contents.fp32_contents), want[0], rtol=1e-6)
    # One instance without its batch axis is answered without it.
    single = pb.ModelInferRequest(model_name="linear")
    tensor = single.inputs.add(name="x", datatype="FP32", shape=[4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    assert list(stub.ModelInfer(single).outputs[0].shape) == [3]
    # INT8 arrives in int_contents and must fit.
    narrow = pb.ModelInferRequest(model_name="types")
    for suffix, datatype, values in TENSORS:
        tensor = narrow.inputs.add(name=f"x_{suffix}", datatype=datatype, shape=[1, 2])
        if datatype in ("FP16", "BF16"):
            narrow.raw_input_contents.append(values.tobytes())
    try:
        stub.ModelInfer(narrow)
        raise AssertionError("mixed raw and typed contents were accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "raw_input_contents has 2 entries but there are 14 inputs" in error.details(), error.details()
    print("grpc typed contents: ok")


def errors(client):
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    expect_error(lambda: client.infer("nowhere", [tensor]), "StatusCode.NOT_FOUND", "Model not found: nowhere")
    expect_error(
        lambda: client.infer("linear", [tensor], model_version="9.9"),
        "StatusCode.NOT_FOUND",
        "Model version: 9.9 does not exist for model: linear",
    )
    wrong = grpcclient.InferInput("x", [1, 4], "INT32")
    wrong.set_data_from_numpy(np.ones((1, 4), np.int32))
    expect_error(lambda: client.infer("linear", [wrong]), "StatusCode.INVALID_ARGUMENT", "input 'x': datatype is INT32 but the model takes FP32")
    # Three floats' bytes for a [1, 4] shape (the client checks shapes, so
    # the message is edited after it).
    short = grpcclient.InferInput("x", [1, 3], "FP32")
    short.set_data_from_numpy(np.ones((1, 3), np.float32))
    short._input.shape[:] = [1, 4]
    expect_error(lambda: client.infer("linear", [short]), "StatusCode.INVALID_ARGUMENT", "input 'x': the binary data is 12 bytes")
    # This server runs without enable_model_api: repository changes are refused.
    expect_error(lambda: client.unload_model("linear"), "StatusCode.FAILED_PRECONDITION", "start ortserve with enable_model_api=true")
    print("tritonclient.grpc errors: ok")


def deadline(client):
    """A call's deadline cancels its run: DEADLINE_EXCEEDED at once, and the
    model is free for the next call long before the run would have ended."""
    slow = grpcclient.InferInput("x", [1, 1], "FP32")
    slow.set_data_from_numpy(np.array([[200000]], np.float32))  # ~30 s of loop
    expect_error(lambda: client.infer("slow", [slow], client_timeout=1.0), "StatusCode.DEADLINE_EXCEEDED", "")
    quick = grpcclient.InferInput("x", [1, 1], "FP32")
    quick.set_data_from_numpy(np.array([[1]], np.float32))
    result = client.infer("slow", [quick], client_timeout=20)
    assert result.as_numpy("y").tolist() == [[1.0]], result.as_numpy("y")
    print("tritonclient.grpc deadline: ok")


def main(address):
    client = grpcclient.InferenceServerClient(address)
    health_and_metadata(client)
    every_datatype(client)
    linear(client)
    typed_contents(address)
    errors(client)
    deadline(client)
    standard_health(address)



def standard_health(address):
    """grpc.health.v1, as grpc_health_probe and kubelet's gRPC probe ask;
    the two messages are hand-encoded (one string field in, one enum out)."""
    check = grpc.insecure_channel(address).unary_unary("/grpc.health.v1.Health/Check")
    served = (b"", b"inference.GRPCInferenceService", b"org.pytorch.serve.grpc.inference.InferenceAPIsService")
    for service in served:
        request = (b"\x0a" + bytes([len(service)]) + service) if service else b""
        answer = check(request)
        assert answer == b"\x08\x01", (service, answer)  # status = SERVING
    print("grpc.health.v1: ok")


if __name__ == "__main__":
    main(sys.argv[1])
