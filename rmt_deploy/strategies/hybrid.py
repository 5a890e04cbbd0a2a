"""Hybrid (successor's drop-threshold variant): magnitude cycles, then SER.

Magnitude pruning grows in steps, each followed by a short fine-tune, while top-1 on a
held-out slice of the training data stays within `drop_threshold` points of the dense
model; from the last level that held, SER takes the model to the target sparsity.
The fine-tuned weights travel in the plan, so `compress_` reproduces the hand-off state.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Subset

from ..compress import compress_
from ..evaluate import evaluate
from ..layers import MASKED_TYPES
from ..plan import CompressionPlan
from ..recovery import FinetuneConfig, bn_recalibrate, finetune
from .base import PlanContext, StrategyError, global_masks, mask_entry, register_strategy
from .ser import SER_DEFAULTS, ser_masks


def _split(data, holdout: int, seed: int = 0):
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data, order[holdout:]), Subset(data, order[:holdout])


@register_strategy(
    "hybrid",
    needs_data=True,
    drop_threshold=0.7,
    step=0.1,
    cycle_steps=100,
    cycle_lr=0.005,
    holdout_images=1000,
    **SER_DEFAULTS,
)
def hybrid(ctx: PlanContext):
    """Magnitude cycles while held-out top-1 stays within the drop threshold, then SER."""
    cfg = ctx.config
    if not 1e-3 <= float(cfg["step"]) < 1:
        raise StrategyError(f"hybrid step must lie in [0.001, 1), got {cfg['step']}")
    train, holdout = _split(ctx.data, int(cfg["holdout_images"]))

    def holdout_top1(model) -> float:
        # Same seed each time: when the data is augmented, every level sees the same crops
        # as the reference, so the comparison with the drop threshold is paired.
        torch.manual_seed(1234)
        return evaluate(model, holdout, progress=False).top1

    reference = holdout_top1(ctx.model)
    current = copy.deepcopy(ctx.model)
    names = [n for n, _ in ctx.targets]
    level, held_level = 0.0, 0.0
    held_state = copy.deepcopy(current.state_dict())
    history = []
    while level + 1e-9 < ctx.sparsity:
        level = min(ctx.sparsity, round(level + float(cfg["step"]), 6))
        trial = copy.deepcopy(ctx.model)
        trial.load_state_dict(held_state)
        weights = {n: trial.get_submodule(n).weight.detach() for n in names}
        masks = global_masks(weights, dict.fromkeys(names, 1.0), level)
        step_plan = CompressionPlan(
            "magnitude", {}, [mask_entry(n, trial.get_submodule(n), masks[n], "") for n in names]
        )
        compress_(trial, step_plan)
        bn_recalibrate(trial, train, n_images=1000)
        finetune(
            trial,
            train,
            FinetuneConfig(
                max_steps=int(cfg["cycle_steps"]),
                lr=float(cfg["cycle_lr"]),
                batch_size=int(cfg["batch_size"]),
            ),
            progress=bool(cfg["progress"]),
        )
        top1 = holdout_top1(trial)
        history.append((level, top1))
        if reference - top1 > float(cfg["drop_threshold"]):
            break
        held_level = level
        for n in names:  # fold masks so the next level starts from dense modules again
            module = trial.get_submodule(n)
            if isinstance(module, MASKED_TYPES):
                module.fold_()
        held_state = {k: v for k, v in trial.state_dict().items() if not k.endswith("weight_mask")}
    current.load_state_dict(held_state)
    weights = {n: current.get_submodule(n).weight.detach().clone() for n in names}
    hand_off = PlanContext(
        current, [(n, current.get_submodule(n)) for n in names], ctx.sparsity, cfg, train
    )
    if held_level >= ctx.sparsity:
        masks = {n: (weights[n] != 0).float() for n in names}
        how = f"magnitude cycles reached s = {ctx.sparsity} within the drop threshold"
    else:
        masks = ser_masks(hand_off, weights)
        how = f"magnitude cycles to s = {held_level:.2f}, then SER to s = {ctx.sparsity}"
    trail = ", ".join(f"{lv:.2f}:{t:.1f}" for lv, t in history)
    targets = {f"{n}.weight" for n in names}
    extra_state = {k: v for k, v in held_state.items() if k not in targets}
    return [
        mask_entry(
            n,
            module,
            masks[n],
            f"{how} (held-out top-1 by level {trail}; dense {reference:.1f})",
            weight=weights[n],
        )
        for n, module in ctx.targets
    ], extra_state
