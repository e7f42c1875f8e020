#!/usr/bin/env bash
# A second held-out set, for choosing between recipes without choosing on the held-out set the scores are
# reported on (scripts/prepare_data_2.sh's val/). Never trained on, never used for validation:
#   scikit-image 0.26.0's camera (CC0, Lav Varshney), coins (Brooklyn Museum, no known copyright restrictions) and
#   moon (greyscale photos, written as RGB), and ihc (a colour micrograph, CMMI, no known copyright restrictions):
#   sources and terms in the docstrings of skimage/data/_fetchers.py; matplotlib 3.11.2's sample grace_hopper.jpg
#   (the US Navy's portrait of Grace Hopper, a US government work in the public domain).
# motorcycle_right is left out: it is the other half of the stereo pair whose left view is in val/.
# Usage: scripts/prepare_selection_data.sh DEST   (needs pip)
set -euo pipefail
dest=${1:?usage: $0 DEST}
mkdir -p "$dest"
work=$(mktemp -d)
(cd "$work" && pip download --no-deps --quiet scikit-image==0.26.0 matplotlib==3.11.2 \
   && unzip -q -o scikit_image-*.whl 'skimage/data/*' && unzip -q -o matplotlib-*.whl 'matplotlib/mpl-data/sample_data/*')
python - "$work" "$dest" <<'PY'
import sys
from PIL import Image
work, dest = sys.argv[1:]
for name in ("camera", "coins", "moon", "ihc"):
    Image.open(f"{work}/skimage/data/{name}.png").convert("RGB").save(f"{dest}/{name}.png")
Image.open(f"{work}/matplotlib/mpl-data/sample_data/grace_hopper.jpg").convert("RGB").save(f"{dest}/grace_hopper.png")
PY
rm -rf "$work"
echo "prepared $dest ($(ls "$dest" | wc -l) images)"
