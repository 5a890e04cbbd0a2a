"""Benchmark results → JSON, CSV, Markdown and PNG plots (Pareto and latency by batch)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..errors import RmtDeployError
from ..paths import write_json_atomic, write_text_atomic, write_with_atomic
from .runner import BenchSuite

COLUMNS = [
    "variant",
    "backend",
    "batch",
    "device",
    "threads",
    "median_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "throughput",
    "speedup",
    "top1",
    "agreement",
    "params",
    "flops_per_image",
    "file_bytes",
    "peak_rss_mb",
    "peak_cuda_mb",
    "mean_power_mw",
    "energy_per_image_mj",
]


def rows(suite: BenchSuite) -> list[dict]:
    out = []
    for r in suite.results:
        out.append(
            {
                "variant": r.variant,
                "backend": r.backend,
                "batch": r.batch,
                "device": r.device,
                "threads": r.threads,
                "median_ms": r.latency.median_ms,
                "p90_ms": r.latency.p90_ms,
                "p99_ms": r.latency.p99_ms,
                "mean_ms": r.latency.mean_ms,
                "std_ms": r.latency.std_ms,
                "throughput": r.latency.throughput,
                "speedup": r.extra.get("speedup_vs_reference"),
                "top1": r.top1,
                "agreement": r.agreement_with_reference,
                "params": r.params,
                "flops_per_image": r.flops_per_image,
                "file_bytes": r.file_bytes,
                "peak_rss_mb": r.peak_rss_mb,
                "peak_cuda_mb": r.peak_cuda_mb,
                "mean_power_mw": r.extra.get("mean_power_mw"),
                "energy_per_image_mj": r.extra.get("energy_per_image_mj"),
            }
        )
    return out


def _fmt(value, digits=2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(suite: BenchSuite, title: str = "Benchmark") -> str:
    lines = [
        f"# {title}",
        "",
        f"Speedup is the reference's median latency over the variant's, measured in the same "
        f"run ({suite.reference or 'no reference'}).",
        "",
        "| variant | backend | batch | median ms | p90 ms | p99 ms | img/s | speedup | top-1 "
        "| agreement % | params | GFLOPs/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(suite):
        gflops = None if r["flops_per_image"] is None else r["flops_per_image"] / 1e9
        lines.append(
            f"| {r['variant']} | {r['backend']} | {r['batch']} | {_fmt(r['median_ms'], 3)} | "
            f"{_fmt(r['p90_ms'], 3)} | {_fmt(r['p99_ms'], 3)} | {_fmt(r['throughput'], 1)} | "
            f"{_fmt(r['speedup'])} | {_fmt(r['top1'])} | {_fmt(r['agreement'])} | "
            f"{r['params']:,} | {_fmt(gflops, 3)} |"
        )
    energy = [r for r in rows(suite) if r["energy_per_image_mj"] is not None]
    if energy:
        lines += [
            "",
            "| variant | backend | batch | mean power mW | energy mJ/img |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['variant']} | {r['backend']} | {r['batch']} | {_fmt(r['mean_power_mw'], 0)} | "
            f"{_fmt(r['energy_per_image_mj'], 3)} |"
            for r in energy
        ]
    if suite.skipped:
        lines += ["", "Not run:", ""] + [
            f"- {s['variant']} / {s['backend']}: {s['reason']}" for s in suite.skipped
        ]
    return "\n".join(lines) + "\n"


def plot(suite: BenchSuite, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    data = rows(suite)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for backend in sorted({r["backend"] for r in data}):
        pts = [r for r in data if r["backend"] == backend and r["top1"] is not None]
        if not pts:
            continue
        batch = min(r["batch"] for r in pts)
        pts = [r for r in pts if r["batch"] == batch]
        ax.scatter(
            [r["median_ms"] for r in pts],
            [r["top1"] for r in pts],
            label=f"{backend} (batch {batch})",
        )
        for r in pts:
            ax.annotate(r["variant"], (r["median_ms"], r["top1"]), fontsize=7)
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Latency vs accuracy")
    if ax.collections:
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(
            write_with_atomic(
                out_dir / "pareto.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100)
            )
        )
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for key in sorted({(r["variant"], r["backend"]) for r in data}):
        pts = sorted(
            (r["batch"], r["median_ms"] / r["batch"])
            for r in data
            if (r["variant"], r["backend"]) == key
        )
        ax.plot(*zip(*pts, strict=True), "o-", label=f"{key[0]} / {key[1]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency per image (ms)")
    ax.set_title("Latency by batch size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(
        write_with_atomic(
            out_dir / "latency_by_batch.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100)
        )
    )
    plt.close(fig)
    return written


def write_report(
    suite: BenchSuite,
    out_dir: str | os.PathLike[str],
    title: str = "Benchmark",
    environment: dict | None = None,
) -> list[Path]:
    out = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows(suite))
    written = [
        write_json_atomic(
            out / "bench.json",
            {**suite.to_dict(), "title": title, "environment": environment or {}},
        ),
        write_text_atomic(out / "bench.csv", buffer.getvalue()),
        write_text_atomic(out / "bench.md", markdown(suite, title)),
    ]
    return written + plot(suite, out)


def render_saved(out_dir: str | os.PathLike[str]) -> list[Path]:
    """`rmt-deploy report DIR`: re-render CSV/Markdown/plots from a saved bench.json."""
    path = Path(out_dir) / "bench.json"
    try:
        data = json.loads(path.read_text())
        suite = BenchSuite.from_dict(data)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RmtDeployError(f"cannot read benchmark results {path}: {exc}") from exc
    return write_report(suite, out_dir, data.get("title", "Benchmark"), data.get("environment"))
