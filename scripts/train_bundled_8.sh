#!/usr/bin/env bash
# A third generation of weights/vsr_x4_psnr.safetensors on 2 CPU cores (AMD EPYC with AVX512_BF16, so bf16
# autocast: the trainer's --precision auto) with no GPU: does a larger crop buy PSNR where more steps did not?
# The second generation trained on 96-px HR crops, i.e. 24 LR pixels, about a third of the generator's
# receptive field, so most outputs of a crop saw its zero padding. EDSR trains x4 on 48 LR pixels.
# Both runs start from the second generation (weights/vsr_x4_psnr.safetensors at 7281657), with a fresh
# warm-up and cosine schedule at half its peak, for the same steps and the same pixels per step:
#   Q: 192-px crops, batch 4 (core 0)     R: 96-px crops, batch 16, i.e. "more steps" alone (core 1)
# Each was measured with scripts/evaluate.py (weights/README.md gives the results).
# Usage: scripts/train_bundled_8.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here
gen2="$out/vsr_x4_psnr_gen2.safetensors"
git -C "$here" show 7281657:weights/vsr_x4_psnr.safetensors >"$gen2"

psnr() {  # psnr NAME CORE [MORE VSR FINETUNE OPTIONS]
  OMP_NUM_THREADS=1 taskset -c "$2" vsr finetune "$data/train" --val "$data/val" --from "$gen2" --no-gan \
    --steps "${STEPS:-3000}" --lr 1e-4 --pixel-loss l1 --ema-decay 0.999 --max-side 2048 --frames-per-video 32 \
    --val-every 500 --checkpoint-every 250 --seed 7 --cache-dir "$out/cache" "${@:3}" -o "$out/$1.safetensors" \
    >"$out/$1.log" 2>&1
}
psnr psnr_q 0 --patch-size 192 --batch-size 4 &
psnr psnr_r 1 --patch-size 96 --batch-size 16 &
wait
