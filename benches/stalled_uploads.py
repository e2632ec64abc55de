"""The server's memory while many connections stall request bodies one
byte short of their end: the attack `max_request_memory` bounds. Loopback
only; it stops by itself.

    python3 benches/stalled_uploads.py [--connections 400] [--body-size 6553500]
        [--memory BYTES] [--binary target/release/ortserve]

Starts the server on the tiny model (`target/test-models/linear.onnx`, from
`make setup target/test-models/.generated`), opens the connections one
after another, each sending a prediction's headers and all but the last byte
of its body, then prints the server's resident memory (now and at its peak),
how many bodies were refused with 503, and whether a small prediction on a
new connection still answers. `--memory` sets `max_request_memory`; without
it the default holds (a quarter of the memory limit).
"""

import argparse
import os
import pathlib
import random
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent


def start(binary, memory, connections, work):
    store = work / "store" / "tiny"
    store.mkdir(parents=True)
    (store / "model.onnx").write_bytes((ROOT / "target/test-models/linear.onnx").read_bytes())
    port = 20000 + random.randrange(20000)
    lines = [
        f"inference_address=http://127.0.0.1:{port}",
        f"management_address=http://127.0.0.1:{port + 1}",
        f"metrics_address=http://127.0.0.1:{port + 2}",
        "grpc_inference_port=0",
        "grpc_management_port=0",
        "access_log=false",
        f"max_connections={connections + 16}",
    ]
    if memory is not None:
        lines.append(f"max_request_memory={memory}")
    (work / "config.properties").write_text("\n".join(lines) + "\n")
    library = os.environ.get("ORT_DYLIB_PATH", str(ROOT / ".onnxruntime/libonnxruntime.so.1"))
    server = subprocess.Popen(
        [binary, "--ts-config", str(work / "config.properties"), "--model-store",
         str(work / "store"), "--models", "all", "--onnxruntime-lib", library],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(base + "/ping", timeout=2)
            return server, port
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not become healthy")


def memory_mb(pid):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    kib = lambda key: int(fields[key].split()[0])
    return kib("VmRSS") / 1024, kib("VmHWM") / 1024


def stall(port, size, body):
    """Sends a prediction's headers and all but its body's last byte; True
    when the server refused it with 503."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /predictions/tiny HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    try:
        sock.sendall(body)
    except OSError:
        pass
    sock.settimeout(0.05)
    try:
        refused = sock.recv(64).startswith(b"HTTP/1.1 503")
    except (socket.timeout, OSError):
        refused = False
    return sock, refused


def predicts(port):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predictions/tiny", data=b"[1, 2, 3, 4]", method="POST"
    )
    try:
        return urllib.request.urlopen(request, timeout=10).status == 200
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=str(ROOT / "target/release/ortserve"))
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--body-size", type=int, default=6_553_500)
    parser.add_argument("--memory", type=int)
    args = parser.parse_args()
    body = (b"[1, 2, 3, 4]" + b" " * args.body_size)[: args.body_size - 1]
    with tempfile.TemporaryDirectory() as work:
        server, port = start(args.binary, args.memory, args.connections, pathlib.Path(work))
        try:
            idle, _ = memory_mb(server.pid)
            started = time.monotonic()
            sockets, refused = [], 0
            for _ in range(args.connections):
                sock, was_refused = stall(port, args.body_size, body)
                sockets.append(sock)
                refused += was_refused
            time.sleep(1)
            rss, peak = memory_mb(server.pid)
            answered = predicts(port)
            print(
                f"{args.connections} stalled uploads of {args.body_size} bytes "
                f"({time.monotonic() - started:.1f} s): RSS {idle:.0f} MB idle, "
                f"{rss:.0f} MB with them stalled, peak {peak:.0f} MB; "
                f"{refused} refused with 503; a small prediction "
                f"{'answered 200' if answered else 'did not answer'}"
            )
            for sock in sockets:
                sock.close()
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
