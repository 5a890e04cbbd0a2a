"""A fake `tensorrt` module, so the TensorRT code paths run in CI without a GPU.

It follows the documented Python API of TensorRT 10 (JetPack 6) and TensorRT 11, but only the
part rmt_deploy uses, and differs between them where the API does: TensorRT 11 has no
FP16/BF16/INT8 builder flags (reading them raises AttributeError, as on the real module), its
STRONGLY_TYPED network flag has another bit and is always in effect, and its engine inspector
JSON has "I/O Tensors" and separate "Format"/"DataType" fields where TensorRT 10 has
"Bindings" and "Format/Datatype".

Every call is recorded in `module.calls` as (name, args, kwargs), e.g.
("IBuilderConfig.set_flag", (BuilderFlag.SPARSE_WEIGHTS,), {}), so tests fail when a flag or a
call changes. The parser really reads the ONNX file it is given (a wrong path fails to parse)
and keeps a copy in `module.parsed`. The builder "builds" a JSON engine blob describing the
network, flags, precision and profile, and picks "sparse" tactics the way TensorRT roughly
does: only for layers with 2:4 weights and at least 256 input and output channels.
"""

from __future__ import annotations

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
_LAYER_TYPES = {"Conv": "CaskConvolution", "Gemm": "CaskGemm", "MatMul": "CaskGemm"}
_INSPECTOR_TYPE = {"FLOAT": "Float", "HALF": "Half", "BF16": "BFloat16", "INT8": "Int8"}
_FORMAT = {
    "FLOAT": "Row major linear FP32 format",
    "HALF": "Channel major FP16 format where channel % 8 == 0",
    "BF16": "Channel major BF16 format where channel % 8 == 0",
    "INT8": "Channel major INT8 format where channel % 32 == 0",
}


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


def make_fake_tensorrt(version: str = "10.3.0", *, inspector: bool = True) -> types.ModuleType:
    """A fresh fake `tensorrt` of `version` ("10.x" or "11.x"); `inspector=False` gives
    engines without `create_engine_inspector`, as before TensorRT 8.2."""
    major = int(version.split(".")[0])
    if major not in (10, 11):
        raise ValueError(f"the fake models TensorRT 10 and 11, not {version}")
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

    # Enums: the documented members; TensorRT 11 removed the weak-typing precision flags.
    builder_flags = ["GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS"]
    if major == 10:
        builder_flags = ["FP16", "INT8", "BF16", "FP8", *builder_flags, "DIRECT_IO"]
        network_flags = ["EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"]
    else:
        network_flags = ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags, start=0)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", network_flags, start=0
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
    trt.DataType = enum.IntEnum(
        "DataType",
        ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64"],
        start=0,
    )
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
        if dtype.name not in numpy_types:
            raise TypeError(f"Could not resolve TensorRT datatype {dtype.name} to numpy")
        return numpy_types[dtype.name]

    trt.nptype = nptype

    def network_flag_names(flags: int) -> list[str]:
        """Decode a create_network() bit mask with this version's flag numbering."""
        return [f.name for f in trt.NetworkDefinitionCreationFlag if flags & (1 << int(f))]

    trt.network_flag_names = network_flag_names

    class ILogger:
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
            # TensorRT 11 ignores the flag: every network is strongly typed.
            self.strongly_typed = major >= 11 or "STRONGLY_TYPED" in network_flag_names(flags)
            self.model = None
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
            try:
                model = onnx.load(str(path))
            except Exception as exc:
                self.errors.append(ParserError(-1, f"Failed to load ONNX file {path}: {exc}"))
                return False
            trt.parsed.append((str(path), model))
            for i, node in enumerate(model.graph.node):
                if node.domain not in ("", "ai.onnx"):
                    desc = f"{node.name}: No importer registered for op: {node.op_type}"
                    self.errors.append(ParserError(i, desc))
            if self.errors:
                return False
            graph, net = model.graph, self.network
            initializers = {init.name for init in graph.initializer}
            net.model = model
            net.inputs = [
                ITensor(v.name, dims(v), trt_dtype(v.type.tensor_type.elem_type))
                for v in graph.input
                if v.name not in initializers
            ]
            net.outputs = [
                ITensor(v.name, dims(v), trt_dtype(v.type.tensor_type.elem_type))
                for v in graph.output
            ]
            return True

    class IOptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - the documented names
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

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
            if network.model is None or trt.fail_build:
                self._error("Network build failed (fake: nothing parsed or fail_build set)")
                return None
            weak = {f.name for f in config.flags} & {"FP16", "BF16", "INT8", "FP8"}
            if network.strongly_typed and weak:
                self._error(f"{sorted(weak)} are not allowed with strongly typed networks")
                return None
            profile = config.profiles[0] if config.profiles else None
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
                if not all(a <= b <= c for a, b, c in zip(*shapes, strict=True)):
                    self._error(f"{tensor.name}: profile needs MIN <= OPT <= MAX, got {shapes}")
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
            before them; precision from the flags (weak typing) or the ONNX types (strong)."""
            graph = network.model.graph
            inits = {init.name: init for init in graph.initializer}
            flags = {f.name for f in config.flags}
            weak = "BF16" if "BF16" in flags else "HALF" if "FP16" in flags else "FLOAT"
            consumers = {}
            for node in graph.node:
                for name in node.input:
                    consumers.setdefault(name, []).append(node)
            fused, layers = set(), []
            types_of = {
                v.name: _ONNX_TO_TRT.get(v.type.tensor_type.elem_type, "FLOAT") for v in graph.input
            }
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
                elif node.op_type == "Cast":  # strong typing: the ONNX types decide
                    to = next(a.i for a in node.attribute if a.name == "to")
                    dtype = _ONNX_TO_TRT.get(to, "FLOAT")
                elif node.op_type in _WEIGHTED:
                    dtype = _ONNX_TO_TRT.get(inits[node.input[1]].data_type, "FLOAT")
                else:
                    dtype = types_of.get(node.input[0], "FLOAT")
                for n in group:
                    types_of[n.output[0]] = dtype
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
                        "input": node.input[0],
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
                return {"Name": name, "Location": "Device", "Format/Datatype": _FORMAT[dtype]}
            return {
                "Name": name,
                "Location": "Device",
                "Format": _FORMAT[dtype],
                "DataType": _INSPECTOR_TYPE[dtype],
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
            self.engine, self.shapes = engine, {}

        def set_input_shape(self, name, shape):
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            ok = len(shape) == len(lo) and all(
                a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)
            )
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            record("IExecutionContext.get_tensor_shape", name)
            shape = list(self.engine._tensors[name]["shape"])
            batch = next(iter(self.shapes.values()), (shape[0],))[0]
            return tuple(batch if d == -1 else d for d in shape)

        def set_tensor_address(self, name, memory):
            record("IExecutionContext.set_tensor_address", name, memory)
            return True

        def execute_async_v3(self, stream_handle):
            record("IExecutionContext.execute_async_v3", stream_handle)
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
