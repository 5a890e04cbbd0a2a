"""Build a TensorRT engine from ONNX through the TensorRT Python API (TensorRT 8.6 to 11).

TensorRT 8.6 (JetPack 6.0) needs an explicit-batch network for the ONNX parser; 9 has the same
flag, ignored from 10 on, where every network is explicit batch. TensorRT 8.6 to 10 take the
precision as builder flags (FP16; BF16 from 9.0) on a weakly typed network. TensorRT 11 drops
those flags and builds strongly typed networks only, so the ONNX graph is cast before parsing:
to fp16/bf16 everywhere except normalization, softmax and reductions, which stay fp32 between
explicit Casts (`cast_onnx_precision`). Sparse kernels are allowed with the SPARSE_WEIGHTS
flag; TensorRT picks one only where it is faster, and says which layers were eligible in its
build log, which is collected and reported. Every build also writes a per-layer report from
TensorRT's engine inspector (`<engine>.layers.json`): each layer's precision and tactic, and
which of the ONNX layers with 2:4 weights actually got a sparse tactic.

Only `build_engine` touches TensorRT; everything around it is plain Python and tested here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RmtDeployError
from ..paths import write_with_atomic

PRECISIONS = ("fp32", "fp16", "bf16")
SPARSITY_MODES = ("disable", "enable", "force")
MIN_TENSORRT = (8, 6)  # the first with the tensor-name API the runner uses; JetPack 6.0 ships 8.6


class TensorRTUnavailable(RmtDeployError):
    """TensorRT is not installed (it needs an NVIDIA GPU machine), or the installed version
    cannot build what was asked (too old, or no builder flag for the precision)."""


class EngineBuildError(RmtDeployError):
    """TensorRT could not parse the ONNX file or build an engine."""


@dataclass(frozen=True)
class BatchProfile:
    minimum: int
    optimum: int
    maximum: int

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """'MIN:OPT:MAX', e.g. '1:8:32'."""
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or not 0 < values[0] <= values[1] <= values[2]:
            raise RmtDeployError(
                f"--batch takes MIN:OPT:MAX with 0 < MIN ≤ OPT ≤ MAX, got {text!r}"
            )
        return cls(*values)

    def covers(self, batch: int) -> bool:
        return self.minimum <= batch <= self.maximum


SINGLE_BATCH = BatchProfile(1, 1, 1)


@dataclass
class BuildReport:
    engine_path: Path
    tensorrt_version: str
    precision: str
    sparsity: str
    strongly_typed: bool
    profile: BatchProfile
    # TensorRT's own "(Sparsity)" INFO log lines: the layers it found eligible, and those it
    # gave a sparse tactic (engine layer names, fused ones joined by " + ")
    sparse_eligible: list[str] = field(default_factory=list)
    sparse_picked: list[str] = field(default_factory=list)
    # Per-layer report from the engine inspector (empty, with the reason, where unavailable)
    layers: list[dict] = field(default_factory=list)
    layers_reason: str | None = None
    # Which ONNX layers with 2:4 weights got a sparse tactic ("which 2:4 layers paid")
    sparse_24: dict = field(default_factory=dict)


_ELIGIBLE = re.compile(r"Layers eligible for sparse math:\s*(.*)", re.IGNORECASE)
_PICKED = re.compile(r"picked sparse implementation for layers:\s*(.*)", re.IGNORECASE)


def parse_sparsity_log(lines: list[str]) -> tuple[list[str], list[str]]:
    """Layer names from TensorRT's 'eligible for sparse math' / 'picked sparse' log lines."""
    eligible, picked = [], []
    for line in lines:
        for pattern, bucket in ((_ELIGIBLE, eligible), (_PICKED, picked)):
            match = pattern.search(line)
            if match:
                bucket += [name.strip() for name in match.group(1).split(",") if name.strip()]
    return eligible, picked


