"""What the napari widget does, without Qt: segment an image layer's data, tile by tile.

The widget runs ``Segmentation.steps`` in napari's thread worker: it reads the model file first (through a
``ModelCache``, so a second run reads nothing), then yields the fraction done after each output tile (a
progress bar) and returns the labels; ``cancel`` stops the prediction after the tile in flight, or the
instance labelling that follows it after the block in flight, or, while the model is read, the run before
its first tile. ``labels_layer`` describes the Labels layer to add, on the image's grid (scale, translate,
units), so the two overlay in world coordinates.
"""
from __future__ import annotations

import collections.abc
import contextlib
import math
import queue
import re
import threading
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .. import termination
from ..image_io import DEFAULT_MAX_PIXELS, ImageTooLargeError
from ..inference import predict_tiled
from ..instances import instance_dtype
from ..model_file import class_names_of, load_model
from ..pixel_size import MICROMETERS_PER_UNIT, PixelSize, scale_warning
from ..rescale import model_scale

RESULTS = ("instances", "classes")   # objects, one id each; or the class of every pixel


# The widget's words for the command-line options that messages shared with `unet-fast segment` suggest: the widget
# has a precision control but neither --nonfinite nor --scale, which only a Python call (napari's console) offers.
_CALL = "unet_fast.inference.predict_tiled(unet_fast.load_model(MODEL), LAYER.data, output='instances', "
_WIDGET_WORDING = (
    (r"Normalization\(nonfinite='zero'\) \(for unet-fast segment and evaluate: --nonfinite zero\)",
     f"the widget has no such option; in napari's console: {_CALL}nonfinite='zero')"),
    (r"pass --scale (\S+) \(predict_tiled\(scale=\.\.\.\)\)",
     f"the widget has no scale of its own: segment it in napari's console with {_CALL}scale=\\1)"),
    (r" for --scale;", " for predict_tiled(scale=...) to make up for;"),
    (r"\(unet-fast segment, evaluate: --dtype bf16\)", "(the widget's precision)"),
)


def widget_wording(message: str) -> str:
    """``message`` (an error or warning worded for ``unet-fast segment``) with the widget's controls, or the Python
    call, in place of command-line options the widget does not have."""
    for pattern, replacement in _WIDGET_WORDING:
        message = re.sub(pattern, replacement, message)
    return message


def size_problem(data, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, scale: float = 1.0) -> str | None:
    """Why the widget refuses an image layer's ``data`` (or None): more pixels than ``max_pixels``, the limit
    ``unet-fast segment`` sets by default, counted as that command counts them: resampled by ``scale`` (a model's
    ``input_scale``; the network sees scale^2 times the pixels). The widget holds its result in memory, whole (a
    lazy layer's too), where the command streams it to disk."""
    if isinstance(data, collections.abc.Sequence):      # a multiscale layer: its full resolution is segmented
        if not len(data):
            return None                     # layer_input says what is wrong with it
        data = data[0]
    shape = tuple(int(n) for n in data.shape)
    pixels = math.prod(shape)
    scaled = int(pixels * scale * scale)
    if scaled <= max_pixels:
        return None
    held = f"{pixels:,} pixels" + (f" resampled by {scale:.3g} (the model's input_scale) make {scaled:,}"
                                   if scale != 1.0 else "")
    return (f"{name} holds {held} (shape {shape}), above the limit of {max_pixels:,} (unet-fast "
            f"segment's default): the widget would hold its labels in memory, whole; segment its file with "
            f"unet-fast segment -i IMAGE -o OUTDIR -m MODEL, which streams the labels to disk, and open them here")


class Cancelled(Exception):
    """The user stopped the segmentation."""


class UnreadableModel(Exception):
    """A model file that cannot be read (missing, not a model, refused as unsafe): the message, meant for the
    user, names the file and says why."""


