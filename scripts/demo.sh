#!/usr/bin/env bash
# The main job, end to end on the real defaults: set up, then the whole pipeline
# (analyze → latency-aware plan → compress → recover → evaluate → export ONNX + verify →
# benchmark → report) on the pretrained CIFAR-10 ResNet-56 and on the CIFAR-10 ViT trained
# here, for every CPU deployment this machine offers (ONNX Runtime and OpenVINO, each
# precision). Results land in runs/<model>_cpu/ (report.md first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ASSETS=${RMT_DEPLOY_ASSETS:-../shared/assets}
rmt=.venv/bin/rmt-deploy

for config in examples/cpu_onnxruntime_resnet56.yaml examples/cpu_onnxruntime.yaml; do
  echo "== rmt-deploy run $config"
  $rmt --assets "$ASSETS" run "$config"
done
echo "== done: runs/cifar_resnet56_cpu/report.md and runs/cifar_vit_tiny_cpu/report.md"