def tensorrt_version(text: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string ('8.6.2.3', '10.3.0', '11.0.0b1')."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(text))
    if match is None:
        raise TensorRTUnavailable(f"cannot read the TensorRT version {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_tensorrt_version(text: str) -> tuple[int, int]:
    """The (major, minor) of a supported TensorRT, or a one-line error naming the version."""
    version = tensorrt_version(text)
    if version < MIN_TENSORRT:
        raise TensorRTUnavailable(
            f"TensorRT {text} is too old: rmt-deploy build needs TensorRT 8.6 or newer "
            "(JetPack 6.0 ships 8.6)"
        )
    return version


def network_flags(trt: Any, version: tuple[int, int]) -> int:
    """The create_network() bit mask for this TensorRT version.

    Before 10 the ONNX parser only takes explicit-batch networks (TensorRT 8.x Builder docs:
    pass `1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)`); 10 ignores that flag, every
    network being explicit batch. 11 only builds strongly typed networks; its STRONGLY_TYPED
    flag is kept for compatibility and ignored, so it is set where it exists.
    """
    flags = 0
    if version < (10, 0):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if version >= (11, 0) and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    return flags


def precision_flag(trt: Any, precision: str, strongly_typed: bool) -> Any | None:
    """The builder flag for a weakly typed fp16/bf16 build (None for fp32 or strong typing),
    or TensorRTUnavailable where this TensorRT has no such flag (BF16 arrived in 9.0)."""
    if strongly_typed or precision == "fp32":
        return None
    name = {"fp16": "FP16", "bf16": "BF16"}[precision]
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} has no BuilderFlag.{name}: {precision} engines need "
            f"TensorRT {'9.0' if name == 'BF16' else '8.6'} or newer; build with --precision "
            f"{'fp16' if name == 'BF16' else 'fp32'} here"
        )
    return flag


# Ops a strongly typed fp16/bf16 graph keeps in fp32: their statistics (mean, variance, the
# softmax denominator, sums) lose too much in 16 bits; Cast up before them, down after.
KEEP_FP32_OPS = frozenset(
    {
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "Softmax",
        "LogSoftmax",
    }
)
# Inputs that ONNX types as float32 whatever the data (Resize: roi and scales, Upsample: scales)
_FP32_INPUTS = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}
# Ops whose outputs are never float, whatever their inputs (for graphs shape inference skips)
_NOT_FLOAT_OUTPUTS = frozenset(
    {
        "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "Less",
        "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
    }
)  # fmt: skip


def keeps_fp32(op_type: str) -> bool:
    """Normalization, softmax and every reduction (ReduceMean, ReduceSum, ...)."""
    return op_type in KEEP_FP32_OPS or op_type.startswith("Reduce")


