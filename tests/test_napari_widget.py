"""The napari widget, headless: segments in a thread worker with progress, adds Labels on the image's grid.

Needs the napari extra and pytest-qt (`pip install -e ".[napari-test]"`). With a display (e.g. under
xvfb-run) it runs in a real napari viewer (make_napari_viewer); with QT_QPA_PLATFORM=offscreen, which
has no OpenGL for napari's canvas, in napari's ViewerModel: the same layer list and add_labels, no canvas.
"""
import os
import threading

import numpy as np
import pytest
import torch

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")    # before pytest-qt starts the QApplication
napari = pytest.importorskip("napari", reason="the napari widget needs the napari extra")
pytest.importorskip("pytestqt", reason="widget tests need pytest-qt (the napari-test extra)")

import unet_fast  # noqa: E402
from unet_fast.napari._widget import SegmentWidget  # noqa: E402
from unet_fast.inference import predict_tiled  # noqa: E402
from unet_fast.napari.segmentation import numbered_through  # noqa: E402
from optional_deps import needs_zarr  # noqa: E402


@pytest.fixture
def viewer(request, qtbot):
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        import npe2
        from napari.components import ViewerModel

        npe2.PluginManager.instance().discover()       # what napari does when a Viewer starts
        return ViewerModel()
    return request.getfixturevalue("make_napari_viewer")()


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    net = unet_fast.UNet(1, 2, depth=2, base_channels=4)
    logits = predict_tiled(net, stack()[0], output="logits", progress=False, normalization=unet_fast.Normalization())
    # a random net's foreground on noise, smoothed as the instance rules do, is all or nothing but near its
    # 70th percentile: there it is several objects in each plane
    net.head.bias.data[1] -= float(np.percentile(logits[1] - logits[0], 70))
    return unet_fast.save_model(net, tmp_path / "model.safetensors")


def stack(planes=6):
    return np.random.default_rng(0).normal(100, 20, (planes, 70, 90)).astype(np.float32)


def make_widget(viewer, qtbot, model_file, image):
    spatial = slice(-image.ndim, None)
    layer = viewer.add_image(image, name="cells", scale=(2.0, 0.5, 0.25)[spatial],
                             translate=(0.0, 10.0, 20.0)[spatial], units=("micrometer",) * image.ndim)
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.image.value = layer
    widget.model_path.value = model_file
    widget.device.value = "cpu"
    return widget


def test_widget_adds_labels_on_the_images_grid(viewer, qtbot, model_file):
    image = stack()
    widget = make_widget(viewer, qtbot, model_file, image)
    progress = []
    widget.progress.changed.connect(progress.append)        # set in this (the GUI) thread as tiles finish
    widget.button.clicked()
    assert widget.button.text == "Cancel"
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    labels = viewer.layers["cells instances"]
    planes = predict_tiled(unet_fast.load_model(model_file), image, output="instances", progress=False)
    expected = numbered_through(planes)                      # ids of their own through the stack
    assert expected.max() == sum(int(plane.max()) for plane in planes)
    np.testing.assert_array_equal(labels.data, expected)
    assert expected.max() > 1                                # several objects, not an empty answer
    np.testing.assert_array_equal(labels.scale, (2.0, 0.5, 0.25))
    np.testing.assert_array_equal(labels.translate, (0.0, 10.0, 20.0))
    assert [str(unit) for unit in labels.units] == ["micrometer"] * 3
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] == 100
    assert widget.button.text == "Segment" and widget.status.value.startswith("done: cells instances")


def test_a_class_layer_shows_the_models_class_names(viewer, qtbot, tmp_path):
    torch.manual_seed(0)
    names = ["background", "nucleus"]
    named = unet_fast.save_model(unet_fast.UNet(1, 2, depth=2, base_channels=4), tmp_path / "named.safetensors",
                                 class_names=names)
    widget = make_widget(viewer, qtbot, named, stack(planes=1)[0])
    widget.result.value = "classes"
    widget.button.clicked()
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    features = viewer.layers["cells classes"].features
    assert list(features["index"]) == [0, 1] and list(features["class"]) == names


def test_cancel_adds_nothing(viewer, qtbot, model_file):
    widget = make_widget(viewer, qtbot, model_file, stack(planes=12))
    widget.progress.changed.connect(lambda _: widget.button.clicked())    # Cancel at the first tile
    widget.button.clicked()
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    assert [layer.name for layer in viewer.layers] == ["cells"]
    assert widget.status.value == "cancelled" and widget.button.text == "Segment"
    assert widget.progress.value < 100


