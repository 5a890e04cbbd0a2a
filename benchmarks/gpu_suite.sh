#!/usr/bin/env bash
# GPU acceptance run, one command on a lent or own NVIDIA GPU (from the repo root):
#
#     PYTHONPATH=. bash benchmarks/gpu_suite.sh
#
# The GPU code paths never run in CI (no GPU there), so this runs them all once: the torch
# CUDA suite with 2:4 semi-structured kernels (benchmarks/bench_gpu.py), a short fine-tune on
# CUDA, and, where the tensorrt package is installed, TensorRT engines built from exported
# ONNX files with --sparsity enable (each with its per-layer report: which 2:4 layers got a
# sparse tactic) and timed by the `tensorrt` bench backend. Every step runs even when one
# before it failed; the exit status is 1 if any failed, 2 if there is no GPU at all.
# Everything lands in benchmarks/results/gpu/ (device.txt first). Settings: PYTHON,
# RMT_DEPLOY_ASSETS (default ../shared/assets), FINETUNE_STEPS (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && PY=.venv/bin/python
export RMT_DEPLOY_ASSETS=${RMT_DEPLOY_ASSETS:-../shared/assets}
ASSETS=$RMT_DEPLOY_ASSETS
STEPS=${FINETUNE_STEPS:-50}
OUT=benchmarks/results/gpu

if command -v nvidia-smi >/dev/null 2>&1 && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_suite: nvidia-smi finds no GPU (driver not loaded?); nothing was run" >&2
  exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "gpu_suite: torch.cuda.is_available() is False with $PY; nothing was run" >&2
  exit 2
fi
rm -rf "$OUT/logs" && mkdir -p "$OUT/logs"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  else
    echo "nvidia-smi: not found (Jetson?)"
  fi
  "$PY" -c '
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"device 0: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
try:
    import tensorrt
    print(f"TensorRT {tensorrt.__version__}")
except ImportError:
    print("TensorRT: not installed")
'
} >"$OUT/device.txt"
cat "$OUT/device.txt"

failed=()
step() {  # step NAME COMMAND...: run it, log to $OUT/logs/NAME.log, go on if it fails
  local name=$1
  shift
  echo "== $name"
  if "$@" 2>&1 | tee "$OUT/logs/$name.log"; then
    echo "== $name: ok"
  else
    echo "== $name: FAILED (log: $OUT/logs/$name.log)"
    failed+=("$name")
  fi
}

# A short fine-tune on CUDA. `rmt-deploy compress --finetune-steps` trains where the model
# is, which is the CPU there; here the same library calls run with model and batches on GPU.
FINETUNE_PY='
import json, sys
import torch
from rmt_deploy import load_model
from rmt_deploy.compress import compress_
from rmt_deploy.data import eval_transform, load_image_dataset, train_transform
from rmt_deploy.models import DataConfig, save_checkpoint
from rmt_deploy.models.checkpoint import PLAN_METADATA_KEY
from rmt_deploy.paths import assets_dir, ensure_output_dir, write_json_atomic
from rmt_deploy.recovery import FinetuneConfig, finetune
from rmt_deploy.strategies import plan

steps, out, name = int(sys.argv[1]), ensure_output_dir(sys.argv[2]), "cifar_resnet56"
train_dir = assets_dir() / "cifar10" / "train"
model = load_model(name)
config = DataConfig.from_model(model)
calib = load_image_dataset(train_dir, eval_transform(config), limit=512)
the_plan = plan(model, "seb", 0.5, data=calib, name=name)
compress_(model, the_plan)

class OnCuda(torch.utils.data.Dataset):
    """Images and labels already on the GPU, so `finetune` runs there unchanged."""
    def __init__(self, data):
        self.data = data
    def __len__(self):
        return len(self.data)
    def __getitem__(self, i):
        image, label = self.data[i]
        return image.cuda(), torch.tensor(label, device="cuda")

model.cuda()
train = OnCuda(load_image_dataset(train_dir, train_transform(config)))
result = finetune(model, train, FinetuneConfig(max_steps=steps, workers=0), progress=False)
assert next(model.parameters()).is_cuda
model.cpu()
the_plan.save(out / "plan.json")
save_checkpoint(
    model, out / "model.safetensors",
    {PLAN_METADATA_KEY: the_plan.to_json(), "rmt_deploy.model": name},
)
info = {"device": torch.cuda.get_device_name(), "strategy": "seb", "sparsity": 0.5,
        **{k: v for k, v in result.to_dict().items() if k != "losses"}}
write_json_atomic(out / "finetune.json", info)
print(json.dumps(info))
'

rmt() { "$PY" -m rmt_deploy.cli --quiet "$@"; }

engines() { # engines MODEL BENCH_DATA [NAME=CHECKPOINT ...]: export the dense model and each
  # variant, build each engine with --sparsity enable, time them against torch on CUDA
  local model=$1 data=$2 dir=$OUT/trt/$1 spec name src
  shift 2
  local bench=(--variant dense)
  for spec in "dense=$model" "$@"; do
    name=${spec%%=*} src=${spec#*=}
    [[ $name == dense || -f $src ]] || continue # its checkpoint step failed
    [[ $name == dense ]] || bench+=(--variant "$spec")
    step "export_${model}_$name" rmt export "$src" --out "$dir/$name"
    step "build_${model}_$name" rmt build "$dir/$name/model.onnx" --precision fp16 \
      --sparsity enable --batch 1:8:32 --out "$dir/$name.engine" \
      --timing-cache "$OUT/trt/timing.cache"
    if [[ -f $dir/$name.engine ]]; then bench+=(--engine "$name=$dir/$name.engine"); fi
  done
  step "bench_tensorrt_$model" rmt bench "$model" "${bench[@]}" --backends torch,tensorrt \
    --device cuda --batches 1,8,32 ${data:+--data "$data" --limit 2000} --out "$dir/bench"
}

rm -rf "$OUT/ft" "$OUT/ckpt" "$OUT/trt/cifar_resnet56" "$OUT/trt/resnet50" # no stale inputs
step bench_gpu "$PY" benchmarks/bench_gpu.py --assets "$ASSETS" --out "$OUT/bench_gpu"
step finetune_cuda "$PY" -c "$FINETUNE_PY" "$STEPS" "$OUT/ft"

if "$PY" -c "import tensorrt" 2>/dev/null; then
  # 2:4 without fine-tuning: these engines answer "do sparse tactics run and pay", not accuracy.
  # ResNet-56 has at most 64 channels, so expect its layers.json to show 2:4 layers kept dense;
  # ResNet-50 (random weights) has the 256+ channel layers where TensorRT picks sparse tactics.
  step compress_cifar_resnet56_nm24 rmt compress cifar_resnet56 --strategy nm24 \
    --sparsity 0.5 --out "$OUT/ckpt/cifar_resnet56-nm24"
  step compress_resnet50_nm24 rmt compress resnet50 --strategy nm24 --sparsity 0.5 \
    --out "$OUT/ckpt/resnet50-nm24"
  engines cifar_resnet56 "$ASSETS/cifar10/test" \
    "nm24=$OUT/ckpt/cifar_resnet56-nm24/model.safetensors" "ft=$OUT/ft/model.safetensors"
  engines resnet50 "" "nm24=$OUT/ckpt/resnet50-nm24/model.safetensors"
else
  echo "TensorRT not installed: skipped" | tee "$OUT/tensorrt.txt"
fi

echo "results: $OUT/ (device.txt, logs/, bench_gpu/, ft/, trt/*/*.engine.layers.json, trt/*/bench/)"
if ((${#failed[@]})); then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
