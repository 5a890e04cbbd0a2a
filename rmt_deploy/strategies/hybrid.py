"""Hybrid magnitude → SER (successor of arXiv 2503.01922, yspennstate/RMT_based_pruning), in
both of its variants:

- `fixed`: exact global magnitude pruning up to the hand-off sparsity 0.20 (all of it when the
  target is at most 0.20), one fine-tune, then SER to the target;
- `threshold`: magnitude cycles from 0.20 in steps of 0.05, each followed by a fine-tune on
  fresh batches, while top-1 on held-out images — the caller's validation images, or else
  images split off the training data, never trained on — stays within the drop threshold of
  the dense model's; at the first level that falls
  further, SER takes that model to the target. The threshold is the successor's 0.7 pp or
  `z` standard errors of the paired per-image difference, whichever is larger: on 1,000
  images 0.7 pp is 7 images, inside the sampling error.

SER never restores an entry an earlier cycle zeroed (it has no value to restore). The
fine-tuned weights travel in the plan, so `compress_` reproduces the hand-off state.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import DataLoader, Subset

from ..compress import compress_
from ..layers import MASKED_TYPES
from ..plan import CompressionPlan
from ..ranges import AT_LEAST_1, Choice, Range
from ..recovery import FinetuneConfig, bn_recalibrate, finetune
from .base import PlanContext, StrategyError, global_masks, mask_entry, register_strategy
from .ser import SER_DEFAULTS, SER_RULES, ser_masks


def held_out_parts(ctx: PlanContext, holdout: int, seed: int = 0):
    """(training images, held-out images). The caller's validation images when it gives
    labelled ones (the pipeline's: eval transforms, never trained on, never the test part);
    else `holdout` images split off the training data."""
    if ctx.heldout is not None and getattr(ctx.heldout, "labelled", True):
        return ctx.data, ctx.heldout
    return _split(ctx.data, holdout, seed)


def _split(data, holdout: int, seed: int = 0):
    if holdout >= len(data):
        raise StrategyError(
            f"hybrid holdout_images ({holdout}) must be smaller than the training data "
            f"({len(data)} images)"
        )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data, order[holdout:]), Subset(data, order[:holdout])


@torch.inference_mode()
def _correct(model, data) -> torch.Tensor:
    """1/0 per held-out image. Same seed each time: augmented crops are the same for every
    model, so differences are paired."""
    torch.manual_seed(1234)
    model.eval()
    hits = []
    for images, labels in DataLoader(data, batch_size=250, num_workers=0):
        hits.append((model(images).argmax(dim=1) == labels).float())
    return torch.cat(hits)


def drop_allowed(reference: torch.Tensor, trial: torch.Tensor, floor: float, z: float) -> float:
    """The drop threshold in pp: the floor, or z standard errors of the paired difference."""
    diff = 100.0 * (reference - trial)
    se = float(diff.std(unbiased=True)) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
    return max(floor, z * se)


@register_strategy(
    "hybrid",
    needs_training=True,
    rules={
        **SER_RULES,
        "variant": Choice(("threshold", "fixed")),
        "step": Range(0.001, 1.0, high_open=True),
        "handoff": Range(0.0, 1.0, low_open=True, high_open=True),
        "holdout_images": AT_LEAST_1,
    },
    variant="threshold",  # threshold | fixed
    handoff=0.20,
    step=0.05,
    drop_threshold=0.7,  # pp (the successor's)
    z=2.0,  # … or this many standard errors of the measured paired difference
    cycle_steps=100,
    cycle_lr=0.005,
    holdout_images=2000,
    **SER_DEFAULTS,
)
def hybrid(ctx: PlanContext):
    """Magnitude to the hand-off (fixed) or while held-out top-1 holds (threshold), then SER."""
    cfg = ctx.config
    variant, step = str(cfg["variant"]), float(cfg["step"])
    train, holdout = held_out_parts(ctx, int(cfg["holdout_images"]))
    names = [n for n, _ in ctx.targets]
    reference = _correct(ctx.model, holdout)
    current = copy.deepcopy(ctx.model)
    levels = [min(ctx.sparsity, float(cfg["handoff"]))]
    if variant == "threshold":
        while levels[-1] + 1e-9 < ctx.sparsity:
            levels.append(min(ctx.sparsity, round(levels[-1] + step, 6)))
    history = []
    reached = 0.0
    for cycle, level in enumerate(levels, start=1):
        trial = copy.deepcopy(current)
        weights = {n: trial.get_submodule(n).weight.detach() for n in names}
        masks = global_masks(weights, dict.fromkeys(names, 1.0), level)  # earlier zeros stay
        compress_(
            trial,
            CompressionPlan(
                "magnitude",
                {},
                [mask_entry(n, trial.get_submodule(n), masks[n], "") for n in names],
            ),
        )
        bn_recalibrate(trial, train, n_images=1000, seed=cycle)
        recipe = FinetuneConfig(
            max_steps=int(cfg["cycle_steps"]),
            lr=float(cfg["cycle_lr"]),
            batch_size=int(cfg["batch_size"]),
            seed=cycle,  # fresh batches every cycle
        )
        finetune(trial, train, recipe, progress=bool(cfg["progress"]))
        for n in names:  # fold the masks: the next level starts from plain modules
            module = trial.get_submodule(n)
            if isinstance(module, MASKED_TYPES):
                module.fold_()
        state = {k: v for k, v in trial.state_dict().items() if not k.endswith("weight_mask")}
        current.load_state_dict(state)
        reached = level
        correct = _correct(current, holdout)
        drop = float(reference.mean() - correct.mean()) * 100
        allowed = drop_allowed(reference, correct, float(cfg["drop_threshold"]), float(cfg["z"]))
        history.append(f"{level:.2f}: −{drop:.2f} pp (allowed {allowed:.2f})")
        if variant == "threshold" and drop > allowed:
            break  # hand off from this level, as the successor does
    weights = {n: current.get_submodule(n).weight.detach().clone() for n in names}
    if reached >= ctx.sparsity:
        masks = {n: (weights[n] != 0).float() for n in names}
        how = f"magnitude reached s = {ctx.sparsity}"
    else:
        hand_off = PlanContext(
            current,
            [(n, current.get_submodule(n)) for n in names],
            ctx.sparsity,
            cfg,
            train,
            _spectrum=ctx.spectrum,  # SEB's edges from the dense model, as planned
        )
        masks = ser_masks(hand_off, weights)
        how = f"magnitude to s = {reached:.2f} ({variant}), then SER to s = {ctx.sparsity}"
    targets = {f"{n}.weight" for n in names}
    extra_state = {
        k: v for k, v in current.state_dict().items() if k not in targets and not k.endswith("mask")
    }
    trail = "; ".join(history)
    return [
        mask_entry(
            n, module, masks[n], f"{how} (held-out top-1 by level: {trail})", weight=weights[n]
        )
        for n, module in ctx.targets
    ], extra_state
