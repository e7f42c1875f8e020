#!/usr/bin/env bash
# The exact commands that produced weights/vsr_x2_psnr.safetensors and weights/vsr_x4_degraded.safetensors
# (on 2 CPU cores, fp32: no GPU was available to the session that made them).
# Usage: scripts/train_bundled_2.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here; gen1: the first vsr_x4_psnr, which these start from

# (a) x2, PSNR-oriented: head and residual body from vsr_x4_psnr (--body-only), the x2 upsampling
# stage new (starting as bicubic); L1, EMA, cosine schedule; 64-px HR crops (32-px LR, as x4's 96).
vsr finetune "$data/train" --val "$data/val" --from "$gen1" --body-only --scale 2 \
  --no-gan --steps 2000 --lr 2e-4 --pixel-loss l1 --batch-size 16 --patch-size 64 --ema-decay 0.999 \
  --max-side 2048 --frames-per-video 32 --val-every 250 --checkpoint-every 100 --seed 0 \
  --cache-dir "$out/cache" -o "$out/vsr_x2_psnr.safetensors"

# (b) x4 for compressed footage: vsr_x4_psnr fine-tuned on degraded LR (--degrade: random blur,
# sensor noise, JPEG q30-95 or H.264 crf 18-36, each LR crop its own mix), L1, EMA.
vsr finetune "$data/train" --val "$data/val" --from "$gen1" --degrade \
  --no-gan --steps 1000 --lr 1e-4 --pixel-loss l1 --batch-size 16 --patch-size 96 --ema-decay 0.999 \
  --max-side 2048 --frames-per-video 32 --val-every 250 --checkpoint-every 100 --seed 2 \
  --cache-dir "$out/cache" -o "$out/vsr_x4_degraded.safetensors"