def float32_to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values: round to nearest, ties to even, by
    integer arithmetic on the float32 bits; NaN becomes the quiet NaN 0x7FC0."""
    values = np.ascontiguousarray(array, dtype=np.float32)
    bits = values.view(np.uint32)
    # adding 0x7FFF plus the lowest kept bit rounds half to even; no finite value overflows
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.where(np.isnan(values), np.uint32(0x7FC0), rounded).astype(np.uint16)


def _low_precision_tensor(tensor, low: int):
    """A float32 TensorProto as fp16 or bf16 (numpy conversions, never per-value Python)."""
    from onnx import TensorProto, numpy_helper

    array = numpy_helper.to_array(tensor)
    if low == TensorProto.FLOAT16:
        return numpy_helper.from_array(array.astype(np.float16), tensor.name)
    converted = TensorProto()
    converted.name = tensor.name
    converted.data_type = TensorProto.BFLOAT16
    converted.dims.extend(array.shape)
    converted.raw_data = float32_to_bfloat16_bits(array).astype("<u2").tobytes()
    return converted


def _float32_tensors(model) -> set[str]:
    """Names of the float32 tensors of the main graph: declared types, ONNX shape inference,
    and where both are silent, a node output is float when a float goes in (except the ops
    that answer integers or booleans)."""
    import onnx
    from onnx import TensorProto

    graph = model.graph
    elem: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    except Exception:  # noqa: BLE001 - e.g. over 2 GB; the propagation below still types it
        inferred = []
    for info in [*graph.input, *graph.output, *graph.value_info, *inferred]:
        if info.type.tensor_type.elem_type:
            elem.setdefault(info.name, info.type.tensor_type.elem_type)
    for init in graph.initializer:
        elem[init.name] = init.data_type
    for node in graph.node:
        outputs = [o for o in node.output if o]
        if node.op_type == "Constant":
            attrs = {a.name: a for a in node.attribute}
            if "value" in attrs:
                elem[outputs[0]] = attrs["value"].t.data_type
            elif attrs.keys() & {"value_float", "value_floats"}:
                elem[outputs[0]] = TensorProto.FLOAT
            else:  # value_int(s), value_string(s), sparse_value: nothing to cast
                elem[outputs[0]] = TensorProto.UNDEFINED
        elif node.op_type == "Cast":
            elem[outputs[0]] = next(a.i for a in node.attribute if a.name == "to")
        for name in outputs:
            known = name in elem or node.op_type in _NOT_FLOAT_OUTPUTS
            if not known and any(elem.get(i) == TensorProto.FLOAT for i in node.input if i):
                elem[name] = TensorProto.FLOAT
    return {name for name, kind in elem.items() if kind == TensorProto.FLOAT}


def cast_onnx_precision(model, precision: str):
    """Cast an fp32 ONNX graph for a strongly typed fp16/bf16 TensorRT network (TensorRT 11).

    Every float32 op computes in `precision` except normalization, softmax and reductions
    (`keeps_fp32`), which get Casts to fp32 before their float inputs and back after; the
    initializers and constants only they use stay fp32. Graph inputs and outputs stay fp32
    (Casts at the edges); integer tensors (shapes, axes) are untouched. No op is left with
    float inputs of two precisions, which a strongly typed network refuses. What NVIDIA
    documents for this is ModelOpt AutoCast; this is the same idea without the dependency.
    Subgraphs (If/Loop bodies) are left as they are.
    """
    if precision == "fp32":
        return model
    cast = _GraphCast(model, precision)
    cast.assign_sources()
    cast.convert_constants()
    tails = cast.output_casts()
    cast.insert_casts(tails)
    return model


class _GraphCast:
    """One graph's cast: where each float32 tensor lives afterwards (`dtype`), and the edits
    that make every consumer get the precision it computes in."""

    def __init__(self, model, precision: str):
        from onnx import TensorProto

        self.graph, self.precision = model.graph, precision
        self.low = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[precision]
        self.names = {TensorProto.FLOAT: "fp32", self.low: precision}
        self.floats = _float32_tensors(model)
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, index))
        self.dtype: dict[str, int] = {}  # where each float32 tensor lives after the cast

    def wanted(self, node, index: int) -> int | None:
        """The precision this input must have; None where any will do (a Cast's input)."""
        from onnx import TensorProto

        if node.op_type == "Cast":
            return None
        if node.op_type == "Identity":  # passes its input on: as its output is
            return self.dtype.get(node.output[0])
        if keeps_fp32(node.op_type) or index in _FP32_INPUTS.get(node.op_type, ()):
            return TensorProto.FLOAT
        return self.low

    def demanded(self, name: str) -> int:
        """`precision` where a consumer computes in it, else fp32."""
        from onnx import TensorProto

        users = self.consumers.get(name, [])
        return (
            self.low if any(self.wanted(n, i) == self.low for n, i in users) else TensorProto.FLOAT
        )

    def assign_sources(self) -> None:
        """Sources (initializers, constants, casts to float, identities: exporters share equal
        weights through Identity) take the precision their consumers compute in; Identity
        outputs first, last to first, as an Identity's consumers come after it."""
        from onnx import TensorProto

        graph, dtype = self.graph, self.dtype
        self.initializers = {init.name for init in graph.initializer}
        graph_inputs = {v.name for v in graph.input} - self.initializers
        producers = {out: node for node in graph.node for out in node.output}
        for node in reversed(graph.node):
            if node.op_type == "Identity" and node.output[0] in self.floats:
                dtype[node.output[0]] = self.demanded(node.output[0])
        for name in self.floats:
            producer = producers.get(name)
            if name in dtype:
                continue
            if name in graph_inputs:
                dtype[name] = TensorProto.FLOAT
            elif producer is None and name not in self.initializers:
                continue  # a name no node of the main graph makes (stale value_info)
            elif name in self.initializers or producer.op_type in ("Constant", "Cast"):
                dtype[name] = self.demanded(name)
            else:
                dtype[name] = TensorProto.FLOAT if keeps_fp32(producer.op_type) else self.low

    def convert_constants(self) -> None:
        """Initializers, Cast targets and Constant values that now live in `precision`."""
        graph, low = self.graph, self.low
        converted = {name for name in self.initializers if self.dtype.get(name) == low}
        for i, init in enumerate(graph.initializer):
            if init.name in converted:
                graph.initializer[i].CopyFrom(_low_precision_tensor(init, low))
        for value in graph.input:  # initializers listed as inputs (IR < 4) follow their data
            if value.name in converted:
                value.type.tensor_type.elem_type = low
        for node in graph.node:
            out = node.output[0] if node.output else ""
            if self.dtype.get(out) != low:
                continue
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to":
                        attr.i = low
            elif node.op_type in ("Constant", "ConstantOfShape"):
                _low_precision_constant(node, low)

    def output_casts(self) -> list:
        """Graph outputs keep their name and fp32: the op writes `<name>__<precision>`, and a
        Cast (returned, to go last) ends it."""
        from onnx import TensorProto, helper

        tails = []
        for output in self.graph.output:
            if self.dtype.get(output.name) != self.low:
                continue
            inner = f"{output.name}__{self.precision}"
            for node in self.graph.node:
                for k, name in enumerate(node.output):
                    if name == output.name:
                        node.output[k] = inner
                for k, name in enumerate(node.input):
                    if name == output.name:
                        node.input[k] = inner
            self.dtype[inner] = self.low
            tails.append(
                helper.make_node(
                    "Cast", [inner], [output.name], name=output.name, to=TensorProto.FLOAT
                )
            )
        return tails

    def insert_casts(self, tails: list) -> None:
        """A Cast wherever a consumer wants the other precision, made once per tensor and
        precision, just before its first consumer (so the graph stays topologically sorted)."""
        from onnx import helper

        made: dict[tuple[str, int], str] = {}
        nodes = []
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                need = self.wanted(node, index)
                have = self.dtype.get(name)
                if have is None or need is None or need == have:
                    continue
                if (name, need) not in made:
                    cast = f"{name}__to_{self.names[need]}"
                    made[name, need] = cast
                    nodes.append(helper.make_node("Cast", [name], [cast], name=cast, to=need))
                node.input[index] = made[name, need]
            nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend([*nodes, *tails])
        del self.graph.value_info[:]  # the types changed: let consumers infer them again


def _low_precision_constant(node, low: int) -> None:
    """A Constant's float value (tensor or value_float(s)) as `low`."""
    from onnx import TensorProto, helper, numpy_helper

    for attr in list(node.attribute):
        if attr.name in ("value_float", "value_floats"):
            array = np.asarray(attr.f if attr.name == "value_float" else attr.floats)
            node.attribute.remove(attr)
            tensor = numpy_helper.from_array(array.astype(np.float32), "value")
            node.attribute.append(helper.make_attribute("value", tensor))
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_low_precision_tensor(attr.t, low))


