#!/usr/bin/env bash
# The CUDA proof, on a machine with an NVIDIA GPU (see benches/gpu_check.rs for the steps):
# writes a ResNet-18-shaped model, then runs the check against ONNX Runtime's CUDA build.
#   usage: scripts/gpu-check.sh ORT_GPU_DIR
# ORT_GPU_DIR holds libonnxruntime.so.1 and libonnxruntime_providers_{shared,cuda}.so
# from onnxruntime-gpu (the CUDA image's /opt/onnxruntime, or pip's onnxruntime/capi);
# the CUDA 13 and cuDNN 9 libraries must be on LD_LIBRARY_PATH (the image's /opt/cuda).
# GPU_CHECK_DEVICE=cpu runs every step on the CPU, to check the harness without a GPU.
set -euo pipefail
ort_dir=${1:?usage: scripts/gpu-check.sh ORT_GPU_DIR}
model=target/gpu-check/resnet18.onnx
mkdir -p target/gpu-check
[[ -f $model ]] || .venv/bin/python scripts/gpu-check/resnet18.py "$model"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
ORTSERVE_GPU_ORT="$ort_dir/libonnxruntime.so.1" ORTSERVE_GPU_MODEL="$PWD/$model" \
ORTSERVE_GPU_CHECK_DEVICE=${GPU_CHECK_DEVICE:-gpu} \
  cargo bench --bench gpu_check
