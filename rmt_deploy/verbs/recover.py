"""The recover verb: BatchNorm re-estimation, then fine-tuning by the one recovery recipe
(`recovery.recipe_for`: AdamW for LayerNorm models and the seed's regularized recovery, SGD
for CNNs), on the device the caller names."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._lazy import made


@dataclass
class RecoveryOptions:
    """How a compressed model recovers; None takes the recipe's default for the optimizer."""

    steps: int = 0  # fine-tuning steps (0: BatchNorm re-estimation only)
    bn_recal_images: int = 0
    batch_size: int = 128
    optimizer: str | None = None  # default: AdamW for LayerNorm models, SGD otherwise
    lr: float | None = None
    distill_alpha: float = 0.0
    seed_regularizers: bool = False
    group_lasso: float | None = None
    l1: float | None = None
    l2: float | None = None
    seed: int = 0


def recovery_recipe(model: nn.Module, options: RecoveryOptions):
    """The FinetuneConfig `model` is fine-tuned with under `options`."""
    from .. import recovery

    return recovery.recipe_for(
        model,
        options.steps,
        batch_size=options.batch_size,
        optimizer=options.optimizer,
        lr=options.lr,
        distill_alpha=options.distill_alpha,
        seed_regularizers=options.seed_regularizers,
        group_lasso=options.group_lasso,
        l1=options.l1,
        l2=options.l2,
        seed=options.seed,
    )


def recover_(
    model: nn.Module,
    options: RecoveryOptions,
    *,
    calib=None,
    train=None,
    teacher: nn.Module | None = None,
    spectrum=None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Recover `model` in place on `device`: re-estimate its BatchNorm statistics on `calib`
    (when it has BatchNorm and `calib` is given), then fine-tune it on `train` for
    `options.steps` steps, distilled from `teacher`, with the group-lasso scales of `spectrum`
    (the MP analysis of the model before compression) where the recipe uses them. `calib`,
    `train` and `spectrum` may be callables: only what is used is made. The model (and the
    teacher) end on the CPU, where checkpoints and exports are written from. Returns what was
    done, for the records."""
    try:
        return _recover_on_device(model, options, calib, train, teacher, spectrum, device, progress)
    finally:
        model.cpu()
        if teacher is not None:
            teacher.cpu()


def _recover_on_device(model, options, calib, train, teacher, spectrum, device, progress):
    from .. import recovery

    info: dict = {}
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and options.bn_recal_images > 0 and calib is not None:
        info["bn_recal_images"] = recovery.bn_recalibrate(
            model, made(calib), n_images=options.bn_recal_images, progress=progress, device=device
        )
    if options.steps <= 0:
        return info
    recipe = recovery_recipe(model, options)
    scales = None
    if recipe.group_lasso or recipe.scale_gradients:
        scales = recovery.lasso_scales(made(spectrum))
    result = recovery.finetune(
        model,
        made(train),
        recipe,
        teacher=teacher,
        lasso_scale=scales,
        progress=progress,
        device=device,
    )
    return info | _finetune_record(recipe, result)


def _finetune_record(recipe, result) -> dict:
    return {
        "optimizer": recipe.optimizer,
        "lr": recipe.lr,
        "regularizers": {
            "group_lasso": recipe.group_lasso,
            "l1": recipe.l1,
            "l2": recipe.l2,
            "scale_gradients": recipe.scale_gradients,
        },
        "steps": result.steps,
        "images": result.images,
        "seconds": round(result.seconds, 1),
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
    }
