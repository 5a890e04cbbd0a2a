"""A fake `tensorrt` module (and a fake cuda-python `cudart`), so the TensorRT code paths run in
CI without a GPU.

It follows the documented Python API of TensorRT 8.6 (JetPack 6.0), 10 (JetPack 6.1/6.2) and
11, but only the part rmt_deploy and the export/ kit use, and differs between them where the
API does. Each behaviour cites the documentation it models, in a comment where it is coded
("docs:"). In short:

- 8.6: the ONNX parser refuses an implicit-batch network (create_network without
  EXPLICIT_BATCH); no BF16 (neither BuilderFlag nor DataType), no STRONGLY_TYPED flag.
- 10: EXPLICIT_BATCH is ignored (every network is explicit batch); weak typing with the
  FP16/BF16/INT8 builder flags, or strong typing with STRONGLY_TYPED.
- 11: no FP16/BF16/INT8 builder flags (reading them raises AttributeError, as on the real
  module); every network is strongly typed; the inspector JSON has "I/O Tensors" and separate
  "Format"/"DataType" fields where 8.6 and 10 have "Bindings" and "Format/Datatype".
- Strongly typed networks: an op whose float inputs have different types (a Mul of fp16 and
  fp32) fails to parse, so a graph cast for TensorRT 11 must be cast right to build.

Every call is recorded in `module.calls` as (name, args, kwargs), e.g.
("IBuilderConfig.set_flag", (BuilderFlag.SPARSE_WEIGHTS,), {}), so tests fail when a flag or a
call changes. The parser really reads the ONNX file it is given (a wrong path fails to parse)
and keeps a copy in `module.parsed`. The builder "builds" a JSON engine blob describing the
network, flags, precision and profile, and picks "sparse" tactics the way TensorRT roughly
does: only for layers with 2:4 weights and at least 256 input and output channels. The
execution context "runs" an engine on the host memory at the addresses it is given (see
`fake_outputs`), so a runner's buffers, shapes and dtypes are checked end to end.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

SPARSE_MIN_CHANNELS = 256  # below this the fake, like TensorRT usually, keeps the dense tactic
_WEIGHTED = ("Conv", "Gemm", "MatMul")
_FUSABLE = ("Relu", "Sigmoid", "Clip")  # activations fused into the layer before them

_ONNX_TO_TRT = {
    TensorProto.FLOAT: "FLOAT",
    TensorProto.FLOAT16: "HALF",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT8: "INT8",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
}
_FLOAT_TYPES = ("FLOAT", "HALF", "BF16")
# docs (ONNX operator specs): outputs of these ops are integers or booleans whatever goes in
_FIXED_OUTPUT = {
    **dict.fromkeys(("Shape", "Size", "ArgMax", "ArgMin", "NonZero"), "INT64"),
    **dict.fromkeys(
        ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or"),
        "BOOL",
    ),
}
# docs (ONNX operator specs): inputs typed on their own, not with the data (Resize roi/scales,
# Upsample scales, anything into a Cast)
_OWN_TYPE_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
_LAYER_TYPES = {"Conv": "CaskConvolution", "Gemm": "CaskGemm", "MatMul": "CaskGemm"}
_INSPECTOR_TYPE = {"FLOAT": "Float", "HALF": "Half", "BF16": "BFloat16", "INT8": "Int8"}
_FORMAT = {
    "FLOAT": "Row major linear FP32 format",
    "HALF": "Channel major FP16 format where channel % 8 == 0",
    "BF16": "Channel major BF16 format where channel % 8 == 0",
    "INT8": "Channel major INT8 format where channel % 32 == 0",
}

# docs: nvinfer1::BuilderFlag (C++ API, NvInfer.h) with its numbering: 8.6 ends at kFP8, 9.0
# adds kERROR_ON_TIMING_CACHE_MISS and kBF16; TensorRT 11 removes kFP16, kINT8, kFP8, kBF16,
# kINT4, kFP4 and the precision-constraint flags ("Removed Python APIs and Replacements",
# TensorRT 10.x to 11.x migration guide).
_BUILDER_FLAGS_86 = {
    "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
    "TF32": 6, "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9,
    "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12,
    "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14, "FP8": 15,
}  # fmt: skip
_BUILDER_FLAGS_10 = {**_BUILDER_FLAGS_86, "ERROR_ON_TIMING_CACHE_MISS": 16, "BF16": 17}
_BUILDER_FLAGS_11 = {
    "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
    "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "DIRECT_IO": 11, "VERSION_COMPATIBLE": 12,
    "EXCLUDE_LEAN_RUNTIME": 13, "ERROR_ON_TIMING_CACHE_MISS": 15,
}  # fmt: skip
# docs: tensorrt.NetworkDefinitionCreationFlag (Python API, Builder page): 8.6 has
# EXPLICIT_BATCH ("creating a network without this flag has been deprecated") and the no-op
# EXPLICIT_PRECISION; 10 keeps EXPLICIT_BATCH as "[DEPRECATED] Ignored because networks are
# always explicit batch" and adds STRONGLY_TYPED; 11 has STRONGLY_TYPED "[DEPRECATED] ...
# Strongly typed mode is always enabled ... retained for API compatibility but is ignored".
_NETWORK_FLAGS = {
    8: {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1},
    10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
    11: {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2},
}
# docs: nvinfer1::DataType: 8.6 has no kBF16 (added in 9.0) and no kINT64 (added in 10.0)
_DATA_TYPES_86 = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6}
_DATA_TYPES_10 = {**_DATA_TYPES_86, "BF16": 7, "INT64": 8}


def _weight_matrix(node, inits) -> np.ndarray | None:
    """The node's weight as (out, in, ...), independent of the code under test."""
    if node.op_type not in _WEIGHTED or len(node.input) < 2 or node.input[1] not in inits:
        return None
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b):
        w = w.T
    return w if w.ndim >= 2 else None