class ModelCache:
    """The model last read, kept while its file is unchanged on disk (same modification time and size) and it is
    asked for on the same device: the widget's next Segment reads nothing again. One model at a time: a model
    on a GPU holds its memory."""

    def __init__(self):
        self._key = self._model = None
        self._lock = threading.Lock()      # ``get`` runs in worker threads: one read at a time

    @staticmethod
    def _key_of(path: Path, device: str):
        stat = path.stat()
        return path.resolve(), stat.st_mtime_ns, stat.st_size, device

    def holds(self, path, device: str) -> bool:
        """Whether ``get(path, device)`` would return at once, without reading the file."""
        try:
            return self._key_of(Path(path), device) == self._key    # one attribute read: no lock needed
        except OSError:
            return False

    def get(self, path, device: str):
        """The model in ``path`` on ``device``, read only when not held; UnreadableModel when it cannot be read."""
        path = Path(path)
        with self._lock:
            try:
                key = self._key_of(path, device)
                if key != self._key:
                    self._key = self._model = None      # the old model's (GPU) memory freed before the new one's taken
                    self._model = load_model(path, device=device)
                    self._key = key
            except torch.OutOfMemoryError:      # not the file's fault: steps_or_problem names the device
                raise
            except Exception as error:
                raise UnreadableModel(f"cannot read the model {path.name}: {error}") from error
            return self._model