def onnx_24_layers(model) -> list[str]:
    """Conv/Gemm/MatMul nodes whose weights are 2:4 along the input dimension (through a
    DequantizeLinear for Q/DQ weights): the layers where TensorRT may pick a sparse tactic."""
    import torch
    from onnx import numpy_helper

    from ..layers import is_nm_sparse

    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = node.input[1]
        producer = producers.get(weight)
        if producer is not None and producer.op_type == "DequantizeLinear":
            weight = producer.input[0]
        if weight not in inits:
            continue
        array = numpy_helper.to_array(inits[weight]).astype(np.float32)
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b):
            if array.ndim != 2:
                continue
            array = array.T  # y = x·W: W is (in, out); 2:4 runs along the inputs
        if array.ndim >= 2 and is_nm_sparse(torch.from_numpy(np.ascontiguousarray(array))):
            names.append(node.name or node.output[0])
    return names


_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_DTYPES = (  # inspector spellings → ours; bf16 before the float check, which it contains
    (("bf16", "bfloat16"), "bf16"),
    (("fp16", "half"), "fp16"),
    (("fp8", "e4m3", "e5m2"), "fp8"),
    (("int8",), "int8"),
    (("int32",), "int32"),
    (("int64",), "int64"),
    (("fp32", "float"), "fp32"),
)


