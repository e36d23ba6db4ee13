"""How a trained 2-class model holds up when the objects are larger or smaller than in its training images,
as at another magnification, binning or cell type.

    python 2026-11-27-scale-probe.py MODEL IMAGE LABELS [MODEL IMAGE LABELS ...]

Each IMAGE (a greyscale TIFF) and its LABELS (instances) are resampled together by factors 0.67-1.5 (the image
linearly, the labels by nearest neighbour, ``scipy.ndimage.zoom``) and scored with ``evaluate_model`` and its
default instance rules: one JSON line per (model, factor) with foreground IoU, object F1 and the object counts.
Segmentation does not measure object sizes (it has no labels), so a model meets such images at their own scale.
Used for session 25's rows of 2026-11-26-recipe-experiments.md ("Objects of other sizes").
"""
import json
import sys

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

from unet_fast.evaluation import evaluate_model

FACTORS = (0.67, 0.8, 1.0, 1.25, 1.5)


def main(argv) -> None:
    if len(argv) % 3 or not argv:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    for model, image_path, labels_path in zip(argv[0::3], argv[1::3], argv[2::3]):
        image = tifffile.imread(image_path).astype(np.float32)
        labels = tifffile.imread(labels_path)
        for factor in FACTORS:
            scaled = ndi.zoom(image, factor, order=1, mode="mirror") if factor != 1 else image
            scaled_labels = ndi.zoom(labels, factor, order=0, mode="mirror") if factor != 1 else labels
            scores = evaluate_model(model, [scaled], [scaled_labels]).images[0]
            print(json.dumps({"model": model, "image": image_path, "factor": factor, "iou": round(scores.iou, 4),
                              "f1": round(scores.f1, 4), "tp": scores.true_positives, "fp": scores.false_positives,
                              "fn": scores.false_negatives}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
