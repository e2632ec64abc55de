#!/usr/bin/env python3
"""Build ortserve's handwritten-digit demo: two models, a model store, sample PNGs.

Usage: python demo/build_demo.py PATH_TO_digits.csv.gz

The data is scikit-learn's bundled copy of the UCI optical digits dataset
(sklearn/datasets/data/digits.csv.gz inside the scikit-learn wheel): 1797 rows
of 64 pixel values in 0..16 followed by the label. Writes, next to this script:

  model-store/digits.mar        v1.0, softmax regression, TorchServe-style archive
  model-store/digits_v2/        v2.0, small MLP, plain model directory
  samples/digit_<k>.png         one correctly classified test image per digit
  samples/sample.png            copy of digit_3.png
  samples/expected.json         both models' answers for every sample

Everything is deterministic: running it twice gives byte-identical files.
Needs only onnx + numpy.
"""

import gzip
import json
import os
import shutil
import struct
import sys
import zipfile
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
STORE = os.path.join(HERE, "model-store")
SAMPLES = os.path.join(HERE, "samples")
TEST_SIZE = 300
CLASSES = 10

# The server's image pipeline for this config is: decode 8-bit gray PNG,
# resize/crop 8 (no-ops here), pixel/255, then (x - 0.0) / 1.0.
MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 2
batchSize: 8
maxBatchDelay: 5
ortserve:
{version}  handler: image_classifier
  imageClassifier:
    resize: 8
    crop: 8
    mean: [0.0]
    std: [1.0]
    topK: 1
"""

MANIFEST = {
    "createdOn": "29/11/2026 00:00:00",
    "runtime": "python",
    "model": {
        "modelName": "digits",
        "serializedFile": "digits_logreg.onnx",
        "handler": "image_classifier",
        "modelVersion": "1.0",
        "configFile": "model-config.yaml",
    },
    "archiverVersion": "0.12.0",
}

INDEX_TO_NAME = {str(k): str(k) for k in range(CLASSES)}


# ---------------------------------------------------------------- data

def load_digits(path):
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def to_png_pixels(values):
    """Dataset values 0..16 -> the 8-bit gray levels stored in the PNGs."""
    return np.round(values * 255 / 16).astype(np.uint8)


def server_input(pixels):
    """Exactly what the server feeds the model: float32(pixel) / 255 in float32."""
    return pixels.astype(np.float32) / np.float32(255)


def split(n):
    order = np.random.default_rng(0).permutation(n)
    return order[:-TEST_SIZE], order[-TEST_SIZE:]


# ---------------------------------------------------------------- training (float64)

def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def train_logreg(x, y, steps=3000, lr=2.0, l2=1e-4):
    """Multinomial logistic regression, full-batch gradient descent."""
    onehot = np.eye(CLASSES)[y]
    w = np.zeros((CLASSES, x.shape[1]))
    b = np.zeros(CLASSES)
    for _ in range(steps):
        g = (softmax(x @ w.T + b) - onehot) / len(x)  # dLoss/dlogits, mean cross-entropy
        w -= lr * (g.T @ x + l2 * w)
        b -= lr * g.sum(axis=0)
    return [w, b]


def train_mlp(x, y, hidden=32, steps=2000, lr=0.01, l2=1e-4):
    """64 -> hidden (ReLU) -> 10, full-batch Adam; He-initialised from default_rng(0)."""
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(hidden, x.shape[1])) * np.sqrt(2 / x.shape[1]), np.zeros(hidden),
              rng.normal(size=(CLASSES, hidden)) * np.sqrt(2 / hidden), np.zeros(CLASSES)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.eye(CLASSES)[y]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        w1, c1, w2, c2 = params
        h = np.maximum(x @ w1.T + c1, 0)
        g_out = (softmax(h @ w2.T + c2) - onehot) / len(x)
        g_h = (g_out @ w2) * (h > 0)
        grads = [g_h.T @ x + l2 * w1, g_h.sum(axis=0), g_out.T @ h + l2 * w2, g_out.sum(axis=0)]
        for p, g, mi, vi in zip(params, grads, m, v):
            mi *= b1
            mi += (1 - b1) * g
            vi *= b2
            vi += (1 - b2) * g * g
            p -= lr * (mi / (1 - b1 ** t)) / (np.sqrt(vi / (1 - b2 ** t)) + eps)
    return params


# ---------------------------------------------------------------- inference (float32, as served)

def to_f32(params):
    return [p.astype(np.float32) for p in params]


def dense(x, w, b):
    """x @ w.T + b in float32, one term at a time with plain ufuncs: BLAS and
    SIMD reductions round differently on different CPUs, and expected.json
    must be byte-identical everywhere."""
    out = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for k in range(x.shape[1]):
        out += x[:, None, k] * w[None, :, k]
    return out + b


def forward(params, x):
    """Logits in float32 for [n, 64] float32 input: Gemm, or Gemm-Relu-Gemm."""
    h = x
    for i in range(0, len(params), 2):
        if i:
            h = np.maximum(h, np.float32(0))
        h = dense(h, params[i], params[i + 1])
    return h


def softmax_f32(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- ONNX export

def export_onnx(name, params):
    """image f32[batch,1,8,8] -> Flatten -> Gemm (-> Relu -> Gemm) -> logits f32[batch,10]."""
    nodes = [helper.make_node("Flatten", ["image"], ["h0"], axis=1)]
    inits = []
    layer = 0
    for i in range(0, len(params), 2):
        if i:
            nodes.append(helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"]))
        src = f"r{layer}" if i else f"h{layer}"
        layer += 1
        dst = "logits" if i + 2 == len(params) else f"h{layer}"
        nodes.append(helper.make_node("Gemm", [src, f"w{layer}", f"b{layer}"], [dst], transB=1))
        inits += [numpy_helper.from_array(params[i], f"w{layer}"),
                  numpy_helper.from_array(params[i + 1], f"b{layer}")]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="ortserve-demo", ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


# ---------------------------------------------------------------- files

def json_bytes(obj):
    return (json.dumps(obj, indent=2) + "\n").encode()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_mar(path, files):
    """ZIP with fixed timestamps and attributes so the archive is byte-identical."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(2026, 11, 29, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so external_attr means file mode
            info.external_attr = 0o644 << 16
            z.writestr(info, data)