def _precision(text: str | None) -> str | None:
    if not text:
        return None
    low = text.lower()
    for tokens, name in _DTYPES:
        if any(token in low for token in tokens):
            return name
    return text


def _layer_precision(entry: dict) -> str | None:
    """The precision of a layer's output as the inspector writes it: 'Format/Datatype' in
    TensorRT 10 ('Row major linear FP16 format'), a separate 'DataType' in TensorRT 11."""
    if isinstance(entry.get("Precision"), str):
        return _precision(entry["Precision"])
    for key in ("Outputs", "Inputs"):
        for tensor in entry.get(key) or []:
            if isinstance(tensor, dict):
                return _precision(tensor.get("DataType") or tensor.get("Format/Datatype"))
    return None


def parse_engine_layers(text: str) -> list[dict]:
    """Per-layer rows from `IEngineInspector.get_engine_information(JSON)`: name, type,
    precision, tactic, whether the tactic is a sparse kernel, and the ONNX nodes fused in.

    A sparse tactic is one whose kernel name says "sparse" (e.g. `..._sparse_conv_...`).
    Sparsity is None (unknown), not False, for a layer without a tactic name (reformats, and
    Myelin's fused foreign nodes, which hide their kernels) and for every layer of an engine
    built without DETAILED profiling verbosity, which lists names only.
    """
    # strict=False: metadata may hold raw control characters (TensorRT separates the ONNX
    # layers of a fused layer with \x1f)
    info = json.loads(text, strict=False) if text.strip() else {}
    rows = []
    for entry in info.get("Layers", []):
        if isinstance(entry, str):
            entry = {"Name": entry}
        name = str(entry.get("Name", ""))
        nodes = _ONNX_LAYER.findall(str(entry.get("Metadata", "")))
        nodes += [part.strip() for part in name.split(" + ") if part.strip()]
        tactic = entry.get("TacticName")
        rows.append(
            {
                "name": name,
                "type": entry.get("LayerType"),
                "precision": _layer_precision(entry),
                "tactic": tactic,
                "sparse": ("sparse" in str(tactic).lower()) if tactic else None,
                "onnx_nodes": list(dict.fromkeys(nodes)),
            }
        )
    return rows


def sparse_24_summary(eligible: list[str], layers: list[dict], sparsity: str) -> dict:
    """Which ONNX layers with 2:4 weights got a sparse tactic, which ran dense anyway, and
    which the inspector did not report (fused into an opaque node, or no per-layer report)."""
    paid, dense, unreported = [], [], []
    for node in eligible:
        known = [row for row in layers if node in row["onnx_nodes"] and row["sparse"] is not None]
        if not known:
            unreported.append(node)
        elif any(row["sparse"] for row in known):
            paid.append(node)
        else:
            dense.append(node)
    notes = []
    if not eligible:
        notes.append(
            "no Conv/Gemm/MatMul weight of the ONNX is 2:4, so no sparse tactic is possible "
            "(compress with a 2:4 strategy, or build with --sparsity force)"
        )
    elif sparsity == "disable":
        notes.append("sparsity disabled: TensorRT was not allowed sparse tactics")
    elif dense:
        notes.append(
            "TensorRT takes a sparse tactic only where it times faster than the dense one: "
            "usually layers with at least 256 input and output channels, and not with some "
            "Q/DQ graphs"
        )
    if unreported:
        notes.append("some 2:4 layers are not identifiable in the engine inspector's report")
    return {
        "eligible": eligible,
        "sparse": paid,
        "dense": dense,
        "unreported": unreported,
        "note": "; ".join(notes) or None,
    }


def inspect_engine(trt, blob: bytes, logger) -> tuple[list[dict], str | None]:
    """Per-layer rows of a just-built engine, or no rows and the reason: the report explains
    the build, it must never fail it (TensorRT before 8.2 has no engine inspector)."""
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
        if engine is None:
            return [], "TensorRT could not deserialize the engine it just built"
        text = engine.create_engine_inspector().get_engine_information(
            trt.LayerInformationFormat.JSON
        )
    except (AttributeError, RuntimeError, TypeError) as exc:
        return [], f"no engine inspector in TensorRT {trt.__version__}: {exc}"
    try:
        layers = parse_engine_layers(text)
    except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        return [], f"unreadable engine inspector output: {exc}"
    if not layers:
        return [], "the engine inspector reported no layers"
    return layers, None


