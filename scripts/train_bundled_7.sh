#!/usr/bin/env bash
# The fourth generation of weights/vsr_x4_srgan.safetensors, on 2 CPU cores (AMD EPYC with AVX512_BF16, so bf16
# autocast: the trainer's --precision auto) with no GPU: the shipped recipe C of scripts/train_bundled_3.sh
# (from the first vsr_x4_psnr, 740 steps, seed 5) with the grid loss added (--gan-grid-weight: L1 of the part of
# SR - HR that repeats every 4 pixels), against the checker/hatch that scripts/evaluate.py's grid column measured
# in every adversarial model so far (0.6-0.8 levels RMS; bicubic and the PSNR models under 0.1).
#   F: grid weight 1 (core 0)     G: grid weight 10 (core 1), side by side
# then, G with a stronger adversarial term (G has 5e-3), to see whether it buys NIQE back:
#   H: adversarial weight 1e-2 (core 0)     I: 2e-2 (core 1), side by side
# then, G with Real-ESRGAN's U-Net discriminator (--d-arch unet: a logit per pixel, spectrally normalised):
#   J: with G's relativistic loss (core 0)     K: with the vanilla GAN loss, Real-ESRGAN's (core 1)
# then J with a stronger adversarial term, and J with a shallower content layer:
#   L: adversarial weight 1e-2 (core 0)     M: VGG16 conv4_3 instead of conv5_3 (core 1)
# then J twice more: for twice the steps, and with another seed (how far apart two runs of one recipe land):
#   N: 1480 steps (core 0)     O: seed 6 (core 1)
#   As measured, O ran with seed 5: this function put its own --seed 5 after the extra options then, and the
#   later one wins. So O was J's exact command, and differed from J only by the discriminator's initial
#   weights, which --seed did not fix before commit 8d76e8f. No run here before that commit repeats bit for bit.
# and last, G with seed 6 (P, core 1; it was run by hand with this command while N finished)
# (each stage skipped with SKIP_FG=1 / SKIP_HI=1 / SKIP_JK=1 / SKIP_LM=1 / SKIP_NO=1 / SKIP_P=1; later options win)
# G stayed shipped (until scripts/train_bundled_9.sh's fifth generation): the U-Net runs J and O, one recipe with two seeds, landed further apart than J and G.
# Each was measured with scripts/evaluate.py; G was shipped: OUT/srgan_g.safetensors copied to
# weights/vsr_x4_srgan.safetensors, its held-out scores recorded by the evaluate.py --record commands in
# weights/README.md (which gives the results).
# Usage: scripts/train_bundled_7.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here; gen1: the first vsr_x4_psnr
adversarial_recipe   # $adversarial_args

srgan() {  # srgan NAME GRID_WEIGHT ADV_WEIGHT CORE [MORE VSR FINETUNE OPTIONS]
  OMP_NUM_THREADS=1 taskset -c "$4" vsr finetune "$data/train" --val "$data/val" --from "$gen1" \
    --steps 740 --adv-weight "$3" "${adversarial_args[@]}" --gan-colour-weight 1 --gan-grid-weight "$2" \
    --val-every 370 --checkpoint-every 50 --seed 5 --cache-dir "$out/cache" "${@:5}" -o "$out/$1.safetensors" \
    >"$out/$1.log" 2>&1
}
if [[ ${SKIP_FG:-} != 1 ]]; then
  srgan srgan_f 1 5e-3 0 &
  srgan srgan_g 10 5e-3 1 &
  wait
fi
if [[ ${SKIP_HI:-} != 1 ]]; then
  srgan srgan_h 10 1e-2 0 &
  srgan srgan_i 10 2e-2 1 &
  wait
fi
if [[ ${SKIP_JK:-} != 1 ]]; then
  srgan srgan_j 10 5e-3 0 --d-arch unet &
  srgan srgan_k 10 5e-3 1 --d-arch unet --gan-loss vanilla &
  wait
fi
if [[ ${SKIP_LM:-} != 1 ]]; then
  srgan srgan_l 10 1e-2 0 --d-arch unet &
  srgan srgan_m 10 5e-3 1 --d-arch unet --content-layer vgg16:conv4_3 &
  wait
fi
if [[ ${SKIP_NO:-} != 1 ]]; then
  srgan srgan_n 10 5e-3 0 --d-arch unet --steps 1480 &
  srgan srgan_o 10 5e-3 1 --d-arch unet --seed 6 &
  wait
fi
if [[ ${SKIP_P:-} != 1 ]]; then
  srgan srgan_p 10 5e-3 1 --seed 6
fi
