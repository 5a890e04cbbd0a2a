"""Build a TensorRT engine from ONNX through the TensorRT Python API (TensorRT 10 and 11).

TensorRT 10 (what JetPack 6 ships) takes the precision as builder flags (FP16, BF16) on a
weakly typed network. TensorRT 11 drops those flags and needs strongly typed networks, so the
ONNX graph is cast to the chosen precision before parsing. Sparse kernels are allowed with
the SPARSE_WEIGHTS flag; TensorRT picks one only where it is faster, and says which layers were
eligible in its build log, which is collected and reported. Every build also writes a per-layer
report from TensorRT's engine inspector (`<engine>.layers.json`): each layer's precision and
tactic, and which of the ONNX layers with 2:4 weights actually got a sparse tactic.

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


class TensorRTUnavailable(RmtDeployError):
    """The TensorRT Python package is not installed (it needs an NVIDIA GPU machine)."""


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


def tensorrt_major(version: str) -> int:
    return int(version.split(".")[0])


def cast_onnx_precision(model, precision: str):
    """Cast float32 initializers and constants to fp16/bf16, keep float32 inputs and outputs
    (Cast nodes at the edges): what a strongly typed TensorRT 11 network needs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if precision == "fp32":
        return model
    target = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[precision]
    graph = model.graph

    def convert(tensor):
        if tensor.data_type != TensorProto.FLOAT:
            return tensor
        array = numpy_helper.to_array(tensor)
        if target == TensorProto.FLOAT16:
            new = numpy_helper.from_array(array.astype(np.float16), tensor.name)
        else:
            new = helper.make_tensor(
                tensor.name,
                TensorProto.BFLOAT16,
                array.shape,
                array.astype(np.float32).flatten().tolist(),
            )
        return new

    for i, init in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(convert(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(convert(attr.t))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = target
    del graph.value_info[:]
    casts = []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            cast_name = f"{inp.name}__cast"
            for node in graph.node:
                for k, name in enumerate(node.input):
                    if name == inp.name:
                        node.input[k] = cast_name
            casts.append(helper.make_node("Cast", [inp.name], [cast_name], to=target))
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            low = f"{out.name}__low"
            for node in graph.node:
                for k, name in enumerate(node.output):
                    if name == out.name:
                        node.output[k] = low
            graph.node.append(helper.make_node("Cast", [low], [out.name], to=TensorProto.FLOAT))
    for cast in reversed(casts):
        graph.node.insert(0, cast)
    return model


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
    implies (strong typing): passed as one value so no step reads a different precision."""

    precision: str
    sparsity: str
    batch: BatchProfile
    workspace_mb: int
    timing_cache: str | os.PathLike[str] | None
    input_name: str
    strongly_typed: bool


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


def _collecting_logger(trt: Any, lines: list[str]) -> Any:
    """A TensorRT logger that keeps every message in `lines`: the sparsity report and the
    build-failure message are read from them."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            lines.append(msg)

    return _Logger()


def _stage_graph(
    graph: Any, onnx_path: Path, tmp_dir: Path, settings: _BuildSettings
) -> tuple[Path, list[str]]:
    """Cast (TensorRT 11) and force 2:4 weights as asked, and return the file TensorRT should
    parse (the original where nothing changed) with the 2:4 layers of the graph it gets."""
    import onnx

    if settings.strongly_typed:
        graph = cast_onnx_precision(graph, settings.precision)
    if settings.sparsity == "force":
        from .onnx_sparsity import force_24_initializers

        force_24_initializers(graph)
    eligible_24 = onnx_24_layers(graph)  # of the graph TensorRT gets, before saving it
    if not (settings.strongly_typed or settings.sparsity == "force"):
        return onnx_path, eligible_24
    parse_path = tmp_dir / "model.onnx"  # external data: no 2 GB protobuf limit
    onnx.save_model(graph, str(parse_path), save_as_external_data=True, location="model.onnx.data")
    return parse_path, eligible_24


def _parse_network(
    trt: Any, builder: Any, logger: Any, onnx_path: str | os.PathLike[str], settings: _BuildSettings
) -> _ParsedNetwork:
    """Create the network (strongly typed on TensorRT 11) and parse the ONNX model into it,
    failing with TensorRT's own parser errors."""
    import onnx

    flags = 0
    if settings.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    try:
        graph = onnx.load(str(onnx_path))
    except Exception as exc:  # missing file, not ONNX, external data missing
        raise EngineBuildError(f"cannot read ONNX model {onnx_path}: {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp_dir:
        parse_path, eligible_24 = _stage_graph(graph, Path(onnx_path), Path(tmp_dir), settings)
        del graph
        parsed = parser.parse_from_file(str(parse_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return _ParsedNetwork(network, parser, eligible_24)


def _builder_config(
    trt: Any, builder: Any, network: Any, settings: _BuildSettings
) -> tuple[Any, Any]:
    """The builder config: workspace, detailed profiling, precision and sparsity flags, the
    batch profile and the timing cache (returned too: it is saved after the build)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    # Layer parameters and tactic names in the engine, for the per-layer report (no runtime cost)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not settings.strongly_typed and settings.precision != "fp32":
        fp16 = settings.precision == "fp16"
        config.set_flag(trt.BuilderFlag.FP16 if fp16 else trt.BuilderFlag.BF16)
    if settings.sparsity != "disable":
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    shape = tuple(network.get_input(0).shape)
    batch = settings.batch
    profile = builder.create_optimization_profile()
    profile.set_shape(
        settings.input_name,
        (batch.minimum, *shape[1:]),
        (batch.optimum, *shape[1:]),
        (batch.maximum, *shape[1:]),
    )
    config.add_optimization_profile(profile)
    cache = None
    if settings.timing_cache is not None:
        timing_cache = Path(settings.timing_cache)
        cached = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(cached)
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config, cache


def _serialize(builder: Any, network: Any, config: Any, lines: list[str]) -> bytes:
    """Build the engine, failing with the last lines of TensorRT's log (the only explanation
    TensorRT gives)."""
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine: {' | '.join(lines[-5:])}")
    return bytes(serialized)


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    sparsity: str = "enable",
    batch: BatchProfile = SINGLE_BATCH,
    workspace_mb: int = 2048,
    timing_cache: str | os.PathLike[str] | None = None,
    input_name: str = "input",
) -> BuildReport:
    """Parse `onnx_path`, build a serialized engine and write it atomically to `engine_path`."""
    _check_choices(precision, sparsity)
    trt = _import_tensorrt()
    settings = _BuildSettings(
        precision,
        sparsity,
        batch,
        workspace_mb,
        timing_cache,
        input_name,
        strongly_typed=tensorrt_major(trt.__version__) >= 11,
    )
    lines: list[str] = []
    logger = _collecting_logger(trt, lines)
    builder = trt.Builder(logger)
    parsed = _parse_network(trt, builder, logger, onnx_path, settings)
    config, cache = _builder_config(trt, builder, parsed.network, settings)
    blob = _serialize(builder, parsed.network, config, lines)
    write_with_atomic(engine_path, lambda tmp: Path(tmp).write_bytes(blob))
    if cache is not None:
        write_with_atomic(timing_cache, lambda tmp: Path(tmp).write_bytes(bytes(cache.serialize())))
    layers, layers_reason = inspect_engine(trt, blob, logger)
    eligible, picked = parse_sparsity_log(lines)
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
