"""RMT scores of layers, shared by the strategies and the planner: SEB's spectral layer weights
(successor of arXiv 2503.01922; yspennstate/RMT_based_pruning) from each layer's MP edge."""

from __future__ import annotations

import numpy as np


def seb_regime(sparsity: float, kind: str) -> tuple[float, float]:
    """(β, s_d) for a layer kind ("attn", "mlp" or "other") at sparsity s (successor's table).

    Below 0.30 SEB is plain magnitude (β = 0). Above 0.55 the successor separates attention
    (β = 1.0) from MLP (β = 2.0); other layers (CNNs) use β = 1.0 there.
    """
    if sparsity < 0.30:
        return 0.0, 1.0
    if sparsity <= 0.40:
        return 1.0, 0.5
    if sparsity <= 0.55:
        return 1.25, 0.70
    return (2.0 if kind == "mlp" else 1.0), 0.85


def layer_kind(name: str) -> str:
    if "attn" in name:
        return "attn"
    if "mlp" in name or ".fc" in name:
        return "mlp"
    return "other"


def seb_weights(spectrum, names: list[str], sparsity: float) -> dict[str, float]:
    """w_ℓ = max(0.1, 1 + β·[1 − s/s_d]₊·z_ℓ) for `names`, z_ℓ the z-score of the layer's MP edge
    σ₊ among the fitted layers; layers without an MP fit get z = 0 (w = 1)."""
    edges = {
        layer.name: layer.fit.singular_edge for layer in spectrum.layers if layer.fit is not None
    }
    values = np.array(list(edges.values()))
    mean, std = (values.mean(), values.std()) if len(values) > 1 else (0.0, 0.0)
    weights = {}
    for name in names:
        z = (edges[name] - mean) / std if name in edges and std > 0 else 0.0
        beta, s_d = seb_regime(sparsity, layer_kind(name))
        weights[name] = max(0.1, 1 + beta * max(0.0, 1 - sparsity / s_d) * z)
    return weights
