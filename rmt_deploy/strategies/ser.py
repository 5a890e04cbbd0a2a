"""Sparsify–estimate–restore (SER, successor project; its core script is not public).

1. prune ρ·s globally with SEB scores (ρ slightly above 1);
2. estimate: train only the pruned "reservoir" entries for a short phase (AdamW, the kept
   weights, biases and norms frozen, BatchNorm statistics fixed) on a copy of the model;
3. restore the reservoir entries with the largest |Δ_ij|·w_ℓ until sparsity is exactly s.
Restored entries take back their dense values: Δ measures how strongly the loss pulls an
entry back, not a better value for it. The mask is then frozen; recovery fine-tunes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..progress import tqdm
from ..ranges import AT_LEAST_1
from .base import PlanContext, global_masks, mask_entry, register_strategy
from .seb import seb_scales


def ser_masks(ctx: PlanContext, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cfg = ctx.config
    rho = float(cfg["rho"])
    over = min(0.99, rho * ctx.sparsity)
    scales_over = seb_scales(ctx, over)
    masks = global_masks(weights, scales_over, over)

    # Estimate on a copy: only pruned entries can move.
    shadow = copy.deepcopy(ctx.model).eval()
    for p in shadow.parameters():
        p.requires_grad_(False)
    reservoir, hooks = [], []
    for name, _ in ctx.targets:
        weight = shadow.get_submodule(name).weight
        with torch.no_grad():
            weight.copy_(weights[name] * masks[name])
        weight.requires_grad_(True)
        free = 1.0 - masks[name]
        hooks.append(weight.register_hook(lambda g, free=free: g * free))
        reservoir.append(weight)
    opt = torch.optim.AdamW(reservoir, lr=float(cfg["reservoir_lr"]), weight_decay=0.0)
    steps = int(cfg["reservoir_steps"])
    loader = ctx.loader(int(cfg["batch_size"]), seed=1)
    done = 0
    with tqdm(
        total=steps, desc="ser-estimate", unit="step", disable=not cfg.get("progress")
    ) as bar:
        while done < steps:
            for images, labels in loader:
                loss = F.cross_entropy(shadow(images), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                bar.update(1)
                if done >= steps:
                    break
    for h in hooks:
        h.remove()

    # Restore the reservoir entries the loss pulled hardest, down to exactly s.
    scales = seb_scales(ctx, ctx.sparsity)
    total = sum(w.numel() for w in weights.values())
    n_restore = int(round(over * total)) - int(round(ctx.sparsity * total))
    n_restore = min(
        n_restore, int(sum(((1 - masks[n]) * (weights[n] != 0)).sum() for n, _ in ctx.targets))
    )
    scores = torch.cat(
        [
            ((shadow.get_submodule(n).weight.detach() * (1 - masks[n])).abs() * scales[n]).flatten()
            for n, _ in ctx.targets
        ]
    )
    # Only what the over-pruning removed can come back: an entry already zero in `weights`
    # (zeroed by an earlier cycle) has no value to restore.
    candidates = torch.cat(
        [((1 - masks[n]) * (weights[n] != 0)).flatten() for n, _ in ctx.targets]
    ).bool()
    scores[~candidates] = -1.0
    restore = torch.zeros_like(scores)
    if n_restore > 0:
        restore[scores.topk(n_restore).indices] = 1.0
    out, start = {}, 0
    for name, _ in ctx.targets:
        n = weights[name].numel()
        out[name] = torch.clamp(
            masks[name] + restore[start : start + n].reshape(masks[name].shape), max=1.0
        )
        start += n
    return out


# Successor's runner: ρ slightly above 1; at least 128 reservoir batches; AdamW.
SER_RULES = {"batch_size": AT_LEAST_1}
SER_DEFAULTS = {
    "rho": 1.05,
    "reservoir_steps": 128,
    "reservoir_lr": 1e-3,
    "batch_size": 64,
    "progress": False,
}


@register_strategy("ser", needs_training=True, rules=SER_RULES, **SER_DEFAULTS)
def ser(ctx: PlanContext):
    """Sparsify–estimate–restore: over-prune with SEB, train the reservoir, restore the top."""
    weights = {name: module.weight.detach().clone() for name, module in ctx.targets}
    masks = ser_masks(ctx, weights)
    return [
        mask_entry(
            name,
            module,
            masks[name],
            f"SER: SEB prune to ρ·s = {ctx.config['rho'] * ctx.sparsity:.3f}, "
            f"restore by |Δ|·w to s = {ctx.sparsity}",
        )
        for name, module in ctx.targets
    ]