def _is_24(w: np.ndarray) -> bool:
    if w.shape[1] % 4:
        return False
    groups = np.moveaxis(w, 1, -1).reshape(-1, 4)
    return bool(((groups != 0).sum(axis=1) <= 2).all())


def _attribute_type(node) -> str | None:
    """The output type a Constant / ConstantOfShape / Cast node declares by attribute."""
    for attr in node.attribute:
        if attr.name == "to":
            return _ONNX_TO_TRT.get(attr.i, "FLOAT")
        if attr.name == "value":
            return _ONNX_TO_TRT.get(attr.t.data_type, "FLOAT")
        if attr.name in ("value_float", "value_floats"):
            return "FLOAT"
        if attr.name in ("value_int", "value_ints"):
            return "INT64"
    return "FLOAT" if node.op_type == "ConstantOfShape" else None  # docs: default float 0


def tensor_types(model) -> tuple[dict[str, str], list[str]]:
    """Every tensor's type by strong-typing inference, and the nodes that mix float types.

    docs: "Strongly Typed Networks" (TensorRT Developer Guide): the type of every tensor is
    inferred from the network inputs and the operator specifications, and adhered to strictly;
    the TensorRT Operators documentation types both inputs of ElementWise and MatrixMultiply,
    and the input, scale and bias of Normalization, with one type variable T1: an op with fp16
    and fp32 inputs has no valid type. The Cast operator takes any type to any type.
    """
    graph = model.graph
    types_of = {
        v.name: _ONNX_TO_TRT.get(v.type.tensor_type.elem_type, "FLOAT") for v in graph.input
    }
    types_of.update({i.name: _ONNX_TO_TRT.get(i.data_type, "FLOAT") for i in graph.initializer})
    mixed = []
    for index, node in enumerate(graph.node):
        declared = (
            _attribute_type(node)
            if node.op_type in ("Constant", "ConstantOfShape", "Cast")
            else None
        )
        own = _OWN_TYPE_INPUTS.get(node.op_type, set())
        data = [
            types_of.get(name)
            for k, name in enumerate(node.input)
            if name and node.op_type != "Cast" and k not in own
        ]
        floats = sorted({t for t in data if t in _FLOAT_TYPES})
        if len(floats) > 1:
            mixed.append(
                f"In node {index} with name: {node.name} and operator: {node.op_type} "
                f"(fake strong typing): inputs of types {', '.join(floats)} in a strongly "
                "typed network; insert Casts so they agree"
            )
        out = declared or _FIXED_OUTPUT.get(node.op_type)
        out = out or (floats[0] if floats else next((t for t in data if t), "FLOAT"))
        for name in node.output:
            types_of[name] = out
    return types_of, mixed


