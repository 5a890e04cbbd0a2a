"""Mixed precision on a QDQ model without re-quantizing: a node is put back in float by wiring
its inputs past their DequantizeLinear (to the float activation before the QuantizeLinear, or
to the float weight the quantized one was made from). Calibrated ranges of every other node
stay as they were, so toggling one node measures that node's effect alone, and a mixed model
costs a graph edit instead of a calibration.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import write_with_atomic

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def quantized_nodes(qdq_path: Path) -> list[str]:
    """The compute nodes that read a dequantized input, in graph order."""
    import onnx

    graph = onnx.load(str(qdq_path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in graph.node
        if n.op_type not in QDQ_OPS and any(i in dequantized for i in n.input)
    ]


def _dequantized(init, scale, zero_point, axis: int) -> np.ndarray:
    from onnx import numpy_helper

    q = numpy_helper.to_array(init).astype(np.float64)
    s = numpy_helper.to_array(scale).astype(np.float64)
    z = numpy_helper.to_array(zero_point).astype(np.float64) if zero_point is not None else 0.0
    if np.ndim(s) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        z = np.reshape(z, shape) if np.ndim(z) == 1 else z
    return ((q - z) * s).astype(np.float32)


def _float_input(dq, producers, inits, float_inits, added) -> str:
    """The float tensor `dq` dequantizes: an activation, or a float initializer (added)."""
    from onnx import numpy_helper

    source = dq.input[0]
    quantize = producers.get(source)
    if quantize is not None and quantize.op_type == "QuantizeLinear":
        return _clipped(quantize, inits, added)
    name = f"{source}_float"  # a new name: the DQ's output often carries the float one's
    if name in added:
        return name
    original = float_inits.get(source.removesuffix("_quantized"))
    if original is not None:
        value = numpy_helper.to_array(original)
    else:  # no float original to take back: the dequantized values
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        zero = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        value = _dequantized(inits[source], inits[dq.input[1]], zero, axis)
    added[name] = numpy_helper.from_array(value, name)
    return name


def _clipped(quantize, inits, added) -> str:
    """The float activation `quantize` reads, clamped to the range it represents: the quantizer
    folds ReLU/ReLU6 into that range (an unsigned zero point of 0 is a ReLU), so the float path
    keeps the clamp and loses only the rounding."""
    from onnx import TensorProto, helper, numpy_helper

    name = f"{quantize.input[0]}_range"
    if name in added:
        return name
    scale = float(numpy_helper.to_array(inits[quantize.input[1]]).reshape(-1)[0])
    zero_init = inits.get(quantize.input[2]) if len(quantize.input) > 2 else None
    zero = 0 if zero_init is None else int(numpy_helper.to_array(zero_init).reshape(-1)[0])
    signed = zero_init is not None and zero_init.data_type == TensorProto.INT8
    low, high = (-128, 127) if signed else (0, 255)
    bounds = [np.array((q - zero) * scale, np.float32) for q in (low, high)]
    for suffix, value in zip(("_low", "_high"), bounds, strict=True):
        added[name + suffix] = numpy_helper.from_array(value, name + suffix)
    added[name] = helper.make_node(
        "Clip", [quantize.input[0], name + "_low", name + "_high"], [name], name=name
    )
    return name


def _unquantize_graph_outputs(node, graph, producers) -> None:
    """A model output that is only Q/DQ of `node`'s output: `node` writes it directly."""
    outputs = {o.name for o in graph.output}
    for k, tensor in enumerate(node.output):
        readers = [n for n in graph.node if tensor in n.input]
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            continue
        dq = [n for n in graph.node if readers[0].output[0] in n.input]
        if len(dq) == 1 and dq[0].op_type == "DequantizeLinear" and dq[0].output[0] in outputs:
            final = dq[0].output[0]
            graph.node.remove(dq[0])
            node.output[k] = final


def _prune(graph) -> None:
    """Drop nodes and initializers nothing reads any more (the bypassed Q/DQ)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def keep_float(qdq_path: Path, float_path: Path, nodes: list[str], out_path: Path) -> Path:
    """Write `qdq_path` with `nodes` computing in float to `out_path`, atomically. `float_path`
    is the float model the QDQ one was quantized from (its weights are taken back)."""
    import onnx

    model = onnx.load(str(qdq_path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    float_inits = {i.name: i for i in onnx.load(str(float_path)).graph.initializer}
    wanted, added = set(nodes), {}
    unknown = wanted - {n.name for n in graph.node}
    if unknown:
        raise ValueError(f"nodes not in {qdq_path.name}: {sorted(unknown)[:5]}")
    for node in graph.node:
        if node.name not in wanted:
            continue
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                node.input[k] = _float_input(dq, producers, inits, float_inits, added)
        _unquantize_graph_outputs(node, graph, producers)
    clips = [v for v in added.values() if isinstance(v, onnx.NodeProto)]
    graph.initializer.extend(v for v in added.values() if isinstance(v, onnx.TensorProto))
    for clip in clips:  # right after the tensor it clamps: the graph stays in topological order
        position = next(
            (i + 1 for i, n in enumerate(graph.node) if clip.input[0] in n.output), 0
        )
        graph.node.insert(position, clip)
    _prune(graph)
    return write_with_atomic(out_path, lambda target: onnx.save(model, str(target)))


def keep_float_present(
    qdq_path: Path, float_path: Path, wanted: list[str] | tuple[str, ...], out_path: Path
) -> list[str]:
    """`keep_float` with those of `wanted` this graph quantizes (a plan's graph lacks the
    layers it factorized); returns them."""
    names = set(wanted)
    nodes = [n for n in quantized_nodes(qdq_path) if n in names]
    keep_float(qdq_path, float_path, nodes, out_path)
    return nodes


@dataclass
class NodeEffect:
    node: str
    error: float  # output error with this node alone in float
    gain: float  # full-INT8 error minus that: what keeping it in float buys

    def to_dict(self) -> dict:
        return {"node": self.node, "error": self.error, "gain": self.gain}


def float_effects(
    qdq_path: Path, float_path: Path, check: list[np.ndarray], progress: bool = False
) -> tuple[float, list[NodeEffect]]:
    """(full-INT8 output error, each quantized node's effect), the largest gain first: each
    node in float alone, every other node as calibrated, on the `check` images."""
    from ..progress import tqdm
    from .quantize import onnx_outputs, output_error

    reference = onnx_outputs(float_path, check)
    full = output_error(reference, onnx_outputs(qdq_path, check))
    effects = []
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"
        for node in tqdm(quantized_nodes(qdq_path), desc="int8 layers", disable=not progress):
            keep_float(qdq_path, float_path, [node], trial)
            error = output_error(reference, onnx_outputs(trial, check))
            effects.append(NodeEffect(node, error, full - error))
    return full, sorted(effects, key=lambda e: -e.gain)
