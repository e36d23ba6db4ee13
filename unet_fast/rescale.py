"""Images seen at the object size a model was trained for: the scale, and resampling by it.

A U-Net learns the objects at the size in pixels it was shown: a model trained on nuclei 24 px across
misses the borders between touching nuclei 60 px across (its receptive field and its weight map's
width are in pixels). So training measures its labels' objects and, when they are far from the
recipe's ``object_size``, resamples every training image by ``scale = object_size / median diameter``;
the scale is stored with the model, and inference resamples each image by it, predicts, and resamples
the logits back (``predict_tiled``): labels, instances and probabilities come on the image's own grid.

Resampling is linear and separable, each output pixel a weighted sum of input pixels in a fixed
order: a triangle filter one input pixel wide when enlarging (bilinear) and ``1 / scale`` wide when
shrinking (antialiased), the taps beyond the image dropped and the rest renormalised (as
``torch.nn.functional.interpolate(..., mode="bilinear", antialias=True, align_corners=False)``). A
window of the result reads only the input pixels under it and equals the same window of the whole
result exactly, which keeps tiled inference exact and lets huge images stream.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["Resampled", "resample_image", "resample_labels", "object_diameters", "choose_scale", "scaled_size",
           "check_scale", "model_scale", "MAX_SCALE", "TOLERANCE"]

#: scales outside [1 / MAX_SCALE, MAX_SCALE] are refused: a mistake (or a hostile model file), not a magnification
MAX_SCALE = 16.0
#: objects within this factor of the recipe's object size are left as they are (no resampling)
TOLERANCE = 1.25
#: input pixels a Resampled view reads at once (a window's rows are read in bands of about this many)
READ_PIXELS = 2 ** 24


def check_scale(scale, argument: str = "scale") -> float:
    """``scale`` as a float, refused (ValueError naming ``argument``) unless finite and within the limits."""
    from .checks import BadArgument

    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not math.isfinite(scale) or not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        raise BadArgument(argument, f"{argument} must be a number in [1/{MAX_SCALE:g}, {MAX_SCALE:g}] (the factor "
                                    f"images are resampled by before the network), got {scale!r}")
    return float(scale)


def model_scale(model, scale=None, argument: str = "scale") -> float:
    """The factor images are resampled by for ``model``: ``scale`` where given, else the model's own
    ``input_scale`` (1 for a model without one), checked (an error names ``argument``)."""
    return check_scale(getattr(model, "input_scale", 1.0) if scale is None else scale, argument)


def scaled_size(size: int, scale: float) -> int:
    """The length of an axis of ``size`` pixels resampled by ``scale`` (at least 1)."""
    return max(1, int(round(size * scale)))


def axis_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (size_out, K): output pixel j = sum_k weights[j, k] * input[indices[j, k]].
    Pixel centres map as (j + 0.5) / s - 0.5 with s = size_out / size_in; dropped taps have weight 0."""
    s = size_out / size_in
    support = max(1.0, 1.0 / s)                     # half-width of the triangle, in input pixels
    centre = (np.arange(size_out, dtype=np.float64) + 0.5) / s - 0.5
    first = np.floor(centre - support).astype(np.int64) + 1
    taps = int(math.ceil(2 * support)) + 1
    indices = first[:, None] + np.arange(taps)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs(indices - centre[:, None]) / support)
    inside = (indices >= 0) & (indices < size_in)
    weights = np.where(inside, weights, 0.0)
    weights /= weights.sum(1, keepdims=True)
    return np.clip(indices, 0, size_in - 1), weights.astype(np.float32)


