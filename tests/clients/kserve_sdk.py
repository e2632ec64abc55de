"""KServe's own Python SDK (kserve.InferenceRESTClient) against a running ortserve.

Usage: python kserve_sdk.py BASE_URL DATA_DIR
Expects the models `linear` (tests/models: y = x·Wᵀ + b), `mnist` (mnist_cnn with
the image_classifier handler) and `mnist_v2`. Exits non-zero on any mismatch.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

W = np.array([[(i * 4 + j + 1) / 10 for j in range(4)] for i in range(3)], np.float32)
B = np.array([-0.5, 0.0, 0.5], np.float32)


def linear(x):
    return x @ W.T + B


async def v1(base, data_dir):
    client = InferenceRESTClient(RESTConfig(protocol="v1"))
    assert await client.is_server_live(base)
    assert await client.is_model_ready(base, "linear")
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]]
    answer = await client.infer(base, {"instances": rows}, model_name="linear")
    np.testing.assert_allclose(answer["predictions"], linear(np.array(rows, np.float32)), rtol=1e-6)
    with open(f"{data_dir}/reference/torchserve_kserve_v1_mnist_request.json") as f:
        answer = await client.infer(base, json.load(f), model_name="mnist")
    assert set(answer["predictions"][0]) == {"class", "probability"}, answer
    # Explanations: feature ablation on the linear model is exactly W[t]·x.
    x = [1.0, 2.0, -3.0, 4.0]
    answer = await client.explain(base, "linear", {"instances": [x], "parameters": {"target": 1}})
    np.testing.assert_allclose(answer["explanations"][0], W[1] * np.array(x, np.float32), rtol=1e-6)
    await client.close()
    print("kserve SDK v1 (predict and explain): ok")


async def v2(base, data_dir):
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    assert await client.is_server_live(base)
    assert await client.is_server_ready(base)
    assert await client.is_model_ready(base, "linear")
    x = np.array([[1, 2, 3, 4], [0.5, -1, 2, 0]], np.float32)
    for binary in (False, True):
        tensor = InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [RequestedOutput("y", parameters={"binary_data": binary})]
        request = InferRequest("linear", [tensor], request_id="sdk-1", request_outputs=outputs)
        response = await client.infer(base, request, model_name="linear")
        assert response.id == "sdk-1", response.id
        np.testing.assert_allclose(response.outputs[0].as_numpy(), linear(x), rtol=1e-6)
    with open(f"{data_dir}/reference/torchserve_kserve_v2_mnist_tensor_request.json") as f:
        response = await client.infer(base, json.load(f), model_name="mnist_v2")
    assert response.outputs[0].as_numpy().shape == (1, 10)
    await client.close()
    print("kserve SDK v2 (JSON and binary): ok")


async def main(base, data_dir):
    await v1(base, data_dir)
    await v2(base, data_dir)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