@dataclass(frozen=True)
class _BuildSettings:
    """The build_engine arguments the build steps share, with what the TensorRT version
    implies (network flags, strong typing, the precision flag): passed as one value so no step
    reads a different precision."""

    precision: str
    sparsity: str
    batch: BatchProfile
    workspace_mb: int
    timing_cache: str | os.PathLike[str] | None
    input_name: str | None  # None: the network's first input
    version: tuple[int, int]
    strongly_typed: bool
    precision_flag: Any  # the BuilderFlag for fp16/bf16 on a weakly typed network, or None


@dataclass
class BuildLog:
    """What the build's logger kept: warnings and errors (the explanation of a failed build)
    and TensorRT's "(Sparsity)" report lines; everything else is dropped as it comes."""

    problems: list[str] = field(default_factory=list)
    sparsity: list[str] = field(default_factory=list)

    def explain(self) -> str:
        return " | ".join(self.problems[-5:]) or "TensorRT logged no warning or error"


_SEVERITY_NAMES = {0: "internal error", 1: "error", 2: "warning"}


@dataclass
class _ParsedNetwork:
    """A parsed network with its parser: the parser owns the weights the network points at,
    so it must stay alive until the engine is built."""

    network: Any
    parser: Any
    eligible_24: list[str]  # ONNX layers with 2:4 weights, of the graph TensorRT parsed


def _check_choices(precision: str, sparsity: str) -> None:
    """Reject an unknown precision or sparsity mode before TensorRT is even imported."""
    if precision not in PRECISIONS:
        raise RmtDeployError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if sparsity not in SPARSITY_MODES:
        raise RmtDeployError(f"sparsity must be one of {SPARSITY_MODES}, got {sparsity!r}")


def _import_tensorrt() -> Any:
    """The tensorrt module, or TensorRTUnavailable saying where builds can run instead."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `rmt-deploy build` runs on a machine with an NVIDIA GPU "
            "and the tensorrt Python package (JetPack on Jetson); the export/ kit builds "
            "engines there too"
        ) from exc
    import onnx  # noqa: F401 - the build needs it: fail on its absence before building

    return trt


def _collecting_logger(trt: Any, log: BuildLog) -> Any:
    """A TensorRT logger that keeps warnings, errors and the sparsity report in `log`.

    TensorRT calls a Python logger for every message, VERBOSE included (thousands in a build):
    all but those kept return at once, on an integer comparison.
    """
    warning, info = int(trt.ILogger.WARNING), int(trt.ILogger.INFO)

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            level = int(severity)
            if level <= warning:
                log.problems.append(f"{_SEVERITY_NAMES.get(level, 'error')}: {msg}")
            # The sparsity report comes at INFO (TensorRT Developer Guide, "Structured
            # Sparsity": "[I] [TRT] (Sparsity) Layers eligible for sparse math: ...")
            elif level == info and "(Sparsity)" in msg:
                log.sparsity.append(msg)

    return _Logger()


def _stage_graph(
    graph: Any, onnx_path: Path, tmp_dir: Path, settings: _BuildSettings
) -> tuple[Path, list[str]]:
    """Cast (TensorRT 11) and force 2:4 weights as asked, and return the file TensorRT should
    parse (the original where nothing changed) with the 2:4 layers of the graph it gets."""
    import onnx

    cast = settings.strongly_typed and settings.precision != "fp32"
    if cast:
        graph = cast_onnx_precision(graph, settings.precision)
    if settings.sparsity == "force":
        from .onnx_sparsity import force_24_initializers

        force_24_initializers(graph)
    eligible_24 = onnx_24_layers(graph)  # of the graph TensorRT gets, before saving it
    if not (cast or settings.sparsity == "force"):
        return onnx_path, eligible_24
    parse_path = tmp_dir / "model.onnx"  # external data: no 2 GB protobuf limit
    onnx.save_model(graph, str(parse_path), save_as_external_data=True, location="model.onnx.data")
    return parse_path, eligible_24


def _parse_network(
    trt: Any,
    builder: Any,
    logger: Any,
    onnx_path: str | os.PathLike[str],
    settings: _BuildSettings,
    log: BuildLog,
) -> _ParsedNetwork:
    """Create the network (explicit batch before 10, strongly typed from 11) and parse the
    ONNX model into it, failing with TensorRT's own parser errors."""
    import onnx

    network = builder.create_network(network_flags(trt, settings.version))
    parser = trt.OnnxParser(network, logger)
    try:
        graph = onnx.load(str(onnx_path))
    except Exception as exc:  # missing file, not ONNX, external data missing
        raise EngineBuildError(f"cannot read ONNX model {onnx_path}: {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp_dir:
        parse_path, eligible_24 = _stage_graph(graph, Path(onnx_path), Path(tmp_dir), settings)
        del graph
        try:
            parsed = parser.parse_from_file(str(parse_path))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {exc}") from exc
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors or log.explain()}"
        )
    return _ParsedNetwork(network, parser, eligible_24)


