"""export(model, out_dir): ONNX with a dynamic batch axis, simplified, checked, and verified
against the PyTorch model in ONNX Runtime on real images before it is put in place.

Exporter choice: the TorchScript-based exporter (`dynamo=False`, opset 17) is the default. On
torch 2.14 both exporters handle every model tested here, but the legacy one exports a ViT in
about 1 s against about 10 s, folds the mask multiplications of pruned layers into plain
initializers, and opset 17 is what TensorRT 10 on JetPack 6 parses. `exporter="dynamo"`
(opset ≥ 18) is available for models the tracer cannot handle.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import take_images
from ..errors import RmtDeployError
from ..paths import ensure_output_dir, file_sha256, pid_alive, write_json_atomic
from ..usercode import check_model_output, logits_of

_TWO_GB = 2**31 - 2**20  # protobuf's hard limit, less headroom for the graph itself


class ExportMismatchError(RmtDeployError):
    """ONNX Runtime does not reproduce the PyTorch model within tolerance."""


class ExportError(RmtDeployError):
    """The model could not be exported or the exported graph is invalid."""


@dataclass
class ParityReport:
    n_images: int
    source: str  # "real images: <dir>" or "random inputs"
    max_abs_diff: float
    max_rel_diff: float  # max |onnx − torch| / max |torch|
    output_scale: float  # max |torch|
    top1_agreement: float  # share of images with the same arg-max
    atol: float
    rtol: float
    min_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportArtifact:
    onnx_path: Path
    manifest_path: Path
    parity: ParityReport
    exporter: str
    opset: int
    seconds: dict[str, float] = field(default_factory=dict)


def ort_session(
    model: Path | bytes, threads: int | None = None, provider: str = "CPUExecutionProvider"
):
    """An ONNX Runtime session (from a file or serialized bytes) set up the way every
    measurement here needs it: `threads` intra-op threads, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Spinning threads of several sessions fight over few cores (batch-1 latency doubles).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=[provider])


def _inputs(data: Dataset | None, n: int, shape: tuple[int, ...], batch: int):
    if data is None:
        g = torch.Generator().manual_seed(0)
        for start in range(0, n, batch):
            yield torch.randn(min(batch, n - start), *shape, generator=g)
        return
    yield from take_images(DataLoader(data, batch_size=batch, shuffle=False, num_workers=1), n)


