"""Recovery after compression: BatchNorm recalibration and fine-tuning with frozen masks.

Masks stay frozen because the masked layers multiply by their mask in every forward pass.
`finetune` runs as is on one process and under `torchrun` (DDP, gloo or nccl) when a process
group is initialized: each rank sees its shard of the data, gradients are averaged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .data import take_images
from .devices import amp_dtype, resolve_device
from .errors import DataError, RmtDeployError
from .layers import MASKED_TYPES
from .progress import tqdm

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def bn_recalibrate(
    model: nn.Module,
    data: Dataset,
    n_images: int = 2000,
    batch_size: int = 200,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> int:
    """Re-estimate BatchNorm running statistics on `n_images` training images (on `device`,
    default: where the model is).

    One-shot pruning shifts every activation's statistics; re-estimating them (NNCF's "batch
    norm adaptation") is the cheapest and largest recovery for BN networks. Returns the number
    of images used (0 when the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    if not bns:
        return 0
    target = resolve_device(device, model)
    model.to(target)
    if len(data) == 0:
        raise DataError("BatchNorm recalibration needs training images; the dataset is empty")
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches seen
        m.train()
    loader = DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        num_workers=1,
        generator=torch.Generator().manual_seed(seed),
    )
    seen = 0
    try:
        for images in tqdm(
            take_images(loader, n_images), desc="bn-recal", unit="batch", disable=not progress
        ):
            model(images.to(target, non_blocking=True))
            seen += len(images)
    finally:
        for m, (momentum, training) in zip(bns, saved, strict=True):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return seen


@dataclass
class FinetuneConfig:
    """Recipe after the successor's magnitude runs: SGD momentum 0.9, label smoothing 0.1,
    gradient clip 1, linear warm-up then cosine decay to 1 % of the peak rate."""

    epochs: float = 1.0  # fractions allowed: 0.2 = a fifth of the data
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" | "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-6
    label_smoothing: float = 0.1
    clip: float = 1.0
    warmup_steps: int = 500  # capped at 10 % of the run
    distill_alpha: float = 0.0  # weight of the KL term to the teacher's logits
    temperature: float = 4.0
    # The seed's regularizers (arXiv 2503.01922, its src/training.py): group lasso
    # group_lasso·s_ℓ·‖θ‖₂ per weight tensor with s_ℓ = 1/(1 + 1e4·L∞_ℓ/cycle) from the MP fit
    # (`lasso_scales`), L1 and L2 on every weight, and gradients scaled by s_ℓ.
    group_lasso: float = 0.0  # seed: 1e-6
    l1: float = 0.0  # seed: 5e-7
    l2: float = 0.0  # seed: 2e-7
    scale_gradients: bool = False  # seed: True (multiply each layer's gradients by s_ℓ)
    amp: bool = True  # autocast on CUDA (bf16 or fp16); ignored on the CPU
    workers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise RmtDeployError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.epochs <= 0 and not self.max_steps:
            raise RmtDeployError("fine-tuning needs epochs > 0 or max_steps")
        for name in ("lr", "group_lasso", "l1", "l2", "weight_decay", "momentum", "clip"):
            value = getattr(self, name)
            if not (0 <= value < float("inf")):
                raise RmtDeployError(f"{name} must be a finite number ≥ 0, got {value}")
        if not 0 <= self.distill_alpha <= 1:
            raise RmtDeployError(f"distill_alpha must lie in [0, 1], got {self.distill_alpha}")
        if self.max_steps is not None and self.max_steps < 0:
            raise RmtDeployError(f"max_steps must be ≥ 0, got {self.max_steps}")

    @classmethod
    def seed_regularizers(cls, **overrides) -> FinetuneConfig:
        """The seed's regularized recovery: group lasso 1e-6·s_ℓ, L1 5e-7, L2 2e-7, gradients
        scaled by s_ℓ; AdamW (pass lasso_scale=lasso_scales(spectrum) to `finetune`)."""
        return cls(
            **{
                "optimizer": "adamw",
                "group_lasso": SEED_GROUP_LASSO,
                "l1": SEED_L1,
                "l2": SEED_L2,
                "scale_gradients": True,
                **overrides,
            }
        )


SEED_GROUP_LASSO, SEED_L1, SEED_L2 = 1e-6, 5e-7, 2e-7


def default_lr(optimizer: str) -> float:
    """The recovery learning rate when none is given: 0.01 for SGD, 1e-4 for AdamW (a warm
    restart of a trained model at AdamW's usual 1e-3 undoes its training)."""
    return 1e-4 if optimizer == "adamw" else 0.01


