#!/usr/bin/env bash
# Unpacks the ONNX Runtime CPU shared library from its official PyPI wheel into DEST.
# Only the registry is contacted (pip download); nothing is installed into Python.
# Usage: scripts/install-onnxruntime.sh VERSION DEST PIP
set -euo pipefail
version=$1 dest=$2 pip=$3

if [ -e "$dest/libonnxruntime.so.$version" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 "onnxruntime==$version" -d "$work"
python3 -m zipfile -e "$work"/onnxruntime-"$version"-*.whl "$work/x"

mkdir -p "$dest"
cp "$work/x/onnxruntime/capi/libonnxruntime.so.$version" \
   "$work/x/onnxruntime/capi/libonnxruntime_providers_shared.so" "$dest/"
ln -sf "libonnxruntime.so.$version" "$dest/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.1" "$dest/libonnxruntime.so"
echo "ONNX Runtime $version CPU library installed in $dest"
