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
degraded="$out/vsr_x4_degraded.safetensors"
git -C "$here" show 5f1e5af:weights/vsr_x4_degraded.safetensors >"$degraded"

srgan() {  # srgan NAME SEED CORE [MORE VSR FINETUNE OPTIONS]
  OMP_NUM_THREADS=1 taskset -c "$3" vsr finetune "$data/train" --val "$data/val" --from "$degraded" \
    --steps 740 --adv-weight 5e-3 "${adversarial_args[@]}" --gan-colour-weight 1 --gan-grid-weight 10 \
    --gan-pixel-weight 0.1 --val-every 370 --checkpoint-every 50 --cache-dir "$out/cache" "${@:4}" --seed "$2" \
    -o "$out/$1.safetensors" >"$out/$1.log" 2>&1
}
srgan srgan_w 5 0 --batch-size 16 &
srgan srgan_w6 6 1 --batch-size 16 &
wait
