"""Render a ModelSpectrum as Markdown and per-layer PNG plots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..analysis import LayerSpectrum, ModelSpectrum
from ..paths import write_text_atomic, write_with_atomic
from ..progress import tqdm
from ..spectral.mp_law import MarchenkoPastur


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def spectrum_markdown(spectrum: ModelSpectrum) -> str:
    s = spectrum.summary()
    gof = "–" if s["median_gof"] is None else f"{s['median_gof']:.3f}"
    lines = [
        f"# Spectral analysis: {spectrum.model}",
        "",
        f"Marchenko–Pastur fit by BEMA (α = {spectrum.alpha}, Tracy–Widom margin at β = "
        f"{spectrum.beta}); matrices with min dimension < {spectrum.min_dim} are skipped.",
        "",
        "| summary | value |",
        "|---|---|",
        f"| layers (Linear/Conv) | {s['layers']} ({s['fitted']} fitted, {s['skipped']} skipped) |",
        f"| parameters in fitted matrices | {s['matrix_params_fitted']:,} |",
        f"| singular values / spikes | {s['singular_values']:,} / {s['spikes']:,} |",
        f"| noise share (singular values inside the bulk) | {_pct(s['noise_fraction'])} % |",
        f"| median goodness of fit (L∞ CDF gap) | {gof} |",
        f"| parameters if every layer were truncated at the edge | "
        f"{s['edge_truncation_params']:,} ({_pct(s['edge_truncation_saving'])} % fewer) |",
        "",
        "Truncating at the edge is an upper bound on savings, not a recommendation: in small "
        "trained layers the bulk still carries signal, so `compress` grows ranks against data.",
        "",
        "| layer | kind | matrix | noise std | edge σ₊ | spikes | noise % | energy outside % "
        "| gof | break-even rank | edge rank | saving % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in spectrum.fitted:
        fit = layer.fit
        assert fit is not None
        lines.append(
            f"| `{layer.name}` | {layer.kind} | {layer.shape[0]}×{layer.shape[1]} | "
            f"{fit.noise_std:.4g} | {fit.singular_edge:.4g} | {fit.n_spikes} | "
            f"{_pct(layer.noise_fraction)} | {_pct(layer.energy_outside_bulk)} | {fit.gof:.3f} | "
            f"{layer.break_even_rank:.1f} | {layer.edge_rank} | {_pct(layer.param_saving)} |"
        )
    if spectrum.skipped:
        lines += ["", "## Skipped layers", "", "| layer | matrix | reason |", "|---|---|---|"]
        lines += [
            f"| `{layer.name}` | {layer.shape[0]}×{layer.shape[1]} | {layer.skipped} |"
            for layer in spectrum.skipped
        ]
    return "\n".join(lines) + "\n"


def plot_layer_spectrum(layer: LayerSpectrum, path: str | os.PathLike[str]) -> Path:
    """Left: eigenvalue histogram with the fitted MP density and the edge; right: scree plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit = layer.fit
    if fit is None:
        raise ValueError(f"layer {layer.name} has no fit to plot ({layer.skipped})")
    big_n = max(fit.shape)
    eigenvalues = fit.singular_values**2 / big_n
    law = MarchenkoPastur(fit.aspect_ratio, fit.sigma2)

    fig, (hist_ax, scree_ax) = plt.subplots(1, 2, figsize=(11, 4))
    upper = max(fit.bulk_edge, law.upper_edge) * 1.6
    in_view = eigenvalues[eigenvalues <= upper]
    hist_ax.hist(
        in_view,
        bins=min(80, max(10, len(in_view) // 4)),
        range=(0, upper),
        density=True,
        color="#9ecae1",
        edgecolor="#6baed6",
        label=f"eigenvalues of WWᵀ/N ({len(in_view)} of {len(eigenvalues)} shown)",
    )
    grid = np.linspace(max(law.lower_edge, upper * 1e-4), law.upper_edge, 400)
    # The histogram is over all p eigenvalues; scale the MP density by the share in view.
    hist_ax.plot(
        grid,
        law.pdf(grid) * len(eigenvalues) / max(len(in_view), 1),
        color="#d62728",
        lw=2,
        label=f"MP fit, σ = {fit.noise_std:.3g}",
    )
    hist_ax.axvline(fit.bulk_edge, color="k", ls="--", label=f"edge λ₊ = {fit.bulk_edge:.3g}")
    hist_ax.set_xlabel("eigenvalue λ")
    hist_ax.set_ylabel("density")
    hist_ax.legend(fontsize=8)

    ranks = np.arange(1, len(fit.singular_values) + 1)
    spikes = fit.singular_values > fit.singular_edge
    scree_ax.semilogy(
        ranks[~spikes], fit.singular_values[~spikes], ".", color="#6baed6", label="bulk"
    )
    scree_ax.semilogy(
        ranks[spikes],
        fit.singular_values[spikes],
        ".",
        color="#d62728",
        label=f"spikes ({fit.n_spikes})",
    )
    scree_ax.axhline(
        fit.singular_edge, color="k", ls="--", label=f"edge σ₊ = {fit.singular_edge:.3g}"
    )
    scree_ax.set_xlabel("index")
    scree_ax.set_ylabel("singular value")
    scree_ax.legend(fontsize=8)
    fig.suptitle(
        f"{layer.name}  ({layer.shape[0]}×{layer.shape[1]}, γ = {fit.aspect_ratio:.3f}, "
        f"noise {100 * fit.noise_fraction:.0f} %, gof {fit.gof:.3f})",
        fontsize=10,
    )
    fig.tight_layout()
    try:
        return write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)


def plot_filename(layer_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer_name) + ".png"


def write_spectrum_report(
    spectrum: ModelSpectrum,
    out_dir: str | os.PathLike[str],
    plots: bool = True,
    progress: bool = False,
) -> list[Path]:
    """Write spectrum.json, spectrum.md and plots/<layer>.png into `out_dir`."""
    out = Path(out_dir)
    written = [
        spectrum.save(out / "spectrum.json"),
        write_text_atomic(out / "spectrum.md", spectrum_markdown(spectrum)),
    ]
    if plots:
        for layer in tqdm(spectrum.fitted, desc="plots", unit="plot", disable=not progress):
            written.append(plot_layer_spectrum(layer, out / "plots" / plot_filename(layer.name)))
    return written
