"""TorchServe's own gRPC client approach against ortserve.

Usage: python torchserve_grpc.py INFERENCE_HOST:PORT MANAGEMENT_HOST:PORT PROTO_DIR

Generates stubs from TorchServe's inference.proto and management.proto with
grpcio-tools, as TorchServe's docs do, then checks with them: Ping's health
text; Predictions, StreamPredictions and StreamPredictions2 on `linear`
(exact numbers, sequence ids echoed, an error in a stream's `status` without
ending it); NOT_FOUND and INVALID_ARGUMENT with their messages; and the
management service: list, describe, scale, register `spare` from the store,
set-default, unregister, and its errors.
"""

import importlib.resources
import json
import sys
import tempfile

import grpc
from grpc_tools import protoc

LINEAR = [2.5, 7.0, 11.5]  # linear([1, 2, 3, 4]), from tests/models/generate.py


def stubs(proto_dir):
    out = tempfile.mkdtemp()
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{proto_dir}/torchserve", f"-I{proto_dir}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}",
            f"{proto_dir}/torchserve/inference.proto", f"{proto_dir}/torchserve/management.proto"]
    assert protoc.main(args) == 0, "grpc_tools.protoc failed"
    sys.path.insert(0, out)


def close(got, want):
    assert len(got) == len(want) and all(abs(g - w) < 1e-5 for g, w in zip(got, want)), got


def refused(call, code, message):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, (error.code(), error.details())
        assert message in error.details(), error.details()
        return
    raise AssertionError(f"expected {code}")


def inference(address):
    import inference_pb2
    import inference_pb2_grpc
    from google.protobuf import empty_pb2

    stub = inference_pb2_grpc.InferenceAPIsServiceStub(grpc.insecure_channel(address))
    health = json.loads(stub.Ping(empty_pb2.Empty()).health)
    assert health == {"status": "Healthy"}, health

    def request(model="linear", **fields):
        return inference_pb2.PredictionsRequest(model_name=model, input={"data": b"[1, 2, 3, 4]"}, **fields)

    close(json.loads(stub.Predictions(request()).prediction), LINEAR)
    close(json.loads(stub.Predictions(request(model_version="1.0")).prediction), LINEAR)
    [only] = list(stub.StreamPredictions(request()))
    close(json.loads(only.prediction), LINEAR)

    sequence = [request(sequence_id="a"), request(model="nope", sequence_id="b"),
                request(), request(sequence_id="c")]
    answers = list(stub.StreamPredictions2(iter(sequence)))
    assert [a.sequence_id for a in answers] == ["a", "b", "", "c"], answers
    close(json.loads(answers[0].prediction), LINEAR)
    assert (answers[1].status.code, answers[1].status.message) == (5, "Model not found: nope"), answers[1]
    assert answers[2].status.code == 3 and "sequence_id" in answers[2].status.message, answers[2]
    close(json.loads(answers[3].prediction), LINEAR)
    assert not answers[3].HasField("status")

    refused(lambda: stub.Predictions(request(model="nope")), grpc.StatusCode.NOT_FOUND, "Model not found: nope")
    refused(lambda: stub.Predictions(request(model_version="9.9")), grpc.StatusCode.NOT_FOUND,
            "Model version: 9.9 does not exist for model: linear")
    no_data = inference_pb2.PredictionsRequest(model_name="linear", input={"image": b"[1, 2, 3, 4]"})
    refused(lambda: stub.Predictions(no_data), grpc.StatusCode.INVALID_ARGUMENT, 'input["data"]')
    bad = inference_pb2.PredictionsRequest(model_name="linear", input={"data": b"[1, 2]"})
    refused(lambda: stub.Predictions(bad), grpc.StatusCode.INVALID_ARGUMENT, "x")
    return stub, request


def management(address, predict):
    import management_pb2 as m
    import management_pb2_grpc

    stub = management_pb2_grpc.ManagementAPIsServiceStub(grpc.insecure_channel(address))
    listed = json.loads(stub.ListModels(m.ListModelsRequest()).msg)
    assert [model["modelName"] for model in listed["models"]] == ["linear"], listed
    [described] = json.loads(stub.DescribeModel(m.DescribeModelRequest(model_name="linear")).msg)
    assert (described["modelName"], described["modelVersion"]) == ("linear", "1.0"), described

    scaled = stub.ScaleWorker(m.ScaleWorkerRequest(model_name="linear", min_worker=2, synchronous=True))
    assert scaled.msg == "Workers scaled to 2 for model: linear", scaled.msg
    [described] = json.loads(stub.DescribeModel(m.DescribeModelRequest(model_name="linear")).msg)
    assert described["minWorkers"] == 2 and len(described["workers"]) == 2, described

    registered = stub.RegisterModel(m.RegisterModelRequest(url="spare", initial_workers=1, synchronous=True))
    assert registered.msg == 'Model "spare" Version: 1.0 registered with 1 initial workers', registered.msg
    close(json.loads(predict(model="spare").prediction), LINEAR)
    refused(lambda: stub.RegisterModel(m.RegisterModelRequest(url="spare", synchronous=True)),
            grpc.StatusCode.ALREADY_EXISTS, "spare")
    refused(lambda: stub.SetDefault(m.SetDefaultRequest(model_name="spare", model_version="9.9")),
            grpc.StatusCode.NOT_FOUND, "9.9")
    unregistered = stub.UnregisterModel(m.UnregisterModelRequest(model_name="spare"))
    assert unregistered.msg == 'Model "spare" unregistered', unregistered.msg
    refused(lambda: stub.DescribeModel(m.DescribeModelRequest(model_name="spare")),
            grpc.StatusCode.NOT_FOUND, "Model not found: spare")
    refused(lambda: stub.DescribeModel(m.DescribeModelRequest()), grpc.StatusCode.INVALID_ARGUMENT,
            "model_name is required")


def main(inference_address, management_address, proto_dir):
    stubs(proto_dir)
    stub, request = inference(inference_address)
    management(management_address, lambda **fields: stub.Predictions(request(**fields)))
    print("torchserve_grpc: ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
