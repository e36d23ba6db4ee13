"""The napari dock widget: segment the chosen image layer with a model file, in a thread worker.

The work itself (segmentation.py) knows nothing of Qt; this file only lays out the controls, runs
``Segmentation.steps`` in napari's thread worker (the viewer stays responsive while the model file is
read and the tiles predicted, the progress bar follows the tiles, the button turns into Cancel) and adds
the result as a Labels layer.
It needs napari and magicgui, the optional extra (``pip install --no-build-isolation -e ".[napari]"``); napari imports
this module only when the widget is opened, and nothing else in unet_fast imports it.
"""
from pathlib import Path

import torch

try:        # the optional extra: say how to get it rather than fail with a bare ModuleNotFoundError
    import napari
    from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
    from napari.layers import Image
    from napari.qt.threading import create_worker
    from napari.utils.notifications import notification_manager, show_error, show_warning
except ImportError as error:
    raise ImportError(f"the unet_fast napari widget needs napari and magicgui ({error}); install the extra, in the "
                      f"unet_fast checkout: pip install --no-build-isolation -e \".[napari]\"") from error

from .segmentation import (RESULTS, ModelCache, Segmentation, UnreadableModel, labels_layer, layer_pixel_size,
                           size_problem, widget_wording)

MODEL_FILES = "Models (*.safetensors *.zip *.pt *.pth);;bioimage.io rdf (*.yaml)"


def steps_or_problem(run: Segmentation):
    """``run.steps``, returning what is wrong (a str) rather than raising it where the user can mend it: an
    unreadable model file, an image the model does not take (unet_fast says so with a ValueError), a GPU without
    the memory. napari's worker shows what it raises as an error with a traceback, and none of these is a bug.
    (Not the exception itself: superqt's worker raises an Exception returned by a generator.)"""
    try:
        return (yield from run.steps())
    except UnreadableModel as error:       # says which file, and why
        return str(error)
    except ValueError as error:     # worded for unet-fast segment too: its options become the widget's
        return f"segmentation failed: {widget_wording(str(error))}"
    except torch.OutOfMemoryError:
        return (f"segmentation failed: {run.options.get('device')} ran out of memory; close other work on it, "
                f"choose the cpu device, or segment a smaller image")
    except Exception as error:
        # superqt takes a RuntimeError out of a generator for a deleted worker: it only warns, and neither
        # ``errored`` nor ``finished`` comes (the button would say Cancel for ever). torch raises RuntimeErrors.
        raise SegmentationError(f"{type(error).__name__}: {error}") from error


class SegmentationError(Exception):
    """What went wrong in a worker that unet_fast did not expect (its cause: the exception itself)."""


def devices() -> list[str]:
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


class SegmentWidget(Container):
    """Image layer, model file, device, precision and result kind; Segment adds a Labels layer."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.model_path = FileEdit(label="model", mode="r", filter=MODEL_FILES)
        self.device = ComboBox(label="device", choices=devices())
        self.precision = ComboBox(label="precision", choices=["fp32", "bf16", "fp16"], value="fp32")
        self.result = ComboBox(label="result", choices=list(RESULTS), value="instances")
        self.button = PushButton(text="Segment")
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.model_path, self.device, self.precision, self.result,
                                  self.button, self.progress, self.status])
        self.button.changed.connect(self._clicked)
        viewer.layers.events.inserted.connect(self.image.reset_choices)
        viewer.layers.events.removed.connect(self.image.reset_choices)
        self.run: Segmentation | None = None
        self.worker = None
        self._models = ModelCache()      # read in the worker; kept for the next Segment
        self._warned: Segmentation | None = None      # the last run whose warning was shown

    def _image_layers(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _clicked(self, _=None):
        if self.run is not None:
            self.run.cancel()
            self.status.value = ("cancelling once the model is read..." if self.run.reading_model
                                 else "cancelling after the tile (or block of labelling) in flight...")
            return
        layer, device, models = self.image.value, self.device.value, self._models
        path = Path(self.model_path.value)
        if layer is None:
            return self._fail("add or open an image layer first")
        if too_large := size_problem(layer.data, layer.name):   # before its labels fill the memory
            return self._fail(too_large)
        if not path.is_file():
            return self._fail(f"choose a model file (.safetensors, .zip bioimage.io package, .pt); {path} is not one")
        reading = "" if models.holds(path, device) else f"reading {path.name}, then "
        self.run = Segmentation(lambda: models.get(path, device), layer.data, rgb=layer.rgb,
                                result=self.result.value, device=device, dtype=self.precision.value,
                                pixel_size=layer_pixel_size(layer.scale, layer.units), name=layer.name)
        # what the worker raises is a bug: _bug reports it once (superqt would raise it again in this thread)
        self.worker = create_worker(steps_or_problem, self.run, _ignore_errors=True)
        # the worker may be tiles ahead of this (the GUI) thread: what arrives after Cancel is dropped
        run = self.run
        self.worker.yielded.connect(lambda fraction: self._progressed(run, fraction))
        self.worker.returned.connect(lambda outcome: self._returned(layer, run, outcome))
        self.worker.errored.connect(self._bug)
        self.worker.finished.connect(self._finished)
        self.progress.value = 0
        self.button.text = "Cancel"
        self.status.value = f"{reading}segmenting {layer.name} on {device}..."
        self.worker.start()

    def _progressed(self, run: Segmentation, fraction: float):
        self._warn(run)
        if not run.cancelled:               # after Cancel the bar stays where it was
            self.progress.value = round(100 * fraction)
            if fraction >= 1.0 and run.options.get("result") == "instances":   # the tiles are done, not the objects
                self.status.value = "separating the objects (Cancel still stops it)..."

    def _returned(self, layer, run: Segmentation, outcome):
        """``outcome``: ``steps_or_problem``'s, the labels, None when cancelled, or what went wrong."""
        if isinstance(outcome, str):
            return self._fail(outcome)
        self._warn(run)
        self._add(layer, None if run.cancelled else outcome, run.options["result"], run.class_names)

    def _add(self, layer, labels, result: str, class_names=None):
        """``result``: the kind the run computed (the combo box may have changed since); ``class_names``: its
        model's."""
        if labels is None:
            self.status.value = "cancelled"
            return
        data, kwargs = labels_layer(labels, layer.name, layer.scale, layer.translate, layer.units, result, class_names,
                                    rotate=layer.rotate, shear=layer.shear, affine=layer.affine.affine_matrix)
        added = self.viewer.add_labels(data, **kwargs)
        what = f"{int(data.max())} objects" if result == "instances" else "classes"
        self.status.value = f"done: {added.name} ({what})"      # napari names a second run's "... [1]"

    def _warn(self, run: Segmentation):
        """The run's warning (the image's pixels far from the model's training pixels), shown once, as soon as the
        model is read and a tile done (or at the end)."""
        if run.warning and self._warned is not run:
            self._warned = run
            show_warning(widget_wording(run.warning))

    def _bug(self, error: BaseException):
        """An error unet_fast did not expect: napari's error notification, with the traceback a click away."""
        self.status.value = f"segmentation failed: {error}"
        notification_manager.receive_error(type(error), error, error.__traceback__)

    def _fail(self, message: str):
        self.status.value = message
        show_error(message)

    def _finished(self):
        self.run = self.worker = None
        self.button.text = "Segment"
