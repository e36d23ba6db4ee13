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
import queue
import threading
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .. import termination
from ..inference import predict_tiled
from ..instances import instance_dtype
from ..model_file import class_names_of, load_model

RESULTS = ("instances", "classes")   # objects, one id each; or the class of every pixel


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


def model_input(data, rgb: bool, in_channels: int):
    """(image, layout) for predict_tiled from an image layer's data, or an error saying what fits. The data of a
    multiscale layer (a pyramid, as the reader opens one: napari's MultiScaleData, a sequence of levels) gives
    its full resolution, level 0, whose grid is the layer's scale and translate."""
    if isinstance(data, collections.abc.Sequence):
        if not len(data):
            raise ValueError("the image layer holds a multiscale image without levels")
        data = data[0]
    shape = tuple(data.shape)
    if rgb:
        if len(shape) == 3 and shape[-1] == in_channels:
            return np.moveaxis(np.asarray(data), -1, 0), "CYX"
    elif in_channels == 1 and len(shape) in (2, 3):
        return data, "YX" if len(shape) == 2 else "ZYX"
    elif len(shape) == 3 and shape[0] == in_channels:
        return data, "CYX"
    wanted = ("a 2-D image or a stack of them (Z, Y, X)" if in_channels == 1
              else f"an image of {in_channels} channels, ({in_channels}, Y, X) or RGB(A) with as many")
    raise ValueError(f"the image layer holds {'RGB ' if rgb else ''}data of shape {shape}; "
                     f"the model takes {in_channels} channel(s): choose {wanted}")


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
    image, layout = model_input(data, rgb, model.in_channels)
    if result == "instances" and model.num_classes == 2:
        objects = predict_tiled(model, image, device=device, dtype=dtype, output="instances", layout=layout,
                                progress=on_progress or False)
        return numbered_through(objects) if layout.startswith("Z") else objects
    shape = tuple(image.shape[:1]) * layout.startswith("Z") + tuple(image.shape[-2:])
    classes = np.zeros(shape, np.uint8 if model.num_classes <= 256 else np.int32)
    predict_tiled(model, image, device=device, dtype=dtype, output="labels", layout=layout, out=classes,
                  progress=on_progress or False)   # told after each batch of tiles, whatever the model's scale
    return instances(classes) if result == "instances" else classes


class Segmentation:
    """One run of ``segment``, reporting progress and stoppable: the widget runs ``steps`` in a thread worker.

    model: the UNet, or a function of no arguments returning it (the widget's calls a ModelCache's ``get``), which
    ``steps`` calls in its own thread: reading a model file takes seconds, which the GUI thread must not wait for.
    """

    def __init__(self, model, data, **options):
        given = isinstance(model, torch.nn.Module)
        self._model = (lambda: model) if given else model
        self.data, self.options = data, options
        self.cancelled = False
        self.class_names: list[str] | None = None       # the model's, once ``steps`` has read it
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
                self._model_read.set()
                if self._stop.is_set():             # cancelled while the model was read: no tile at all
                    raise Cancelled()
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


def labels_layer(labels: np.ndarray, image_name: str, scale, translate, units=None, result: str = "instances",
                 class_names=None):
    """(data, layer keyword arguments) of the Labels layer for ``labels`` of an image layer.

    The labels have the image's spatial axes (its last ones), so they take those axes' scale,
    translate and units: in world coordinates the two lie on top of each other. Classes get the model's
    ``class_names`` as the layer's features, which napari shows under the cursor ("class: nucleus"), as the
    reader gives a class label image of `unet-fast segment`.
    """
    spatial = labels.ndim
    kwargs = {"name": f"{image_name} {result}", "scale": tuple(scale)[-spatial:],
              "translate": tuple(translate)[-spatial:]}
    if units is not None:
        kwargs["units"] = tuple(str(unit) for unit in units)[-spatial:]
    if result == "classes" and class_names:
        kwargs["features"] = {"index": list(range(len(class_names))), "class": list(class_names)}
    return labels, kwargs
