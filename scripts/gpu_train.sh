#!/usr/bin/env bash
# A training run on the lent GPU machine, whose weights come back through $OUT. That machine has
# torch, torchvision, numpy, Pillow, click, rich and safetensors but no PyAV, and a call carries 64
# MiB with the checkout (~25 MiB): too little for the av wheel (36 MB) and the frames together. So
# the frames travel packed as pictures and the trainer runs without PyAV (it imports it only to
# decode; a filled frame cache leaves it nothing to decode). Pixel-loss recipes only: --degrade
# re-encodes with PyAV, and the adversarial phase's VGG is another ~29 MB in fp16.
#
# Here, once (the same frames as scripts/prepare_data_2.sh's DATA/train and /val, 27 MiB at JPEG q90):
#   echo /.pack/ >> .git/info/exclude
#   python scripts/packed_frames.py pack DATA .pack
# Then call the device tool's run with carry [".pack"] and a command such as
#   bash scripts/gpu_train.sh vsr_x4_psnr weights/vsr_x4_psnr.safetensors 15000 --no-gan --lr 2e-4 \
#     --pixel-loss l1 --batch-size 16 --patch-size 96 --ema-decay 0.999 --seed 4
# with a timeout_s that covers the steps (measured there: ~30 steps/s at batch 16 of 96-px crops,
# to be confirmed; the log prints the rate and the share of time spent waiting for data).
# Usage: bash scripts/gpu_train.sh NAME FROM STEPS [vsr finetune options...]
#   writes $OUT/NAME.safetensors (the EMA generator, with its training record) and $OUT/NAME.log
set -euo pipefail
name=${1:?usage: $0 NAME FROM STEPS [vsr finetune options...]}
from=${2:?usage: $0 NAME FROM STEPS [vsr finetune options...]}
steps=${3:?usage: $0 NAME FROM STEPS [vsr finetune options...]}
shift 3
cd "$(dirname "$0")/.."
[ -d .pack/train ] || { echo "no .pack/train: pack the frames first (python scripts/packed_frames.py pack DATA .pack) and carry .pack" >&2; exit 1; }
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
cache=$(mktemp -d)
python3 - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
PY
sampling=(--max-side 2048 --frames-per-video 32)   # as the frames were packed with (they key the cache)
python3 scripts/packed_frames.py fill .pack "$cache" "${sampling[@]}"
python3 -m vsr finetune .pack/train --val .pack/val --cache-dir "$cache" "${sampling[@]}" \
  --from "$from" --steps "$steps" --val-every 1000 --checkpoint "$cache/run.ckpt" -q "$@" \
  -o "$out/$name.safetensors" 2>&1 | tee "$out/$name.log"
echo "weights: $out/$name.safetensors"
