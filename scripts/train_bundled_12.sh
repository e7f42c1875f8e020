#!/usr/bin/env bash
# Experiments for weights/vsr_x4_srgan.safetensors on 2 CPU cores (bf16 autocast, no GPU): the shipped fifth
# generation's recipe U (scripts/train_bundled_9.sh: from vsr_x4_degraded, RaGAN, spectral-norm D, VGG16 conv5_3
# before the ReLU, colour loss x1, grid loss x10, pixel weight 0.1, batch 8) for 3x the steps (2220 against 740),
# the same schedule stretched. Why: scripts/gpu_train.sh's command runs this recipe for 20000 steps on a GPU;
# whether more steps help this recipe at all is what this measures (recipe C's longer runs, train_bundled_5.sh,
# lost PSNR and naturalness).
#   Z (seed 5, core 0)     Z6 (seed 6, core 1)
# Result: both lost ~0.3 dB and flicker against U, with no steady NIQE gain; not shipped (weights/README.md).
# Usage: scripts/train_bundled_12.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here
adversarial_recipe   # $adversarial_args
degraded_start   # $degraded

srgan() {  # srgan NAME SEED CORE [MORE VSR FINETUNE OPTIONS]: recipe U
  degraded_srgan "$1" "$2" "$3" 2220 740 --gan-pixel-weight 0.1 "${@:4}"
}
srgan srgan_z 5 0 &
srgan srgan_z6 6 1 &
wait