def _static_batch(session) -> int | None:
    """The batch size an ONNX file's input is fixed to (`--static-batch`), None when dynamic."""
    first = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    data: Dataset | None = None,
    n_images: int = 64,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    batch_size: int = 32,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    min_agreement: float = 0.99,
    source: str | None = None,
) -> ParityReport:
    """Run the ONNX file in ONNX Runtime and the model in PyTorch on the same inputs.

    Passes when max |Δ| ≤ atol + rtol·max |torch| and the top-1 agreement ≥ min_agreement.
    """
    session = ort_session(Path(onnx_path))
    input_name = session.get_inputs()[0].name
    static = _static_batch(session)
    if static is not None:  # a fixed batch axis runs only batches of exactly that size
        batch_size, n_images = static, max(static, n_images - n_images % static)
    model.eval()
    max_abs = scale = 0.0
    agree = total = 0
    for images in _inputs(data, n_images, input_shape, batch_size):
        if len(images) != batch_size and static is not None:
            break  # fewer images than the static batch holds: the last short batch is left out
        ref = logits_of(model(images), "the model").float().numpy()
        got = session.run(None, {input_name: images.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportMismatchError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
        max_abs = max(max_abs, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += len(images)
    rel = max_abs / scale if scale > 0 else 0.0
    agreement = agree / total if total else 0.0
    passed = max_abs <= atol + rtol * scale and agreement >= min_agreement
    return ParityReport(
        n_images=total,
        source=source or ("random inputs" if data is None else "real images"),
        max_abs_diff=max_abs,
        max_rel_diff=rel,
        output_scale=scale,
        top1_agreement=agreement,
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
        passed=passed,
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("rmt-deploy", "torch", "onnx", "onnxruntime", "onnxslim", "timm"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


_EXPORT_TMP = re.compile(r"^\.export-(?:(\d+)-)?")


def remove_stale_exports(out: Path) -> list[Path]:
    """Delete `.export-*` folders of exports that were killed (SIGKILL, power loss: no cleanup
    ran) in `out`; those of a live process are left alone. Returns what was removed."""
    removed = []
    for path in out.glob(".export-*"):
        match = _EXPORT_TMP.match(path.name)
        if not path.is_dir() or match is None:
            continue
        pid = match.group(1)
        if pid is not None and pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def captured_output():
    """Send stdout and stderr — Python's and the C++ exporter's, at the file-descriptor level —
    to a temporary file while the block runs. The TorchScript exporter prints the whole Torch
    IR graph (tens to hundreds of lines) when it fails; the exception says what failed, in one
    line. Yields a function returning the captured text."""
    captured: list[str] = []

    def text() -> str:
        return "".join(captured)

    with tempfile.TemporaryFile() as sink:
        _flush_all()
        saved: list[tuple[int, int]] = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        except OSError:  # no such descriptors (an embedding host): capture Python's only
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            saved = []
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield text
        finally:
            _flush_all()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured += [buffer.getvalue(), sink.read().decode("utf-8", "replace")]


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):  # C stdio buffers (std::cout), so nothing leaks later
        import ctypes

        ctypes.CDLL(None).fflush(None)


def cause_line(exc: BaseException) -> str:
    """The first meaningful line of an exporter's exception: its messages can hold the whole
    graph, a traceback or a report; the line that names the failure comes first (or after
    the dynamo exporter's "## Exception summary" heading)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    noise = ("Torch IR graph", "graph(", "%", "#", "Traceback", "File ")
    for line in lines:
        if line and not line.startswith(noise):
            return (line if len(line) <= 300 else line[:297] + "…") + f" [{type(exc).__name__}]"
    return type(exc).__name__


@dataclass(frozen=True)
class _ExportPlan:
    """The export settings, resolved once: every step (export, check, verify, manifest) reads
    several of them, and one value cannot drift between steps."""

    name: str
    exporter: str
    opset: int
    dynamic_batch: bool
    input_shape: tuple[int, int, int]
    simplify: bool
    n_verify: int
    atol: float
    rtol: float
    min_agreement: float


@dataclass(frozen=True)
class _StagedModel:
    """The checked graph saved in the temporary folder, not yet in place: whether its weights
    went to a separate data file decides what is moved into `out`."""

    path: Path
    external: bool


@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall time of one export step in `seconds` (the manifest reports them)."""
    start = time.perf_counter()
    yield
    seconds[step] = time.perf_counter() - start


def _torch_onnx_export(
    model: nn.Module, example: torch.Tensor, raw: Path, plan: _ExportPlan
) -> None:
    """Call the chosen torch exporter: the two take the dynamic batch axis and the output file
    in different forms."""
    if plan.exporter == "torchscript":
        dynamic = {"input": {0: "batch"}, "logits": {0: "batch"}} if plan.dynamic_batch else None
        torch.onnx.export(
            model,
            (example,),
            str(raw),
            dynamo=False,
            opset_version=plan.opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
        return
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if plan.dynamic_batch else None
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=plan.opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=shapes,
    )
    program.save(str(raw))


def _export_raw(model: nn.Module, raw: Path, plan: _ExportPlan) -> None:
    """Export to `raw` quietly, and turn any exporter failure into one ExportError line that
    names the model and the cause (the exporters raise many types and print whole graphs)."""
    example = torch.randn(2 if plan.dynamic_batch else 1, *plan.input_shape)
    try:
        with warnings.catch_warnings(), captured_output():
            # The tracer warns about every Python-side shape computation in timm models; the
            # parity check is what says whether the graph is right.
            warnings.simplefilter("ignore")
            _torch_onnx_export(model, example, raw, plan)
    except Exception as exc:  # the exporters raise many types; name the model and cause
        raise ExportError(
            f"ONNX export of {plan.name} failed ({plan.exporter}): {cause_line(exc)}"
        ) from exc


def _slim(graph: Any, name: str) -> Any:
    """Simplify with onnxslim, saying how to get past a missing or failing onnxslim."""
    try:
        import onnxslim

        return onnxslim.slim(graph)
    except ImportError as exc:
        raise ExportError(
            "onnxslim is not installed (pip install onnxslim, or --no-simplify)"
        ) from exc
    except Exception as exc:
        raise ExportError(
            f"onnxslim failed on {name}: {cause_line(exc)} (retry with --no-simplify)"
        ) from exc


def _checked_graph(raw: Path, plan: _ExportPlan) -> Any:
    """Load the raw export, simplify it if asked, and fail on a graph ONNX calls invalid:
    an invalid graph must not reach verification or the output folder."""
    import onnx

    graph = onnx.load(str(raw))
    if plan.simplify:
        graph = _slim(graph, plan.name)
    try:
        onnx.checker.check_model(graph, full_check=False)
        return onnx.shape_inference.infer_shapes(graph, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"exported graph of {plan.name} is invalid: {cause_line(exc)}") from exc


def _save_staged(graph: Any, tmp_dir: Path) -> _StagedModel:
    """Save into the temporary folder, weights in `model.onnx.data` past protobuf's 2 GB
    limit, so that verification reads exactly the file that is put in place."""
    import onnx

    staged = tmp_dir / "model.onnx"
    external = graph.ByteSize() > _TWO_GB
    onnx.save_model(
        graph,
        str(staged),
        save_as_external_data=external,
        location="model.onnx.data" if external else None,
    )
    return _StagedModel(staged, external)


def _require_parity(parity: ParityReport, plan: _ExportPlan) -> None:
    """Refuse a model ONNX Runtime does not reproduce, with the numbers that failed."""
    if parity.passed:
        return
    allowed = plan.atol + plan.rtol * parity.output_scale
    raise ExportMismatchError(
        f"ONNX Runtime disagrees with PyTorch for {plan.name}: max |Δ| "
        f"{parity.max_abs_diff:.3g} (allowed {allowed:.3g}), top-1 agreement "
        f"{100 * parity.top1_agreement:.2f} % (need "
        f"{100 * plan.min_agreement:.2f} %) on {parity.n_images} {parity.source}; no model "
        "file was written"
    )


def _put_in_place(staged: _StagedModel, out: Path) -> Path:
    """Move the verified model (and its data file) into `out`, the model file last and by
    os.replace, so a reader never sees a model without its weights or a stale data file."""
    final = out / "model.onnx"
    (out / "model.onnx.data").unlink(missing_ok=True)  # never pair with a stale data file
    if staged.external:
        shutil.move(str(staged.path.parent / "model.onnx.data"), out / "model.onnx.data")
    os.replace(staged.path, final)
    return final


def _export_verified(
    model: nn.Module,
    out: Path,
    tmp_dir: Path,
    plan: _ExportPlan,
    verify_data: Dataset | None,
    seconds: dict[str, float],
) -> tuple[Path, ParityReport]:
    """Export, check and verify inside `tmp_dir`; only a model that passes reaches `out`."""
    with _timed(seconds, "export"):
        _export_raw(model, tmp_dir / "raw.onnx", plan)
    with _timed(seconds, "simplify_check"):
        staged = _save_staged(_checked_graph(tmp_dir / "raw.onnx", plan), tmp_dir)
    with _timed(seconds, "verify"):
        parity = verify_onnx(
            model,
            staged.path,
            verify_data,
            plan.n_verify,
            plan.input_shape,
            atol=plan.atol,
            rtol=plan.rtol,
            min_agreement=plan.min_agreement,
        )
    _require_parity(parity, plan)
    return _put_in_place(staged, out), parity


def _write_manifest(
    out: Path,
    model: nn.Module,
    plan: _ExportPlan,
    parity: ParityReport,
    seconds: dict[str, float],
    manifest_extra: dict[str, Any] | None,
) -> Path:
    """Write `manifest.json` beside the model: what was exported, how, with which versions,
    and the checksums of the files in place."""
    files = {
        p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in (out / "model.onnx", out / "model.onnx.data")
        if p.exists()
    }
    manifest = {
        "model": plan.name,
        "format": "onnx",
        "exporter": plan.exporter,
        "opset": plan.opset,
        "simplified": plan.simplify,
        "input": {
            "name": "input",
            "shape": ["batch" if plan.dynamic_batch else 1, *plan.input_shape],
            "dtype": "float32",
            "layout": "NCHW",
        },
        "output": {"name": "logits"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "files": files,
        "parity": parity.to_dict(),
        "versions": _versions(),
        "seconds": seconds,
        **(manifest_extra or {}),
    }
    return write_json_atomic(out / "manifest.json", manifest)


def export(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    input_shape: tuple[int, int, int] = (3, 224, 224),
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "torchscript",
    simplify: bool = True,
    verify_data: Dataset | None = None,
    n_verify: int = 64,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    min_agreement: float = 0.99,
    name: str = "model",
    manifest_extra: dict[str, Any] | None = None,
) -> ExportArtifact:
    """Export `model` to `out_dir/model.onnx` and `manifest.json`; fail (and leave no model
    file) when ONNX Runtime disagrees with PyTorch beyond tolerance."""
    import onnx  # noqa: F401 - fail on a missing onnx before any file is touched

    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    plan = _ExportPlan(
        name=name,
        exporter=exporter,
        opset=opset or (17 if exporter == "torchscript" else 20),
        dynamic_batch=dynamic_batch,
        input_shape=input_shape,
        simplify=simplify,
        n_verify=n_verify,
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
    )
    check_model_output(model, input_shape, f"model {name}")  # before any file is touched
    out = ensure_output_dir(out_dir)
    remove_stale_exports(out)
    model = model.eval()
    seconds: dict[str, float] = {}
    # The owner's PID in the name: a later export can tell a killed run's folder from a live one.
    with tempfile.TemporaryDirectory(dir=out, prefix=f".export-{os.getpid()}-") as tmp_dir:
        final, parity = _export_verified(model, out, Path(tmp_dir), plan, verify_data, seconds)
    manifest_path = _write_manifest(out, model, plan, parity, seconds, manifest_extra)
    return ExportArtifact(final, manifest_path, parity, exporter, plan.opset, seconds)
