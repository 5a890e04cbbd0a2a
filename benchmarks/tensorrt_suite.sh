#!/usr/bin/env bash
# TensorRT engines on a GPU machine that has the tensorrt package (a Jetson, an own server; the
# lent H200 image has none, and its wheels are too large to carry there). From the repo root:
#
#     bash benchmarks/tensorrt_suite.sh [--out DIR]
#
# Exports ResNet-56 (pretrained, dense and 2:4) and a random-weight ResNet-50 (dense and 2:4),
# builds fp16 engines with --sparsity enable (each with its per-layer report: which 2:4 layers
# got a sparse tactic) and times them with the `tensorrt` bench backend against torch CUDA.
# Every step runs even when one before it failed; exit 1 if any failed, 2 without TensorRT.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && PY=.venv/bin/python
export RMT_DEPLOY_ASSETS=${RMT_DEPLOY_ASSETS:-../shared/assets}
ASSETS=$RMT_DEPLOY_ASSETS
OUT=benchmarks/results/tensorrt
[[ ${1:-} == --out ]] && OUT=$2
if ! "$PY" -c 'import tensorrt, torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "tensorrt_suite: needs the tensorrt package and a CUDA device ($PY); nothing was run" >&2
  exit 2
fi
mkdir -p "$OUT/logs"
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

rm -rf "$OUT/ckpt" "$OUT/trt" # no stale inputs
# 2:4 without fine-tuning: these engines answer "do sparse tactics run and pay", not accuracy.
# ResNet-56 has at most 64 channels, so expect its layers.json to show 2:4 layers kept dense;
# ResNet-50 (random weights) has the 256+ channel layers where TensorRT picks sparse tactics.
step compress_cifar_resnet56_nm24 rmt compress cifar_resnet56 --strategy nm24 \
  --sparsity 0.5 --out "$OUT/ckpt/cifar_resnet56-nm24"
step compress_resnet50_nm24 rmt compress resnet50 --strategy nm24 --sparsity 0.5 \
  --out "$OUT/ckpt/resnet50-nm24"
engines cifar_resnet56 "$ASSETS/cifar10/test" "nm24=$OUT/ckpt/cifar_resnet56-nm24/model.safetensors"
engines resnet50 "" "nm24=$OUT/ckpt/resnet50-nm24/model.safetensors"

echo "results: $OUT/ (trt/*/*.engine.layers.json, trt/*/bench/)"
if ((${#failed[@]})); then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
