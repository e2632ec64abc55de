"""A gRPC call in flight across SIGTERM (tritonclient.grpc).

Usage: python triton_grpc_drain.py HOST:PORT PID
Expects `slow` (tests/models/slow_loop, one worker) and a drain delay of a
few seconds. Starts a call of about 2 s and a health Watch, sends SIGTERM
to PID, and checks: readiness turns off at once, the call in flight is
answered in full, a call after the listener closed is refused
(UNAVAILABLE), not hung, and the Watch sees NOT_SERVING and then ends
(UNAVAILABLE) when the listener closes, not at shutdown_timeout.
"""

import os
import signal
import sys
import threading
import time

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def call(client, x):
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[x]], np.float32))
    return client.infer("slow", [tensor], client_timeout=30).as_numpy("y").tolist()


# grpc.health.v1's messages by hand: the request for the server ("") is
# empty, and an answer is field 1, the status (1 SERVING, 2 NOT_SERVING).
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"


def watch_health(address, seen):
    """Records each status the Watch stream sends, then how it ended."""
    channel = grpc.insecure_channel(address)
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=lambda message: message,
        response_deserializer=lambda message: message,
    )
    try:
        for status in watch(b""):
            seen.append(status)
        seen.append("ended OK")
    except grpc.RpcError as error:
        seen.append((error.code(), error.details(), time.time()))


def main(address, pid):
    # Whatever hangs, the suite gets an answer: SIGALRM ends the script.
    signal.alarm(60)
    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_ready()
    answers = {}
    # Daemons: a failed check must end the script, not wait on a stream.
    in_flight = threading.Thread(
        target=lambda: answers.update(slow=call(client, 14000)), daemon=True
    )
    in_flight.start()
    watched = []
    watcher = threading.Thread(target=watch_health, args=(address, watched), daemon=True)
    watcher.start()
    # The health service follows readiness every 250 ms: it may still say
    # NOT_SERVING just after start-up.
    deadline = time.time() + 5
    while watched[-1:] != [SERVING]:
        assert time.time() < deadline, f"the Watch never said SERVING: {watched}"
        time.sleep(0.05)
    seen_before = len(watched)
    os.kill(pid, signal.SIGTERM)
    signalled = time.time()
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
    watcher.join(timeout=10)
    assert not watcher.is_alive(), f"the health Watch still open: {watched}"
    assert isinstance(watched[-1], tuple), f"the Watch ended without an error: {watched}"
    code, details, ended = watched[-1]
    assert watched[seen_before:-1] == [NOT_SERVING], watched
    assert code == grpc.StatusCode.UNAVAILABLE, watched
    assert details == "the server is shutting down", watched
    # The drain delay is 2 s; shutdown_timeout, which held it before, 20 s.
    assert ended - signalled < 8, f"the Watch ended {ended - signalled:.1f} s after SIGTERM"
    print("grpc health Watch ended when the listener closed: ok")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
