#!/usr/bin/env bash
# Builds the CPU image with buildah (no Docker daemon needed) and smoke-tests it: the
# image's own binary serves the demo store, answers /ping and predicts the sample digit.
#
# Where docker.io is reachable, the Dockerfile's default base images are used. Where it
# is not (as on the build machines here), a Debian bookworm base is made with debootstrap
# from the Debian mirror, and the binary is built on this (bookworm) host and passed in
# (BINARY=prebuilt), since no Rust image can be pulled.
# TARGET=cuda builds the CUDA image instead (about 3 GB of pinned NVIDIA wheels); its smoke
# test runs the demo on the CPU, which the CUDA build of ONNX Runtime also serves.
#   usage: scripts/build-image.sh       env: TARGET (cpu|cuda), TAG (default localhost/ortserve:0.1.0[-cuda])
set -euo pipefail
TARGET=${TARGET:-cpu}
suffix=$([[ $TARGET == cuda ]] && echo -cuda || true)
TAG=${TAG:-localhost/ortserve:0.1.0$suffix}
BASE_TAG=localhost/ortserve-base:bookworm
PORT=${PORT:-18080}
work=target/image
buildah=(buildah --storage-driver vfs)
bud=("${buildah[@]}" bud --isolation chroot --layers)

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} from Debian"
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi

args=()
if "${buildah[@]}" pull --quiet docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  echo "docker.io is reachable: building with the Dockerfile's base images"
else
  echo "docker.io is not reachable: making a Debian bookworm base with debootstrap"
  mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  if ! "${buildah[@]}" inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
    rm -rf "$work" && mkdir -p "$work/rootfs"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >/dev/null
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    tar -C "$work/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -czf "$work/base.tar.gz" .
    printf 'FROM scratch\nADD base.tar.gz /\nCMD ["/bin/bash"]\n' > "$work/Containerfile"
    "${bud[@]}" -f "$work/Containerfile" -t "$BASE_TAG" "$work"
  fi
  cargo build --release --locked --bin ortserve
  args=(--build-arg "BASE_IMAGE=$BASE_TAG" --build-arg BINARY=prebuilt)
fi

# Downloads go through whatever TLS proxy the host trusts: hand the build its CA bundle.
bundle=/etc/ssl/certs/ca-certificates.crt
[[ -f $bundle ]] && args+=(--secret "id=ca-bundle,src=$bundle")
args+=(--build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
"${bud[@]}" "${args[@]}" --target "$TARGET" -t "$TAG" .
size=$("${buildah[@]}" images --format '{{.Size}}' "$TAG")
echo "built $TAG ($size)"

echo "smoke test: the image's binary on the demo store"
container=$("${buildah[@]}" from "$TAG")
cleanup() {
  [[ -n ${server:-} ]] && kill "$server" 2>/dev/null || true
  pkill -f -- "--http_port $PORT" 2>/dev/null || true
  "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"${buildah[@]}" run --isolation chroot "$container" -- /usr/local/bin/ortserve \
  --model-store /opt/ortserve/demo-model-store --models digits=digits_v2 --http_port "$PORT" &
server=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/ping" >/dev/null && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PORT/ping"
answer=$(curl -sf "http://127.0.0.1:$PORT/predictions/digits" -T demo/samples/sample.png)
echo "$answer"
[[ $answer == *'"class":"3"'* ]] || { echo "smoke test failed: expected class 3" >&2; exit 1; }
echo "image smoke test passed: $TAG ($size)"
