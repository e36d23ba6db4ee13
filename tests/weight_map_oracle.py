"""The naive U-Net weight map: one full-image distance transform per object, O(objects x pixels).

The oracle for tests/test_weights.py and the baseline of benchmarks/test_bench_weights.py. Written
straight from the definition in unet_fast/weights.py, without its cut-off or windows.
"""
import numpy as np
from scipy import ndimage


def unet_weight_map_naive(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                          class_weights="balanced") -> np.ndarray:
    """Weight map of one [H, W] or batched [N, H, W] numpy label image (float32)."""
    if labels.ndim == 3:
        return np.stack([unet_weight_map_naive(image, w0, sigma, class_weights) for image in labels])
    foreground = labels > 0
    if class_weights == "balanced":
        counts = {0: np.sum(~foreground), 1: np.sum(foreground)}
        present = sum(1 for c in counts.values() if c > 0)
        class_weights = {c: labels.size / (present * n) if n else 0.0 for c, n in counts.items()}
    elif class_weights is None:
        class_weights = (1.0, 1.0)
    w_c = np.where(foreground, class_weights[1], class_weights[0])

    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    objects = [k for k in np.unique(labels) if k != 0]
    for k in objects:
        d = ndimage.distance_transform_edt(labels != k)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    border = np.zeros(labels.shape)
    if len(objects) >= 2:
        border = w0 * np.exp(-(d1 + d2) ** 2 / (2 * sigma ** 2)) * ~foreground
    return (w_c + border).astype(np.float32)
