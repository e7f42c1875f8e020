#!/usr/bin/env bash
# The exact command behind the second generation of weights/vsr_x4_psnr.safetensors, on 2 CPU cores
# (AMD EPYC with AVX512_BF16, so bf16 autocast: the trainer's --precision auto; 1.49 steps/s, 1 h 41 min)
# with no GPU: the first generation (scripts/train_bundled.sh (a), 3200 steps on 46 frames) trained on for 9000 more steps on the larger, more varied data of scripts/prepare_data_2.sh
# (66 frames from 35 files), with a fresh warm-up and cosine schedule at a lower peak (2e-4 against 5e-4).
# OUT/vsr_x4_psnr.safetensors was copied to weights/ and its held-out scores recorded by the
# evaluate.py --record commands given in weights/README.md.
# Usage: scripts/train_bundled_4.sh DATA OUT   (DATA as made by scripts/prepare_data_2.sh)
set -euo pipefail
source "$(dirname "$0")/bundled_args.sh"   # data, out, here; gen1: the first vsr_x4_psnr, which this starts from

vsr finetune "$data/train" --val "$data/val" --from "$gen1" --no-gan --steps 9000 --lr 2e-4 \
  --pixel-loss l1 --batch-size 16 --patch-size 96 --ema-decay 0.999 --max-side 2048 --frames-per-video 32 \
  --val-every 500 --checkpoint-every 250 --seed 3 --cache-dir "$out/cache" -o "$out/vsr_x4_psnr.safetensors"
# The run predates the trainer's lineage record (earlier_training, total_steps), added to the file after it:
python - "$gen1" "$out/vsr_x4_psnr.safetensors" <<'PY'
import sys
from vsr.weights import record_metadata, total_steps, training_info
first, second = sys.argv[1:]
earlier = training_info(first)
record_metadata(second, "vsr.training", {"earlier_training": earlier, "total_steps": training_info(second)["steps"] + total_steps(earlier)})
PY
