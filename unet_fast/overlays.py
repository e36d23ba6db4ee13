"""Overlays: an image with object outlines drawn on it, as a small PNG, to check results at a glance.

Predicted objects are outlined in yellow and, where given, the true objects in cyan (pixels on both
outlines in white); pixels nobody annotated (sparse labels, ``ignored``) are dimmed and hatched in magenta,
so that an object there, which is scored neither as found nor as false, is told from a false positive.
Large images are shown subsampled (every k-th pixel, so that the longer side is at most ``max_side``),
read lazily where the arrays are lazy: outlines are then those of the subsampled labels, good for a
glance, not for measuring. Small images are enlarged (each pixel repeated) to at least ``max_side / 2``,
so that outlines stay thinner than the objects.

Every overlay carries a PNG text chunk, ``MARKER``: ``segment --overlay`` and ``evaluate --overlay`` replace
only overlays that carry it (``check_replaceable``), never a user's file, folder or symlink of the same name.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

from .image_io import write_bytes_atomically

__all__ = ["outlines", "render_overlay", "write_overlay", "written_by_unet_fast", "check_replaceable", "MARKER",
           "PREDICTED", "TRUE", "BOTH", "HATCH"]

PREDICTED = (255, 220, 0)
TRUE = (0, 220, 255)
BOTH = (255, 255, 255)
#: the hatching of the pixels nobody annotated: one diagonal line of this colour every HATCH_PERIOD pixels,
#: the image between the lines at DIMMED of its brightness
HATCH = (255, 0, 255)
HATCH_PERIOD = 6
DIMMED = 0.5

#: the key of the PNG text chunk that marks an overlay as written here (its value: the version that wrote it)
MARKER = "unet_fast overlay"


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


def render_overlay(image, predicted, truth=None, *, ignored=None, max_side: int = 1024) -> np.ndarray:
    """(h, w, 3) uint8: ``image`` ((H, W) or (C, H, W), any array indexable by slices) with the outlines
    of ``predicted`` (instance or class labels, (H, W)) and of ``truth`` if given, subsampled to fit
    ``max_side``; ``ignored`` ((H, W) bool, or None): the pixels nobody annotated, dimmed and hatched
    (``HATCH``), under the outlines."""
    height, width = predicted.shape[-2:]
    others = [(name, array) for name, array in (("truth", truth), ("ignored", ignored)) if array is not None]
    if tuple(image.shape[-2:]) != (height, width) or any(tuple(a.shape) != (height, width) for _, a in others):
        raise ValueError(f"image {tuple(image.shape)}, predicted {tuple(predicted.shape)}"
                         + "".join(f" and {name} {tuple(array.shape)}" for name, array in others)
                         + " must have the same height and width")
    step = subsample_step(height, width, max_side)
    sample = (slice(None, None, step), slice(None, None, step))
    zoom = max(1, (max_side // 2) // max(-(-height // step), -(-width // step)))

    def enlarged(array):
        return np.repeat(np.repeat(np.asarray(array), zoom, axis=-2), zoom, axis=-1) if zoom > 1 else np.asarray(array)

    picture = _display(enlarged(image[(Ellipsis, *sample)]))
    if ignored is not None:
        unannotated = enlarged(ignored[sample]).astype(bool, copy=False)
        rows, cols = np.indices(unannotated.shape)
        line = (rows + cols) % HATCH_PERIOD == 0
        picture[unannotated & ~line] = (picture[unannotated & ~line] * DIMMED).astype(np.uint8)
        picture[unannotated & line] = HATCH
    mine = outlines(enlarged(predicted[sample]))
    if truth is not None:
        theirs = outlines(enlarged(truth[sample]))
        picture[theirs & ~mine] = TRUE
        picture[theirs & mine] = BOTH
    picture[mine & (truth is None or ~theirs)] = PREDICTED
    return picture


def write_overlay(path, image, predicted, truth=None, *, ignored=None, max_side: int = 1024) -> Path:
    """``render_overlay`` written as a PNG carrying ``MARKER``, atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from . import __version__

    marked = PngInfo()
    marked.add_text(MARKER, __version__)
    buffer = io.BytesIO()
    Image.fromarray(render_overlay(image, predicted, truth, ignored=ignored, max_side=max_side)).save(
        buffer, format="PNG", pnginfo=marked)
    return write_bytes_atomically(path, buffer.getvalue())


def written_by_unet_fast(path) -> bool:
    """Whether ``path`` is an overlay that ``write_overlay`` wrote: a regular file (not a symlink, which this
    package never writes) whose PNG header carries ``MARKER``. Only the header is read, not the pixels."""
    from PIL import Image

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)    # a user's large PNG: not ours
            with Image.open(path, formats=["PNG"]) as picture:
                return MARKER in picture.info      # text chunks before the pixels, where write_overlay puts it
    except Exception:   # unreadable, not a PNG, a declared size past Pillow's limit: not ours
        return False


def check_replaceable(overlays, argument: str) -> None:
    """BadArgument (``argument``) when one of ``overlays`` (paths to be written by ``write_overlay``) exists and
    is not an overlay written here (``written_by_unet_fast``): a file, folder or symlink of the user's under
    that name is never replaced."""
    from .checks import BadArgument

    for path in map(Path, overlays):
        if not (path.exists() or path.is_symlink()) or written_by_unet_fast(path):
            continue
        what = ("a symlink, which unet-fast never writes" if path.is_symlink() else
                "a folder, which unet-fast never writes" if path.is_dir() else
                f"a file that unet-fast did not write (its overlays carry the PNG text chunk {MARKER!r})")
        raise BadArgument(argument, f"the overlay {str(path)!r} would replace {what}; nothing was written. Move or "
                                    f"rename it, or choose another output folder")
