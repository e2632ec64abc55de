#!/usr/bin/env python3
"""Generate the ONNX test models used by ortserve's integration tests.

Usage: python tests/models/generate.py OUT_DIR

Writes OUT_DIR/<name>.onnx for every model below, plus OUT_DIR/golden/<name>.json
for models with golden outputs (mnist_sample's are for the reference sample requests
in tests/data/reference), plus the language-model directories OUT_DIR/tiny_lm*/
and OUT_DIR/golden/tiny_lm.json from tiny_lm.py. Output is byte-identical across
runs: every weight comes from a formula or a seeded numpy generator, and the graphs
are built with onnx.helper only (opset 17, IR version 8). Needs onnx + numpy, and
`tokenizers` for the language models' tokenizer.json; see README.md in this
directory for what each model computes.
"""

import base64
import json
import os
import sys
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


# ---------------------------------------------------------------- helpers

def tensor(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def const(name, array):
    """A Constant node; used where a value is computed inside the graph."""
    return node("Constant", [], [name], value=init(name, array))


def build(name, nodes, inputs, outputs, initializers=(), extra_opsets=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", OPSET), *extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets,
                              producer_name="ortserve-tests", ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def linear_weights():
    w = np.array([[(i * 4 + j + 1) / 10 for j in range(4)] for i in range(3)], np.float32)
    b = np.array([-0.5, 0.0, 0.5], np.float32)
    return w, b


def cost_from_value(x, out):
    """Nodes computing the int64 scalar `out` = int64(max(x)).

    The slow models take their cost from the input *value*, so a test can make
    one request slow while every request still has the same shape.
    """
    return [node("ReduceMax", [x], [out + "_f"], keepdims=0),  # axes: attribute until opset 18
            node("Cast", [out + "_f"], [out], to=I64)]


def pass_through(x, heavy, y):
    """y = x + 0 * ReduceSum(heavy): y == x exactly, but `heavy` must be computed."""
    return [node("ReduceSum", [heavy], [y + "_sum"], keepdims=0),  # no axes input: all axes
            const(y + "_zero", np.float32(0)),
            node("Mul", [y + "_zero", y + "_sum"], [y + "_dead"]),
            node("Add", [x, y + "_dead"], [y])]


# ---------------------------------------------------------------- models

def linear():
    w, b = linear_weights()
    return build("linear",
                 [node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
                 [tensor("x", F32, ["batch", 4])], [tensor("y", F32, ["batch", 3])],
                 [init("W", w), init("b", b)])


def fixed_batch():
    w, b = linear_weights()
    return build("fixed_batch",
                 [node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
                 [tensor("x", F32, [1, 4])], [tensor("y", F32, [1, 3])],
                 [init("W", w), init("b", b)])


def mnist_cnn_weights():
    """Drawn in a fixed order from default_rng(0): conv1, conv2, fc (weight then bias)."""
    rng = np.random.default_rng(0)
    shapes = [((8, 1, 3, 3), (8,)), ((16, 8, 3, 3), (16,)), ((10, 784), (10,))]
    params = []
    for w_shape, b_shape in shapes:
        params.append((rng.normal(size=w_shape) * 0.1).astype(np.float32))
        params.append((rng.normal(size=b_shape) * 0.01).astype(np.float32))
    return params


def mnist_cnn():
    w1, b1, w2, b2, w3, b3 = mnist_cnn_weights()
    nodes = [
        node("Conv", ["input", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["p2"], ["flat"], axis=1),
        node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
    ]
    inits = [init(n, a) for n, a in zip(["w1", "b1", "w2", "b2", "w3", "b3"],
                                        [w1, b1, w2, b2, w3, b3])]
    return build("mnist_cnn", nodes,
                 [tensor("input", F32, ["batch", 1, 28, 28])],
                 [tensor("logits", F32, ["batch", 10])], inits)


def multi_io():
    v = np.array([[((i + 2 * j) % 5 - 2) / 4 for j in range(16)] for i in range(4)], np.float32)
    nodes = [
        node("Gemm", ["features", "V"], ["proj"], transB=1),
        node("Cast", ["ids"], ["ids_f"], to=F32),
        node("Add", ["proj", "ids_f"], ["scores"]),  # [batch,4] + [batch,1]
        node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
    ]
    return build("multi_io", nodes,
                 [tensor("features", F32, ["batch", 16]), tensor("ids", I64, ["batch", 1])],
                 [tensor("scores", F32, ["batch", 4]), tensor("label", I64, ["batch"])],
                 [init("V", v)])


IDENTITY_TYPES = [
    ("bool", TensorProto.BOOL), ("u8", TensorProto.UINT8), ("u16", TensorProto.UINT16),
    ("u32", TensorProto.UINT32), ("u64", TensorProto.UINT64), ("i8", TensorProto.INT8),
    ("i16", TensorProto.INT16), ("i32", TensorProto.INT32), ("i64", TensorProto.INT64),
    ("f16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16), ("f32", TensorProto.FLOAT),
    ("f64", TensorProto.DOUBLE), ("str", TensorProto.STRING),
]


def identity_types():
    nodes = [node("Identity", ["x_" + s], ["y_" + s]) for s, _ in IDENTITY_TYPES]
    inputs = [tensor("x_" + s, t, ["batch", 2]) for s, t in IDENTITY_TYPES]
    outputs = [tensor("y_" + s, t, ["batch", 2]) for s, t in IDENTITY_TYPES]
    return build("identity_types", nodes, inputs, outputs)


def zipmap():
    # Negative test: `probabilities` is seq(map(int64, float)), not a tensor.
    probs_type = helper.make_sequence_type_proto(
        helper.make_map_type_proto(I64, helper.make_tensor_type_proto(F32, [])))
    nodes = [
        node("ArgMax", ["x"], ["label"], axis=1, keepdims=0),
        node("Softmax", ["x"], ["softmax"], axis=1),
        helper.make_node("ZipMap", ["softmax"], ["probabilities"],
                         domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]),
    ]
    return build("zipmap", nodes,
                 [tensor("x", F32, ["batch", 3])],
                 [tensor("label", I64, ["batch"]),
                  helper.make_value_info("probabilities", probs_type)],
                 extra_opsets=[helper.make_opsetid("ai.onnx.ml", 1)])


def slow_loop_body():
    # Loop body: (iteration, cond, v) -> (cond, tanh(v @ v)). ORT can stop a
    # run between iterations, so this model tests *interruptible* slow work.
    return helper.make_graph(
        [node("Identity", ["cond_in"], ["cond_out"]),
         node("MatMul", ["v_in", "v_in"], ["vv"]),
         node("Tanh", ["vv"], ["v_out"])],
        "slow_loop_body",
        [tensor("iter", I64, []), tensor("cond_in", TensorProto.BOOL, []),
         tensor("v_in", F32, [256, 256])],
        [tensor("cond_out", TensorProto.BOOL, []), tensor("v_out", F32, [256, 256])])


def slow_loop_nodes(trips):
    """Nodes computing `v_final`: `trips` iterations of the slow loop body."""
    return [
        const("v_shape", np.array([256, 256], np.int64)),
        node("ConstantOfShape", ["v_shape"], ["v0"], value=init("v0_value", np.array([0.01], np.float32))),
        node("Loop", [trips, "", "v0"], ["v_final"], body=slow_loop_body()),  # no condition: plain for-loop
    ]


def slow_loop():
    nodes = cost_from_value("x", "trips") + slow_loop_nodes("trips") + pass_through("x", "v_final", "y")
    return build("slow_loop", nodes,
                 [tensor("x", F32, ["batch", 1])], [tensor("y", F32, ["batch", 1])])


def slow_loop_neg():
    """As slow_loop (the cost is int64(max(x)) iterations) but y = -x: a graph
    whose answers tell it apart from slow_loop's (the source-switch test)."""
    nodes = (cost_from_value("x", "trips") + slow_loop_nodes("trips")
             + [node("Neg", ["x"], ["neg_x"])] + pass_through("neg_x", "v_final", "y"))
    return build("slow_loop_neg", nodes,
                 [tensor("x", F32, ["batch", 1])], [tensor("y", F32, ["batch", 1])])


SLOW_WARMUP_TRIPS = 2000


def slow_warmup(name="slow_warmup", trips=SLOW_WARMUP_TRIPS):
    """y = x exactly; `trips` loop iterations when every x is 0 (the zeros a
    warm-up run feeds), none otherwise: a model that stays Loading for a
    while at start yet answers requests at once."""
    nodes = [node("ReduceMax", ["x"], ["x_max"], keepdims=0),
             const("zero", np.float32(0)),
             node("Equal", ["x_max", "zero"], ["all_zero"]),
             node("Cast", ["all_zero"], ["all_zero_i"], to=I64),
             const("warmup_trips", np.int64(trips)),
             node("Mul", ["all_zero_i", "warmup_trips"], ["trips"]),
             *slow_loop_nodes("trips"),
             *pass_through("x", "v_final", "y")]
    return build(name, nodes,
                 [tensor("x", F32, ["batch", 1])], [tensor("y", F32, ["batch", 1])])


def slower_warmup():
    """As slow_warmup, with ten times the warm-up (about 3 s on a fast core):
    long enough for the start-up log to report progress."""
    return slow_warmup("slower_warmup", trips=10 * SLOW_WARMUP_TRIPS)


def slow_matmul():
    # One big MatMul whose size comes from the input value: a single kernel
    # call that ORT cannot interrupt part-way through.
    nodes = cost_from_value("x", "n") + [
        const("one_d", np.array([1], np.int64)),
        node("Reshape", ["n", "one_d"], ["n1"]),
        node("Concat", ["n1", "n1"], ["nn"], axis=0),  # shape [n, n]
        const("small", np.float32(0.001)),
        node("Expand", ["small", "nn"], ["A"]),
        node("MatMul", ["A", "A"], ["AA"]),
        *pass_through("x", "AA", "y"),
    ]
    return build("slow_matmul", nodes,
                 [tensor("x", F32, ["batch", 1])], [tensor("y", F32, ["batch", 1])])


def color_mean():
    return build("color_mean",
                 [node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0)],
                 [tensor("image", F32, ["batch", 3, 16, 16])],
                 [tensor("logits", F32, ["batch", 3])])


def gray_mean():
    nodes = [
        node("ReduceMean", ["image"], ["m4"], axes=[1, 2, 3], keepdims=1),  # [batch,1,1,1]
        node("Flatten", ["m4"], ["m"], axis=1),                             # [batch,1]
        node("Neg", ["m"], ["neg_m"]),
        node("Concat", ["m", "neg_m"], ["logits"], axis=1),
    ]
    return build("gray_mean", nodes,
                 [tensor("image", F32, ["batch", 1, 8, 8])],
                 [tensor("logits", F32, ["batch", 2])])


# ---------------------------------------------------------------- golden data

def mnist_v2():
    """mnist_cnn's weights behind the input of the reference v2 sample request
    (`input-0` f32[batch,28,28], torchserve_kserve_v2_mnist_tensor_request.json):
    Unsqueeze adds the channel axis, so answers equal mnist_cnn's."""
    cnn = mnist_cnn()
    graph = cnn.graph
    nodes = [node("Unsqueeze", ["input-0", "channel_axis"], ["input"]), *graph.node]
    inits = [init("channel_axis", np.array([1], np.int64)), *graph.initializer]
    return build("mnist_v2", nodes, [tensor("input-0", F32, ["batch", 28, 28])],
                 [tensor("logits", F32, ["batch", 10])], inits)


def mlp():
    """A compute-bound MLP for the benchmark: 64 → 1024 → 6 × (1024 → 1024) → 10.

    About 13 MFLOP per row for 64 input floats, so per-request HTTP cost is
    small next to compute (unlike `linear` and `mnist_cnn`).
    """
    rng = np.random.default_rng(1)
    sizes = [64] + [1024] * 7 + [10]
    nodes, inits, x = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = np.zeros(n_out, np.float32)
        inits += [init(f"w{i}", w), init(f"b{i}", b)]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(node("Gemm", [x, f"w{i}", f"b{i}"], [out if out == "y" else out + "_pre"]))
        if out != "y":
            nodes.append(node("Relu", [out + "_pre"], [out]))
        x = out
    return build("mlp", nodes, [tensor("x", F32, ["batch", 64])], [tensor("y", F32, ["batch", 10])], inits)


def region_conv():
    """scores = [s, -s], s = the sum of image[0, 2:4, 5:7]: one 8x8 Conv whose kernel is
    a 0/1 mask over that 2x2 region, so only those four pixels affect the output."""
    mask = np.zeros((8, 8), np.float32)
    mask[2:4, 5:7] = 1
    kernel = np.stack([mask, -mask])[:, None]  # [2, 1, 8, 8]
    nodes = [node("Conv", ["image", "K"], ["c"], kernel_shape=[8, 8]),
             node("Flatten", ["c"], ["scores"], axis=1)]
    return build("region_conv", nodes,
                 [tensor("image", F32, ["batch", 1, 8, 8])], [tensor("scores", F32, ["batch", 2])],
                 [init("K", kernel)])


def interaction():
    """y = x0 * x1 + x2 (x f32[batch,3], y f32[batch,1]): the product term is an
    interaction, so Shapley value sampling is exact only in expectation (for
    baseline 0: x0*x1 goes whole to whichever of features 0 and 1 a sampled
    permutation adds last; x2 always gets exactly x2)."""
    nodes = [node("Gather", ["x", f"i{k}"], [f"x{k}"], axis=1) for k in range(3)] + [
        node("Mul", ["x0", "x1"], ["product"]),
        node("Add", ["product", "x2"], ["y"]),
    ]
    return build("interaction", nodes,
                 [tensor("x", F32, ["batch", 3])], [tensor("y", F32, ["batch", 1])],
                 [init(f"i{k}", np.array([k], np.int64)) for k in range(3)])


def reshape_by_value():
    """y = Reshape(arange(6), shape): fails for an all-zero `shape`.

    A warm-up run at the declared shape feeds zeros, so this model cannot pass
    warm-up: it proves warm-up happens before a model counts as ready.
    """
    return build("reshape_by_value",
                 [node("Reshape", ["data", "shape"], ["y"])],
                 [tensor("shape", I64, [2])], [tensor("y", F32, [None, None])],
                 [init("data", np.arange(6, dtype=np.float32))])


def mnist_golden_input(batch=4):
    n, h, w = np.meshgrid(np.arange(batch), np.arange(28), np.arange(28), indexing="ij")
    x = ((n * 31 + h * 28 + w) % 17).astype(np.float32) / np.float32(17)
    return x[:, None, :, :]


# The reference sums products one term at a time with plain float32 ufuncs,
# not einsum/BLAS, so the golden file is identical on every CPU.

def np_conv3x3_pad1(x, w, b):
    """Direct 3x3 convolution, stride 1, zero padding 1 (NCHW input, OIHW weights)."""
    n, cin, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd), np.float32)
    for c in range(cin):
        for dy in range(3):
            for dx in range(3):
                patch = xp[:, None, c, dy:dy + h, dx:dx + wd]        # [n, 1, h, w]
                out += patch * w[None, :, c, dy, dx, None, None]     # [1, o, 1, 1]
    return out + b[None, :, None, None]


def np_maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def np_gemm(x, w, b):
    """x @ w.T + b for w of shape [out, in]."""
    out = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for k in range(x.shape[1]):
        out += x[:, None, k] * w[None, :, k]
    return out + b


def mnist_cnn_reference(x):
    """Independent NumPy float32 implementation of mnist_cnn (not onnxruntime)."""
    w1, b1, w2, b2, w3, b3 = mnist_cnn_weights()
    h = np_maxpool2(np.maximum(np_conv3x3_pad1(x, w1, b1), 0))
    h = np_maxpool2(np.maximum(np_conv3x3_pad1(h, w2, b2), 0))
    return np_gemm(h.reshape(h.shape[0], -1), w3, b3)


def mnist_cnn_golden():
    x = mnist_golden_input()
    logits = mnist_cnn_reference(x).astype(np.float32)
    return {"batch": int(x.shape[0]),
            "input_formula": "x[n,0,h,w] = ((n*31 + h*28 + w) % 17) / 17",
            "logits": [[float(v) for v in row] for row in logits]}


REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "reference")


def read_png_gray8(data):
    """The pixels of an 8-bit grayscale, non-interlaced PNG as uint8 [h, w]
    (zlib and the five PNG row filters, written out: no imaging library)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
            assert tuple(body[8:13]) == (8, 0, 0, 0, 0), "only 8-bit gray, not interlaced"
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    rows, previous = [], bytearray(width)
    for y in range(height):
        start = y * (width + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + width])
        for x in range(width):
            a = line[x - 1] if x else 0
            b = previous[x]
            c = previous[x - 1] if x else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + predictor) & 255
            else:
                assert kind == 0, f"PNG filter {kind}"
        rows.append(bytes(line))
        previous = line
    return np.frombuffer(b"".join(rows), np.uint8).reshape(height, width)


def mnist_sample_golden():
    """mnist_cnn's logits (NumPy reference) for the reference sample requests:
    the v1 sample's PNG as the image handler feeds it (gray / 255, [1,1,28,28])
    and the v2 tensor request's `input-0`."""
    with open(os.path.join(REFERENCE_DIR, "torchserve_kserve_v1_mnist_request.json")) as f:
        png = base64.b64decode(json.load(f)["instances"][0]["data"])
    image = read_png_gray8(png).astype(np.float32) / np.float32(255)
    with open(os.path.join(REFERENCE_DIR, "torchserve_kserve_v2_mnist_tensor_request.json")) as f:
        tensor = np.array(json.load(f)["inputs"][0]["data"], np.float32).reshape(1, 1, 28, 28)
    logits = mnist_cnn_reference(np.concatenate([image[None, None], tensor])).astype(np.float32)
    return {"v1_png_logits": [float(v) for v in logits[0]],
            "v2_tensor_logits": [float(v) for v in logits[1]]}


# ---------------------------------------------------------------- main

MODELS = {
    "linear": linear,
    "fixed_batch": fixed_batch,
    "mnist_cnn": mnist_cnn,
    "multi_io": multi_io,
    "identity_types": identity_types,
    "zipmap": zipmap,
    "slow_loop": slow_loop,
    "slow_matmul": slow_matmul,
    "slow_loop_neg": slow_loop_neg,
    "slow_warmup": slow_warmup,
    "slower_warmup": slower_warmup,
    "color_mean": color_mean,
    "gray_mean": gray_mean,
    "reshape_by_value": reshape_by_value,
    "mlp": mlp,
    "mnist_v2": mnist_v2,
    "region_conv": region_conv,
    "interaction": interaction,
}

GOLDEN = {
    "mnist_cnn": mnist_cnn_golden,
    "mnist_sample": mnist_sample_golden,
}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(os.path.join(out_dir, "golden"), exist_ok=True)
    for name, make in MODELS.items():
        with open(os.path.join(out_dir, name + ".onnx"), "wb") as f:
            f.write(make().SerializeToString())
    for name, make in GOLDEN.items():
        with open(os.path.join(out_dir, "golden", name + ".json"), "w") as f:
            json.dump(make(), f, indent=1)
            f.write("\n")
    # Imported here: tiny_lm imports this module's helpers.
    import tiny_lm
    lm_dirs = tiny_lm.write(out_dir)
    print(f"wrote {len(MODELS)} models, {lm_dirs} language-model directories and "
          f"{len(GOLDEN) + 1} golden files to {out_dir}")


if __name__ == "__main__":
    main()
