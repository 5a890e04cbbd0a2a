#!/usr/bin/env python3
"""Build a TensorRT engine on the target device from model.onnx (+ manifest.json).

Needs only the tensorrt Python package (JetPack ships it); no torch, no rmt_deploy. Engines
are specific to the GPU and TensorRT version that built them: build on the device that runs
them. TensorRT 10 takes the precision as a builder flag; TensorRT 11 needs strongly typed
networks, so on 11 export an fp16 ONNX with `rmt-deploy build` on a host instead, or pass
--precision fp32 here.

    python3 build_engine.py model.onnx --precision fp16 --batch 1:8:32 --sparsity enable
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    parser.add_argument("--sparsity", choices=("disable", "enable"), default="enable")
    parser.add_argument("--batch", default="1:1:1", help="MIN:OPT:MAX")
    parser.add_argument("--workspace", type=int, default=1024, help="MB")
    parser.add_argument("--timing-cache", type=Path)
    args = parser.parse_args()

    try:
        import tensorrt as trt
    except ImportError:
        sys.exit("error: the tensorrt Python package is not installed (JetPack provides it)")
    try:
        lo, opt, hi = (int(v) for v in args.batch.split(":"))
        assert 0 < lo <= opt <= hi
    except (ValueError, AssertionError):
        sys.exit(f"error: --batch takes MIN:OPT:MAX, got {args.batch!r}")
    major = int(trt.__version__.split(".")[0])
    if major >= 11 and args.precision != "fp32":
        sys.exit(
            "error: TensorRT ≥ 11 builds strongly typed networks only: give an ONNX file "
            "already cast to the precision (rmt-deploy build does it) and --precision fp32"
        )

    lines: list[str] = []

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            lines.append(msg)
            if severity <= trt.ILogger.WARNING:
                print(f"[TRT] {msg}", file=sys.stderr)

    logger = Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser_ = trt.OnnxParser(network, logger)
    if not parser_.parse_from_file(str(args.onnx)):
        errors = [str(parser_.get_error(i)) for i in range(parser_.num_errors)]
        sys.exit("error: cannot parse ONNX: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace << 20)
    if args.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif args.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if args.sparsity == "enable":
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    inp = network.get_input(0)
    dims = tuple(inp.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, *dims), (opt, *dims), (hi, *dims))
    config.add_optimization_profile(profile)
    cache = None
    if args.timing_cache:
        blob = args.timing_cache.read_bytes() if args.timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        sys.exit("error: engine build failed")
    out = args.out or args.onnx.with_name(f"{args.onnx.stem}_{args.precision}_b{hi}.engine")
    for target, payload in (
        (out, bytes(serialized)),
        (args.timing_cache, bytes(cache.serialize()) if cache else None),
    ):
        if target is None or payload is None:
            continue
        fd, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, target)  # atomic: no half-written engine on failure
    print(f"wrote {out} (TensorRT {trt.__version__}, {args.precision}, batch {args.batch})")
    for pattern in (r"Layers eligible for sparse math:.*", r"picked sparse implementation.*"):
        for line in lines:
            if re.search(pattern, line):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
