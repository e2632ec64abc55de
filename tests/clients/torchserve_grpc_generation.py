"""TorchServe's gRPC client approach against a text generation model:
StreamPredictions sends the text one piece per message, Predictions sends
it whole. Usage: torchserve_grpc_generation.py HOST:PORT PROTO_DIR GOLDEN_JSON"""

import json
import sys

import grpc

from torchserve_grpc import refused, stubs


def main(address, proto_dir, golden_path):
    stubs(proto_dir)
    import inference_pb2
    import inference_pb2_grpc

    with open(golden_path, encoding="utf-8") as f:
        golden = json.load(f)
    hello = next(c for c in golden["cases"] if c["prompt"] == "Hello")
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(grpc.insecure_channel(address))

    def request(data):
        return inference_pb2.PredictionsRequest(model_name="tiny_lm", input={"data": data})

    pieces = [answer.prediction.decode() for answer in stub.StreamPredictions(request(b"Hello"))]
    assert pieces == golden["pieces"], pieces
    whole = stub.Predictions(request(b'{"prompt": "Hello", "max_new_tokens": 3}')).prediction
    assert whole.decode() == ", w\u00f6rld", whole
    assert stub.Predictions(request(b"Hello")).prediction.decode() == hello["text"]
    refused(lambda: list(stub.StreamPredictions(request(b'{"prompt": "Hi", "top_k": -1}'))),
            grpc.StatusCode.INVALID_ARGUMENT, "invalid generation parameter")
    print("torchserve grpc generation: ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
