"""The folds of the 4-fold cross-validation of 2026-11-26-recipe-experiments.md (session 19): the dev image's
four row quarters of 128 x 256 px; fold k scores quarter k and trains on the rest (one or two blocks).
Writes data/fold{k}/{train,test}/{images,labels}/ and data/whole/ in the current folder.
Usage: python 2026-11-26-recipe-cv-folds.py [DEV_DATA]   (default ../shared/data/real-nuclei-dev)"""
import sys
from pathlib import Path

import numpy as np
import tifffile

source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/real-nuclei-dev")
image = tifffile.imread(source / "images" / "nuclei.tif")
labels = tifffile.imread(source / "labels" / "nuclei.tif")


def write(folder: str, name: str, rows: slice) -> None:
    for kind, array in (("images", image), ("labels", labels)):
        Path(folder, kind).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(Path(folder, kind, f"{name}.tif"), np.ascontiguousarray(array[rows]))


for k in range(4):
    start, stop = 128 * k, 128 * (k + 1)
    write(f"data/fold{k}/test", f"q{k}", slice(start, stop))
    for a, b in ((0, start), (stop, 512)):
        if b > a:
            write(f"data/fold{k}/train", f"rows{a}-{b - 1}", slice(a, b))
write("data/whole", "nuclei", slice(0, 512))