def test_cancel_after_the_last_tile_still_adds_nothing(viewer, qtbot, model_file):
    """The worker runs ahead of the GUI thread: labels that were on their way when Cancel was clicked are dropped."""
    from qtpy.QtCore import Qt

    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    widget.button.clicked()
    finished = threading.Event()
    widget.worker.finished.connect(finished.set, Qt.ConnectionType.DirectConnection)   # set in the worker's thread
    assert finished.wait(60)                 # done, and nothing of it delivered to this thread yet
    widget.button.clicked()                  # Cancel
    qtbot.waitUntil(lambda: widget.run is None, timeout=10_000)
    assert [layer.name for layer in viewer.layers] == ["cells"]
    assert widget.status.value == "cancelled" and widget.button.text == "Segment"


def test_a_result_kind_changed_during_the_run_names_nothing(viewer, qtbot, model_file):
    """The layer's name and the status were those of the result chosen when the run ended, not the one it computed:
    instances switched to classes while segmenting came as a layer "cells classes" holding instances."""
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    widget.button.clicked()
    widget.result.value = "classes"
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    assert [layer.name for layer in viewer.layers] == ["cells", "cells instances"]
    assert widget.status.value.startswith("done: cells instances (")


def test_a_bad_model_file_is_reported_not_raised(viewer, qtbot, tmp_path, model_file):
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    widget.model_path.value = tmp_path / "broken.safetensors"
    widget.button.clicked()
    qtbot.waitUntil(lambda: widget.run is None, timeout=10_000)     # read in the worker, reported when it ends
    assert widget.worker is None
    assert widget.status.value.startswith("cannot read the model broken.safetensors: ")


def counting_reads(monkeypatch, wait=None):
    """The threads load_model ran in, one per read; ``wait``: an Event each read waits for."""
    from unet_fast.napari import segmentation

    threads, load_model = [], segmentation.load_model

    def counted(*args, **kwargs):
        threads.append(threading.current_thread())
        if wait is not None:
            assert wait.wait(30)
        return load_model(*args, **kwargs)

    monkeypatch.setattr(segmentation, "load_model", counted)
    return threads


def run_to_the_end(widget, qtbot):
    widget.button.clicked()
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass


def test_the_model_is_read_in_the_worker_not_the_gui_thread(viewer, qtbot, model_file, monkeypatch):
    """load_model ran in the GUI thread at the click (1.5 s for a bioimage.io zip, more for a large .pt): the viewer
    froze."""
    threads = counting_reads(monkeypatch)
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    run_to_the_end(widget, qtbot)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert [layer.name for layer in viewer.layers] == ["cells", "cells instances"]


def test_the_model_is_read_again_only_when_its_file_changed(viewer, qtbot, model_file, monkeypatch):
    threads = counting_reads(monkeypatch)
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    run_to_the_end(widget, qtbot)
    widget.result.value = "classes"                          # the reading does not depend on it
    run_to_the_end(widget, qtbot)
    assert len(threads) == 1 and widget.status.value.startswith("done: cells classes")
    stat = os.stat(model_file)
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))    # saved again
    run_to_the_end(widget, qtbot)
    assert len(threads) == 2


def notified(qtbot, widget):
    """The notifications napari shows while the widget's run goes from the click to its end."""
    from napari.utils.notifications import notification_manager

    notifications = []
    notification_manager.notification_ready.connect(notifications.append)
    try:
        widget.button.clicked()
        qtbot.waitUntil(lambda: widget.run is None, timeout=30_000)
    finally:
        notification_manager.notification_ready.disconnect(notifications.append)
    return notifications