class LayerPixels:
    """A lazy view of an image layer's data as ``predict_tiled`` reads it: the axes ``dropped`` (of length 1, as an
    OME-Zarr's t and c) left out and, for an RGB(A) layer (..., bands last), its first ``bands`` bands put before Y
    and X: (C, Y, X), or (Z, C, Y, X) for a stack. Indexing reads only what is asked for, so a dask or zarr layer
    streams tile by tile (np.asarray of an RGB layer, and indexing a zarr array at 0, read it whole)."""

    def __init__(self, data, dropped=(), bands: int | None = None):
        self._data, self._bands = data, bands
        self._axes = [axis for axis in range(len(data.shape) - (bands is not None)) if axis not in set(dropped)]
        kept = tuple(int(data.shape[axis]) for axis in self._axes)
        # predict_tiled's layouts put the channels right before Y and X ("CYX", "ZCYX")
        self._band_axis = len(kept) - 2 if bands is not None else None
        self.shape = kept[:-2] + (bands,) + kept[-2:] if bands is not None else kept
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
        if ellipsis:
            key = key[:ellipsis[0]] + (slice(None),) * (self.ndim - len(key) + 1) + key[ellipsis[0] + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if self._bands is None:
            return np.asarray(self._data[tuple(self._stored(key))])
        at = self._band_axis
        spatial = key[:at] + key[at + 1:]
        stored = self._stored(spatial)
        stored[-1] = slice(0, self._bands)
        # the bands come last out of the layer: move them to where the axes left before them end
        position = sum(not isinstance(k, (int, np.integer)) for k in spatial[:at])
        pixels = np.moveaxis(np.asarray(self._data[tuple(stored)]), -1, position)
        return pixels[(slice(None),) * position + (key[at],)]

    def _stored(self, key) -> list:
        """The layer's index of ``key`` (one entry per axis of this view but the bands): 0 on the dropped axes."""
        stored = [0] * len(self._data.shape)
        for axis, k in zip(self._axes, key):
            stored[axis] = k
        return stored

    def __array__(self, dtype=None, copy=None):
        pixels = self[...]
        return pixels if dtype is None else pixels.astype(dtype)


def _opaque(dtype: np.dtype):
    """The value of an opaque alpha: the largest of an integer type; 1 for floats (napari's RGB range) and bools."""
    return np.iinfo(dtype).max if dtype.kind in "iu" else 1


def _bands_agree(data, grey: bool) -> bool:
    """Whether an RGB(A) layer's (..., Y, X, bands) data have an alpha band (the 4th) that is opaque everywhere and,
    with ``grey``, colour bands all equal to the first (a grey image saved in colour): the rules by which unet_fast
    reads such a file (``image_io.grey_saved_in_colour``, ``opaque_alpha``). Every plane of a stack, read in bands of
    rows, to the first pixel that breaks them."""
    *leading, height, width, bands = (int(n) for n in data.shape)
    opaque = _opaque(np.dtype(data.dtype))
    rows = max(1, 2 ** 22 // max(1, width * bands))
    for plane in np.ndindex(*leading):      # one empty index for a single image
        for y0 in range(0, height, rows):
            termination.check()        # the widget's Cancel
            block = np.asarray(data[plane + (slice(y0, y0 + rows),)])
            if grey and any(not np.array_equal(block[..., band], block[..., 0]) for band in range(1, min(bands, 3))):
                return False
            if bands == 4 and not (block[..., 3] == opaque).all():
                return False
    return True


def model_input(data, rgb: bool, in_channels: int):
    """(image, layout) for predict_tiled from an image layer's data, or an error saying what fits. The data of a
    multiscale layer (a pyramid, as the reader opens one: napari's MultiScaleData, a sequence of levels) gives
    its full resolution, level 0, whose grid is the layer's scale and translate."""
    image, layout, _ = layer_input(data, rgb, in_channels)
    return image, layout


def layer_input(data, rgb: bool, in_channels: int):
    """``model_input``'s (image, layout) and the shape of the labels on the layer's grid but for their last two
    axes: a 1-channel or RGB(A) layer's leading axes (Z or T, and those of length 1), so the labels lie on every axis
    of the layer; () where the layer's leading axis is its channels (labels of its last two axes, Y and X).

    As ``unet-fast segment`` reads a file: leading axes of length 1 are left out (an OME-Zarr's t, c and z), and one
    longer one (Z or T) is a stack of planes; an RGB(A) layer whose colour bands are all equal (a grey image saved in
    colour, as PNGs of the 2018 Data Science Bowl) is its one grey channel, and an alpha band opaque everywhere is
    no channel; an RGB(A) stack (Z, Y, X, bands) is a stack of such planes, its bands read by the same rules. A
    layer napari took for a stack of images a few pixels wide, (Y, X, 1-4) without RGB (a grey + alpha PNG), is
    refused: its last axis holds the bands of one image."""
    if isinstance(data, collections.abc.Sequence):
        if not len(data):
            raise ValueError("the image layer holds a multiscale image without levels")
        data = data[0]
    shape = tuple(int(n) for n in data.shape)
    problem = ""
    # an RGB(A) stack, (..., Z, Y, X, bands), as a stack of grey planes below: axes of length 1 left out, one longer
    longer = [axis for axis, n in enumerate(shape[:-3]) if n != 1] if rgb else []
    if rgb and len(shape) >= 3 and len(longer) <= 1:
        bands, leading = shape[-1], shape[:-3]
        dropped = [axis for axis in range(len(leading)) if axis not in longer]
        layout = "ZCYX" if longer else "CYX"
        if bands == in_channels:
            return LayerPixels(data, dropped, bands=bands), layout, leading
        if in_channels == 3 and bands == 4:
            if _bands_agree(data, grey=False):
                return LayerPixels(data, dropped, bands=3), layout, leading
            problem = "; its alpha band is not opaque everywhere, so it holds 4 channels"
        elif in_channels == 1:
            if _bands_agree(data, grey=True):
                return LayerPixels(data, dropped, bands=1), layout, leading
            problem = ("; a colour image (its bands differ): split it into one layer a band (right-click the layer: "
                       "Split RGB) and segment the band the model was trained on")
    elif not rgb and in_channels == 1 and len(shape) >= 2:
        leading = shape[:-2]
        if len(shape) == 3 and shape[-1] <= 4 < min(shape[:2]):
            raise ValueError(f"the image layer holds data of shape {shape}, which napari shows as {shape[0]} images "
                             f"of {shape[1]} x {shape[2]} pixels: an image of {shape[-1]} band(s) per pixel, last "
                             f"(as napari opens a grey + alpha PNG); the model takes 1 channel: open the image as grey "
                             f"(save it as a grey PNG or TIFF), or add its first band as a layer of its own (in "
                             f"napari's console: viewer.add_image(layer.data[..., 0]) for this layer)")
        longer = [axis for axis, n in enumerate(leading) if n != 1]
        if len(longer) <= 1:
            dropped = [axis for axis in range(len(leading)) if axis not in longer]
            image = LayerPixels(data, dropped) if dropped else data
            return image, "ZYX" if longer else "YX", leading
    elif not rgb and in_channels > 1 and len(shape) >= 3 and shape[-3] == in_channels and set(shape[:-3]) <= {1}:
        return (LayerPixels(data, range(len(shape) - 3)) if len(shape) > 3 else data), "CYX", ()
    wanted = ("a 2-D image or a stack of them (Z, Y, X), with any leading axes of length 1" if in_channels == 1
              else f"an image of {in_channels} channels, ({in_channels}, Y, X) or RGB(A) with as many")
    raise ValueError(f"the image layer holds {'RGB ' if rgb else ''}data of shape {shape}; "
                     f"the model takes {in_channels} channel(s): choose {wanted}{problem}")


def instances(classes: np.ndarray) -> np.ndarray:
    """Connected components of every non-background class, plane by plane, each with its own id: the objects of
    a model of more than 2 classes (a 2-class model's are ``segment --output instances``'s, see ``segment``)."""
    objects = np.zeros(classes.shape, np.int32)
    count = 0
    for plane, out in zip(classes.reshape(-1, *classes.shape[-2:]), objects.reshape(-1, *classes.shape[-2:])):
        for value in np.unique(plane[plane > 0]):
            termination.check()   # the widget's Cancel (cancelled_by), between classes
            pieces, found = ndimage.label(plane == value)
            out[pieces > 0] = pieces[pieces > 0] + count
            count += found
    return objects


def numbered_through(planes: np.ndarray) -> np.ndarray:
    """A stack's objects, numbered 1..K in each plane (``segment --output instances``), given ids of their own
    through the stack (plane 0's first, then plane 1's, ...): one Labels layer shows the stack, and an id
    shared by two planes would colour and select two objects as one."""
    out = planes.astype(np.int64)
    offset = 0
    for plane in out:
        count = int(plane.max(initial=0))
        plane[plane > 0] += offset
        offset += count
    return out.astype(instance_dtype(offset))


def segment(model, data, *, rgb: bool = False, result: str = "instances", device=None, dtype=None,
            on_progress=None) -> np.ndarray:
    """Labels for an image layer's data: classes, or instances (see RESULTS), on the image's pixel grid.

    A 2-class model's instances are those of ``unet-fast segment --output instances`` (``predict_tiled``'s, with
    the default ``InstanceOptions``: touching cells split, borders given back, specks removed, holes filled,
    outlines smoothed), each with an id of its own through a stack; a model of more classes gives each class's
    connected regions.
    """
    if result not in RESULTS:
        raise ValueError(f"result must be one of {RESULTS}, got {result!r}")
    image, layout, leading = layer_input(data, rgb, model.in_channels)
    if result == "instances" and model.num_classes == 2:
        labels = predict_tiled(model, image, device=device, dtype=dtype, output="instances", layout=layout,
                               progress=on_progress or False)
        labels = numbered_through(labels) if layout.startswith("Z") else labels
    else:
        shape = tuple(image.shape[:1]) * layout.startswith("Z") + tuple(image.shape[-2:])
        classes = np.zeros(shape, np.uint8 if model.num_classes <= 256 else np.int32)
        predict_tiled(model, image, device=device, dtype=dtype, output="labels", layout=layout, out=classes,
                      progress=on_progress or False)   # told after each batch of tiles, whatever the model's scale
        labels = instances(classes) if result == "instances" else classes
    return labels.reshape(leading + labels.shape[-2:])     # the layer's axes of length 1 too: it lies on all of them


class Segmentation:
    """One run of ``segment``, reporting progress and stoppable: the widget runs ``steps`` in a thread worker.

    model: the UNet, or a function of no arguments returning it (the widget's calls a ModelCache's ``get``), which
    ``steps`` calls in its own thread: reading a model file takes seconds, which the GUI thread must not wait for.
    pixel_size: the image's (``layer_pixel_size``), compared with the model's training pixel size as ``unet-fast
    segment`` does: ``warning`` says, once the model is read, where the two are far apart (None where not); name:
    the image's, for that warning.
    """

    def __init__(self, model, data, *, pixel_size: PixelSize | None = None, name: str = "the image", **options):
        given = isinstance(model, torch.nn.Module)
        self._model = (lambda: model) if given else model
        self.data, self.options = data, options
        self.pixel_size, self.name = pixel_size, name
        self.cancelled = False
        self.class_names: list[str] | None = None       # the model's, once ``steps`` has read it
        self.warning: str | None = None                 # the pixel size's, once ``steps`` has read the model
        self._stop = threading.Event()
        self._model_read = threading.Event()
        if given:
            self._model_read.set()

    @property
    def reading_model(self) -> bool:
        """True until ``steps`` has the model (a cancel then takes effect once it is read)."""
        return not self._model_read.is_set()

    def cancel(self) -> None:
        """Stop after the tile (or the instance labelling's block) in flight; ``steps`` then returns None.
        ``cancelled`` stays True, so a result already on its way to the GUI thread when the user cancelled
        can be dropped there."""
        self.cancelled = True
        self._stop.set()

    def steps(self):
        """Reads the model, then yields the fraction done after each tile; returns the labels (StopIteration.value),
        or None when cancelled (a cancel while the model is read: before any tile). Raises what reading the model
        raised (a ModelCache's UnreadableModel), or segmenting.

        The reading and the prediction run in a thread of their own so that progress arrives while they work, at
        most two tiles ahead of the consumer (so a cancel takes effect at once); closing the generator
        cancels it too.
        """
        updates: queue.Queue = queue.Queue(maxsize=1)

        def report(fraction):
            if self._stop.is_set():
                raise Cancelled()
            updates.put(fraction)

        def run():
            try:
                model = self._model()
                self.class_names = class_names_of(model)
                self.warning = scale_warning(model, self.pixel_size, self.name)
                self._model_read.set()
                if self._stop.is_set():             # cancelled while the model was read: no tile at all
                    raise Cancelled()
                if too_large := size_problem(self.data, self.name, scale=model_scale(model)):  # known once read
                    raise ImageTooLargeError(too_large)
                with termination.cancelled_by(self._stop, Cancelled):   # instance labelling, between blocks
                    labels = segment(model, self.data, on_progress=report, **self.options)
                updates.put(("done", labels))
            except BaseException as error:      # handed over to the generator's thread
                updates.put(("failed", error))

        worker = threading.Thread(target=run, name="unet_fast-napari-segment", daemon=True)
        worker.start()
        try:
            while True:
                item = updates.get()
                if not isinstance(item, tuple):
                    yield item
                elif item[0] == "done":
                    return item[1]
                elif isinstance(item[1], Cancelled):
                    return None
                else:
                    raise item[1]
        finally:
            self._stop.set()
            while worker.is_alive():             # let a report waiting to be taken finish
                with contextlib.suppress(queue.Empty):
                    updates.get(timeout=0.05)


def layer_pixel_size(scale, units) -> PixelSize | None:
    """The pixel size of a layer's last two axes (y, x), where napari gives each a length as its unit (the reader
    gives an OME-Zarr's, for one); None where it does not (napari's default: pixels)."""
    if units is None or len(tuple(scale)) < 2 or len(tuple(units)) < 2:
        return None
    names = [str(unit) for unit in tuple(units)[-2:]]
    if not all(name in MICROMETERS_PER_UNIT for name in names):
        return None
    y, x = (abs(float(size)) for size in tuple(scale)[-2:])
    if names[0] != names[1]:     # one unit for both
        y, x, names = y * MICROMETERS_PER_UNIT[names[0]], x * MICROMETERS_PER_UNIT[names[1]], ["micrometer"]
    try:
        return PixelSize(y, x, names[0])
    except ValueError:           # a scale of 0 or not finite: no size
        return None


def labels_layer(labels: np.ndarray, image_name: str, scale, translate, units=None, result: str = "instances",
                 class_names=None, *, rotate=None, shear=None, affine=None):
    """(data, layer keyword arguments) of the Labels layer for ``labels`` of an image layer.

    The labels have the image's spatial axes (its last ones), so they take those axes' scale,
    translate and units, and where given the image's ``rotate`` (a matrix), ``shear`` (napari's upper-triangular
    values, or the matrix) and ``affine`` (a homogeneous matrix): in world coordinates the two lie on top of each
    other. Classes get the model's ``class_names`` as the layer's features, which napari shows under the cursor
    ("class: nucleus"), as the reader gives a class label image of `unet-fast segment`.
    """
    spatial = labels.ndim
    kwargs = {"name": f"{image_name} {result}", "scale": tuple(scale)[-spatial:],
              "translate": tuple(translate)[-spatial:]}
    if units is not None:
        kwargs["units"] = tuple(str(unit) for unit in units)[-spatial:]
    if rotate is not None:
        kwargs["rotate"] = np.asarray(rotate, float)[-spatial:, -spatial:]
    if shear is not None:
        shear = np.asarray(shear, float)
        if shear.ndim == 1:         # napari's values above the diagonal, row by row
            size = round((1 + (1 + 8 * len(shear)) ** 0.5) / 2)
            matrix = np.eye(size)
            matrix[np.triu_indices(size, 1)] = shear
            shear = matrix
        kwargs["shear"] = shear[-spatial:, -spatial:]
    if affine is not None:
        affine = np.asarray(affine, float)
        kept = list(range(len(affine) - 1 - spatial, len(affine)))     # the last axes, then the homogeneous one
        kwargs["affine"] = affine[np.ix_(kept, kept)]
    if result == "classes" and class_names:
        kwargs["features"] = {"index": list(range(len(class_names))), "class": list(class_names)}
    return labels, kwargs
