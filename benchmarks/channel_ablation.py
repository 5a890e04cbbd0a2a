"""What RMT adds to channel pruning: ResNet-56 on CIFAR-10, widths four ways at one latency.

1. One per-group table (`rmt_deploy.planner.channels`): every width (multiples of 8) of every
   channel group, its damage on calibration images and its latency inside its block on the
   deployment (default OpenVINO INT8), measured once.
2. Widths: `rmt` (the shipped default: the DP over options no narrower than the group's MP
   spike count, damage = share of channel importance removed), `rmt_output` (the same with
   damage = one-shot relative output error on the calibration images), `no_floor` (`rmt` over
   every option) — all at the same predicted speedup — and, set by bisection so that their
   measured latency is within 5 % of `rmt`'s, `uniform` (every group at one share of its
   channels) and `tp_global` (Torch-Pruning's MetaPruner, global group magnitude ranking,
   round_to 8).
3. The same recovery for each and for the dense model (the reference): SGD, distillation from
   the dense model's logits, on CIFAR-10 train images the calibration set does not hold. The
   dense model recovers first (from itself: it adapts to the JPEG images, +5 pp); the pruned
   models then distil from that recovered dense model.
4. Every model in INT8 by NNCF and by ONNX Runtime's QDQ recipe in OpenVINO (the deployment
   the widths were timed on), the dense model also in every dense engine a user would pick;
   latency at batch 8 timed interleaved over `--repeats` rounds (median, range); top-1 on the
   CIFAR-10 test images with paired bootstrap intervals against `rmt`.
Prints and saves `results/channel_ablation_resnet56[_tag].{json,md}`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, log, paired, result_stem  # noqa: E402

from rmt_deploy.analysis import analyze  # noqa: E402
from rmt_deploy.channels import channel_graph, prune_channels_  # noqa: E402
from rmt_deploy.data import eval_transform, load_image_dataset, train_transform  # noqa: E402
from rmt_deploy.deploy import resolve  # noqa: E402
from rmt_deploy.exporters import export  # noqa: E402
from rmt_deploy.exporters.nncf_int8 import nncf_int8  # noqa: E402
from rmt_deploy.exporters.quantize import quantize_int8, to_batches  # noqa: E402
from rmt_deploy.models import DataConfig, load_model  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.planner.channels import (  # noqa: E402
    ChannelSearchConfig,
    MeasureContext,
    choose_dp,
    group_options,
    importance_damage,
    measure_table,
)
from rmt_deploy.planner.timing import spread, time_interleaved  # noqa: E402
from rmt_deploy.recovery import FinetuneConfig, finetune  # noqa: E402
from rmt_deploy.runtimes import prepare  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speedup", type=float, default=1.6, help="predicted × over dense")
    p.add_argument("--deployment", default="openvino-int8")
    p.add_argument("--calib", type=int, default=512)
    p.add_argument("--steps", type=int, default=250, help="recovery steps per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--test", type=int, default=None, help="test images (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--table-rounds", type=int, default=3)
    p.add_argument("--assets", default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--max-groups", type=int, default=None, help="smoke tests: fewer groups")
    return p.parse_args()



def data(args):
    model = load_model("cifar_resnet56", assets=args.assets)
    config = DataConfig.from_model(model)
    root = assets_dir(args.assets) / "cifar10"
    train = load_image_dataset(root / "train", eval_transform(config))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    calib = torch.stack([train[i][0] for i in sorted(order[: args.calib])])
    rest = sorted(order[args.calib :])
    augmented = load_image_dataset(root / "train", train_transform(config))
    recovery = torch.utils.data.Subset(augmented, rest)
    test = load_image_dataset(root / "test", eval_transform(config), limit=args.test)
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = np.array([test[i][1] for i in range(len(test))])
    return model, calib, recovery, images, labels


def table(model, calib, args):
    """The per-group table on the deployment, every multiple of 8 (no floor), measured once."""
    deployment = resolve([args.deployment])[0][0]
    work = copy.deepcopy(model).eval()
    with torch.enable_grad():
        cg = channel_graph(work, calib[:1])
    config = ChannelSearchConfig(floor="none", rounds=args.table_rounds)
    options = group_options(cg, {}, config)
    options = dict(list(options.items())[: args.max_groups])
    spikes = {layer.name: layer.edge_rank for layer in analyze(model).layers}
    floors = group_options(cg, spikes, ChannelSearchConfig())
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        reference = work(calib)
        ctx = MeasureContext(
            calib, reference, calib[:1], deployment, Path(folder), 8, args.table_rounds, 10,
            torch.get_num_threads(), {},
        )  # fmt: skip
        entries, scores = measure_table(work, cg, options, ctx, "magnitude", progress=True)
        shape = (8, *calib.shape[1:])
        whole = time_interleaved({0: ctx.runner(work, shape, "model")}, {0: ctx.batch(shape)})
    return entries, scores, floors, spread(whole[0])["median_ms"]


def floored(entries, floors):
    """The entries with the options under each group's spectral floor removed."""
    out = []
    for e in entries:
        allowed = set(floors[e.name][1])
        e2 = copy.copy(e)
        e2.options = [e.dense] + [o for o in e.options[1:] if o.rank in allowed]
        out.append(e2)
    return out


