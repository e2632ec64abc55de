"""KServe's own Python SDK (kserve.InferenceRESTClient) against a running ortserve.

Usage: python kserve_sdk.py BASE_URL DATA_DIR MNIST_SAMPLE_GOLDEN
Expects the models `linear` (tests/models: y = x·Wᵀ + b), `mnist` (mnist_cnn with
the image_classifier handler, topK 1) and `mnist_v2`. MNIST_SAMPLE_GOLDEN is the
generator's golden/mnist_sample.json: mnist_cnn's logits for the reference sample
requests, from NumPy. Exits non-zero on any mismatch.
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


def softmax(logits):
    e = np.exp(np.asarray(logits, np.float64) - np.max(logits))
    return e / e.sum()


async def v1(base, data_dir, golden):
    client = InferenceRESTClient(RESTConfig(protocol="v1"))
    assert await client.is_server_live(base)
    assert await client.is_model_ready(base, "linear")
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]]
    answer = await client.infer(base, {"instances": rows}, model_name="linear")
    np.testing.assert_allclose(answer["predictions"], linear(np.array(rows, np.float32)), rtol=1e-6)
    with open(f"{data_dir}/reference/torchserve_kserve_v1_mnist_request.json") as f:
        answer = await client.infer(base, json.load(f), model_name="mnist")
    prediction = answer["predictions"][0]
    assert set(prediction) == {"class", "probability"}, answer
    p = softmax(golden["v1_png_logits"])
    assert prediction["class"] == str(int(np.argmax(p))), (answer, p)
    np.testing.assert_allclose(prediction["probability"], p.max(), atol=1e-5)
    # Explanations: feature ablation on the linear model is exactly W[t]·x.
    x = [1.0, 2.0, -3.0, 4.0]
    answer = await client.explain(base, "linear", {"instances": [x], "parameters": {"target": 1}})
    np.testing.assert_allclose(answer["explanations"][0], W[1] * np.array(x, np.float32), rtol=1e-6)
    await client.close()
    print("kserve SDK v1 (predict and explain): ok")


async def v2(base, data_dir, golden):
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
    logits = response.outputs[0].as_numpy()
    assert logits.shape == (1, 10), logits.shape
    np.testing.assert_allclose(logits[0], golden["v2_tensor_logits"], atol=1e-5)
    await client.close()
    print("kserve SDK v2 (JSON and binary): ok")


async def main(base, data_dir, golden_path):
    with open(golden_path) as f:
        golden = json.load(f)
    await v1(base, data_dir, golden)
    await v2(base, data_dir, golden)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
