"""`rmt-deploy compress`: plan a strategy, apply it, recover, save — the pipeline's plan and
compress stages in one command, through the same verbs (`rmt_deploy.verbs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RmtDeployError
from .args import (
    add_model_args,
    add_preprocess_args,
    check_device,
    device,
    int_at_least,
    number,
    settings,
)
from .inputs import data_config, labelled_folder, load, resolve_model_arg

_REGULARIZERS = ("group_lasso", "l1", "l2")


def add_parser(sub) -> None:
    compress = sub.add_parser(
        "compress", help="plan and apply a compression strategy, optionally recover, save"
    )
    add_model_args(compress)
    add_preprocess_args(compress)
    compress.add_argument(
        "--strategy",
        required=True,
        help="magnitude | classic_rmt | seb | ser | hybrid | lowrank | nm24",
    )
    compress.add_argument(
        "--sparsity",
        type=number("--sparsity", 0.0, 1.0, high_open=True),
        default=0.5,
        help="share of conv/linear weights (lowrank: parameters) to remove",
    )
    compress.add_argument(
        "--data", type=Path, help="training image folder (needed by ser, hybrid, lowrank, recovery)"
    )
    compress.add_argument("--out", type=Path, required=True, help="output directory")
    compress.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy setting, e.g. --set theta=0.2 (repeatable)",
    )
    compress.add_argument(
        "--device",
        type=device,
        default="cpu",
        help="cpu (default) or cuda[:N]: where latency is measured and recovery runs; picks "
        "the torchrun backend (nccl for cuda, gloo for cpu)",
    )
    _add_recovery_args(compress)
    compress.set_defaults(func=command)


def _add_recovery_args(compress: argparse.ArgumentParser) -> None:
    compress.add_argument(
        "--bn-recal-images",
        type=int_at_least(0, "--bn-recal-images"),
        default=2000,
        help="re-estimate BatchNorm statistics on this many images (with --data)",
    )
    compress.add_argument(
        "--finetune-steps",
        type=int_at_least(0, "--finetune-steps"),
        default=0,
        help="recovery fine-tune steps after compression (with --data)",
    )
    compress.add_argument(
        "--lr",
        type=number("--lr", 0.0),
        default=None,
        help="fine-tune learning rate (default 0.01 with SGD, 1e-4 with AdamW: LayerNorm "
        "models and the seed's regularized recovery)",
    )
    reg = compress.add_argument_group("regularized recovery (the seed's, arXiv 2503.01922)")
    reg.add_argument(
        "--seed-regularizers",
        action="store_true",
        help="group lasso 1e-6·s_ℓ (s_ℓ from the MP fit), L1 5e-7, L2 2e-7, gradients × s_ℓ",
    )
    for flag, what in (
        ("--group-lasso", "group-lasso weight (× s_ℓ per layer)"),
        ("--l1", "L1 weight on every Linear/Conv weight"),
        ("--l2", "L2 weight on every Linear/Conv weight"),
    ):
        reg.add_argument(flag, type=number(flag, 0.0), help=what)
    compress.add_argument(
        "--distill-alpha",
        type=number("--distill-alpha", 0.0, 1.0),
        default=0.0,
        help="weight of distillation from the uncompressed model (0 = off)",
    )


def recovery_options(args: argparse.Namespace):
    """The recovery flags as the verbs take them (the pipeline's `finetune` section)."""
    from ..verbs import RecoveryOptions

    return RecoveryOptions(
        steps=args.finetune_steps,
        bn_recal_images=args.bn_recal_images,
        lr=args.lr,
        distill_alpha=args.distill_alpha,
        seed_regularizers=args.seed_regularizers,
        **{name: getattr(args, name) for name in _REGULARIZERS},
    )


def _check(args: argparse.Namespace) -> None:
    """What the flags cannot do together, said before minutes of planning."""
    if args.finetune_steps > 0 and args.data is None:
        raise RmtDeployError("--finetune-steps needs --data (a training image folder)")
    if args.finetune_steps == 0 and (
        args.seed_regularizers or any(getattr(args, f) for f in _REGULARIZERS)
    ):
        raise RmtDeployError("the regularizers act during fine-tuning: add --finetune-steps N")
    check_device(args.device)


def command(args: argparse.Namespace) -> int:
    from ..data import eval_transform, train_transform
    from ..distributed import init_distributed, rank
    from ..paths import ensure_output_dir
    from ..strategies import Target
    from ..verbs import PlanRequest, compress_and_recover, plan_model, save_compressed

    resolve_model_arg(args)
    _check(args)
    request = PlanRequest(
        args.strategy,
        args.sparsity,
        name=args.model,
        settings=settings(args.set),
        target=Target(device=args.device),
    )
    out = ensure_output_dir(args.out)
    init_distributed(args.device)
    dense = load(args)
    config = data_config(args, dense)
    calib = train = None
    if args.data is not None:
        calib = labelled_folder(args, dense, eval_transform(config))
        train = labelled_folder(args, dense, train_transform(config))
    plan = plan_model(dense, request, train=train, calib=calib)
    model, _ = compress_and_recover(
        dense,
        plan,
        recovery_options(args),
        calib=calib,
        train=train,
        device=args.device,
        progress=not args.quiet,
    )
    if rank() != 0:  # under torchrun every rank trains; one writes
        return 0
    plan.save(out / "plan.json")
    save_compressed(model, plan, args.model, out / "model.safetensors")
    _say_done(args, plan, out)
    return 0


def _say_done(args: argparse.Namespace, plan, out: Path) -> None:
    s = plan.summary()
    print(
        f"{args.model} {args.strategy} s={args.sparsity}: {s['params_before']:,} → "
        f"{s['params_after']:,} weights of the planned layers "
        f"({100 * s['sparsity']:.1f} % removed); {plan.coverage_line()}"
    )
    print(
        f"wrote {out / 'model.safetensors'} and {out / 'plan.json'}; evaluate with: "
        f"rmt-deploy eval {out} --data DIR"
    )
