"""2:4 on the weights of an ONNX graph (TensorRT's "force" sparsity, done explicitly)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper


def nm24_array(weight: np.ndarray, input_axis: int) -> np.ndarray:
    """Zero the two smallest of every four entries along `input_axis` (length divisible by 4)."""
    moved = np.moveaxis(weight, input_axis, -1)
    groups = moved.reshape(-1, 4)
    order = np.argsort(np.abs(groups), axis=1)
    out = groups.copy()
    np.put_along_axis(out, order[:, :2], 0, axis=1)
    return np.moveaxis(out.reshape(moved.shape), -1, input_axis)


def force_24_initializers(model) -> list[str]:
    """Make every Conv (input channels) and MatMul/Gemm weight (input dim) 2:4 where the input
    dimension is a multiple of 4. Returns the names of the initializers changed."""
    inits = {init.name: init for init in model.graph.initializer}
    changed = []
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            name, axis = node.input[1], 1
        elif node.op_type == "MatMul" and len(node.input) > 1:
            name, axis = node.input[1], 0  # y = x·W: W is (in, out)
        elif node.op_type == "Gemm" and len(node.input) > 1:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            name, axis = node.input[1], 1 if trans_b else 0
        else:
            continue
        init = inits.get(name)
        if init is None or name in changed:
            continue
        array = numpy_helper.to_array(init)
        if array.ndim < 2 or array.shape[axis] % 4:
            continue
        init.CopyFrom(numpy_helper.from_array(nm24_array(array, axis), name))
        changed.append(name)
    return changed
