"""KServe's own Python SDK over gRPC (kserve.InferenceGRPCClient) against a running ortserve.

Usage: python kserve_grpc.py HOST:PORT
Expects the models `linear` (tests/models: y = x·Wᵀ + b) and `types`
(tests/models/identity_types: one input and one output per OIP datatype).
Checks liveness and readiness, exact FP32 answers from `linear` with raw and
with typed contents, an exact round trip of every datatype the SDK decodes
through `types`, and NOT_FOUND for an unknown model. Exits non-zero on any
mismatch.
"""

import asyncio
import logging
import sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput, serialize_byte_tensor

from triton_http import TENSORS

# W·x + b for these rows: exact in float32 whichever way the products are
# rounded or fused.
X = np.array([[10, 0, 0, 0], [0, 0, 0, 0]], np.float32)
Y = np.array([[0.5, 5.0, 9.5], [-0.5, 0.0, 0.5]], np.float32)


async def health(client):
    assert await client.is_server_live() is True
    assert await client.is_server_ready() is True
    assert await client.is_model_ready("linear") is True
    assert await client.is_model_ready("types") is True
    print("kserve gRPC health: ok")


async def linear(client):
    raw = InferInput("x", list(X.shape), "FP32")
    raw.set_data_from_numpy(X)  # raw_input_contents
    typed = InferInput("x", list(X.shape), "FP32", data=X.flatten().tolist())  # fp32_contents
    for name, tensor in (("raw", raw), ("typed", typed)):
        request = InferRequest("linear", [tensor], request_id=f"kserve-{name}", model_version="1.0")
        response = await client.infer(request)
        assert (response.id, response.model_name) == (f"kserve-{name}", "linear"), response
        [output] = response.outputs
        assert (output.name, output.datatype, output.shape) == ("y", "FP32", [2, 3]), output
        got = output.as_numpy()
        assert got.dtype == np.float32 and np.array_equal(got, Y), (name, got)
    print("kserve gRPC linear (raw and typed contents): ok")


async def every_datatype(client):
    """All 14 inputs go raw (BF16 has no NumPy type in the SDK); every output
    but BF16 is asked for, as the SDK's response decoder has no BF16."""
    inputs = [InferInput(f"x_{s}", list(v.shape), d) for s, d, v in TENSORS]
    raw = [serialize_byte_tensor(v).item() if d == "BYTES" else v.tobytes() for _, d, v in TENSORS]
    wanted = [(s, d, v) for s, d, v in TENSORS if d != "BF16"]
    outputs = [RequestedOutput(f"y_{s}") for s, _, _ in wanted]
    request = InferRequest("types", inputs, request_id="kserve-types", raw_inputs=raw, request_outputs=outputs)
    response = await client.infer(request)
    assert response.id == "kserve-types", response.id
    assert [(o.name, o.datatype, o.shape) for o in response.outputs] == [
        (f"y_{s}", d, list(v.shape)) for s, d, v in wanted
    ], response.outputs
    for (suffix, _, values), output in zip(wanted, response.outputs):
        got = output.as_numpy()
        assert got.dtype == values.dtype and np.array_equal(got, values), (suffix, got, values)
    print("kserve gRPC every datatype but BF16: ok")


async def unknown_model(client):
    for call in (
        client.is_model_ready("nowhere"),
        client.infer(InferRequest("nowhere", [InferInput("x", [1, 4], "FP32", data=[0.0] * 4)])),
    ):
        try:
            await call
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            assert "Model not found: nowhere" in error.details(), error.details()
            continue
        raise AssertionError("no NOT_FOUND for an unknown model")
    print("kserve gRPC unknown model: ok")


async def main(address):
    # The SDK logs every failed call with its traceback; the errors here are expected.
    logging.getLogger("kserve").setLevel(logging.CRITICAL)
    async with InferenceGRPCClient(address, retries=0) as client:
        await health(client)
        await linear(client)
        await every_datatype(client)
        await unknown_model(client)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