def network_input(network: Any, name: str | None) -> Any:
    """The network input the batch profile is for: `name`, or the first input."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if not inputs:
        raise EngineBuildError("the parsed network has no inputs")
    if name is None:
        return inputs[0]
    for tensor in inputs:
        if tensor.name == name:
            return tensor
    raise EngineBuildError(
        f"{name!r} is not an input of the network; its inputs: "
        + ", ".join(repr(t.name) for t in inputs)
    )


def _batch_profile(builder: Any, config: Any, network: Any, settings: _BuildSettings, log) -> None:
    """Optimization profile 0: the batch range on the input's first dimension."""
    tensor = network_input(network, settings.input_name)
    shape = tuple(tensor.shape)
    if not shape or any(d < 0 for d in shape[1:]):
        raise EngineBuildError(
            f"input {tensor.name!r} has shape {shape}: only the batch (first) dimension may "
            "be dynamic; export with a fixed image size"
        )
    batch = settings.batch
    shapes = [(n, *shape[1:]) for n in (batch.minimum, batch.optimum, batch.maximum)]
    profile = builder.create_optimization_profile()
    try:
        profile.set_shape(tensor.name, *shapes)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise EngineBuildError(
            f"TensorRT refused the optimization profile {shapes} for input {tensor.name!r}: "
            f"{exc} ({log.explain()})"
        ) from exc
    if config.add_optimization_profile(profile) < 0:  # documented: -1 for an invalid profile
        raise EngineBuildError(
            f"TensorRT refused the optimization profile {shapes} for input {tensor.name!r}: "
            f"{log.explain()}"
        )


