#!/usr/bin/env bash
# Experiments for weights/vsr_x4_srgan.safetensors on 2 CPU cores (bf16 autocast, no GPU): the shipped fifth
# generation's recipe U (scripts/train_bundled_9.sh: from vsr_x4_degraded, RaGAN, spectral-norm D, VGG16 conv5_3
# before the ReLU, colour loss x1, grid loss x10, pixel weight 0.1, 740 steps) with the paper's batch of 16
# instead of 8: twice the crops per step, so a steadier adversarial gradient, at twice the cost.
#   W (seed 5, core 0)     W6 (seed 6, core 1)
# Neither was shipped (no better than U, and the seeds land 3 NIQE apart): weights/README.md gives the results.
# Usage: scripts/train_bundled_10.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here
adversarial_recipe   # $adversarial_args
degraded_start   # $degraded

srgan() {  # srgan NAME SEED CORE [MORE VSR FINETUNE OPTIONS]: recipe U
  degraded_srgan "$1" "$2" "$3" 740 370 --gan-pixel-weight 0.1 "${@:4}"
}
srgan srgan_w 5 0 --batch-size 16 &
srgan srgan_w6 6 1 --batch-size 16 &
wait
