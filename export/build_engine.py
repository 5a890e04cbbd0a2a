#!/usr/bin/env python3
"""Build a TensorRT engine on the target device from model.onnx (+ manifest.json).

Needs only the tensorrt Python package (JetPack ships it); no torch, no rmt_deploy. Engines
are specific to the GPU and TensorRT version that built them: build on the device that runs
them. TensorRT 8.6 to 10 take the precision as a builder flag (bf16 from TensorRT 9);
TensorRT 11 builds strongly typed networks only, so on 11 give an ONNX file already cast to
the precision (`rmt-deploy build` on a host with TensorRT 11 does it) and --precision fp32.

    python3 build_engine.py model.onnx --precision fp16 --batch 1:8:32 --sparsity enable
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

MIN_TENSORRT = (8, 6)


def fail(message: str) -> None:
    """One line on stderr and exit status 1."""
    sys.exit(f"error: {message}")


def tensorrt_version(text: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string, or a clear exit where it is too old."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(text))
    if match is None:
        fail(f"cannot read the TensorRT version {text!r}")
    version = int(match.group(1)), int(match.group(2))
    if version < MIN_TENSORRT:
        fail(f"TensorRT {text} is too old: this kit needs TensorRT 8.6 or newer (JetPack 6)")
    return version


def network_flags(trt, version: tuple[int, int]) -> int:
    """Explicit batch before TensorRT 10 (the ONNX parser refuses implicit-batch networks;
    10 ignores the flag); strongly typed on 11 (its only mode; the flag is kept, ignored)."""
    flags = 0
    if version < (10, 0):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if version >= (11, 0) and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    return flags


def precision_flag(trt, precision: str, version: tuple[int, int]):
    """The builder flag for fp16/bf16 (None for fp32), or a clear exit where there is none."""
    if precision == "fp32":
        return None
    if version >= (11, 0):
        fail(
            "TensorRT ≥ 11 builds strongly typed networks only: give an ONNX file already cast "
            "to the precision (rmt-deploy build does it) and --precision fp32"
        )
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is None:
        fail(
            f"TensorRT {trt.__version__} has no BuilderFlag.{precision.upper()}: "
            f"{precision} engines need TensorRT 9.0 or newer; use --precision fp16"
        )
    return flag


def make_logger(trt, problems: list[str], sparsity: list[str]):
    """Warnings and errors printed and kept; the "(Sparsity)" report kept (it comes at INFO:
    TensorRT Developer Guide, "Structured Sparsity"); every other message dropped at once."""
    warning, info = int(trt.ILogger.WARNING), int(trt.ILogger.INFO)

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            level = int(severity)
            if level <= warning:
                problems.append(msg)
                print(f"[TRT] {msg}", file=sys.stderr)
            elif level == info and "(Sparsity)" in msg:
                sparsity.append(msg)

    return Logger()


def explain(problems: list[str]) -> str:
    return " | ".join(problems[-5:]) or "TensorRT logged no warning or error"


def batch_profile(builder, config, network, lo: int, opt: int, hi: int, problems) -> None:
    """Optimization profile 0 on the network's first input, batch MIN:OPT:MAX."""
    if network.num_inputs < 1:
        fail("the parsed network has no inputs")
    inp = network.get_input(0)
    dims = tuple(inp.shape)[1:]
    if any(d < 0 for d in dims):
        fail(f"input {inp.name!r} has shape {tuple(inp.shape)}: only the batch may be dynamic")
    profile = builder.create_optimization_profile()
    shapes = [(n, *dims) for n in (lo, opt, hi)]
    try:
        profile.set_shape(inp.name, *shapes)
    except (RuntimeError, TypeError, ValueError) as exc:
        fail(f"TensorRT refused the profile {shapes} for input {inp.name!r}: {exc}")
    if config.add_optimization_profile(profile) < 0:
        fail(f"TensorRT refused the profile {shapes} for {inp.name!r}: {explain(problems)}")


def write_atomically(target: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
    os.replace(tmp, target)  # atomic: no half-written engine on failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    parser.add_argument("--sparsity", choices=("disable", "enable"), default="enable")
    parser.add_argument("--batch", default="1:1:1", help="MIN:OPT:MAX")
    parser.add_argument("--workspace", type=int, default=1024, help="MB")
    parser.add_argument("--timing-cache", type=Path)
    args = parser.parse_args(argv)

    try:
        import tensorrt as trt
    except ImportError:
        fail("the tensorrt Python package is not installed (JetPack provides it)")
    try:
        lo, opt, hi = (int(v) for v in args.batch.split(":"))
        assert 0 < lo <= opt <= hi
    except (ValueError, AssertionError):
        fail(f"--batch takes MIN:OPT:MAX, got {args.batch!r}")
    version = tensorrt_version(trt.__version__)
    flag = precision_flag(trt, args.precision, version)

    problems: list[str] = []
    sparsity: list[str] = []
    logger = make_logger(trt, problems, sparsity)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, version))
    parser_ = trt.OnnxParser(network, logger)
    if not parser_.parse_from_file(str(args.onnx)):
        errors = [str(parser_.get_error(i)) for i in range(parser_.num_errors)]
        fail("cannot parse ONNX: " + ("; ".join(errors) or explain(problems)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace << 20)
    if flag is not None:
        config.set_flag(flag)
    if args.sparsity == "enable":
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    batch_profile(builder, config, network, lo, opt, hi, problems)
    cache = None
    if args.timing_cache:
        blob = args.timing_cache.read_bytes() if args.timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        fail(f"engine build failed: {explain(problems)}")
    out = args.out or args.onnx.with_name(f"{args.onnx.stem}_{args.precision}_b{hi}.engine")
    write_atomically(out, bytes(serialized))
    if cache is not None:
        write_atomically(args.timing_cache, bytes(cache.serialize()))
    print(f"wrote {out} (TensorRT {trt.__version__}, {args.precision}, batch {args.batch})")
    for line in sparsity:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