def recipe_for(
    model: nn.Module,
    steps: int,
    *,
    batch_size: int = 128,
    optimizer: str | None = None,
    lr: float | None = None,
    distill_alpha: float = 0.0,
    seed_regularizers: bool = False,
    group_lasso: float | None = None,
    l1: float | None = None,
    l2: float | None = None,
    seed: int = 0,
) -> FinetuneConfig:
    """The recovery recipe for `model`, the one the CLI and the pipeline both use: AdamW
    (decay 0.01) for LayerNorm models and for the seed's regularized recovery, SGD (decay
    1e-6) for the others; each unset value takes its default for that optimizer."""
    transformer = any(isinstance(m, nn.LayerNorm) for m in model.modules())
    # The seed's recovery is AdamW: under SGD its gradient scaling by s_ℓ (≈ 1e-3) would cut
    # the pruned layers' learning rate a thousandfold, where Adam's update ignores the scale.
    optimizer = optimizer or ("adamw" if transformer or seed_regularizers else "sgd")

    def pick(value: float | None, seed_value: float) -> float:
        return value if value is not None else (seed_value if seed_regularizers else 0.0)

    return FinetuneConfig(
        max_steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr if lr is not None else default_lr(optimizer),
        weight_decay=0.01 if optimizer == "adamw" else 1e-6,
        distill_alpha=distill_alpha,
        group_lasso=pick(group_lasso, SEED_GROUP_LASSO),
        l1=pick(l1, SEED_L1),
        l2=pick(l2, SEED_L2),
        scale_gradients=seed_regularizers,
        seed=seed,
    )


@dataclass
class FinetuneResult:
    steps: int
    images: int
    seconds: float
    first_loss: float
    last_loss: float
    losses: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def lasso_scales(spectrum, cycle: int = 1) -> dict[str, float]:
    """The seed's group-lasso strength per layer, s_ℓ = 1/(1 + 10⁴·L∞_ℓ/cycle) (its
    `calculate_lasso_strength`): layers whose spectrum fits the MP law well (small L∞ gap,
    mostly noise) are pushed hardest toward zero, and every layer more in later cycles."""
    if cycle < 1:
        raise RmtDeployError(f"the pruning cycle counts from 1, got {cycle}")
    return {
        layer.name: 1.0 / (1.0 + 1e4 * layer.fit.gof / cycle)
        for layer in spectrum.layers
        if layer.fit is not None
    }


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def scale_gradients_(model: nn.Module, lasso_scale: dict[str, float]) -> None:
    """Multiply each layer's gradients by its s_ℓ (the seed scales them the same way)."""
    for name, module in model.named_modules():
        if name in lasso_scale:
            for param in module.parameters(recurse=False):
                if param.grad is not None:
                    param.grad.mul_(lasso_scale[name])


def _regularizer(model: nn.Module, cfg: FinetuneConfig, lasso_scale: dict[str, float]):
    terms = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        w = module.masked_weight() if isinstance(module, MASKED_TYPES) else module.weight
        if cfg.group_lasso:
            terms.append(cfg.group_lasso * lasso_scale.get(name, 1.0) * w.norm())
        if cfg.l1:
            terms.append(cfg.l1 * w.abs().sum())
        if cfg.l2:
            terms.append(cfg.l2 * w.pow(2).sum())
    return sum(terms) if terms else None