def widths_of(allocation) -> dict[str, int]:
    return {n: o.rank for n, o in allocation.choices.items() if o.form == "channels"}


def pruned(model, widths, scores, example):
    from rmt_deploy.channels import keep_top

    clone = copy.deepcopy(model).eval()
    keep = {n: keep_top(scores[n], w) for n, w in widths.items()}
    prune_channels_(clone, keep, example)
    return clone


def tp_global(model, ratio, example):
    """Torch-Pruning's own global ranking (group L2 magnitude), widths rounded to 8."""
    import torch_pruning as tp

    clone = copy.deepcopy(model).eval()
    cg = channel_graph(clone, example)  # the same explicit shortcuts
    head = [
        m for s in cg.skipped if s.code == "output_layer" for m in [clone.get_submodule(s.name)]
    ]
    pruner = tp.pruner.MetaPruner(
        clone, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True, pruning_ratio=ratio, ignored_layers=head, round_to=8,
    )  # fmt: skip
    pruner.step()
    return clone.eval()


def ms_on(deployment, model, folder: Path, tag: str, shape) -> float:
    run = prepare_int8(model, folder, tag, shape, deployment)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return spread(time_interleaved({0: run}, {0: x}, 5, 20)[0])["median_ms"]


def prepare_int8(model, folder: Path, tag: str, shape, deployment: str):
    onnx = export(model, folder / tag, tuple(shape[1:]), name=tag, simplify=True).onnx_path
    batches = [np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i in range(8)]
    int8 = folder / f"{tag}.int8.onnx"
    quantize_int8(onnx, int8, batches)
    return prepare(deployment, None, onnx, onnx_int8=int8).run


def match(make, target_ms, folder, deployment, shape, tag: str, lo=0.0, hi=0.8):
    """The setting in [lo, hi] of `make(setting) -> model` (more pruning as it grows) whose
    measured latency is nearest `target_ms`: bisection, stopped within 2 %."""
    best = None
    for i in range(8):
        setting = (lo + hi) / 2
        candidate = make(setting)
        ms = ms_on(deployment, candidate, folder, f"{tag}{i}", shape)
        log(f"{tag} {setting:.3f}: {ms:.3f} ms (target {target_ms:.3f})")
        if best is None or abs(ms - target_ms) < abs(best[1] - target_ms):
            best = (setting, ms, candidate)
        if abs(ms - target_ms) <= 0.02 * target_ms:
            break
        lo, hi = (setting, hi) if ms > target_ms else (lo, setting)
    return best