def _apply_taps(block: np.ndarray, indices: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Resample ``block`` along ``axis`` (indices relative to the block), taps summed in order."""
    block = np.moveaxis(block, axis, -1)
    out = np.zeros(block.shape[:-1] + (indices.shape[0],), np.float32)
    for k in range(indices.shape[1]):
        out += block[..., indices[:, k]] * weights[:, k]
    return np.moveaxis(out, -1, axis)


class Resampled:
    """A lazy view of ``image`` (any array-like: numpy, memmap, zarr; axes (..., Y, X)) resampled to
    ``size`` = (height, width) on its last two axes, float32. Indexing takes integers or slices on the
    leading axes and unit-step slices on Y and X; only the input pixels under the window are read.
    ``transform``, if given, maps each raw block read (its leading axes as indexed) to float32 first
    (e.g. the intensity normalisation); it must act pixel by pixel, as a window's rows are read in bands of
    about READ_PIXELS input pixels."""

    def __init__(self, image, size: tuple[int, int], transform=None):
        self.image = image
        self.size = (int(size[0]), int(size[1]))
        self.transform = transform
        shape = tuple(image.shape)
        self.shape = shape[:-2] + self.size
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)
        self._taps = (axis_taps(shape[-2], self.size[0]), axis_taps(shape[-1], self.size[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        whole = self[(slice(None),) * self.ndim]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"too many indices for a Resampled view of shape {self.shape}")
        lead, (ky, kx) = key[:-2], key[-2:]
        picks = []
        for k, n, (indices, weights) in ((ky, self.size[0], self._taps[0]), (kx, self.size[1], self._taps[1])):
            if not isinstance(k, slice) or k.step not in (None, 1):
                raise IndexError("a Resampled view takes unit-step slices on its last two axes")
            start, stop, _ = k.indices(n)
            stop = max(start, stop)
            picks.append((indices[start:stop], weights[start:stop]))
        (rows, row_weights), (columns, column_weights) = picks
        low = int(columns.min()) if len(columns) else 0
        high = int(columns.max()) + 1 if len(columns) else 0
        columns = columns - low
        # the input rows under the window, read in bands of about READ_PIXELS: a window of an image shrunk by 16
        # reads 256 input pixels a pixel (a 2048 px tile: 2^30 of them, 4 GiB as float32), and a band of logits
        # resampled back from an image enlarged by 16 as many; every output row is computed as from one read
        planes = math.prod(len(range(*k.indices(n))) if isinstance(k, slice) else int(np.size(k))
                           for k, n in zip(lead, self.image.shape[:-2]))
        band_rows = max(1, READ_PIXELS // max(1, planes * (high - low)))
        parts, start = [], 0
        while True:
            stop = len(rows) if not len(rows) else max(start + 1, int(np.searchsorted(
                rows[:, -1], rows[start, 0] + band_rows - 1, side="right")))
            first = int(rows[start:stop].min()) if stop > start else 0
            last = int(rows[start:stop].max()) + 1 if stop > start else 0
            block = np.asarray(self.image[lead + (slice(first, last), slice(low, high))])
            block = self.transform(block) if self.transform is not None else block.astype(np.float32, copy=False)
            block = _apply_taps(block, rows[start:stop] - first, row_weights[start:stop], axis=block.ndim - 2)
            parts.append(_apply_taps(block, columns, column_weights, axis=block.ndim - 1))
            start = stop
            if start >= len(rows):
                break
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-2)


def resample_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (..., H, W) resampled linearly to (..., *size), float32."""
    return Resampled(np.asarray(image), size)[...]


def resample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label image (..., H, W) resampled to (..., *size) by the nearest pixel centre (values unchanged)."""
    labels = np.asarray(labels)
    rows = _nearest(labels.shape[-2], size[0])
    columns = _nearest(labels.shape[-1], size[1])
    return labels[..., rows[:, None], columns[None, :]]


def _nearest(size_in: int, size_out: int) -> np.ndarray:
    return np.minimum(((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)


def object_diameters(instances: np.ndarray) -> np.ndarray:
    """The equivalent diameter (that of the disc of the same area), px, of every object of an instance
    label image (objects cut by the image border included: their visible part)."""
    values, areas = np.unique(np.asarray(instances), return_counts=True)   # not bincount: ids may be huge
    return 2.0 * np.sqrt(areas[values != 0] / math.pi)


def choose_scale(diameters, object_size: float | None) -> float:
    """The factor that brings the median of ``diameters`` to ``object_size`` px; 1.0 when there is no
    object, no ``object_size``, or the median is within ``TOLERANCE`` of it; clamped to the limits."""
    diameters = np.asarray(diameters, np.float64)
    if object_size is None or diameters.size == 0:
        return 1.0
    factor = float(object_size) / float(np.median(diameters))
    if 1 / TOLERANCE <= factor <= TOLERANCE:
        return 1.0
    return float(min(MAX_SCALE, max(1 / MAX_SCALE, factor)))
