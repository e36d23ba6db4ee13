"""How a trained 2-class model holds up when the images change as another microscope would change them.

    python 2026-11-26-robustness-probe.py [--scales] MODEL IMAGE LABELS [MODEL IMAGE LABELS ...]

Each IMAGE (a greyscale TIFF) is changed in ways a new instrument or day brings (a linear illumination ramp,
vignetting, another gamma, camera noise, defocus, a dim 16-bit camera with an offset, haze) and scored against
LABELS (instances) with ``evaluate_model`` and its default instance rules: one JSON line per (model, change) with
foreground IoU, object F1 and the object counts. Amounts are in units of the image's 1st-99.8th percentile range
(the range the default normalisation maps to [0, 1]). Used for session 24's rows of
2026-11-26-recipe-experiments.md ("Imaging conditions").

With ``--scales`` the image and its labels are instead resampled together by factors 0.67-1.5 (the image
linearly, the labels by nearest neighbour), as another magnification, binning or cell line shows the objects;
segmentation does not measure object sizes, so a model meets such images at their own scale. Each line also has
the ``factor``. Used for session 25's rows ("Objects of other sizes"; 2026-11-27-scale-probe.jsonl).
"""
import json
import sys

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

from unet_fast.evaluation import evaluate_model


SCALES = (0.67, 0.8, 1.0, 1.25, 1.5)


def scales(image: np.ndarray, labels: np.ndarray):
    for factor in SCALES:
        if factor == 1:
            yield factor, image, labels
        else:
            yield (factor, ndi.zoom(image, factor, order=1, mode="mirror"),
                   ndi.zoom(labels, factor, order=0, mode="mirror"))


def changes(image: np.ndarray, rng: np.random.Generator):
    lo, hi = np.percentile(image, 1), np.percentile(image, 99.8)
    span = hi - lo
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    r2 = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.5
    unit = np.clip((image - lo) / span, 0, None)
    haze = ndi.gaussian_filter(image, 15)
    yield "as is", image
    yield "ramp +40% of range", image + 0.4 * span * xx
    yield "ramp +80% of range", image + 0.8 * span * xx
    yield "vignette x0.5 at corners", lo + (image - lo) * (1 - 0.5 * r2)
    yield "gamma 0.5", lo + span * unit ** 0.5
    yield "gamma 2", lo + span * unit ** 2
    yield "noise sd 5%", image + rng.normal(0, 0.05 * span, image.shape)
    yield "noise sd 10%", image + rng.normal(0, 0.10 * span, image.shape)
    yield "blur sigma 1", ndi.gaussian_filter(image, 1.0)
    yield "blur sigma 2", ndi.gaussian_filter(image, 2.0)
    yield "dim x0.2, offset 100 (16-bit camera)", 100 + 0.2 * image
    yield "haze: +30% of range, blurred image", image + 0.3 * span * haze / max(haze.max(), 1e-6)


def main(argv) -> None:
    by_scale = argv[:1] == ["--scales"]
    argv = argv[1:] if by_scale else argv
    if len(argv) % 3 or not argv:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    for model, image_path, labels_path in zip(argv[0::3], argv[1::3], argv[2::3]):
        image = tifffile.imread(image_path).astype(np.float32)
        labels = tifffile.imread(labels_path)
        if by_scale:
            cases = ((f"objects resampled by {factor:g}", changed, changed_labels, {"factor": factor})
                     for factor, changed, changed_labels in scales(image, labels))
        else:
            cases = ((name, changed, labels, {}) for name, changed in changes(image, np.random.default_rng(0)))
        for name, changed, changed_labels, extra in cases:
            scores = evaluate_model(model, [changed.astype(np.float32)], [changed_labels]).images[0]
            print(json.dumps({"model": model, "image": image_path, "change": name, **extra,
                              "iou": round(scores.iou, 4), "f1": round(scores.f1, 4), "tp": scores.true_positives,
                              "fp": scores.false_positives, "fn": scores.false_negatives}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
