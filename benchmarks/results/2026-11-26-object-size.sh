#!/bin/bash
# The object-size experiment (unet_fast.rescale): the dev image's halves enlarged 2.5x (nuclei of ~59 px)
# and shrunk to 0.5x (~12 px); train on the top half with every default and a 4-minute --time-limit
# (seed $1), with and without the object-size resampling (--object-size 0), then score the bottom half
# with `unet-fast evaluate`. Run in the venv unet_fast is installed in; writes data/, models/, logs/, eval/ here.
set -eu
seed=${1:-0}
dev=${DEV:-../shared/data/real-nuclei-dev}
export OMP_NUM_THREADS=1
python - "$dev" <<'PY'
import os, sys
import numpy as np, tifffile
from scipy import ndimage
image = tifffile.imread(f"{sys.argv[1]}/images/nuclei.tif").astype(np.float32)
labels = tifffile.imread(f"{sys.argv[1]}/labels/nuclei.tif")
for zoom, tag in ((2.5, "large"), (0.5, "small")):
    for half, rows in (("top", slice(0, 256)), ("bottom", slice(256, 512))):
        # enlarge: cubic; shrink: linear with grid_mode (area-like); labels: nearest
        z_image = ndimage.zoom(image[rows], zoom, order=3 if zoom > 1 else 1, grid_mode=zoom < 1,
                               mode="grid-constant" if zoom < 1 else "constant")
        z_labels = ndimage.zoom(labels[rows], zoom, order=0, grid_mode=zoom < 1,
                                mode="grid-constant" if zoom < 1 else "constant")
        for kind, data in (("images", np.clip(z_image, 0, None).astype(np.uint16)), ("labels", z_labels)):
            os.makedirs(f"data/{tag}/{half}/{kind}", exist_ok=True)
            tifffile.imwrite(f"data/{tag}/{half}/{kind}/n.tif", data)
PY
mkdir -p models logs eval
for tag in large small; do
  for mode in scaled plain; do
    run=$tag-$mode-s$seed
    extra=(); [ $mode = plain ] && extra=(--object-size 0)
    start=$(date +%s)
    unet-fast train --images data/$tag/top/images --labels data/$tag/top/labels -o models/$run.safetensors \
      --seed "$seed" --time-limit 4 --threads 1 --no-progress "${extra[@]}" > logs/$run.train.log 2>&1
    echo "train_seconds $(( $(date +%s) - start ))" >> logs/$run.train.log
    unet-fast evaluate -m models/$run.safetensors --images data/$tag/bottom/images --labels data/$tag/bottom/labels \
      -o eval/$run > logs/$run.eval.log 2>&1
  done
done