def png_gray8(pixels):
    """Minimal 8-bit grayscale PNG (no filtering) using only zlib + struct."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    h, w = pixels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) != 2:
        sys.exit("usage: build_demo.py PATH_TO_digits.csv.gz")
    values, labels = load_digits(sys.argv[1])
    pixels = to_png_pixels(values)
    x32 = server_input(pixels)            # [n, 64] float32, as served
    x64 = x32.astype(np.float64)          # train on the very same values
    train, test = split(len(labels))

    models = {"1.0": to_f32(train_logreg(x64[train], labels[train])),
              "2.0": to_f32(train_mlp(x64[train], labels[train]))}
    probs = {ver: softmax_f32(forward(p, x32)) for ver, p in models.items()}
    for ver, p in probs.items():
        acc = np.mean(p[test].argmax(axis=1) == labels[test])
        print(f"v{ver}: held-out test accuracy {acc:.4f} ({len(test)} images)")

    config_v1 = MODEL_CONFIG.format(version="").encode()
    config_v2 = MODEL_CONFIG.format(version='  version: "2.0"\n').encode()
    write_mar(os.path.join(STORE, "digits.mar"), [
        ("MAR-INF/MANIFEST.json", json_bytes(MANIFEST)),
        ("digits_logreg.onnx", export_onnx("digits_logreg", models["1.0"])),
        ("model-config.yaml", config_v1),
        ("index_to_name.json", json_bytes(INDEX_TO_NAME)),
    ])
    v2_dir = os.path.join(STORE, "digits_v2")
    write(os.path.join(v2_dir, "model.onnx"), export_onnx("digits_mlp", models["2.0"]))
    write(os.path.join(v2_dir, "index_to_name.json"), json_bytes(INDEX_TO_NAME))
    write(os.path.join(v2_dir, "model-config.yaml"), config_v2)

    # One sample per digit: the first test image that both models get right.
    expected = {}
    for digit in range(CLASSES):
        idx = next(i for i in test if labels[i] == digit
                   and all(p[i].argmax() == digit for p in probs.values()))
        name = f"digit_{digit}.png"
        write(os.path.join(SAMPLES, name), png_gray8(pixels[idx].reshape(8, 8)))
        expected[name] = {"label": digit, "dataset_row": int(idx)}
        for ver, p in probs.items():
            cls = int(p[idx].argmax())
            expected[name][ver] = {"class": INDEX_TO_NAME[str(cls)], "probability": float(p[idx, cls])}
    shutil.copyfile(os.path.join(SAMPLES, "digit_3.png"), os.path.join(SAMPLES, "sample.png"))
    expected["sample.png"] = expected["digit_3.png"]
    write(os.path.join(SAMPLES, "expected.json"), json_bytes(expected))
    print(f"wrote {STORE} and {SAMPLES}")


if __name__ == "__main__":
    main()
