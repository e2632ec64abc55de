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
# `make setup target/test-models/.generated` makes. One keep-alive
# connection (curl, concurrency 1), so each request also pays its hop to the
# model's worker thread and back. User-space instructions only: the kernel's
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
grpc_inference_port=0
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

# `run N PATH [curl options]`: N requests to PATH over one connection.
run() {
    local n=$1 path=$2
    shift 2
    local urls=()
    for _ in $(seq "$n"); do urls+=(-o /dev/null "$base$path"); done
    curl -sf "$@" "${urls[@]}"
}
# `count NAME PATH [curl options]`: instructions per request, after a warm-up.
count() {
    local name=$1 path=$2
    shift 2
    run 100 "$path" "$@"
    callgrind_control -z "$server" > /dev/null 2>&1
    run "$requests" "$path" "$@"
    callgrind_control -d "$name" "$server" > /dev/null 2>&1
    local dump total
    dump=$(ls -t "$work"/dumps/cg.* | head -1)
    total=$(awk '/^totals:/ {print $2}' "$dump")
    printf '%-22s %8d instructions per request\n' "$name" $((total / requests))
}

echo "ortserve $(git rev-parse --short HEAD 2>/dev/null || echo '?'), tiny model, $requests requests each"
count "GET /ping" /ping
count "TorchServe" /predictions/tiny --data-binary "@$work/ts.json" -H 'Content-Type: application/json'
count "KServe v1" /v1/models/tiny:predict --data-binary "@$work/v1.json"
count "v2 JSON" /v2/models/tiny/infer --data-binary "@$work/v2.json"
count "v2 binary" /v2/models/tiny/infer --data-binary "@$work/v2.bin" \
    -H "Inference-Header-Content-Length: ${#header}"