def test_an_untrusted_model_file_is_reported_without_a_traceback(viewer, qtbot, model_file, tmp_path):
    """A checkpoint with pickled objects, refused by load_model: one error notification saying so (not napari's
    traceback of a worker's exception), the button back to Segment, no run left, nothing added."""
    import argparse

    from napari.utils.notifications import ErrorNotification, Notification

    untrusted = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=0.1)}, untrusted)
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    widget.model_path.value = untrusted
    notifications = notified(qtbot, widget)
    assert widget.status.value.startswith("cannot read the model checkpoint.pt: ") and "refused" in widget.status.value
    assert [type(notification) for notification in notifications] == [Notification]
    assert not isinstance(notifications[0], ErrorNotification) and notifications[0].message == widget.status.value
    assert widget.button.text == "Segment" and widget.worker is None
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_an_image_the_model_does_not_take_is_one_plain_notification(viewer, qtbot, model_file):
    """An RGB layer for a model of one channel: the user's choice, not a bug. It was shown three times (our
    notification, napari's error with a traceback, and superqt raising it again in the GUI thread)."""
    from napari.utils.notifications import ErrorNotification

    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    viewer.layers.remove("cells")
    colour = np.random.default_rng(0).integers(0, 255, (70, 90, 3), np.uint8)     # bands differ: not grey in colour
    widget.image.value = viewer.add_image(colour, name="cells", rgb=True)
    notifications = notified(qtbot, widget)
    assert len(notifications) == 1 and not isinstance(notifications[0], ErrorNotification)
    assert notifications[0].message == widget.status.value
    assert widget.status.value.startswith("segmentation failed: the image layer holds RGB data of shape (70, 90, 3)")
    assert widget.button.text == "Segment" and [layer.name for layer in viewer.layers] == ["cells"]


def test_a_bug_is_one_error_notification_with_its_traceback(viewer, qtbot, model_file, monkeypatch):
    """An exception unet_fast does not expect is napari's error notification (its traceback a click away), once,
    and not raised again in the GUI thread; the widget is ready for the next run. A RuntimeError (torch's kind)
    out of the worker left the button on Cancel for ever: superqt takes it for a deleted worker's."""
    from napari.utils.notifications import ErrorNotification, notification_manager

    from unet_fast.napari import segmentation

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(segmentation, "segment", broken)
    monkeypatch.setattr(notification_manager, "catch_error", True)     # as in napari's app (tests: off)
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    notifications = notified(qtbot, widget)
    assert [type(notification) for notification in notifications] == [ErrorNotification]
    assert "boom" in notifications[0].message
    assert widget.status.value == "segmentation failed: RuntimeError: boom"
    assert widget.button.text == "Segment" and [layer.name for layer in viewer.layers] == ["cells"]


def test_cancel_while_the_model_is_read_segments_nothing(viewer, qtbot, model_file, monkeypatch):
    from unet_fast.napari import segmentation

    release = threading.Event()
    threads = counting_reads(monkeypatch, wait=release)
    segmented = []
    monkeypatch.setattr(segmentation, "segment", lambda *args, **kwargs: segmented.append(1))
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    widget.button.clicked()
    qtbot.waitUntil(lambda: len(threads) == 1, timeout=10_000)        # reading
    assert widget.button.text == "Cancel"
    widget.button.clicked()                                           # Cancel
    assert widget.status.value == "cancelling once the model is read..."
    release.set()
    qtbot.waitUntil(lambda: widget.run is None, timeout=30_000)
    assert segmented == [] and [layer.name for layer in viewer.layers] == ["cells"]
    assert widget.status.value == "cancelled" and widget.button.text == "Segment" and widget.progress.value == 0
    monkeypatch.undo()                                                # the model read stays for the next run
    threads = counting_reads(monkeypatch)
    run_to_the_end(widget, qtbot)
    assert threads == [] and [layer.name for layer in viewer.layers] == ["cells", "cells instances"]


def test_the_image_choice_follows_the_layer_list(viewer, qtbot, model_file):
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    viewer.add_image(np.zeros((10, 10)), name="second")
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="not an image")
    assert [layer.name for layer in widget.image.choices] == ["cells", "second"]


def test_the_manifest_names_the_widget_and_the_reader():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("unet_fast")
    assert [w.display_name for w in manifest.contributions.widgets] == ["U-Net segmentation"]
    assert manifest.contributions.readers[0].filename_patterns == ["*.zarr", "*.tif", "*.tiff"]   # TIFFs: segment's
    commands = {command.id: command.python_name for command in manifest.contributions.commands}
    assert commands == {"unet_fast.segment_widget": "unet_fast.napari._widget:SegmentWidget",
                        "unet_fast.get_reader": "unet_fast.napari.reader:napari_get_reader"}
    manifest.validate_imports()              # every python_name imports


@needs_zarr
def test_napari_opens_segment_outputs_with_their_pixel_size(viewer, tmp_path, model_file):
    from unet_fast.inference import predict_tiled
    from unet_fast.pixel_size import PixelSize

    path = predict_tiled(unet_fast.load_model(model_file), stack(planes=1)[0], progress=False,
                         out=tmp_path / "cells.ome.zarr", pixel_size=PixelSize(0.5, 0.25))
    [layer] = viewer.open(str(path), plugin="unet_fast")
    assert isinstance(layer, napari.layers.Labels) and layer.name == "cells"
    np.testing.assert_array_equal(layer.scale, (0.5, 0.25))
    assert [str(unit) for unit in layer.units] == ["micrometer", "micrometer"]


