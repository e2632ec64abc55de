#!/usr/bin/env bash
# Instructions the server executes per request, counted by valgrind's
# callgrind, for each protocol on the tiny model: the one figure this noisy
# 2-core machine can compare across builds (two runs of one build agree
# within about 0.5 %; CPU time per request moves by 10-30 % between runs).
#
#   make instructions            # or: bash benches/instructions.sh [REQUESTS]
#   BINARY=/tmp/ortserve.old bash benches/instructions.sh   # a build kept aside
#
# To compare two builds, copy the first binary aside, change the code, and
# run the script once with BINARY set and once without.
#
# Needs valgrind and curl (apt install valgrind curl) and the models that
# `make setup target/test-models/.generated` makes; the two gRPC rows need
# nghttp2's h2load too (apt install nghttp2-client; curl 7.88 cannot reuse
# an HTTP/2 connection for them) and are skipped without it. One keep-alive
# connection at a time (concurrency 1), so each request also pays its hop
# to the model's worker thread and back. User-space instructions only: the kernel's
# share (socket reads and writes, wake-ups) is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-2000}
library=${ORT_DYLIB_PATH:-$PWD/.onnxruntime/libonnxruntime.so.1}
binary=${BINARY:-target/release/ortserve}
for tool in valgrind callgrind_control curl; do
    command -v "$tool" > /dev/null || { echo "needs $tool (apt install valgrind curl)" >&2; exit 1; }
done
# A build kept aside is measured as it is.
[ -n "${BINARY:-}" ] || cargo build --release --quiet

work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill -9 "$server" 2> /dev/null
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/store/tiny" "$work/dumps"
cp target/test-models/linear.onnx "$work/store/tiny/model.onnx"
port=$((20000 + RANDOM % 20000))
cat > "$work/config.properties" << EOF
inference_address=http://127.0.0.1:$port
management_address=http://127.0.0.1:$((port + 1))
metrics_address=http://127.0.0.1:$((port + 2))
grpc_inference_port=$((port + 3))
grpc_management_port=0
access_log=false
EOF

RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/dumps/cg.%p" \
    "$binary" --ts-config "$work/config.properties" --model-store "$work/store" \
    --models all --onnxruntime-lib "$library" > "$work/server.log" 2>&1 &
server=$!
base=http://127.0.0.1:$port
for _ in $(seq 120); do
    curl -sf -m 2 "$base/ping" > /dev/null && break
    sleep 1
done
curl -sf "$base/ping" > /dev/null || { cat "$work/server.log" >&2; exit 1; }

# The bodies the overhead bench sends for one row of four numbers.
printf '[[1.0,2.0,3.0,4.0]]' > "$work/ts.json"
printf '{"instances":[[1.0,2.0,3.0,4.0]]}' > "$work/v1.json"
printf '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{},"data":[1.0,2.0,3.0,4.0]}],"parameters":{"binary_data_output":false}}' \
    > "$work/v2.json"
header='{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}'
{ printf '%s' "$header"; printf '\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x80\x40'; } > "$work/v2.bin"

# gRPC's ModelInfer with the same four numbers as raw contents, framed (no
# compression, 39 bytes): model_name "tiny" (field 1), one input (field 5:
# name "x", datatype "FP32", shape [1, 4]), raw_input_contents (field 7).
printf '\x00\x00\x00\x00\x27\x0a\x04tiny\x2a\x0d\x0a\x01x\x12\x04FP32\x1a\x02\x01\x04' > "$work/infer.grpc"
printf '\x3a\x10\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x80\x40' >> "$work/infer.grpc"
printf '\x00\x00\x00\x00\x00' > "$work/empty.grpc"
grpc_base=http://127.0.0.1:$((port + 3))/inference.GRPCInferenceService

# `run N URL [curl options]`: N requests to URL over one connection.
run() {
    local n=$1 url=$2
    shift 2
    local urls=()
    for _ in $(seq "$n"); do urls+=(-o /dev/null "$url"); done
    curl -sf "$@" "${urls[@]}"
}
# `run_grpc N URL BODY`: N gRPC calls over one HTTP/2 connection.
run_grpc() {
    h2load -n "$1" -c 1 -m 1 -H 'content-type: application/grpc' -H 'te: trailers' -d "$3" "$2" \
        | grep -q "status codes: $1 2xx" || { echo "gRPC calls to $2 failed" >&2; exit 1; }
}
# `count NAME RUNNER URL [options]`: instructions per request, after a warm-up.
count() {
    local name=$1 runner=$2 url=$3
    shift 3
    "$runner" 100 "$url" "$@"
    callgrind_control -z "$server" > /dev/null 2>&1
    "$runner" "$requests" "$url" "$@"
    callgrind_control -d "$name" "$server" > /dev/null 2>&1
    local dump total
    dump=$(ls -t "$work"/dumps/cg.* | head -1)
    total=$(awk '/^totals:/ {print $2}' "$dump")
    printf '%-22s %8d instructions per request\n' "$name" $((total / requests))
}

echo "ortserve $(git rev-parse --short HEAD 2>/dev/null || echo '?'), tiny model, $requests requests each"
count "GET /ping" run "$base/ping"
count "TorchServe" run "$base/predictions/tiny" --data-binary "@$work/ts.json" -H 'Content-Type: application/json'
count "KServe v1" run "$base/v1/models/tiny:predict" --data-binary "@$work/v1.json"
count "v2 JSON" run "$base/v2/models/tiny/infer" --data-binary "@$work/v2.json"
count "v2 binary" run "$base/v2/models/tiny/infer" --data-binary "@$work/v2.bin" \
    -H "Inference-Header-Content-Length: ${#header}"
if command -v h2load > /dev/null; then
    # One call first, to see the body is a valid ModelInfer (one curl call
    # works; it is reusing the connection that curl 7.88 gets wrong).
    curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' -D - \
        -o /dev/null --data-binary "@$work/infer.grpc" "$grpc_base/ModelInfer" \
        | grep -q 'grpc-status: 0' || { echo "the gRPC request failed" >&2; exit 1; }
    count "gRPC ServerLive" run_grpc "$grpc_base/ServerLive" "$work/empty.grpc"
    count "gRPC ModelInfer" run_grpc "$grpc_base/ModelInfer" "$work/infer.grpc"
else
    echo "gRPC rows skipped: no h2load (apt install nghttp2-client)"
fi
