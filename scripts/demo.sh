#!/usr/bin/env bash
# The main job, end to end on the real defaults: set up, check the real pretrained CIFAR-10
# ResNet-56 on the real CIFAR-10 test images, then analyze its spectrum and a timm ViT's.
# Results land in runs/demo/ (spectrum.json, spectrum.md, plots/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ASSETS=${RMT_DEPLOY_ASSETS:-../shared/assets}
OUT=${OUT:-runs/demo}
rmt=.venv/bin/rmt-deploy

echo "== accuracy of the pretrained ResNet-56 on the CIFAR-10 test folder"
$rmt --assets "$ASSETS" eval cifar_resnet56 --data "$ASSETS/cifar10/test"
echo "== spectral analysis of ResNet-56"
$rmt --assets "$ASSETS" analyze cifar_resnet56 --out "$OUT/cifar_resnet56"
echo "== spectral analysis of vit_base_patch16_224 (random init: no pretrained ViT can be downloaded here)"
$rmt analyze vit_base_patch16_224 --out "$OUT/vit_base_patch16_224"
echo "== done: open $OUT/*/spectrum.md and $OUT/*/plots/"