@needs_zarr
def test_napari_shows_an_output_pyramid_as_a_multiscale_layer(viewer, tmp_path, model_file, monkeypatch):
    from unet_fast import sinks
    from unet_fast.inference import predict_tiled

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 32)
    model = unet_fast.load_model(model_file)
    for output, layer_type in (("labels", napari.layers.Labels), ("probabilities", napari.layers.Image)):
        path = predict_tiled(model, stack(planes=2), output=output, progress=False,
                             out=tmp_path / f"{output}.ome.zarr")
        layers = viewer.open(str(path), plugin="unet_fast")
        assert len(layers) == (1 if output == "labels" else 2)                   # probabilities: one per class
        for layer in layers:
            assert isinstance(layer, layer_type) and layer.multiscale
            assert [list(shape[-2:]) for shape in layer.level_shapes] == [[70, 90], [35, 45], [18, 23]]
            assert layer.level_shapes[-1][0] == 2                                 # planes are never halved


@needs_zarr
@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_napari_draws_every_pyramid_level_where_its_ngff_metadata_puts_it(viewer, tmp_path, model_file, monkeypatch,
                                                                          output):
    """The reader hands napari level 0's grid (here a stage position too); napari places level k's pixel i at level 0's
    data coordinate i x downsample_factors[k] (its slicer's tile-to-data transform) and ignores per-level
    translations. Where NGFF puts that pixel (its dataset's scale and translation: half a pixel further for block
    means, none for picked labels), napari draws it within half a pixel of that level at its first pixel and within
    a pixel and a half at its last (odd sizes), level 0 exactly."""
    import zarr

    from unet_fast import sinks
    from unet_fast.pixel_size import PixelSize

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 16)
    path = predict_tiled(unet_fast.load_model(model_file), stack(planes=1)[0][:67, :85], output=output,
                         progress=False, out=tmp_path / f"{output}.ome.zarr",
                         pixel_size=PixelSize(0.5, 0.25, translation=(0.0, 3.0, 7.5)))
    datasets = zarr.open_group(str(path), mode="r").attrs["multiscales"][0]["datasets"]
    layers = viewer.open(str(path), plugin="unet_fast")
    assert len(layers) == (1 if output == "labels" else 2)
    for layer in layers:
        assert layer.multiscale and len(layer.level_shapes) == len(datasets) == 4
        np.testing.assert_array_equal(layer.translate, (3.0, 7.5))
        for k, dataset in enumerate(datasets):
            scale, *translation = (t[t["type"]] for t in dataset["coordinateTransformations"])
            translation = translation[0][-2:] if translation else [3.0, 7.5]
            size = np.asarray(layer.level_shapes[k][-2:])
            for index, bound in ((np.zeros(2), 0.5), (size - 1, 1.5)):
                napari_at = np.asarray(layer.data_to_world(index * layer.downsample_factors[k]))
                ngff_at = np.asarray(translation) + index * np.asarray(scale[-2:])
                assert np.all(np.abs(napari_at - ngff_at) <= (bound * np.asarray(scale[-2:]) if k else 1e-12)), (
                    k, index, napari_at, ngff_at)


@needs_zarr
def test_the_widget_segments_a_multiscale_image_layer_at_full_resolution(viewer, qtbot, tmp_path, model_file,
                                                                         monkeypatch):
    """An image the reader opens as a pyramid (a probability output here) is a multiscale layer: segmenting it
    failed inside the tiles ("list indices must be integers or slices, not tuple"); level 0 is segmented, and the
    labels lie on the layer's grid."""
    from unet_fast import sinks
    from unet_fast.pixel_size import PixelSize

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 32)
    model = unet_fast.load_model(model_file)
    path = predict_tiled(model, stack(planes=1)[0], output="probabilities", progress=False,
                         out=tmp_path / "p.ome.zarr", pixel_size=PixelSize(0.5, 0.25, translation=(0.0, 3.0, 7.5)))
    layer = viewer.open(str(path), plugin="unet_fast")[1]          # the foreground's probabilities
    assert layer.multiscale
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.image.value, widget.model_path.value, widget.device.value = layer, model_file, "cpu"
    widget.result.value = "classes"
    widget.button.clicked()
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    labels = viewer.layers[f"{layer.name} classes"]
    level0 = np.asarray(layer.data[0])
    np.testing.assert_array_equal(labels.data, predict_tiled(model, level0, output="labels", progress=False))
    np.testing.assert_array_equal(labels.scale, (0.5, 0.25))
    np.testing.assert_array_equal(labels.translate, (3.0, 7.5))