def fake_outputs(batch: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """What the fake engine computes: out[b, j] = sum(batch[b]) + j (a runner that reads the
    wrong buffer, or the right one at the wrong size or dtype, gets other numbers)."""
    sums = batch.reshape(batch.shape[0], -1).astype(np.float64).sum(axis=1)
    cols = np.arange(int(np.prod(shape[1:], dtype=np.int64)), dtype=np.float64)
    return (sums[:, None] + cols[None, :]).reshape(shape)


def make_fake_tensorrt(version: str = "10.3.0", *, inspector: bool = True) -> types.ModuleType:
    """A fresh fake `tensorrt` of `version` ("8.6.x", "10.x" or "11.x"); `inspector=False`
    gives engines without `create_engine_inspector`, as before TensorRT 8.2."""
    major = int(version.split(".")[0])
    if version.split(".")[:2] != ["8", "6"] and major not in (10, 11):
        raise ValueError(f"the fake models TensorRT 8.6, 10 and 11, not {version}")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    trt.parsed = []  # (path, onnx.ModelProto) for every parse_from_file
    trt.fail_build = False  # make build_serialized_network return None, as on a failed build

    def record(name, *args, **kwargs):
        trt.calls.append((name, args, kwargs))

    def called(name):
        """The args of every recorded call of `name`, in order."""
        return [args for n, args, _ in trt.calls if n == name]

    trt.record, trt.called = record, called

    builder_flags = {8: _BUILDER_FLAGS_86, 10: _BUILDER_FLAGS_10, 11: _BUILDER_FLAGS_11}[major]
    data_types = _DATA_TYPES_86 if major == 8 else _DATA_TYPES_10
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", _NETWORK_FLAGS[major]
    )
    trt.MemoryPoolType = enum.IntEnum(
        "MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"], start=0
    )
    trt.ProfilingVerbosity = enum.IntEnum(
        "ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"], start=0
    )
    trt.LayerInformationFormat = enum.IntEnum(
        "LayerInformationFormat", ["ONELINE", "JSON"], start=0
    )
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
    trt.DataType = enum.IntEnum("DataType", data_types)
    numpy_types = {
        "FLOAT": np.float32,
        "HALF": np.float16,
        "INT8": np.int8,
        "INT32": np.int32,
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "INT64": np.int64,
    }

    def nptype(dtype):
        record("nptype", dtype)
        if dtype.name not in numpy_types:  # docs: nptype has no numpy type for BF16 or FP8
            raise TypeError(f"Could not resolve TensorRT datatype {dtype.name} to numpy")
        return numpy_types[dtype.name]

    trt.nptype = nptype

    def network_flag_names(flags: int) -> list[str]:
        """Decode a create_network() bit mask with this version's flag numbering."""
        return [f.name for f in trt.NetworkDefinitionCreationFlag if flags & (1 << int(f))]

    trt.network_flag_names = network_flag_names

    class ILogger:
        # docs: ILogger.Severity, INTERNAL_ERROR = 0 to VERBOSE = 4, also reachable as
        # ILogger.WARNING etc.; a subclass calls ILogger.__init__ and overrides log()
        Severity = enum.IntEnum(
            "Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"], start=0
        )
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

        def __init__(self):
            pass

        def log(self, severity, msg):
            raise NotImplementedError

    class Logger(ILogger):
        def __init__(self, min_severity=ILogger.WARNING):
            ILogger.__init__(self)
            record("Logger", min_severity)
            self.min_severity = min_severity
            self.messages = []

        def log(self, severity, msg):
            if severity <= self.min_severity:
                self.messages.append(msg)

    trt.ILogger, trt.Logger = ILogger, Logger

    class IHostMemory:
        """Serialized data; bytes(memory) copies it out as with the real buffer protocol."""

        def __init__(self, data: bytes):
            self._data = data
            self.nbytes = len(data)

        def __bytes__(self):
            return self._data

    class ITensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

    def dims(value_info) -> list[int]:
        return [
            d.dim_value if d.HasField("dim_value") else -1
            for d in value_info.type.tensor_type.shape.dim
        ]

    def trt_dtype(elem_type: int):
        return trt.DataType[_ONNX_TO_TRT.get(elem_type, "FLOAT")]

    class INetworkDefinition:
        def __init__(self, flags: int):
            self.flags = flags
            names = network_flag_names(flags)
            # docs: from 10 every network is explicit batch; before, only with the flag
            self.explicit_batch = major >= 10 or "EXPLICIT_BATCH" in names
            # docs: 11 ignores the flag, every network is strongly typed; 8.6 has no flag
            self.strongly_typed = major >= 11 or "STRONGLY_TYPED" in names
            self.model = None
            self.types = {}
            self.inputs, self.outputs = [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        @property
        def num_outputs(self):
            return len(self.outputs)

        @property
        def num_layers(self):
            return len(self.model.graph.node) if self.model is not None else 0

        def get_input(self, index):
            record("INetworkDefinition.get_input", index)
            return self.inputs[index]

        def get_output(self, index):
            record("INetworkDefinition.get_output", index)
            return self.outputs[index]

    class ParserError:
        def __init__(self, node, desc):
            self._node, self._desc = node, desc

        def code(self):
            return 8  # ErrorCode.UNSUPPORTED_NODE

        def desc(self):
            return self._desc

        def node(self):
            return self._node

        def __str__(self):
            return f"In node {self._node} with name: {self._desc}"

    class OnnxParser:
        def __init__(self, network, logger):
            record("OnnxParser", network, logger)
            self.network, self.logger, self.errors = network, logger, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            record("OnnxParser.get_error", index)
            return self.errors[index]

        def parse_from_file(self, path):
            """Reads the ONNX at `path` (external data beside it): a wrong path fails."""
            record("OnnxParser.parse_from_file", path)
            net = self.network
            if not net.explicit_batch:
                # docs: TensorRT 8.x Developer Guide glossary, "Explicit batch": implicit batch
                # mode "is not supported by the ONNX parser"
                desc = (
                    "The ONNX parser only supports networks with an explicit batch dimension: "
                    "create_network(1 << int(EXPLICIT_BATCH))"
                )
                self.errors.append(ParserError(-1, desc))
                return False
            try:
                model = onnx.load(str(path))
            except Exception as exc:
                self.errors.append(ParserError(-1, f"Failed to load ONNX file {path}: {exc}"))
                return False
            trt.parsed.append((str(path), model))
            graph = model.graph
            for i, node in enumerate(graph.node):
                if node.domain not in ("", "ai.onnx"):
                    desc = f"{node.name}: No importer registered for op: {node.op_type}"
                    self.errors.append(ParserError(i, desc))
            known = set(data_types) | {"INT64"}  # INT64 weights: cast down on 8.6 (below)
            for init in graph.initializer:  # docs: 8.6 has no BF16 DataType
                if _ONNX_TO_TRT.get(init.data_type, "FLOAT") not in known:
                    self.errors.append(ParserError(-1, f"{init.name}: unsupported data type"))
            if major == 8 and any(i.data_type == TensorProto.INT64 for i in graph.initializer):
                # docs: TensorRT 8.x has no INT64; its parser casts INT64 weights down
                self.logger.log(
                    ILogger.WARNING,
                    "onnx2trt_utils.cpp:374: Your ONNX model has been generated with INT64 "
                    "weights, while TensorRT does not natively support INT64. Attempting to "
                    "cast down to INT32.",
                )
            types_of, mixed = tensor_types(model)
            if net.strongly_typed:
                self.errors += [ParserError(-1, text) for text in mixed]
            if self.errors:
                return False
            initializers = {init.name for init in graph.initializer}
            net.model, net.types = model, types_of
            net.inputs = [
                ITensor(v.name, dims(v), trt_dtype(v.type.tensor_type.elem_type))
                for v in graph.input
                if v.name not in initializers
            ]
            net.outputs = [
                ITensor(v.name, dims(v), trt.DataType[types_of.get(v.name, "FLOAT")])
                if net.strongly_typed
                else ITensor(v.name, dims(v), trt_dtype(v.type.tensor_type.elem_type))
                for v in graph.output
            ]
            return True

    class IOptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - the documented names
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            shapes = (tuple(min), tuple(opt), tuple(max))
            # docs: IOptimizationProfile::setDimensions fails on an inconsistency (ranks that
            # differ, negative dimensions, not MIN <= OPT <= MAX); the Python binding raises it
            consistent = len({len(s) for s in shapes}) == 1 and all(
                0 <= a <= b <= c for a, b, c in zip(*shapes, strict=True)
            )
            if not consistent:
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self.shapes[input] = shapes

        def get_shape(self, input):  # noqa: A002
            return list(self.shapes[input])

    class ITimingCache:
        def __init__(self, data: bytes):
            self.entries = json.loads(data)["entries"] if data else []

        def serialize(self):
            record("ITimingCache.serialize")
            return IHostMemory(json.dumps({"entries": self.entries}).encode())

    class IBuilderConfig:
        def __init__(self):
            object.__setattr__(self, "flags", set())
            object.__setattr__(self, "pools", {})
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "cache", None)
            object.__setattr__(self, "profiling_verbosity", trt.ProfilingVerbosity.LAYER_NAMES_ONLY)

        def __setattr__(self, name, value):
            if not hasattr(self, name):
                raise AttributeError(f"IBuilderConfig has no attribute {name!r}")
            record(f"IBuilderConfig.{name}", value)
            object.__setattr__(self, name, value)

        def set_flag(self, flag):
            record("IBuilderConfig.set_flag", flag)
            self.flags.add(trt.BuilderFlag(flag))

        def get_flag(self, flag):
            return trt.BuilderFlag(flag) in self.flags

        def set_memory_pool_limit(self, pool, pool_size):
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)
            self.pools[trt.MemoryPoolType(pool)] = pool_size

        def add_optimization_profile(self, profile):
            record("IBuilderConfig.add_optimization_profile", profile)
            # docs: returns the profile's index, or -1 if it is not valid (nothing set)
            if not profile.shapes:
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            record("IBuilderConfig.create_timing_cache", bytes(serialized_timing_cache))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache, ignore_mismatch):
            record("IBuilderConfig.set_timing_cache", cache, ignore_mismatch=ignore_mismatch)
            object.__setattr__(self, "cache", cache)
            return True

    class Builder:
        def __init__(self, logger):
            record("Builder", logger)
            self.logger = logger

        def create_network(self, flags=0):
            record("Builder.create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self):
            record("Builder.create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self):
            record("Builder.create_optimization_profile")
            return IOptimizationProfile()

        def _error(self, msg):
            self.logger.log(ILogger.ERROR, msg)

        def build_serialized_network(self, network, config):
            record("Builder.build_serialized_network", network, config)
            # docs: the builder logs a great deal at INFO and VERBOSE (a logger must filter)
            for i in range(200):
                self.logger.log(ILogger.VERBOSE, f"Fake tactic timing {i}: 0.0{i} ms")
            self.logger.log(ILogger.INFO, "[MemUsageChange] Init builder kernel library")
            if network.model is None or trt.fail_build:
                self._error("Network build failed (fake: nothing parsed or fail_build set)")
                return None
            weak = {f.name for f in config.flags} & {"FP16", "BF16", "INT8", "FP8"}
            if network.strongly_typed and weak:
                # docs: precision flags are not allowed with strongly typed networks
                self._error(f"{sorted(weak)} are not allowed with strongly typed networks")
                return None
            profile = config.profiles[0] if config.profiles else None
            names = {t.name for t in network.inputs}
            for name in profile.shapes if profile is not None else ():
                if name not in names:
                    self._error(f"{name} is not an input of the network (optimization profile)")
                    return None
            io_inputs = []
            for tensor in network.inputs:
                shapes = profile.shapes.get(tensor.name) if profile is not None else None
                if -1 in tensor.shape and shapes is None:
                    self._error(
                        f"Network has dynamic or shape inputs, but no optimization profile has "
                        f"been defined for {tensor.name}"
                    )
                    return None
                shapes = shapes or (tensor.shape,) * 3
                for shape in shapes:
                    if len(shape) != len(tensor.shape) or any(
                        d not in (-1, s) for d, s in zip(tensor.shape, shape, strict=True)
                    ):
                        self._error(f"{tensor.name}: profile shape {shape} vs {tensor.shape}")
                        return None
                io_inputs.append(
                    {
                        "name": tensor.name,
                        "dtype": tensor.dtype.name,
                        "shape": list(tensor.shape),
                        "profile": [list(s) for s in shapes],
                    }
                )
            layers = self._layers(network, config)
            if config.cache is not None:
                config.cache.entries += [layer["name"] for layer in layers]
            if "SPARSE_WEIGHTS" in {f.name for f in config.flags}:
                eligible = [layer["name"] for layer in layers if layer["eligible"]]
                picked = [layer["name"] for layer in layers if layer["sparse"]]
                if eligible:
                    # docs: TensorRT Developer Guide, "Structured Sparsity": these two report
                    # lines come at INFO ("[I] [TRT] (Sparsity) ...")
                    self.logger.log(
                        ILogger.INFO,
                        "(Sparsity) Layers eligible for sparse math: " + ", ".join(eligible),
                    )
                    self.logger.log(
                        ILogger.INFO,
                        "(Sparsity) TRT inference plan picked sparse implementation for "
                        "layers: " + ", ".join(picked),
                    )
            blob = {
                "fake_tensorrt": version,
                "inputs": io_inputs,
                "outputs": [
                    {"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)}
                    for t in network.outputs
                ],
                "flags": sorted(f.name for f in config.flags),
                "strongly_typed": network.strongly_typed,
                "workspace": config.pools.get(trt.MemoryPoolType.WORKSPACE),
                "profiling_verbosity": config.profiling_verbosity.name,
                "layers": layers,
            }
            return IHostMemory(json.dumps(blob).encode())

        def _layers(self, network, config):
            """The engine's layers: one per ONNX node, activations fused into the Conv/Gemm
            before them; precision from the flags (weak typing) or the inferred types (strong)."""
            graph = network.model.graph
            inits = {init.name: init for init in graph.initializer}
            flags = {f.name for f in config.flags}
            weak = "BF16" if "BF16" in flags else "HALF" if "FP16" in flags else "FLOAT"
            consumers = {}
            for node in graph.node:
                for name in node.input:
                    consumers.setdefault(name, []).append(node)
            fused, layers = set(), []
            for node in graph.node:
                if node.output[0] in fused:  # outputs are unique, names need not be
                    continue
                group = [node]
                users = consumers.get(node.output[0], [])
                if node.op_type in _WEIGHTED and len(users) == 1 and users[0].op_type in _FUSABLE:
                    group.append(users[0])
                    fused.add(users[0].output[0])
                w = _weight_matrix(node, inits)
                if not network.strongly_typed:
                    dtype = weak if node.op_type in _WEIGHTED else "FLOAT"
                else:  # strong typing: the inferred types decide
                    dtype = network.types.get(node.output[0], "FLOAT")
                eligible = w is not None and _is_24(w)
                big = w is not None and min(w.shape[:2]) >= SPARSE_MIN_CHANNELS
                layers.append(
                    {
                        "name": " + ".join(n.name for n in group),
                        "op": node.op_type,
                        "dtype": dtype,
                        "eligible": eligible,
                        "sparse": "SPARSE_WEIGHTS" in flags
                        and eligible
                        and big
                        and dtype != "FLOAT",
                        "nodes": [n.name for n in group],
                        "input": node.input[0] if node.input else "",
                        "output": group[-1].output[0],
                    }
                )
            return layers

    class EngineInspector:
        """Renders the engine's layers as the documented inspector JSON of this version."""

        def __init__(self, blob):
            self._blob = blob

        def _tensor(self, name, dtype):
            if major < 11:
                return {
                    "Name": name,
                    "Location": "Device",
                    "Format/Datatype": _FORMAT.get(dtype, dtype),
                }
            # docs: "IEngineInspector JSON Output" (10.x to 11.x migration): the
            # Format/Datatype field is split into Format and DataType
            return {
                "Name": name,
                "Location": "Device",
                "Format": _FORMAT.get(dtype, dtype),
                "DataType": _INSPECTOR_TYPE.get(dtype, dtype),
            }

        def _layer(self, layer):
            if self._blob["profiling_verbosity"] == "LAYER_NAMES_ONLY":
                return layer["name"]
            dtype, op = layer["dtype"], layer["op"]
            entry = {
                "Name": layer["name"],
                "LayerType": _LAYER_TYPES.get(op, op),
                "Inputs": [self._tensor(layer["input"], dtype)],
                "Outputs": [self._tensor(layer["output"], dtype)],
            }
            if op in _WEIGHTED:  # kernel library layers name their tactic; others have none
                kind = "fprop_implicit_gemm" if op == "Conv" else "gemm"
                sparse = "sparse_" if layer["sparse"] else ""
                entry["TacticName"] = f"sm80_xmma_{kind}_{sparse}{dtype.lower()}_128x128x32"
            entry["TacticValue"] = hex(zlib.crc32(json.dumps(entry).encode()))
            entry["StreamId"] = 0
            entry["Metadata"] = "\x1f".join(f"[ONNX Layer: {n}]" for n in layer["nodes"])
            return entry

        def get_engine_information(self, format):  # noqa: A002 - the documented name
            record("EngineInspector.get_engine_information", format)
            if self._blob["profiling_verbosity"] == "NONE":
                return ""
            layers = [self._layer(layer) for layer in self._blob["layers"]]
            if format == trt.LayerInformationFormat.ONELINE:
                return "\n".join(json.dumps(layer) for layer in layers)
            tensors = self._blob["inputs"] + self._blob["outputs"]
            if major < 11:  # unit separators left raw in the metadata: parsers must cope
                text = json.dumps({"Layers": layers, "Bindings": [t["name"] for t in tensors]})
                return text.replace("\\u001f", "\x1f")
            io = [
                {
                    "Name": t["name"],
                    "IOMode": "Input" if t in self._blob["inputs"] else "Output",
                    "DataType": _INSPECTOR_TYPE.get(t["dtype"], t["dtype"]),
                    "Dimensions": t["shape"],
                    "Location": "Device",
                }
                for t in tensors
            ]
            return json.dumps({"Layers": layers, "I/O Tensors": io})

    class IExecutionContext:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            # docs: returns False where the shape is outside the profile (or of another rank)
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            ok = len(shape) == len(lo) and all(
                a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)
            )
            if ok:
                self.shapes[name] = tuple(int(s) for s in shape)
            return ok

        def get_tensor_shape(self, name):
            record("IExecutionContext.get_tensor_shape", name)
            return self.shapes.get(name) or self._output_shape(name)

        def _output_shape(self, name):
            shape = self.engine._tensors[name]["shape"]
            batch = next(iter(self.shapes.values()), (-1,))[0]  # docs: -1 until it is known
            return tuple(batch if d == -1 else d for d in shape)

        def set_tensor_address(self, name, memory):
            record("IExecutionContext.set_tensor_address", name, memory)
            self.addresses[name] = int(memory)
            return True

        def _host_array(self, name):
            """The tensor's memory at its address (host memory in the fake) as numpy."""
            shape = tuple(self.shapes.get(name) or self._output_shape(name))
            dtype = np.dtype(numpy_types[self.engine._tensors[name]["dtype"]])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raw = (ctypes.c_char * nbytes).from_address(self.addresses[name])
            return np.frombuffer(raw, dtype=dtype).reshape(shape)

        def execute_async_v3(self, stream_handle):
            """docs: runs on the addresses given by set_tensor_address with the shapes given by
            set_input_shape; False (and an error logged) when one is missing."""
            record("IExecutionContext.execute_async_v3", stream_handle)
            names = self.engine._names
            inputs = [t["name"] for t in self.engine._blob["inputs"]]
            if any(n not in self.addresses for n in names) or any(
                n not in self.shapes for n in inputs
            ):
                return False
            batch = self._host_array(inputs[0])
            for out in (t["name"] for t in self.engine._blob["outputs"]):
                target = self._host_array(out)
                target[...] = fake_outputs(batch, target.shape).astype(target.dtype)
            return True

    class ICudaEngine:
        def __init__(self, blob):
            self._blob = blob
            self._names = [t["name"] for t in blob["inputs"] + blob["outputs"]]
            self._tensors = {t["name"]: t for t in blob["inputs"] + blob["outputs"]}

        @property
        def num_io_tensors(self):
            record("ICudaEngine.num_io_tensors")
            return len(self._names)

        @property
        def num_layers(self):
            return len(self._blob["layers"])

        def get_tensor_name(self, index):
            record("ICudaEngine.get_tensor_name", index)
            return self._names[index]

        def get_tensor_mode(self, name):
            record("ICudaEngine.get_tensor_mode", name)
            inputs = {t["name"] for t in self._blob["inputs"]}
            return trt.TensorIOMode.INPUT if name in inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            record("ICudaEngine.get_tensor_dtype", name)
            return trt.DataType[self._tensors[name]["dtype"]]

        def get_tensor_shape(self, name):
            record("ICudaEngine.get_tensor_shape", name)
            return tuple(self._tensors[name]["shape"])

        def get_tensor_profile_shape(self, name, profile_index):
            record("ICudaEngine.get_tensor_profile_shape", name, profile_index)
            if profile_index != 0 or "profile" not in self._tensors[name]:
                raise RuntimeError(f"no profile {profile_index} for {name}")
            return [tuple(s) for s in self._tensors[name]["profile"]]

        def create_execution_context(self):
            record("ICudaEngine.create_execution_context")
            return IExecutionContext(self)

    if inspector:

        def create_engine_inspector(self):
            record("ICudaEngine.create_engine_inspector")
            return EngineInspector(self._blob)

        ICudaEngine.create_engine_inspector = create_engine_inspector

    class Runtime:
        def __init__(self, logger):
            record("Runtime", logger)
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            """None for bytes that are not an engine of this (fake) TensorRT version."""
            data = bytes(serialized_engine)
            record("Runtime.deserialize_cuda_engine", data)
            try:
                blob = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                blob = None
            if not isinstance(blob, dict) or blob.get("fake_tensorrt") != version:
                self.logger.log(ILogger.ERROR, "The engine plan file is not compatible")
                return None
            return ICudaEngine(blob)

    for cls in (
        Builder,
        INetworkDefinition,
        ITensor,
        OnnxParser,
        IBuilderConfig,
        IOptimizationProfile,
        ITimingCache,
        IHostMemory,
        Runtime,
        ICudaEngine,
        IExecutionContext,
        EngineInspector,
    ):
        setattr(trt, cls.__name__, cls)
    return trt


def engine_blob(path: str | Path) -> dict:
    """What the fake builder put in an engine file: inputs, profile, flags, layers."""
    return json.loads(Path(path).read_bytes())


def make_fake_cudart(fail: dict[str, int] | None = None) -> types.ModuleType:
    """A fake cuda-python `cudart` on host memory: cudaMalloc hands out host buffers, the
    memcpys copy bytes, so code using it runs end to end against the fake tensorrt.

    docs (CUDA Python, cuda.bindings.runtime): every call returns a tuple whose first element
    is the cudaError_t (cudaSuccess = 0), then its results: `err, ptr = cudaMalloc(n)`,
    `(err,) = cudaFree(ptr)`. `fail` maps a call's name to the error code it returns instead.
    """
    cudart = types.ModuleType("cuda.bindings.runtime")
    cudart.calls = []
    cudart.fail = dict(fail or {})
    # docs: cudaError_t values of the CUDA runtime API
    cudart.cudaError_t = enum.IntEnum(
        "cudaError_t",
        {"cudaSuccess": 0, "cudaErrorInvalidValue": 1, "cudaErrorMemoryAllocation": 2},
    )
    cudart.cudaMemcpyKind = enum.IntEnum(
        "cudaMemcpyKind",
        ["cudaMemcpyHostToHost", "cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"],
        start=0,
    )
    buffers: dict[int, ctypes.Array] = {}
    cudart.buffers = buffers

    def call(name, *results):
        cudart.calls.append(name)
        err = cudart.cudaError_t(cudart.fail.get(name, 0))
        return (err, *results) if err == 0 else (err, *(None for _ in results))

    def cudaStreamCreate():  # noqa: N802 - the documented name
        return call("cudaStreamCreate", 7)

    def cudaMalloc(size):  # noqa: N802
        if cudart.fail.get("cudaMalloc"):
            return call("cudaMalloc", None)
        buffer = ctypes.create_string_buffer(int(size))
        buffers[ctypes.addressof(buffer)] = buffer
        return call("cudaMalloc", ctypes.addressof(buffer))

    def cudaFree(ptr):  # noqa: N802
        buffers.pop(int(ptr), None)
        return call("cudaFree")

    def cudaMemcpyAsync(dst, src, count, kind, stream):  # noqa: N802
        if not cudart.fail.get("cudaMemcpyAsync"):
            ctypes.memmove(int(dst), int(src), int(count))
        return call("cudaMemcpyAsync")

    def cudaStreamSynchronize(stream):  # noqa: N802
        return call("cudaStreamSynchronize")

    def cudaStreamDestroy(stream):  # noqa: N802
        return call("cudaStreamDestroy")

    for fn in (
        cudaStreamCreate,
        cudaMalloc,
        cudaFree,
        cudaMemcpyAsync,
        cudaStreamSynchronize,
        cudaStreamDestroy,
    ):
        setattr(cudart, fn.__name__, fn)
    return cudart
