"""Triton's HTTP client (tritonclient.http) against a running ortserve.

Usage: python triton_http.py HOST:PORT
Expects the models `linear`, `types` (tests/models/identity_types: one input
and one output per OIP datatype) and `batched` (the linear model with
batchSize 4, maxBatchDelay 5, maxWorkers 2, no traffic before this script).
Exits non-zero on any mismatch.
"""

import sys

import ml_dtypes
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

# (input/output suffix, OIP datatype, values of shape [1, 2])
TENSORS = [
    ("bool", "BOOL", np.array([[True, False]])),
    ("u8", "UINT8", np.array([[0, 255]], np.uint8)),
    ("u16", "UINT16", np.array([[1, 65535]], np.uint16)),
    ("u32", "UINT32", np.array([[2, 4294967295]], np.uint32)),
    ("u64", "UINT64", np.array([[3, 18446744073709551615]], np.uint64)),
    ("i8", "INT8", np.array([[-128, 127]], np.int8)),
    ("i16", "INT16", np.array([[-32768, 32767]], np.int16)),
    ("i32", "INT32", np.array([[-2147483648, 2147483647]], np.int32)),
    ("i64", "INT64", np.array([[-9223372036854775808, 9223372036854775807]], np.int64)),
    ("f16", "FP16", np.array([[0.5, -65504.0]], np.float16)),
    ("bf16", "BF16", np.array([[1.5, -3.0]], ml_dtypes.bfloat16)),
    ("f32", "FP32", np.array([[0.1, -2.5e-8]], np.float32)),
    ("f64", "FP64", np.array([[0.1, 1e300]], np.float64)),
    ("str", "BYTES", np.array([["héllo".encode(), b""]], np.object_)),
]


def health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("types")
    metadata = client.get_model_metadata("types")
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert inputs == {f"x_{s}": (d, [-1, 2]) for s, d, _ in TENSORS}, inputs
    print("tritonclient health and metadata: ok")


def round_trip(client, binary):
    inputs = []
    for suffix, datatype, values in TENSORS:
        tensor = httpclient.InferInput(f"x_{suffix}", list(values.shape), datatype)
        # BF16 has no JSON form in tritonclient: it always goes binary.
        tensor.set_data_from_numpy(values, binary_data=binary or datatype == "BF16")
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(f"y_{s}", binary_data=binary or d == "BF16") for s, d, _ in TENSORS]
    result = client.infer("types", inputs, outputs=outputs, request_id="triton-1")
    assert result.get_response()["id"] == "triton-1"
    for suffix, datatype, values in TENSORS:
        got = result.as_numpy(f"y_{suffix}")
        assert got.shape == values.shape, (suffix, got.shape)
        if datatype == "BF16":
            got = got.astype(np.float32)
            values = values.astype(np.float32)
        if datatype == "BYTES":
            # tritonclient returns JSON strings as str and binary ones as bytes.
            got = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
        assert (got == values).all(), (suffix, got, values)
    print(f"tritonclient every datatype, {'binary' if binary else 'JSON'}: ok")


def linear(client):
    x = np.array([[1, 2, 3, 4]], np.float32)
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = client.infer("linear", [tensor])
    w = np.array([[(i * 4 + j + 1) / 10 for j in range(4)] for i in range(3)], np.float32)
    np.testing.assert_allclose(result.as_numpy("y"), x @ w.T + np.array([-0.5, 0, 0.5], np.float32), rtol=1e-6)
    print("tritonclient linear: ok")


def config_and_statistics(client):
    config = client.get_model_config("batched")
    assert (config["name"], config["platform"], config["backend"]) == ("batched", "onnxruntime_onnx", "onnxruntime"), config
    assert config["max_batch_size"] == 4, config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("x", "TYPE_FP32", [4])], config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("y", "TYPE_FP32", [3])], config
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000, config
    assert config["instance_group"] == [{"name": "batched", "count": 2, "kind": "KIND_CPU"}], config
    assert client.get_model_config("batched", "1.0") == config

    requests = 3
    for _ in range(requests):
        tensor = httpclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.infer("batched", [tensor])
    wrong = httpclient.InferInput("not_an_input", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 4), np.float32))
    try:
        client.infer("batched", [wrong])
        raise AssertionError("an unknown input was accepted")
    except InferenceServerException as e:
        assert e.status() == "400", (e.status(), e.message())

    [stats] = client.get_inference_statistics("batched")["model_stats"]
    assert (stats["name"], stats["version"]) == ("batched", "1.0"), stats
    counts = {k: v["count"] for k, v in stats["inference_stats"].items()}
    assert counts["success"] == requests and counts["fail"] == 1, stats
    assert counts["queue"] == requests and counts["compute_infer"] == requests, stats
    assert stats["inference_count"] == requests and stats["execution_count"] == requests, stats
    assert stats["inference_stats"]["success"]["ns"] > 0 and stats["last_inference"] > 0, stats
    assert client.get_inference_statistics("batched", "1.0")["model_stats"] == [stats]
    every = client.get_inference_statistics()["model_stats"]
    assert "batched" in [m["name"] for m in every] and "types" in [m["name"] for m in every], every
    print("tritonclient model config and statistics: ok")


def kserve_errors(client):
    """An unknown route under /v2 answers a body tritonclient can read."""
    try:
        client.get_system_shared_memory_status()
        raise AssertionError("the shared-memory extension answered")
    except InferenceServerException as e:
        assert e.status() == "404", (e.status(), e.message())
        assert e.message() == "Requested resource is not found, please refer to API document.", e.message()
    print("tritonclient reads ortserve's errors: ok")


if __name__ == "__main__":
    client = httpclient.InferenceServerClient(url=sys.argv[1])
    health(client)
    round_trip(client, binary=False)
    round_trip(client, binary=True)
    linear(client)
    config_and_statistics(client)
    kserve_errors(client)
