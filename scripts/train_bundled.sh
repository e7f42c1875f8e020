#!/usr/bin/env bash
# The exact commands that produced weights/vsr_x4_psnr.safetensors and weights/vsr_x4_srgan.safetensors.
# Usage: scripts/train_bundled.sh DATA OUT   (DATA as made by scripts/prepare_bundled_data.sh)
set -euo pipefail
data=${1:?usage: $0 DATA OUT}
out=${2:?usage: $0 DATA OUT}
mkdir -p "$out"

# (a) PSNR-oriented model: from scratch, no BN, global bicubic skip, L1, EMA, cosine schedule.
vsr finetune "$data/train" --val "$data/val" --from scratch --scale 4 --no-batch-norm --global-skip bicubic \
  --no-gan --steps 3200 --lr 5e-4 --pixel-loss l1 --batch-size 16 --patch-size 96 --ema-decay 0.999 \
  --max-side 2048 --frames-per-video 32 --val-every 200 --checkpoint-every 200 --seed 0 \
  --cache-dir "$out/cache" -o "$out/vsr_x4_psnr.safetensors"
