"""A gRPC call in flight across SIGTERM (tritonclient.grpc).

Usage: python triton_grpc_drain.py HOST:PORT PID
Expects `slow` (tests/models/slow_loop, one worker) and a drain delay of a
few seconds. Starts a call of about 2 s, sends SIGTERM to PID, and checks:
readiness turns off at once, the call in flight is answered in full, and a
call after the listener closed is refused (UNAVAILABLE), not hung.
"""

import os
import signal
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def call(client, x):
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[x]], np.float32))
    return client.infer("slow", [tensor], client_timeout=30).as_numpy("y").tolist()


def main(address, pid):
    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_ready()
    answers = {}
    in_flight = threading.Thread(target=lambda: answers.update(slow=call(client, 14000)))
    in_flight.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 5
    while client.is_server_ready():
        assert time.time() < deadline, "still ready after SIGTERM"
        time.sleep(0.05)
    print("grpc readiness off after SIGTERM: ok")
    in_flight.join()
    assert answers["slow"] == [[14000.0]], answers
    print("grpc call in flight answered: ok")
    deadline = time.time() + 15
    while True:
        try:
            call(grpcclient.InferenceServerClient(address), 1)
        except InferenceServerException as error:
            assert error.status() == "StatusCode.UNAVAILABLE", (error.status(), error.message())
            break
        assert time.time() < deadline, "calls still served long after the drain delay"
        time.sleep(0.1)
    print("grpc refused after the listener closed: ok")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
