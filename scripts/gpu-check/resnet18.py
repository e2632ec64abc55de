"""Writes a ResNet-18-shaped CNN as ONNX: torchvision's resnet18 layout (7x7/2 stem, max
pool, four stages of two basic blocks at 64/128/256/512 channels, global average pool, a
1000-way classifier; batch norm folded into the convolutions), input f32[batch,3,224,224],
output f32[batch,1000]. The weights are random (He-scaled, seeded), so outputs are
deterministic; only the shape and cost matter for the GPU check.

    usage: resnet18.py OUT.onnx
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(18)
nodes, inits = [], []


def weight(name, shape, fan_in):
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name))
    return name


def conv(x, out, cin, cout, k, stride, relu=True):
    w = weight(f"{out}.w", (cout, cin, k, k), cin * k * k)
    b = weight(f"{out}.b", (cout,), 1e6)
    nodes.append(helper.make_node("Conv", [x, w, b], [out + ".c"], kernel_shape=[k, k],
                                  strides=[stride, stride], pads=[k // 2] * 4))
    if not relu:
        return out + ".c"
    nodes.append(helper.make_node("Relu", [out + ".c"], [out]))
    return out


def block(x, name, cin, cout, stride):
    y = conv(x, f"{name}.1", cin, cout, 3, stride)
    y = conv(y, f"{name}.2", cout, cout, 3, 1, relu=False)
    shortcut = x if stride == 1 and cin == cout else conv(x, f"{name}.down", cin, cout, 1, stride, relu=False)
    nodes.append(helper.make_node("Add", [y, shortcut], [name + ".sum"]))
    nodes.append(helper.make_node("Relu", [name + ".sum"], [name]))
    return name


x = conv("input", "stem", 3, 64, 7, 2)
nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
x, cin = "pool", 64
for stage, cout in enumerate([64, 128, 256, 512]):
    for i in range(2):
        x = block(x, f"layer{stage + 1}.{i}", cin, cout, 2 if (i == 0 and stage > 0) else 1)
        cin = cout
nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
fc_w = weight("fc.w", (1000, 512), 512)
fc_b = weight("fc.b", (1000,), 1e6)
nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], transB=1))

graph = helper.make_graph(
    nodes, "resnet18_shaped",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
    inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
print(f"wrote {sys.argv[1]}: {sum(i.dims[0] * int(np.prod(i.dims[1:])) for i in inits) / 1e6:.1f}M parameters")