def test_a_second_run_names_the_layer_napari_added(viewer, qtbot, model_file):
    """napari names a second "cells instances" layer "cells instances [1]": the status named the first one."""
    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    run_to_the_end(widget, qtbot)
    run_to_the_end(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells instances", "cells instances [1]"]
    assert widget.status.value.startswith("done: cells instances [1] (")


def test_the_labels_lie_on_a_rotated_sheared_image_under_an_affine(viewer, qtbot, model_file):
    """The labels took the image's scale and translate only: on an image rotated, sheared or registered (affine)
    they lay elsewhere in the world."""
    widget = make_widget(viewer, qtbot, model_file, stack(planes=2))
    layer = viewer.layers["cells"]
    layer.rotate, layer.shear = 30, [0.0, 0.0, 0.2]
    layer.affine = np.array([[1.0, 0, 0, 0], [0, 1.0, 0.1, 5.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    run_to_the_end(widget, qtbot)
    labels = viewer.layers["cells instances"]
    np.testing.assert_allclose(labels._data_to_world.affine_matrix, layer._data_to_world.affine_matrix, atol=1e-12)


def test_pixels_far_from_the_models_are_one_warning(viewer, qtbot, tmp_path):
    """The model file records its training images' pixel size (0.5 um); a layer of 2 um pixels (scale and units, as
    the reader opens an OME-Zarr) is 4 times coarser: `unet-fast segment` warns, the widget said nothing."""
    from napari.utils.notifications import NotificationSeverity

    torch.manual_seed(0)
    path = unet_fast.save_model(unet_fast.UNet(1, 2, depth=2, base_channels=4), tmp_path / "m.safetensors",
                                pixel_size={"y": 0.5, "x": 0.5, "unit": "micrometer"})
    widget = make_widget(viewer, qtbot, path, stack(planes=1)[0])
    viewer.layers["cells"].scale = (2.0, 2.0)
    notifications = notified(qtbot, widget)
    assert [n.severity for n in notifications] == [NotificationSeverity.WARNING]
    assert notifications[0].message.startswith("cells: pixels of 2 x 2 micrometer, 4.0 times larger")
    assert widget.status.value.startswith("done: cells instances")


def test_the_warning_names_what_the_widget_offers_not_a_flag(viewer, qtbot, tmp_path):
    """The pixel-size warning, worded for `unet-fast segment`, told the widget's user to pass --scale, which the widget
    does not have: it names the Python call, from napari's console, instead."""
    torch.manual_seed(0)
    path = unet_fast.save_model(unet_fast.UNet(1, 2, depth=2, base_channels=4), tmp_path / "m.safetensors",
                                pixel_size={"y": 0.5, "x": 0.5, "unit": "micrometer"})
    widget = make_widget(viewer, qtbot, path, stack(planes=1)[0])
    viewer.layers["cells"].scale = (2.0, 2.0)
    [warning] = notified(qtbot, widget)
    assert "--scale" not in warning.message
    assert "the widget has no scale of its own: segment it in napari's console with " in warning.message
    assert "predict_tiled(unet_fast.load_model(MODEL), LAYER.data, output='instances', scale=4)" in warning.message


def test_nan_pixels_are_refused_naming_what_the_widget_offers_not_a_flag(viewer, qtbot, model_file):
    """The refusal of NaN pixels suggested `--nonfinite zero`, an option of the command, not of the widget."""
    image = stack(planes=1)[0]
    image[3, 4] = np.nan
    widget = make_widget(viewer, qtbot, model_file, image)
    [error] = notified(qtbot, widget)
    assert error.message == widget.status.value
    assert widget.status.value.startswith("segmentation failed: image holds NaN or infinite pixel values")
    assert "--nonfinite" not in widget.status.value
    assert widget.status.value.endswith("the widget has no such option; in napari's console: unet_fast.inference."
                                        "predict_tiled(unet_fast.load_model(MODEL), LAYER.data, output='instances', "
                                        "nonfinite='zero')")
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_the_widget_segments_an_rgb_stack_plane_by_plane(viewer, qtbot, model_file):
    """A (Z, Y, X, 3) RGB layer was refused while a (Y, X, 3) one is taken: a grey stack saved in colour is the grey
    stack's result, on the layer's grid."""
    grey = np.clip(stack(planes=3), 0, 255).astype(np.uint8)
    widget = make_widget(viewer, qtbot, model_file, grey)
    viewer.layers.remove("cells")
    layer = viewer.add_image(np.stack([grey] * 3, -1), name="cells", rgb=True, scale=(2.0, 0.5, 0.25))
    widget.image.value = layer
    run_to_the_end(widget, qtbot)
    labels = viewer.layers["cells instances"]
    planes = predict_tiled(unet_fast.load_model(model_file), grey, output="instances", progress=False)
    np.testing.assert_array_equal(labels.data, numbered_through(planes))
    np.testing.assert_array_equal(labels.scale, (2.0, 0.5, 0.25))


def test_a_layer_too_large_to_hold_is_refused_naming_the_command(viewer, qtbot, model_file):
    """A huge lazy layer's labels were computed into memory, whole, without a check: above the pixel limit of
    `unet-fast segment` (DEFAULT_MAX_PIXELS) the widget says to use that command, which streams to disk."""
    from unet_fast.image_io import DEFAULT_MAX_PIXELS

    widget = make_widget(viewer, qtbot, model_file, stack(planes=1)[0])
    viewer.layers.remove("cells")
    planes = DEFAULT_MAX_PIXELS // (64 * 64) + 1            # a view of one pixel: no memory
    huge = viewer.add_image(np.broadcast_to(np.float32(0), (planes, 64, 64)), name="cells", contrast_limits=(0, 1))
    widget.image.value = huge
    [error] = notified(qtbot, widget)
    assert error.message == widget.status.value
    assert widget.status.value.startswith(f"cells holds {planes * 64 * 64:,} pixels")
    assert "unet-fast segment -i IMAGE -o OUTDIR -m MODEL" in widget.status.value
    assert widget.worker is None and widget.button.text == "Segment"
    assert [layer.name for layer in viewer.layers] == ["cells"]


@needs_zarr
def test_the_widget_segments_a_bioformats2raw_ome_zarr(viewer, qtbot, tmp_path, model_file):
    """bioformats2raw's OME-Zarr (t, c, z, y, x), opened by the reader, is a (1, 1, Y, X) Image layer: the widget
    refused it where `unet-fast segment` segments the file; a microscope's uint16 OME-Zarr without a channel axis
    opened as Labels, which the widget does not offer."""
    from ome_zarr_files import write_bioformats2raw, write_ome_zarr_axes

    plane = (stack(planes=1)[0] * 100).astype(np.uint16)
    write_bioformats2raw(tmp_path / "b2r.zarr", [plane[None, None, None]])
    write_ome_zarr_axes(tmp_path / "yx.ome.zarr", plane, "yx")
    [layer] = viewer.open(str(tmp_path / "b2r.zarr"), plugin="unet_fast")
    [raw] = viewer.open(str(tmp_path / "yx.ome.zarr"), plugin="unet_fast")
    assert layer.data.shape == (1, 1, 70, 90) and isinstance(raw, napari.layers.Image)
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    assert [choice.name for choice in widget.image.choices] == ["b2r", "yx"]
    widget.image.value, widget.model_path.value, widget.device.value = layer, model_file, "cpu"
    run_to_the_end(widget, qtbot)
    labels = viewer.layers["b2r instances"]
    expected = predict_tiled(unet_fast.load_model(model_file), plane, output="instances", progress=False)
    np.testing.assert_array_equal(labels.data, expected[None, None])
    np.testing.assert_array_equal(labels.scale, layer.scale)


def test_a_grey_png_saved_in_colour_is_segmented_as_segment_does(viewer, qtbot, tmp_path, model_file):
    """napari opens an RGB PNG whose bands are equal (the 2018 Data Science Bowl's nuclei) as an RGB layer: the widget
    refused it, `unet-fast segment` reads the file as grey."""
    from PIL import Image

    grey = np.clip(stack(planes=1)[0], 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "cells.png")
    [layer] = viewer.open(str(tmp_path / "cells.png"))
    assert layer.rgb
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.image.value, widget.model_path.value, widget.device.value = layer, model_file, "cpu"
    run_to_the_end(widget, qtbot)
    expected = predict_tiled(unet_fast.load_model(model_file), grey, output="instances", progress=False)
    np.testing.assert_array_equal(viewer.layers["cells instances"].data, expected)
