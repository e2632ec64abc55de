# ortserve images: one binary, two ONNX Runtime builds.
#
#   CPU:  docker build -t ortserve:0.1.0 .                      (the default, last target)
#   CUDA: docker build --target cuda -t ortserve:0.1.0-cuda .
#
# Base images are build arguments, so a registry mirror or a locally made Debian base
# works (scripts/build-image.sh builds with buildah from a debootstrap base, offline).
# BINARY=prebuilt takes target/release/ortserve from the build context instead of
# compiling it in a Rust image (it must be built against the same Debian release).
# The ONNX Runtime libraries come from their official PyPI wheels; the CUDA image needs
# no CUDA base image: the CUDA 13 and cuDNN 9 libraries are PyPI's nvidia-* wheels.
# Behind a TLS-inspecting proxy, pass its CA bundle as the build secret `ca-bundle`
# (buildah/docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt);
# it is used for downloads only and never stored in an image.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
ARG BINARY=build

# ---- the binary -------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -f /run/secrets/ca-bundle ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca-bundle; fi \
 && cargo build --release --locked --bin ortserve \
 && cp target/release/ortserve /ortserve

FROM scratch AS prebuilt
COPY target/release/ortserve /ortserve

# hadolint ignore=DL3006
FROM ${BINARY} AS binary

# ---- ONNX Runtime from PyPI ------------------------------------------------------------
FROM ${BASE_IMAGE} AS wheels
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /wheels

FROM wheels AS onnxruntime-cpu
ARG ORT_VERSION=1.32.0
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -f /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && pip download --no-cache-dir --no-deps --only-binary=:all: "onnxruntime==${ORT_VERSION}" -d . \
 && python3 -m zipfile -e onnxruntime-*.whl unpacked \
 && mkdir -p /opt/onnxruntime \
 && cp unpacked/onnxruntime/capi/libonnxruntime.so.* \
       unpacked/onnxruntime/capi/libonnxruntime_providers_shared.so /opt/onnxruntime/ \
 && ln -s "libonnxruntime.so.${ORT_VERSION}" /opt/onnxruntime/libonnxruntime.so.1

FROM wheels AS onnxruntime-cuda
# After changing it, run scripts/pin-cuda-wheels.sh: every wheel the CUDA image installs
# is pinned to one version and one file hash in docker/cuda-requirements.txt.
ARG ORT_GPU_VERSION=1.31.1
COPY docker/cuda-requirements.txt .
# The CUDA execution provider and its CUDA 13 / cuDNN 9 libraries, kept side by side:
# ORT finds its providers next to itself, and the image points the loader at /opt/cuda.
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -f /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && pip install --no-cache-dir --target /site --require-hashes -r cuda-requirements.txt \
 && mkdir -p /opt/onnxruntime /opt/cuda \
 && cp /site/onnxruntime/capi/libonnxruntime*.so* /opt/onnxruntime/ \
 && ln -s "libonnxruntime.so.${ORT_GPU_VERSION}" /opt/onnxruntime/libonnxruntime.so.1 \
 && find /site/nvidia -name '*.so*' -exec cp -P {} /opt/cuda/ \;

# ---- runtime images ----------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ortserve" \
      org.opencontainers.image.description="ONNX models over TorchServe's inference API, KServe v1 and the Open Inference Protocol" \
      org.opencontainers.image.source="https://github.com/ortserve/ortserve" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written at run time: the root filesystem and /mnt/models may be read-only.
COPY --from=binary /ortserve /usr/local/bin/ortserve
COPY demo/model-store /opt/ortserve/demo-model-store
# Found as ./config.properties when no other properties file is given: listen on every
# interface (TorchServe's default is 127.0.0.1, unreachable from outside a container).
COPY docker/config.properties /etc/ortserve/config.properties
WORKDIR /etc/ortserve
# One JSON object per log line, for log collectors; --log-format text overrides it.
# ONNX Runtime's telemetry uploader stays off (the binary sets this too, if unset).
ENV ORTSERVE_LOG_FORMAT=json \
    ORT_DISABLE_TELEMETRY=1
USER 65532:65532
EXPOSE 8080 8081 8082 7070
ENTRYPOINT ["/usr/local/bin/ortserve"]
CMD ["--model-store", "/opt/ortserve/demo-model-store", "--models", "digits=digits.mar,digits=digits_v2"]

FROM runtime AS cuda
COPY --from=onnxruntime-cuda /opt/onnxruntime /opt/onnxruntime
COPY --from=onnxruntime-cuda /opt/cuda /opt/cuda
# CUDA 13 needs an R580 driver (580.65.06 or newer) on the node; the NVIDIA container
# toolkit refuses to start the container on an older one instead of failing later.
LABEL com.nvidia.cuda.version="13.0" \
      com.nvidia.driver.min-version="580.65.06"
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1 \
    LD_LIBRARY_PATH=/opt/cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

FROM runtime AS cpu
COPY --from=onnxruntime-cpu /opt/onnxruntime /opt/onnxruntime
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1
