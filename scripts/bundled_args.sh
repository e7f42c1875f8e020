# Sourced by scripts/train_bundled_2.sh, _3.sh and _4.sh, whose arguments are DATA OUT: it reads them,
# makes OUT, and writes there the first vsr_x4_psnr (scripts/train_bundled.sh (a)) they all start from,
# as weights/ held it (at c546bc0) until scripts/train_bundled_4.sh's second generation replaced it.
data=${1:?usage: $0 DATA OUT   (DATA as made by scripts/prepare_data_2.sh)}
out=${2:?usage: $0 DATA OUT}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
gen1="$out/vsr_x4_psnr_gen1.safetensors"
git -C "$here" show c546bc0:weights/vsr_x4_psnr.safetensors >"$gen1"
