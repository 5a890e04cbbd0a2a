#!/usr/bin/env bash
# The main job, end to end on the real defaults: set up, check the real pretrained CIFAR-10
# ResNet-56 on the real CIFAR-10 test images, analyze its spectrum (and a timm ViT's), then
# compress it with spectral edge budgeting at 50 % sparsity, recover briefly on the real train
# images and measure it again. Results land in runs/demo/.
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
echo "== compress ResNet-56: SEB at 50 % sparsity, BN recalibration, 80 fine-tune steps"
$rmt --assets "$ASSETS" compress cifar_resnet56 --strategy seb --sparsity 0.5 \
  --data "$ASSETS/cifar10/train" --finetune-steps 80 --out "$OUT/cifar_resnet56_seb50"
echo "== accuracy of the compressed ResNet-56"
$rmt --assets "$ASSETS" eval cifar_resnet56 --checkpoint "$OUT/cifar_resnet56_seb50/model.safetensors" \
  --data "$ASSETS/cifar10/test"
echo "== done: see $OUT/*/spectrum.md, $OUT/*/plots/ and $OUT/cifar_resnet56_seb50/plan.json"
