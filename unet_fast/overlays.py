"""Overlays: an image with object outlines drawn on it, as a small PNG, to check results at a glance.

Predicted objects are outlined in yellow and, where given, the true objects in cyan (pixels on both
outlines in white). Large images are shown subsampled (every k-th pixel, so that the longer side is
at most ``max_side``), read lazily where the arrays are lazy: outlines are then those of the
subsampled labels, good for a glance, not for measuring. Small images are enlarged (each pixel
repeated) to at least ``max_side / 2``, so that outlines stay thinner than the objects.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .image_io import write_bytes_atomically

__all__ = ["outlines", "render_overlay", "write_overlay", "PREDICTED", "TRUE", "BOTH"]

PREDICTED = (255, 220, 0)
TRUE = (0, 220, 255)
BOTH = (255, 255, 255)


def outlines(labels: np.ndarray) -> np.ndarray:
    """The pixels of each object (label > 0) that have a 4-neighbour of another label or the image border."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    return edge & (labels > 0)


def _display(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 of a (h, w) or (C, h, w) image: RGB for 3 channels, else the first channel,
    stretched between its 1st and 99.8th percentiles."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = np.moveaxis(image, 0, -1) if image.shape[0] == 3 else image[0]
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, (1.0, 99.8)) if finite.size else (0.0, 1.0))
    scaled = np.clip((np.nan_to_num(image) - low) / max(high - low, 1e-12), 0, 1)
    grey = (scaled * 255).astype(np.uint8)
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=-1)


def subsample_step(height: int, width: int, max_side: int) -> int:
    """Every how many pixels an image of height x width is shown to fit ``max_side``."""
    if not isinstance(max_side, int) or max_side < 16:
        raise ValueError(f"max_side must be an integer >= 16, got {max_side!r}")
    return max(1, math.ceil(max(height, width) / max_side))


def render_overlay(image, predicted, truth=None, *, max_side: int = 1024) -> np.ndarray:
    """(h, w, 3) uint8: ``image`` ((H, W) or (C, H, W), any array indexable by slices) with the outlines
    of ``predicted`` (instance or class labels, (H, W)) and of ``truth`` if given, subsampled to fit
    ``max_side``."""
    height, width = predicted.shape[-2:]
    if tuple(image.shape[-2:]) != (height, width) or (truth is not None and tuple(truth.shape) != (height, width)):
        raise ValueError(f"image {tuple(image.shape)}, predicted {tuple(predicted.shape)}"
                         + (f" and truth {tuple(truth.shape)}" if truth is not None else "")
                         + " must have the same height and width")
    step = subsample_step(height, width, max_side)
    sample = (slice(None, None, step), slice(None, None, step))
    zoom = max(1, (max_side // 2) // max(-(-height // step), -(-width // step)))

    def enlarged(array):
        return np.repeat(np.repeat(np.asarray(array), zoom, axis=-2), zoom, axis=-1) if zoom > 1 else np.asarray(array)

    picture = _display(enlarged(image[(Ellipsis, *sample)]))
    mine = outlines(enlarged(predicted[sample]))
    if truth is not None:
        theirs = outlines(enlarged(truth[sample]))
        picture[theirs & ~mine] = TRUE
        picture[theirs & mine] = BOTH
    picture[mine & (truth is None or ~theirs)] = PREDICTED
    return picture


def write_overlay(path, image, predicted, truth=None, *, max_side: int = 1024) -> Path:
    """``render_overlay`` written as a PNG, atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(render_overlay(image, predicted, truth, max_side=max_side)).save(buffer, format="PNG")
    return write_bytes_atomically(path, buffer.getvalue())
