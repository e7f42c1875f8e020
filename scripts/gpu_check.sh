#!/usr/bin/env bash
# One script for whoever has a GPU for a few minutes (under 10 on an H100/H200): the whole test suite
# with the GPU present (CUDA tests included; tests needing the ffmpeg binary skip), what FFmpeg says
# of NVENC there, then the GPU benchmark (scripts/benchmark.py --device cuda: the generator, libx264
# alone with 1, 2 and 4 instances, end to end with one encoder and with chunks), then end to end alone
# on a 1440-frame 1080p clip (1, the default and 8 encoders), everything printed and, when $OUT is set,
# copied there (gpu_tests.log, gpu_benchmark.log, gpu_e2e.log). At most 10 minutes in all (the timeouts).
#
# Needs torch with CUDA, numpy, rich, click, safetensors, einops, pytest, PyAV and spandrel. Where pip
# cannot reach an index (the project's lent GPU machine has all but PyAV and spandrel), carry those two
# as wheels in .whl/ (36 MB + 0.3 MB; the tree is ~25 MB, under the 64 MiB a call carries). Once, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl av==18.1.0 spandrel==0.4.2
# then run with carry [".whl"]. This script installs .whl/*.whl into /tmp/site first when .whl exists.
# Training there is scripts/gpu_train.sh's, a call of its own: its frames (.pack, 27 MiB) and the av
# wheel do not fit one call's 64 MiB together, and it needs no PyAV.
# Usage: bash scripts/gpu_check.sh [BENCHMARK ARGS...]   e.g.  --train-seconds 30 --sizes 480x270
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=${OUT:-$(mktemp -d)}
python3 - <<'PY'
import torch, av
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, PyAV {av.__version__}, "
      f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
PY
echo "== tests (GPU present: --device auto picks CUDA) =="
parallel=""
python3 -c "import xdist" 2>/dev/null && parallel="-n 8"
timeout 170 python3 -m pytest -q -p no:cacheprovider $parallel -rs --ignore=tests/test_install.py tests 2>&1 | tee "$out/gpu_tests.log"
echo "== hardware encoders =="
python3 -c "from vsr import hwenc; [print(n, '->', hwenc.hardware_problem(n) or 'opens') for n in ('h264_nvenc', 'hevc_nvenc', 'av1_nvenc')]" 2>&1 | tee "$out/gpu_hwenc.log"
echo "== benchmark =="
timeout 300 python3 scripts/benchmark.py --device cuda --frames 240 --train-seconds 15 "$@" 2>&1 | tee "$out/gpu_benchmark.log"
echo "== end to end on a long clip (issue #29's targets: chunks need a clip of many chunks per encoder) =="
# The suite above runs end to end on its 240-frame clips: two 120-frame chunks, so at most two encoders
# work, and the last starts only after the first chunk's frames are made (the H200's 47.7 fps against 64
# for four x264 instances alone). 1440 frames at 1080p are 12 chunks, three per encoder: the ramp and the
# tail amortise (longer is fairer still; the device tool stops a command at 600 s).
timeout 110 python3 scripts/benchmark.py --device cuda --e2e-frames 1440 --sizes 480x270 2>&1 | tee "$out/gpu_e2e.log"
echo "logs: $out"
