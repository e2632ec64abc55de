#!/usr/bin/env bash
# Checks, without building the multi-gigabyte CUDA image, that docker/cuda-requirements.txt
# is what the image needs: every entry pinned to one version and hash; onnxruntime-gpu at
# the Dockerfile's ORT_GPU_VERSION, new enough for the ONNX Runtime API the server is built
# against (the `ort` crate's api-NN feature); installed by the Dockerfile with
# --require-hashes; and complete, which pip itself confirms by resolving the file with
# --require-hashes from wheel metadata alone (any dependency missing from it fails).
#   usage: scripts/check-cuda-pins.sh VENV
set -euo pipefail
venv=$1
pins=docker/cuda-requirements.txt
"$venv/bin/python" - "$pins" <<'PY'
import re, sys
pins = open(sys.argv[1]).read()
dockerfile = open("Dockerfile").read()
cargo = open("Cargo.toml").read()
entries = re.findall(r"^([a-z0-9._-]+)==(\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", pins, re.M)
requirements = [l for l in pins.splitlines() if l and not l.startswith(("#", " "))]
problems = []
if len(entries) != len(requirements):
    problems.append(f"{len(requirements) - len(entries)} entries lack an exact version or a sha256 hash")
versions = {name: version for name, version, _ in entries}
wanted = re.search(r"^ARG ORT_GPU_VERSION=(\S+)$", dockerfile, re.M).group(1)
if versions.get("onnxruntime-gpu") != wanted:
    problems.append(f"onnxruntime-gpu is pinned at {versions.get('onnxruntime-gpu')}, the Dockerfile builds {wanted}")
api = int(re.search(r'"api-(\d+)"', cargo).group(1))
if tuple(map(int, wanted.split(".")[:2])) < (1, api):
    problems.append(f"onnxruntime-gpu {wanted} is older than the ONNX Runtime API 1.{api} the server needs")
if "--require-hashes -r cuda-requirements.txt" not in dockerfile:
    problems.append("the Dockerfile does not install docker/cuda-requirements.txt with --require-hashes")
for lib in ("nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime"):
    if lib not in versions:
        problems.append(f"{lib} (the CUDA provider's dependency) is not pinned")
if problems:
    sys.exit("docker/cuda-requirements.txt: " + "; ".join(problems))
print(f"   {len(entries)} wheels pinned with hashes; onnxruntime-gpu {wanted} (server needs 1.{api}+)")
PY
target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
"$venv/bin/pip" install --dry-run --ignore-installed --quiet --require-hashes --target "$target" \
  --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -r "$pins"
echo "   pip resolves the pinned set with --require-hashes: it is complete"