def finetune(
    model: nn.Module,
    train_data: Dataset,
    config: FinetuneConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    lasso_scale: dict[str, float] | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> FinetuneResult:
    """Train `model` (masks frozen) on `train_data`; distill from `teacher` if given.

    On `device` (default: where the model is): the model, the teacher and every batch are
    moved there; on CUDA the forward runs under autocast (bf16 where the GPU has it, else fp16
    with a gradient scaler)."""
    run = _setup(
        model, train_data, config or FinetuneConfig(), teacher, lasso_scale, parameters, device
    )
    if teacher is not None:
        teacher.eval()
    model.train()
    start = time.perf_counter()
    show = progress and (not run.distributed or dist.get_rank() == 0)
    done = _train(run, show)
    model.eval()
    return FinetuneResult(
        done.steps,
        done.images,
        time.perf_counter() - start,
        done.losses[0],
        done.losses[-1],
        done.losses,
    )


@dataclass
class _Run:
    """Everything the training loop and each step need, built once by `_setup`, so that the
    loop's helpers take one argument instead of a dozen."""

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper under torchrun
    teacher: nn.Module | None
    cfg: FinetuneConfig
    lasso_scale: dict[str, float]
    target: torch.device
    autocast: torch.dtype | None  # None: full precision
    scaler: torch.amp.GradScaler | None  # fp16 only: keeps small gradients from underflowing
    loader: DataLoader
    sampler: DistributedSampler | None
    distributed: bool
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    total: int  # optimizer steps in all
    warmup: int


@dataclass
class _Progress:
    """What the loop has done so far: steps, images seen and each step's loss."""

    steps: int = 0
    images: int = 0
    losses: list[float] = field(default_factory=list)


def _setup(
    model: nn.Module,
    train_data: Dataset,
    cfg: FinetuneConfig,
    teacher: nn.Module | None,
    lasso_scale: dict[str, float] | None,
    parameters: Iterable[nn.Parameter] | None,
    device: str | torch.device | None,
) -> _Run:
    """Models on the device, precision, data, schedule and optimizer; the global seed is set
    just before the loader is made, so that runs with one seed see the same batches."""
    target = resolve_device(device, model)
    model.to(target)
    if teacher is not None:
        teacher.to(target)
    autocast = amp_dtype(target) if cfg.amp else None
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None
    if len(train_data) == 0:
        raise DataError("fine-tuning needs training images; the dataset is empty")
    distributed = dist.is_available() and dist.is_initialized()
    torch.manual_seed(cfg.seed)
    loader, sampler = _loader(train_data, cfg, distributed)
    total = cfg.max_steps or max(1, round(cfg.epochs * len(loader)))
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    params = [p for p in (parameters or model.parameters()) if p.requires_grad]
    return _Run(
        model=model,
        net=net,
        teacher=teacher,
        cfg=cfg,
        lasso_scale=lasso_scale or {},
        target=target,
        autocast=autocast,
        scaler=scaler,
        loader=loader,
        sampler=sampler,
        distributed=distributed,
        params=params,
        opt=_optimizer(params, cfg),
        total=total,
        warmup=min(cfg.warmup_steps, max(1, total // 10)),
    )


def _loader(
    train_data: Dataset, cfg: FinetuneConfig, distributed: bool
) -> tuple[DataLoader, DistributedSampler | None]:
    """Seeded, shuffled batches of one size (the ragged last one dropped), sharded across
    ranks under torchrun; refused when the data does not fill one batch."""
    sampler = DistributedSampler(train_data, shuffle=True, seed=cfg.seed) if distributed else None
    loader = DataLoader(
        train_data,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    if len(loader) == 0:
        raise DataError(f"fewer training images ({len(train_data)}) than one batch")
    return loader, sampler


def _optimizer(params: list[nn.Parameter], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW, as the recipe says (its learning rate is set each step)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _train(run: _Run, show: bool) -> _Progress:
    """Epochs over the loader until `run.total` steps (a fraction of an epoch stops early);
    each epoch reseeds the distributed sampler so that ranks reshuffle in step."""
    done = _Progress()
    bar = tqdm(total=run.total, desc="finetune", unit="step", disable=not show)
    epoch = 0
    while done.steps < run.total:
        if run.sampler is not None:
            run.sampler.set_epoch(epoch)
        for inputs, labels in run.loader:
            loss = _train_step(run, done.steps, inputs, labels)
            done.losses.append(loss)
            done.images += len(labels)
            done.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if done.steps >= run.total:
                break
        epoch += 1
    bar.close()
    return done


def _train_step(run: _Run, step: int, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """One optimizer step at the schedule's rate for `step`; returns the step's loss."""
    for group in run.opt.param_groups:
        group["lr"] = _lr_at(step, run.total, run.warmup, run.cfg.lr)
    inputs = inputs.to(run.target, non_blocking=True)
    labels = labels.to(run.target, non_blocking=True)
    loss = _loss(run, inputs, labels)
    reg = _regularizer(run.model, run.cfg, run.lasso_scale)
    if reg is not None:
        loss = loss + reg
    _backward_and_step(run, loss)
    return loss.item()


def _loss(run: _Run, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Label-smoothed cross-entropy under autocast, blended with the distillation term when a
    teacher is given (the losses are taken on float32 logits, whatever autocast's dtype)."""
    cfg = run.cfg
    distil = run.teacher is not None and cfg.distill_alpha > 0
    known = labels >= 0  # unlabelled images (−1) learn from the teacher alone
    if not distil and not bool(known.all()):
        raise DataError(
            "fine-tuning images without labels need distillation from the dense model: "
            "set distill_alpha > 0 (finetune.distill_alpha), or use a labelled folder"
        )
    with torch.autocast(run.target.type, dtype=run.autocast, enabled=run.autocast is not None):
        logits = run.net(inputs)
        loss = None
        if bool(known.any()):
            loss = F.cross_entropy(
                logits[known].float(), labels[known], label_smoothing=cfg.label_smoothing
            )
        if distil:
            with torch.no_grad():
                soft = run.teacher(inputs)
            kl = _distill_kl(logits, soft, cfg.temperature)
            loss = kl if loss is None else (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kl
    return loss


def _distill_kl(logits: torch.Tensor, soft: torch.Tensor, t: float) -> torch.Tensor:
    """KL to the teacher's softened outputs at temperature `t`, times t² so that its gradients
    keep the cross-entropy's scale (Hinton et al.)."""
    return (
        F.kl_div(
            F.log_softmax(logits.float() / t, 1),
            F.log_softmax(soft.float() / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def _backward_and_step(run: _Run, loss: torch.Tensor) -> None:
    """Backward (scaled under fp16), the seed's per-layer gradient scaling, clipping on the
    true gradients (unscaled first), then the optimizer step."""
    cfg, scaler, opt = run.cfg, run.scaler, run.opt
    opt.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(opt)
    if cfg.scale_gradients and run.lasso_scale:
        scale_gradients_(run.model, run.lasso_scale)
    if cfg.clip:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
