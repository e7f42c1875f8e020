#!/usr/bin/env bash
# The fourth round of experiments for weights/vsr_x4_srgan.safetensors (none was shipped), on 2 CPU cores (AMD EPYC with AVX512_BF16, so bf16
# autocast: the trainer's --precision auto) with no GPU. Recipe C of scripts/train_bundled_3.sh, unchanged
# (RaGAN, spectral-norm D, VGG16 conv5_3 before the ReLU, adv 5e-3, L1 1e-2, colour loss 1, batch 8, EMA),
# run longer and from either vsr_x4_psnr generation, to see what steps and the starting model buy:
#   long: from the second-generation vsr_x4_psnr (c45de6b), 3600 steps on both cores (1.23 steps/s, 49 min)
#   D:    from the first generation (c546bc0), 1500 steps, one core
#   E:    from the second generation, 1200 steps, one core (D and E side by side, after "long")
# Each was measured with scripts/evaluate.py (weights/README.md gives the commands and the results).
# Usage: scripts/train_bundled_5.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here; gen1: the first vsr_x4_psnr
gen2="$out/vsr_x4_psnr_gen2.safetensors"
git -C "$here" show c45de6b:weights/vsr_x4_psnr.safetensors >"$gen2"
adversarial_recipe   # $adversarial_args

srgan() {  # srgan NAME FROM STEPS SEED [launcher...]
  "${@:5}" vsr finetune "$data/train" --val "$data/val" --from "$2" --steps "$3" \
    --adv-weight 5e-3 "${adversarial_args[@]}" --gan-colour-weight 1 \
    --val-every 300 --checkpoint-every 100 --seed "$4" --cache-dir "$out/cache" -o "$out/$1.safetensors" \
    >"$out/$1.log" 2>&1
}
if [[ ${SKIP_LONG:-} != 1 ]]; then srgan srgan "$gen2" 3600 5; fi
srgan srgan_d "$gen1" 1500 7 env OMP_NUM_THREADS=1 taskset -c 0 &
srgan srgan_e "$gen2" 1200 8 env OMP_NUM_THREADS=1 taskset -c 1 &
wait
