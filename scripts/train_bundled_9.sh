#!/usr/bin/env bash
# Experiments for weights/vsr_x4_srgan.safetensors on 2 CPU cores (bf16 autocast, no GPU): the shipped fourth
# generation's recipe G (scripts/train_bundled_7.sh: RaGAN, spectral-norm D, VGG16 conv5_3 before the ReLU,
# colour loss x1, grid loss x10, 740 steps, batch 8) started from weights/vsr_x4_degraded.safetensors instead of
# the first vsr_x4_psnr. Why: on clean LR the degraded model (pixel loss only, trained on blurred, noisy,
# compressed LR) already scores NIQE 17.20 against bicubic's 18.48 and vsr_x4_psnr's 20.63 on the held-out set.
#   S: clean LR in the adversarial phase (core 0)     T: --degrade LR as well, Real-ESRGAN's way (core 1)
# then both again with another seed, since two runs of one recipe can land far apart (train_bundled_7.sh's J/O):
#   S6 (core 0)     T6 (core 1)
# then S with a 10x larger pixel anchor (--gan-pixel-weight 0.1 against 1e-2), to stay nearer the start, two seeds:
#   U (seed 5, core 0)     U6 (seed 6, core 1)
# then a 100x anchor (--gan-pixel-weight 1), two seeds:
#   V (seed 5, core 0)     V6 (seed 6, core 1)
# then U with two more seeds, to see whether U's lead over G holds beyond two seeds:
#   U7 (seed 7, core 0)     U8 (seed 8, core 1)
# (stages skipped with SKIP_ST=1 / SKIP_ST6=1 / SKIP_U=1 / SKIP_V=1 / SKIP_U78=1)
# U (seed 5) was shipped as the fifth generation: OUT/srgan_u.safetensors copied to weights/vsr_x4_srgan.safetensors,
# its held-out scores recorded by the evaluate.py --record commands in weights/README.md (which gives the results).
# Usage: scripts/train_bundled_9.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here
adversarial_recipe   # $adversarial_args
degraded_start   # $degraded

srgan() {  # srgan NAME SEED CORE [MORE VSR FINETUNE OPTIONS]
  degraded_srgan "$1" "$2" "$3" 740 370 "${@:4}"
}
if [[ ${SKIP_ST:-} != 1 ]]; then
  srgan srgan_s 5 0 &
  srgan srgan_t 5 1 --degrade &
  wait
fi
if [[ ${SKIP_ST6:-} != 1 ]]; then
  srgan srgan_s6 6 0 &
  srgan srgan_t6 6 1 --degrade &
  wait
fi
if [[ ${SKIP_U:-} != 1 ]]; then
  srgan srgan_u 5 0 --gan-pixel-weight 0.1 &
  srgan srgan_u6 6 1 --gan-pixel-weight 0.1 &
  wait
fi
if [[ ${SKIP_V:-} != 1 ]]; then
  srgan srgan_v 5 0 --gan-pixel-weight 1 &
  srgan srgan_v6 6 1 --gan-pixel-weight 1 &
  wait
fi
if [[ ${SKIP_U78:-} != 1 ]]; then
  srgan srgan_u7 7 0 --gan-pixel-weight 0.1 &
  srgan srgan_u8 8 1 --gan-pixel-weight 0.1 &
  wait
fi