def uniform_widths(entries, cut: float) -> dict[str, int]:
    """Every group at the same share (1 − cut) of its channels, rounded up to a multiple of 8."""
    widths = {}
    for e in entries:
        channels = e.matrix_shape[0]
        width = min(channels, max(8, -(-round((1 - cut) * channels) // 8) * 8))
        if width < channels:
            widths[e.name] = width
    return widths


def recover(model, teacher, recovery, args) -> dict:
    """The one recovery every model gets: SGD, KL to the dense logits (α 0.7), `--steps`."""
    config = FinetuneConfig(
        max_steps=args.steps, batch_size=args.batch_size, lr=0.01, distill_alpha=0.7,
        warmup_steps=min(50, args.steps // 10), workers=0,  # no fork after OpenVINO loaded
    )  # fmt: skip
    result = finetune(model, recovery, config, teacher=teacher, progress=False)
    return {
        "steps": result.steps,
        "seconds": result.seconds,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
    }


def engines(models: dict, calib, folder: Path) -> dict:
    """NNCF INT8 in OpenVINO for every model; the dense model also in ORT fp32/INT8 and
    OpenVINO's default precision and QDQ INT8 (the engines a user would pick instead)."""
    shape = (8, *calib.shape[1:])
    batches = to_batches(calib)
    runs = {}
    for name, model in models.items():
        onnx = export(model, folder / name, tuple(shape[1:]), name=name).onnx_path
        xml, qdq = folder / f"{name}.nncf.xml", folder / f"{name}.int8.onnx"
        nncf_int8(onnx, xml, batches)
        quantize_int8(onnx, qdq, batches)
        runs[f"{name} · NNCF INT8"] = prepare("openvino-nncf-int8", None, onnx, openvino_int8=xml)
        # the deployment the widths were timed on, for every model
        runs[f"{name} · OpenVINO QDQ INT8"] = prepare("openvino-int8", None, onnx, onnx_int8=qdq)
        if name == "dense":
            runs["dense · ORT fp32"] = prepare("onnxruntime", None, onnx)
            runs["dense · ORT INT8"] = prepare("onnxruntime-int8", None, onnx, onnx_int8=qdq)
            runs["dense · OpenVINO default"] = prepare("openvino", None, onnx)
    return {k: v.run for k, v in runs.items()}


def torch_run(model):
    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return model.eval()(torch.from_numpy(x)).numpy()

    return run


def correct(run, images, labels, batch: int = 50) -> np.ndarray:
    preds = [run(images[i : i + batch].numpy()).argmax(1) for i in range(0, len(images), batch)]
    return np.concatenate(preds) == labels




def timing(runs: dict, calib, args) -> dict:
    x = calib[:8].numpy()
    rounds = [
        time_interleaved(runs, dict.fromkeys(runs, x), 3, args.runs) for _ in range(args.repeats)
    ]
    out = {}
    for name in runs:
        medians = [spread(r[name])["median_ms"] for r in rounds]
        out[name] = {"median_ms": float(np.median(medians)), "min_ms": min(medians),
                     "max_ms": max(medians), "rounds": medians}  # fmt: skip
    return out


def variants(model, calib, args, folder: Path):
    """The four width choices at one latency, as pruned (unrecovered) models."""
    entries, scores, floors, dense_ms = table(model, calib, args)
    log(f"table measured: {len(entries)} groups, dense {dense_ms:.3f} ms on {args.deployment}")
    shares = importance_damage(entries, scores)
    chosen = {
        "rmt": choose_dp(floored(shares, floors), dense_ms, args.speedup)[0],
        "rmt_output": choose_dp(floored(entries, floors), dense_ms, args.speedup)[0],
        "no_floor": choose_dp(shares, dense_ms, args.speedup)[0],
    }
    widths = {k: widths_of(a) for k, a in chosen.items()}
    example = calib[:1]
    models = {k: pruned(model, w, scores, example) for k, w in widths.items()}
    shape = (8, *calib.shape[1:])
    rmt_ms = ms_on(args.deployment, models["rmt"], folder, "rmt-probe", shape)
    where = (rmt_ms, folder, args.deployment, shape)
    cut, uniform_ms, models["uniform"] = match(
        lambda c: pruned(model, uniform_widths(entries, c), scores, example), *where, "uniform"
    )
    widths["uniform"] = uniform_widths(entries, cut)
    ratio, tp_ms, models["tp_global"] = match(
        lambda r: tp_global(model, r, example), *where, "tp_global"
    )
    info = {k: {"widths": widths[k], "predicted_ms": dense_ms - chosen[k].saving_ms,
                "predicted_damage": chosen[k].damage} for k in chosen}  # fmt: skip
    info["tp_global"] = {"ratio": ratio, "probe_ms": tp_ms}
    info["uniform"] = {"widths": widths["uniform"], "cut": cut, "probe_ms": uniform_ms}
    info["rmt"]["probe_ms"] = rmt_ms
    info["floors"] = {n: {"floor": f.floor, "source": f.source} for n, (f, _) in floors.items()}
    bound = [n for n, w in widths["rmt"].items() if w == floors[n][1][0] and w > 8]
    info["rmt"]["floor_bound"] = bound
    return models, info, dense_ms


def main() -> int:
    args = parse()
    torch.manual_seed(0)
    model, calib, recovery, images, labels = data(args)
    log(f"{len(calib)} calibration, {len(recovery)} recovery, {len(images)} test images")
    with tempfile.TemporaryDirectory(prefix="channel-ablation-") as tmp:
        folder = Path(tmp)
        models, info, dense_ms = variants(model, calib, args, folder)
        teacher = copy.deepcopy(model).eval()
        models = {"dense": copy.deepcopy(model), **models}
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
        recovered = {}
        for name, m in models.items():
            log(f"recovering {name} ({args.steps} steps)")
            recovered[name] = recover(m, teacher, recovery, args)
            if name == "dense":  # the pruned models learn from the dense model adapted alike
                teacher = copy.deepcopy(m).eval()
        runs = engines(models, calib, folder)
        log("engines ready; top-1 on the test images")
        hits = {name: correct(run, images, labels) for name, run in runs.items()}
        torch_hits = {
            f"{k} · PyTorch fp32": correct(
                lambda x, m=m: m(torch.from_numpy(x)).detach().numpy(), images, labels
            )
            for k, m in models.items()
        }  # noqa: E501
        log("timing")
        times = timing(runs, calib, args)
    write(args, info, params, recovered, hits, torch_hits, times, dense_ms)
    return 0


def write(args, info, params, recovered, hits, torch_hits, times, dense_ms) -> None:
    env = environment()
    dense_engines = [k for k in times if k.startswith("dense")]
    best = min(dense_engines, key=lambda k: times[k]["median_ms"])
    rows = {}
    for name, t in times.items():
        model = name.split(" · ")[0]
        rows[name] = {
            **t, "top1": 100 * float(hits[name].mean()),
            "speedup_vs_best_dense": times[best]["median_ms"] / t["median_ms"],
            "vs_dense_same_engine_pp": paired(hits[name], hits["dense · NNCF INT8"]),
            "vs_rmt_pp": paired(hits[name], hits["rmt · NNCF INT8"]),
            "params": params[model],
        }  # fmt: skip
    torch_rows = {k: 100 * float(v.mean()) for k, v in torch_hits.items()}
    result = {"environment": env, "args": vars(args), "variants": info, "recovery": recovered,
              "rows": rows, "pytorch_top1": torch_rows, "best_dense": best,
              "table_dense_ms": dense_ms}  # fmt: skip
    stem = result_stem("channel_ablation_resnet56", args.tag)
    write_json_atomic(stem.with_suffix(".json"), result)
    lines = [
        "# Channel pruning, ResNet-56 (CIFAR-10): RMT widths against the alternatives",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} threads), "
        f"{env['date']}; `{env['command']}`. Widths timed on {args.deployment}, predicted "
        f"×{args.speedup} over dense; each model recovered {args.steps} steps (batch "
        f"{args.batch_size}, SGD, distillation α 0.7 from the dense model recovered first) on "
        "CIFAR-10 train; "
        f"latency at batch 8, {args.repeats} interleaved rounds × 3×{args.runs} calls (median "
        f"of the round medians, range); top-1 on {len(next(iter(hits.values())))} test images; "
        "Δ in pp with a paired 95 % bootstrap interval.",
        "",
        f"Best dense engine: **{best}** ({times[best]['median_ms']:.3f} ms).",
        "",
        "| engine | params | ms (range) | × over best dense | top-1 % | Δ vs dense NNCF INT8 | Δ vs rmt |",  # noqa: E501
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        d, v = r["vs_dense_same_engine_pp"], r["vs_rmt_pp"]
        lines.append(
            f"| {name} | {r['params']:,} | {r['median_ms']:.3f} ({r['min_ms']:.3f}–"
            f"{r['max_ms']:.3f}) | ×{r['speedup_vs_best_dense']:.2f} | {r['top1']:.2f} | "
            f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] | {v[0]:+.2f} [{v[1]:+.2f}, {v[2]:+.2f}] |"
        )
    lines += ["", "PyTorch fp32 top-1 after recovery: " + ", ".join(
        f"{k.split(' · ')[0]} {v:.2f} %" for k, v in torch_rows.items())]  # fmt: skip
    lines += ["", "Widths (group: channels kept):", ""]
    for k in ("rmt", "rmt_output", "no_floor"):
        w = info[k]["widths"]
        lines.append(
            f"- {k}: predicted {info[k]['predicted_ms']:.3f} ms, damage "
            f"{info[k]['predicted_damage']:.3f}; " + ", ".join(f"{n} {c}" for n, c in w.items())
        )  # noqa: E501
    u = info["uniform"]
    lines.append(
        f"- uniform: {1 - u['cut']:.3f} of every group's channels (rounded up to 8), "
        "matched on measured latency; " + ", ".join(f"{n} {c}" for n, c in u["widths"].items())
    )  # noqa: E501
    lines.append(
        f"- tp_global: Torch-Pruning ratio {info['tp_global']['ratio']:.3f}, matched on "
        "measured latency"
    )
    lines.append(f"- rmt floors that bound: {', '.join(info['rmt']['floor_bound']) or 'none'}")
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