def _builder_config(
    trt: Any, builder: Any, network: Any, settings: _BuildSettings, log: BuildLog
) -> tuple[Any, Any]:
    """The builder config: workspace, detailed profiling, precision and sparsity flags, the
    batch profile and the timing cache (returned too: it is saved after the build)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    # Layer parameters and tactic names in the engine, for the per-layer report (no runtime cost)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.precision_flag is not None:
        config.set_flag(settings.precision_flag)
    if settings.sparsity != "disable":
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    _batch_profile(builder, config, network, settings, log)
    cache = None
    if settings.timing_cache is not None:
        timing_cache = Path(settings.timing_cache)
        cached = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(cached)
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config, cache


def _serialize(trt: Any, builder: Any, network: Any, config: Any, log: BuildLog) -> bytes:
    """Build the engine, failing with the last warnings and errors of TensorRT's log (the only
    explanation TensorRT gives)."""
    try:
        serialized = builder.build_serialized_network(network, config)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} failed to build an engine: {exc}"
        ) from exc
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} failed to build an engine: {log.explain()}"
        )
    return bytes(serialized)


def _settings(trt: Any, precision: str, sparsity: str, batch, workspace_mb, timing_cache, name):
    """The build settings, checking first that this TensorRT can do the build at all."""
    version = check_tensorrt_version(trt.__version__)
    strongly_typed = version >= (11, 0)
    return _BuildSettings(
        precision,
        sparsity,
        batch,
        workspace_mb,
        timing_cache,
        name,
        version,
        strongly_typed,
        precision_flag(trt, precision, strongly_typed),
    )


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    sparsity: str = "enable",
    batch: BatchProfile = SINGLE_BATCH,
    workspace_mb: int = 2048,
    timing_cache: str | os.PathLike[str] | None = None,
    input_name: str | None = None,
) -> BuildReport:
    """Parse `onnx_path`, build a serialized engine and write it atomically to `engine_path`.

    The batch profile is for `input_name`, by default the network's first input. Every parser
    or builder failure is one EngineBuildError with TensorRT's explanation; a TensorRT that
    cannot do the build at all (missing, older than 8.6, no flag for the precision) is
    TensorRTUnavailable, raised before any work.
    """
    _check_choices(precision, sparsity)
    trt = _import_tensorrt()
    settings = _settings(trt, precision, sparsity, batch, workspace_mb, timing_cache, input_name)
    log = BuildLog()
    logger = _collecting_logger(trt, log)
    builder = trt.Builder(logger)
    parsed = _parse_network(trt, builder, logger, onnx_path, settings, log)
    config, cache = _builder_config(trt, builder, parsed.network, settings, log)
    blob = _serialize(trt, builder, parsed.network, config, log)
    write_with_atomic(engine_path, lambda tmp: Path(tmp).write_bytes(blob))
    if cache is not None:
        write_with_atomic(timing_cache, lambda tmp: Path(tmp).write_bytes(bytes(cache.serialize())))
    layers, layers_reason = inspect_engine(trt, blob, logger)
    eligible, picked = parse_sparsity_log(log.sparsity)
    report = BuildReport(
        Path(engine_path),
        trt.__version__,
        precision,
        sparsity,
        settings.strongly_typed,
        batch,
        eligible,
        picked,
        layers,
        layers_reason,
        sparse_24_summary(parsed.eligible_24, layers, sparsity),
    )
    write_engine_layers(report)
    write_engine_info(report, onnx_path)
    return report


def engine_info_path(engine_path: str | os.PathLike[str]) -> Path:
    """`model.engine` → `model.engine.json`: how the engine was built, beside it."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def write_engine_info(report: BuildReport, onnx_path: str | os.PathLike[str]) -> Path:
    """Record the build (profile, precision, versions) so runners can check batches before
    loading TensorRT, and readers know what an engine file is."""
    from ..paths import write_json_atomic

    info = {
        "onnx": str(onnx_path),
        "tensorrt_version": report.tensorrt_version,
        "precision": report.precision,
        "sparsity": report.sparsity,
        "strongly_typed": report.strongly_typed,
        "profile": [report.profile.minimum, report.profile.optimum, report.profile.maximum],
        "sparse_eligible": report.sparse_eligible,
        "sparse_picked": report.sparse_picked,
        "sparse_24": report.sparse_24,
        "layers_file": engine_layers_path(report.engine_path).name,
        "layers_reason": report.layers_reason,
        "layers": report.layers,
    }
    return write_json_atomic(engine_info_path(report.engine_path), info)


def engine_layers_path(engine_path: str | os.PathLike[str]) -> Path:
    """`model.engine` → `model.engine.layers.json`: what TensorRT made of each layer."""
    path = Path(engine_path)
    return path.with_name(path.name + ".layers.json")


def write_engine_layers(report: BuildReport) -> Path:
    """The per-layer report beside the engine, so "why no 2:4 speedup?" has an answer per layer."""
    from ..paths import write_json_atomic

    return write_json_atomic(
        engine_layers_path(report.engine_path),
        {
            "engine": report.engine_path.name,
            "tensorrt_version": report.tensorrt_version,
            "precision": report.precision,
            "sparsity": report.sparsity,
            "sparse_24": report.sparse_24,
            "reason": report.layers_reason,
            "layers": report.layers,
        },
    )


def read_engine_profile(engine_path: str | os.PathLike[str]) -> BatchProfile | None:
    """The batch profile recorded beside an engine, or None when there is no record."""
    from ..paths import read_json

    info_path = engine_info_path(engine_path)
    if not info_path.is_file():
        return None
    profile = read_json(info_path, what="engine build record").get("profile")
    if not (isinstance(profile, list) and len(profile) == 3):
        raise RmtDeployError(f"{info_path} has no valid 'profile' [MIN, OPT, MAX]")
    return BatchProfile(*(int(v) for v in profile))
