"""The napari plugin's logic without napari or Qt: layouts, segmentation with progress and cancel, the reader."""
import numpy as np
import pytest
import torch

import unet_fast
from unet_fast.inference import predict_tiled
from unet_fast.napari.reader import napari_get_reader, read_ome_zarr
from unet_fast.napari.segmentation import Segmentation, instances, labels_layer, model_input, segment
from optional_deps import needs_zarr


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = unet_fast.UNet(1, 3, depth=2, base_channels=4, backend="torch").eval()
    net.head.bias.data = torch.tensor([0.0, 0.3, -0.3])    # three classes all present in the output
    return net


def image(shape, seed=0):
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


@pytest.mark.parametrize("shape, rgb, channels, layout, moved", [
    ((50, 60), False, 1, "YX", False),
    ((4, 50, 60), False, 1, "ZYX", False),
    ((3, 50, 60), False, 3, "CYX", False),
    ((50, 60, 3), True, 3, "CYX", True),
])
def test_model_input_layouts(shape, rgb, channels, layout, moved):
    data = image(shape)
    found, found_layout = model_input(data, rgb, channels)
    assert found_layout == layout
    np.testing.assert_array_equal(found, np.moveaxis(data, -1, 0) if moved else data)


@pytest.mark.parametrize("shape, rgb, channels, message", [
    ((50, 60, 3), True, 1, r"RGB data of shape \(50, 60, 3\); the model takes 1 channel\(s\): choose a 2-D image"),
    ((2, 3, 50, 60), False, 1, r"shape \(2, 3, 50, 60\); the model takes 1 channel"),
    ((4, 50, 60), False, 3, r"choose an image of 3 channels, \(3, Y, X\) or RGB"),
])
def test_model_input_refuses_what_does_not_fit(shape, rgb, channels, message):
    with pytest.raises(ValueError, match=message):       # random bands: a colour image (grey in colour is taken)
        model_input(image(shape), rgb, channels)


def test_instances_numbers_each_object_of_each_class():
    classes = np.zeros((2, 8, 8), np.uint8)
    classes[0, 1:3, 1:3] = 1           # object 1
    classes[0, 1:3, 3:5] = 2           # touches it, other class: object 2
    classes[0, 6:8, 6:8] = 1           # object 3
    classes[1, 0:2, 0:2] = 1           # next plane: object 4
    expected = np.zeros((2, 8, 8), np.int32)
    expected[0, 1:3, 1:3], expected[0, 6:8, 6:8], expected[0, 1:3, 3:5], expected[1, 0:2, 0:2] = 1, 2, 3, 4
    np.testing.assert_array_equal(instances(classes), expected)


@pytest.mark.parametrize("shape", [(70, 90), (3, 70, 90)])
def test_segment_gives_predict_tiled_classes(model, shape):
    data = image(shape)
    expected = predict_tiled(model, data, output="labels", progress=False)
    classes = segment(model, data, result="classes")
    np.testing.assert_array_equal(classes, expected)
    assert set(np.unique(classes)) == {0, 1, 2}
    np.testing.assert_array_equal(segment(model, data, result="instances"), instances(expected))


@pytest.mark.parametrize("shape", [(70, 90), (2, 70, 90)])
def test_a_2_class_models_instances_are_those_of_segment_output_instances(shape):
    """Touching objects split, borders given back, specks removed, outlines smoothed: predict_tiled's instances,
    not the bare connected components of the foreground."""
    torch.manual_seed(3)
    net = unet_fast.UNet(1, 2, depth=2, base_channels=4, backend="torch").eval()
    data = image(shape)
    logits = predict_tiled(net, data, output="logits", progress=False)
    net.head.bias.data[1] -= float(np.median(logits[:, 1] - logits[:, 0] if len(shape) == 3 else logits[1] - logits[0]))
    expected = predict_tiled(net, data, output="instances", progress=False)
    if len(shape) == 3:          # every object of the stack has an id of its own: plane 1's follow plane 0's
        expected = expected.astype(np.int64)
        expected[1][expected[1] > 0] += expected[0].max()
    got = segment(net, data, result="instances")
    np.testing.assert_array_equal(got, expected)
    assert expected.max() > 1 and not np.array_equal(got > 0, segment(net, data, result="classes") > 0)
    if len(shape) == 3:
        assert len(np.unique(got[0][got[0] > 0])) + len(np.unique(got[1][got[1] > 0])) == got.max()
    fractions, labels = run_to_the_end(Segmentation(net, data, result="instances"))
    assert fractions and fractions[-1] == 1.0
    np.testing.assert_array_equal(labels, expected)


def run_to_the_end(run: Segmentation):
    """(the fractions ``steps`` yielded, the labels it returned)."""
    steps, fractions = run.steps(), []
    with pytest.raises(StopIteration) as done:
        while True:
            fractions.append(next(steps))
    return fractions, done.value.value


def test_steps_report_progress_and_return_the_labels(model):
    data = image((4, 70, 90))
    fractions, labels = run_to_the_end(Segmentation(model, data, result="classes"))
    assert len(fractions) >= 4 and fractions == sorted(fractions) and fractions[-1] == 1.0
    np.testing.assert_array_equal(labels, segment(model, data, result="classes"))


def test_a_scaled_model_reports_progress_tile_by_tile_too():
    """A model that resamples its images (input_scale) predicts on a scratch grid before anything reaches
    the labels: progress still comes after each tile, not once at the end."""
    torch.manual_seed(0)
    scaled = unet_fast.UNet(1, 2, depth=2, base_channels=4, backend="torch").eval()
    scaled.input_scale = 2.0
    data = image((3, 70, 90))
    fractions, labels = run_to_the_end(Segmentation(scaled, data, result="classes"))
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    np.testing.assert_array_equal(labels, predict_tiled(scaled, data, output="labels", progress=False))


def test_cancel_stops_after_the_tile_in_flight(model):
    run = Segmentation(model, image((6, 70, 90)), result="classes")
    steps = run.steps()
    first = next(steps)
    run.cancel()
    rest = []
    with pytest.raises(StopIteration) as done:
        while True:
            rest.append(next(steps))
    assert done.value.value is None             # no labels: the run was cancelled
    # at most the tile already reported and the one in flight come after the cancel, never the end
    assert first < 1.0 and len(rest) <= 2 and 1.0 not in rest


def test_labels_layer_takes_the_images_spatial_grid():
    labels = np.zeros((40, 50), np.int32)
    data, kwargs = labels_layer(labels, "cells", scale=(2.0, 0.5, 0.25), translate=(0.0, 10.0, 20.0),
                                units=("pixel", "micrometer", "micrometer"), result="instances")
    assert data is labels
    assert kwargs == {"name": "cells instances", "scale": (0.5, 0.25), "translate": (10.0, 20.0),
                      "units": ("micrometer", "micrometer")}



def test_a_class_layer_names_its_classes():
    """The widget's classes came as bare numbers, where the reader gives segment's class label images their names."""
    labels = np.zeros((40, 50), np.uint8)
    names = ["background", "nucleus", "cell border"]
    _, kwargs = labels_layer(labels, "cells", (1.0, 1.0), (0.0, 0.0), result="classes", class_names=names)
    assert kwargs["features"] == {"index": [0, 1, 2], "class": names}
    _, kwargs = labels_layer(labels, "cells", (1.0, 1.0), (0.0, 0.0), result="instances", class_names=names)
    assert "features" not in kwargs                         # an object's id is no class


def test_a_run_knows_its_models_class_names(model):
    named = unet_fast.UNet(1, 3, depth=2, base_channels=4, backend="torch").eval()
    named.class_names = ["background", "nucleus", "cell border"]
    run = Segmentation(lambda: named, image((50, 60)), result="classes")
    assert run.class_names is None                          # not read yet
    run_to_the_end(run)
    assert run.class_names == ["background", "nucleus", "cell border"]
    run = Segmentation(model, image((50, 60)), result="classes")
    run_to_the_end(run)
    assert run.class_names == ["class0", "class1", "class2"]     # a model without names: the default ones

@needs_zarr
@pytest.mark.parametrize("output, kind", [("labels", "labels"), ("probabilities", "image")])
def test_reader_opens_segment_outputs(model, tmp_path, output, kind):
    data = image((70, 90))
    path = predict_tiled(model, data, output=output, progress=False, out=tmp_path / "cells.ome.zarr")
    reader = napari_get_reader(str(path))
    assert reader is read_ome_zarr
    [(layer_data, kwargs, layer_kind)] = reader(str(path))
    assert layer_kind == kind
    np.testing.assert_array_equal(np.asarray(layer_data[...]), predict_tiled(model, data, output=output, progress=False))
    if output == "probabilities":          # one layer per class, named by its class: per-layer grids
        assert kwargs["channel_axis"] == 0 and kwargs["axis_labels"] == [["y", "x"]] * 3
        assert kwargs["name"] == ["cells class0", "cells class1", "cells class2"]
    else:
        assert "channel_axis" not in kwargs and kwargs["axis_labels"] == ["y", "x"] and kwargs["name"] == "cells"


@needs_zarr
@pytest.mark.parametrize("output, kind", [("labels", "labels"), ("probabilities", "image")])
def test_reader_hands_napari_a_pyramid_as_a_multiscale_list(model, tmp_path, monkeypatch, output, kind):
    """An output with pyramid levels opens as one multiscale layer (one per class): its lazy levels, full
    resolution first, so napari reads the level and the chunks it shows; the grid is level 0's."""
    from unet_fast import sinks

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 32)
    data = image((70, 90))
    path = predict_tiled(model, data, output=output, progress=False, out=tmp_path / "cells.ome.zarr")
    [(layer_data, kwargs, layer_kind)] = read_ome_zarr(str(path))
    assert layer_kind == kind and kwargs["multiscale"] is True and isinstance(layer_data, list)
    assert [level.shape[-2:] for level in layer_data] == [(70, 90), (35, 45), (18, 23)]
    assert all(type(level).__module__.startswith("zarr") for level in layer_data)      # lazy, not read
    np.testing.assert_array_equal(layer_data[0][...], predict_tiled(model, data, output=output, progress=False))
    if output == "probabilities":
        assert kwargs["channel_axis"] == 0 and kwargs["scale"] == [[1.0, 1.0]] * 3
    else:
        assert kwargs["scale"] == [1.0, 1.0] and kwargs["translate"] == [0.0, 0.0]


@needs_zarr
def test_reader_declines_what_is_not_an_ome_zarr_image(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("0", shape=(4, 4), dtype="u1")
    (tmp_path / "image.tif").write_bytes(b"")
    assert napari_get_reader(str(tmp_path / "plain.zarr")) is None
    assert napari_get_reader(str(tmp_path / "image.tif")) is None
    assert napari_get_reader([str(tmp_path / "plain.zarr"), str(tmp_path / "image.tif")]) is None


def test_cancel_stops_the_instance_labelling_between_blocks(monkeypatch):
    """After the last tile the widget's run labels instances (seconds to minutes on a large image): a Cancel
    then stops it at the next block, where before it ran to the end and handed back the labels."""
    from unet_fast import instances as instance_module

    torch.manual_seed(0)
    two_classes = unet_fast.UNet(1, 2, depth=2, base_channels=4, backend="torch").eval()
    run = Segmentation(two_classes, image((70, 90)), result="instances")
    first_pass, blocks = instance_module._first_pass, []

    def first_pass_cancelled_in_the_middle(mask, provisional, block, probability=None):
        run.cancel()                                   # the user's Cancel, once labelling has begun

        class Counted:                                 # the blocks the first pass reads after it
            shape = mask.shape

            def __getitem__(self, key):
                blocks.append(key)
                return mask[key]
        return first_pass(Counted(), provisional, 16, probability)   # 16-pixel blocks: 30 of them

    monkeypatch.setattr(instance_module, "_first_pass", first_pass_cancelled_in_the_middle)
    fractions, labels = run_to_the_end(run)
    assert labels is None and fractions and len(blocks) == 0


def test_cancelled_by_applies_on_its_own_thread_only():
    import threading

    from unet_fast import termination

    class Stopped(Exception):
        pass

    event, seen = threading.Event(), []
    event.set()
    with termination.cancelled_by(event, Stopped):
        with pytest.raises(Stopped):
            termination.check()
        other = threading.Thread(target=lambda: seen.append(termination.check()))
        other.start()
        other.join()
    termination.check()                                # outside: nothing to raise
    assert seen == [None]                              # another thread's check() ignores this thread's Cancel


def test_cancel_stops_the_objects_of_a_model_of_more_classes(model, monkeypatch):
    """A 3-class model's objects are each class's connected regions: a Cancel while they are found stops it."""
    from unet_fast.napari import segmentation

    run = Segmentation(model, image((70, 90)), result="instances")
    label, classes_labelled = segmentation.ndimage.label, []

    def label_then_cancel(mask, *args, **kwargs):
        classes_labelled.append(1)
        run.cancel()
        return label(mask, *args, **kwargs)

    monkeypatch.setattr(segmentation.ndimage, "label", label_then_cancel)
    fractions, labels = run_to_the_end(run)
    assert labels is None and classes_labelled == [1]     # two classes present: stopped before the second


def test_the_model_cache_reads_a_file_again_only_when_it_changed(tmp_path, monkeypatch):
    """Held while the file keeps its modification time and size, and the device is the same."""
    import os

    from unet_fast.napari import segmentation

    reads = []
    monkeypatch.setattr(segmentation, "load_model", lambda path, device: reads.append((path, device)) or object())
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"first")
    cache = segmentation.ModelCache()
    assert not cache.holds(path, "cpu")
    model = cache.get(path, "cpu")
    assert cache.get(path, "cpu") is model and cache.holds(path, "cpu") and len(reads) == 1
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))          # saved again
    assert not cache.holds(path, "cpu")
    assert cache.get(path, "cpu") is not model and len(reads) == 2
    stat = os.stat(path)
    path.write_bytes(b"second, longer")                                                # same time, other size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cache.get(path, "cpu")
    assert len(reads) == 3
    cache.get(path, "cuda:0")                                                          # other device
    assert len(reads) == 4 and not cache.holds(path, "cpu")                            # one model at a time


def test_the_model_cache_says_which_file_it_cannot_read(tmp_path):
    from unet_fast.napari.segmentation import ModelCache, UnreadableModel

    cache = ModelCache()
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    with pytest.raises(UnreadableModel, match=r"^cannot read the model broken.safetensors: .*broken.safetensors"):
        cache.get(tmp_path / "broken.safetensors", "cpu")
    with pytest.raises(UnreadableModel, match=r"^cannot read the model gone.pt: "):
        cache.get(tmp_path / "gone.pt", "cpu")
    assert not cache.holds(tmp_path / "broken.safetensors", "cpu")


def test_a_device_out_of_memory_while_reading_is_not_the_files_fault(tmp_path, monkeypatch):
    """A GPU without room for the weights raised "cannot read the model": the widget names the device instead."""
    from unet_fast.napari import segmentation

    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(segmentation, "load_model", full)
    cache = segmentation.ModelCache()
    with pytest.raises(torch.OutOfMemoryError):
        cache.get(tmp_path / "model.safetensors", "cuda")
    assert not cache.holds(tmp_path / "model.safetensors", "cuda")


def test_steps_read_the_model_in_a_thread_of_their_own(model):
    import threading

    threads = []

    def read():
        threads.append(threading.current_thread())
        return model

    data = image((70, 90))
    run = Segmentation(read, data, result="classes")
    assert run.reading_model
    fractions, labels = run_to_the_end(run)
    assert threads and threads[0] is not threading.current_thread() and not run.reading_model
    np.testing.assert_array_equal(labels, segment(model, data, result="classes"))


def test_a_cancel_while_the_model_is_read_segments_nothing(model, monkeypatch):
    from unet_fast.napari import segmentation

    segmented = []
    monkeypatch.setattr(segmentation, "segment", lambda *args, **kwargs: segmented.append(1))

    def read_then_cancelled():
        run.cancel()                       # the user's Cancel, while the file is read
        return model

    run = Segmentation(read_then_cancelled, image((70, 90)), result="classes")
    assert run_to_the_end(run) == ([], None) and segmented == []


def test_steps_raise_what_reading_the_model_raised(tmp_path):
    from unet_fast.napari.segmentation import ModelCache, UnreadableModel

    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    run = Segmentation(lambda: ModelCache().get(tmp_path / "broken.safetensors", "cpu"), image((70, 90)))
    with pytest.raises(UnreadableModel, match="cannot read the model broken.safetensors"):
        run_to_the_end(run)


def test_a_multiscale_image_layer_is_segmented_at_full_resolution(model):
    """An image the reader opens as a pyramid is a multiscale layer, whose data napari hands over as the list of its
    levels (MultiScaleData, a sequence): segmenting one failed with "list indices must be integers or slices, not
    tuple" as the tiles indexed the list; level 0 is segmented, on the layer's grid."""
    data = image((70, 90))
    assert model_input([data, data[::2, ::2]], False, 1)[0] is data
    np.testing.assert_array_equal(segment(model, (data, data[::2, ::2]), result="classes"),
                                  segment(model, data, result="classes"))
    with pytest.raises(ValueError, match="multiscale image without levels"):
        model_input([], False, 1)


# ---- the reader: level 0's grid, the pyramid napari can draw, malformed metadata


def write_pyramid(path, shapes, transformations, *, axes="yx", dtype=np.uint8, whole=None, paths=None, label=None):
    """An OME-Zarr image (NGFF 0.4) of levels of ``shapes``, each with its ``transformations`` (scale, translation
    or None), as another writer may leave it: ``whole``, the multiscale's own transformations; ``paths``, the
    datasets' paths as listed (default "0", "1", ...; one listed but not written is a missing level); ``label``:
    marked a label image (NGFF "image-label"; default: an integer ``dtype``'s, as segment marks its labels)."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    for k, shape in enumerate(shapes):
        group.create_array(str(k), shape=shape, dtype=dtype)[...] = np.arange(np.prod(shape)).reshape(shape) % 7
    names = {"y": "space", "x": "space", "z": "space", "c": "channel", "t": "time"}
    datasets = []
    for k, (scale, translation) in enumerate(transformations):
        listed = [{"type": "scale", "scale": scale}]
        if translation is not None:
            listed.append({"type": "translation", "translation": translation})
        datasets.append({"path": (paths or [str(k) for k in range(len(transformations))])[k],
                         "coordinateTransformations": listed})
    listed_axes = [{"name": n, "type": names[n], **({"unit": "micrometer"} if names[n] == "space" else {})}
                   for n in axes]
    entry = {"version": "0.4", "axes": listed_axes, "datasets": datasets}
    if whole is not None:
        entry["coordinateTransformations"] = whole
    group.attrs["multiscales"] = [entry]
    if np.dtype(dtype).kind in "iu" if label is None else label:
        group.attrs["image-label"] = {"version": "0.4"}
    return path


@needs_zarr
@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_the_reader_gives_napari_level_0s_grid_and_the_stage_position(model, tmp_path, monkeypatch, output):
    """napari takes one scale and translate for a multiscale layer, level 0's; an image positioned on the stage (a
    translation, written into segment's outputs from the input's) lies there in napari, its coarser levels too (their
    own translations, half a pixel further for block means, are napari's to derive: it takes none per level)."""
    from unet_fast import sinks
    from unet_fast.pixel_size import PixelSize

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 32)
    size = PixelSize(0.5, 0.25, "micrometer", translation=(0.0, 3.0, 7.5))
    path = predict_tiled(model, image((71, 93)), output=output, progress=False, out=tmp_path / "cells.ome.zarr",
                         pixel_size=size)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")          # every level is one napari draws where it belongs
        [(layer_data, kwargs, _)] = read_ome_zarr(str(path))
    assert len(layer_data) == 3
    grid = {key: kwargs[key][0] if output == "probabilities" else kwargs[key] for key in ("scale", "translate")}
    assert grid == {"scale": [0.5, 0.25], "translate": [3.0, 7.5]}


@needs_zarr
def test_the_multiscales_own_transformations_come_after_level_0s(tmp_path):
    path = write_pyramid(tmp_path / "a.ome.zarr", [(40, 30), (20, 15)],
                         [([1.0, 1.0], [2.0, 4.0]), ([2.0, 2.0], [2.5, 4.5])],
                         whole=[{"type": "scale", "scale": [0.5, 0.25]},
                                {"type": "translation", "translation": [10.0, 20.0]}])
    [(data, kwargs, kind)] = read_ome_zarr(str(path))
    assert kind == "labels" and len(data) == 2
    assert kwargs["scale"] == [0.5, 0.25] and kwargs["translate"] == [11.0, 21.0]
    assert kwargs["units"] == ["micrometer", "micrometer"]


@needs_zarr
@pytest.mark.parametrize("shapes, transformations", [
    # picked levels (segment's labels): the scale doubled, no translation of their own
    ([(41, 29), (21, 15), (11, 8)], [([0.5, 0.25], None), ([1.0, 0.5], None), ([2.0, 1.0], None)]),
    # block means centred on their blocks (segment's probabilities, ome-zarr-py): translation (2**k - 1) / 2 pixels
    ([(41, 29), (21, 15), (11, 8)], [([0.5, 0.25], [3.0, 7.5]), ([1.0, 0.5], [3.25, 7.625]),
                                     ([2.0, 1.0], [3.75, 7.875])]),
    # sizes rounded down (odd rows and columns dropped), and a level reduced by 3
    ([(41, 29), (20, 14), (6, 4)], [([0.5, 0.25], None), ([1.0, 0.5], [0.25, 0.125]), ([3.0, 1.5], None)]),
])
def test_the_reader_keeps_every_level_napari_draws_where_it_belongs(tmp_path, shapes, transformations):
    import warnings

    path = write_pyramid(tmp_path / "a.ome.zarr", shapes, transformations)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [(data, kwargs, _)] = read_ome_zarr(str(path))
    assert [level.shape for level in data] == shapes
    assert kwargs["scale"] == transformations[0][0] and kwargs["translate"] == (transformations[0][1] or [0.0, 0.0])


S0, S1, S2 = ([0.5, 0.25], None), ([1.0, 0.5], None), ([2.0, 1.0], None)
LEVELS = [(40, 30), (20, 15), (10, 8)]


@needs_zarr
@pytest.mark.parametrize("change, kept, problem", [
    (dict(transformations=[S0, ([1.0, 0.5], [5.0, 0.0]), S2]), 1,
     r"level 1 \(dataset '1'\) starts at 5 along 'y', level 0 at 0: more than half its pixel"),
    (dict(transformations=[S0, S0, S0]), 1,      # the scale of level 0 on every level: a crop to napari's eyes
     r"level 1 \(dataset '1'\) covers 20 x 0.5 along 'y' where level 0 covers 40 x 0.5"),
    (dict(transformations=[S0, S1, ([4.0, 2.0], None)]), 2, r"level 2 \(dataset '2'\) covers 10 x 4 along 'y'"),
    (dict(transformations=[S0, S1, ([-2.0, 1.0], None)]), 2, r"level 2 .* a scale of -2.0"),
    (dict(transformations=[S0, ([1.0, 0.5], [float("inf"), 0.0]), S2]), 1, r"level 1 .* a translation of inf"),
    (dict(transformations=[S0, ({"y": 1.0}, None), S2]), 1,
     r"level 1 \(dataset '1'\) has malformed coordinateTransformations \(a scale of \{'y': 1.0\}, not a list"),
    (dict(transformations=[S0, ([1.0, 0.5, 1.0], None), S2]), 1,
     r"level 1 .* malformed coordinateTransformations \(a scale or translation of 3, 2"),
    (dict(transformations=[S0, S1, S2], shapes=[(40, 30), (20, 15), (10, 8, 1)]), 2,
     r"level 2 \(dataset '2'\) has 3 dimensions, level 0 2"),
    (dict(transformations=[S0, S1, S2], shapes=[(40, 30), (20, 31), (10, 8)]), 1,
     r"level 1 .* of shape \(20, 31\) is no reduction of the level above it, \(40, 30\)"),
    (dict(transformations=[S0, S1, S2], paths=["0", "1", "gone"]), 2,
     r"level 2 cannot be read: its dataset 'gone' is no array of the group"),
    (dict(transformations=[S0, S1, S2], paths=["0", 1, "2"]), 1, r"level 1 cannot be read: a dataset path 1"),
])
def test_the_reader_ends_the_pyramid_at_a_level_napari_would_misplace(tmp_path, change, kept, problem):
    """napari draws every level by level 0's grid and the ratio of the shapes: a level whose metadata put it
    elsewhere (shifted, cropped, of another scale), or that cannot be read, would be drawn in the wrong place or fail
    napari, so the layer gets the levels above it, with a warning naming the file, level and what is wrong."""
    shapes = change.pop("shapes", LEVELS)
    path = write_pyramid(tmp_path / "a.ome.zarr", shapes, **change)
    with pytest.warns(UserWarning, match=rf"a.ome.zarr: napari gets {kept} of its 3 pyramid levels: {problem}"):
        [(data, kwargs, kind)] = read_ome_zarr(str(path))
    assert kind == "labels" and kwargs["scale"] == [0.5, 0.25]
    assert ([level.shape for level in data] if kept > 1 else [data.shape]) == shapes[:kept]
    assert kwargs.get("multiscale", False) == (kept > 1)


@needs_zarr
def test_a_level_of_another_type_or_channel_count_ends_the_pyramid(tmp_path):
    import zarr

    path = write_pyramid(tmp_path / "a.ome.zarr", [(2, 40, 30), (2, 20, 15)],
                         [([1.0, 0.5, 0.25], None), ([1.0, 1.0, 0.5], None)], axes="cyx", dtype=np.float32)
    group = zarr.open_group(str(path), mode="r+")
    group.create_array("1", shape=(3, 20, 15), dtype=np.float32, overwrite=True)
    with pytest.warns(UserWarning, match=r"gets 1 of its 2 pyramid levels: level 1 .* has 3 channels, level 0 2"):
        [(data, kwargs, kind)] = read_ome_zarr(str(path))
    assert kind == "image" and kwargs["channel_axis"] == 0 and data.shape == (2, 40, 30)
    group.create_array("1", shape=(2, 20, 15), dtype=np.float16, overwrite=True)
    with pytest.warns(UserWarning, match=r"level 1 \(dataset '1'\) holds float16, level 0 float32"):
        read_ome_zarr(str(path))


@needs_zarr
@pytest.mark.parametrize("attributes, problem", [
    ({"multiscales": 5}, "its multiscales entry 5 is no object"),
    ({"multiscales": [{"axes": ["y", "x"], "datasets": "0"}]}, "its datasets '0' are no list"),
    ({"multiscales": [{"axes": ["y", "x"], "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": "12"}]}]}]}, "a scale of '12', not a list of numbers"),
    ({"multiscales": [{"axes": ["y", "x"], "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [True, 1]}]}]}]}, r"a scale of \[True, 1\], not a list of numbers"),
    ({"multiscales": [{"axes": ["y", "x"], "datasets": [{"path": "0", "coordinateTransformations": {
        "type": "scale", "scale": [1, 1]}}]}]}, "coordinateTransformations .* is no list of objects"),
    ({"multiscales": [{"axes": 2, "datasets": [{"path": "0"}]}]}, "its axes 2 are no list"),
    ({"multiscales": [{"axes": [{"type": "space"}, {"type": "space"}], "datasets": [{"path": "0"}]}]},
     r"its axes are named \[None, None\]: NGFF names each by a string of its own"),
    ({"multiscales": [{"axes": ["x", "x"], "datasets": [{"path": "0"}]}]}, r"its axes are named \['x', 'x'\]"),
    ({"multiscales": [{"axes": [1, 2], "datasets": [{"path": "0"}]}]}, r"its axes are named \[1, 2\]"),
    ({"multiscales": [{"axes": [{"name": "c", "type": "channel"}, {"name": "x", "type": "channel"}],
                       "datasets": [{"path": "0"}]}]}, r"axes \['c', 'x'\] are all channel axes"),
])
def test_malformed_metadata_is_an_error_naming_the_file(tmp_path, attributes, problem):
    import zarr

    group = zarr.open_group(str(tmp_path / "bad.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(8, 8), dtype=np.uint8)
    group.attrs.update(attributes)
    assert napari_get_reader(str(tmp_path / "bad.ome.zarr")) is read_ome_zarr     # it claims to be one
    with pytest.raises(ValueError, match=rf"bad.ome.zarr: malformed OME-Zarr multiscales metadata \(.*{problem}"):
        read_ome_zarr(str(tmp_path / "bad.ome.zarr"))


@needs_zarr
@pytest.mark.parametrize("attributes", [{"multiscales": []}, {"ome": 5}, {"ome": [1], "multiscales": []}])
def test_the_reader_declines_a_group_without_an_image_without_failing(tmp_path, attributes):
    """An empty multiscales list, or an "ome" (NGFF 0.5's nesting) that is no object, made napari_get_reader raise
    IndexError or TypeError: napari then reported a traceback, not "no reader"."""
    import zarr

    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w", zarr_format=2).attrs.update(attributes)
    assert napari_get_reader(str(tmp_path / "empty.zarr")) is None
    with pytest.raises(ValueError, match="empty.zarr: not an OME-Zarr image"):
        read_ome_zarr(str(tmp_path / "empty.zarr"))


@needs_zarr
@pytest.mark.parametrize("scale, unit, expected_scale, expected_unit", [
    ([0.5, 0.25], "µm", [0.5, 0.25], "micrometer"),        # a length as files spell it: its NGFF name
    ([0.5, 0.25], "second", [0.5, 0.25], "second"),
    ([0.5, 0.25], 3, [0.5, 0.25], "pixel"),                # no unit napari knows: it refused the layer
    ([0.5, 0.25], "furlongs", [0.5, 0.25], "pixel"),
    ([0.0, 0.25], "micrometer", [1.0, 0.25], "pixel"),     # uncalibrated (0): napari refuses a scale of 0
])
def test_napari_gets_units_and_scales_it_takes(tmp_path, scale, unit, expected_scale, expected_unit):
    import zarr

    path = write_pyramid(tmp_path / "a.ome.zarr", [(8, 8)], [(scale, None)])
    group = zarr.open_group(str(path), mode="r+")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["axes"][0]["unit"] = unit
    group.attrs["multiscales"] = multiscales
    [(_, kwargs, _)] = read_ome_zarr(str(path))
    assert kwargs["scale"] == expected_scale and kwargs["units"] == [expected_unit, "micrometer"]


# ---- layers as napari opens files: colour bands, axes of length 1, lazy data, pixel sizes


class Recorded:
    """A lazy array (as a dask or zarr layer is) that records the keys it is read by."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]

    def __array__(self, dtype=None, copy=None):
        self.reads.append("all of it")
        return np.asarray(self.data, dtype)


def test_a_grey_image_saved_in_colour_is_its_grey_channel(model):
    """An RGB(A) PNG whose colour bands are equal (the 2018 Data Science Bowl's nuclei), which `unet-fast segment`
    reads as grey, opens in napari as an RGB layer: the widget refused it ("the model takes 1 channel(s)"). It is
    the grey image's result now, as segment gives it; an image in colour is still refused, saying how to split it."""
    grey = np.random.default_rng(0).integers(0, 255, (70, 90), dtype=np.uint8)
    expected = predict_tiled(model, grey, output="labels", progress=False)
    opaque = np.full_like(grey, 255)
    for bands in ([grey] * 3, [grey] * 3 + [opaque]):
        np.testing.assert_array_equal(segment(model, np.stack(bands, -1), rgb=True, result="classes"), expected)
    colour = np.stack([grey, grey, grey // 2], -1)
    with pytest.raises(ValueError, match=r"RGB data of shape \(70, 90, 3\); the model takes 1 channel.*Split RGB"):
        segment(model, colour, rgb=True, result="classes")
    with pytest.raises(ValueError, match=r"RGB data of shape \(70, 90, 4\).*1 channel"):    # not opaque: not grey
        segment(model, np.stack([grey] * 3 + [opaque // 2], -1), rgb=True, result="classes")


def test_an_opaque_alpha_band_is_no_channel():
    """An RGBA layer (a PNG with an alpha band) for a model of 3 channels: segment drops an alpha opaque everywhere,
    the widget refused the layer; one that is not opaque is refused, saying so."""
    torch.manual_seed(0)
    net = unet_fast.UNet(3, 2, depth=2, base_channels=4, backend="torch").eval()
    rgb = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    expected = predict_tiled(net, np.moveaxis(rgb, -1, 0), output="labels", progress=False)
    rgba = np.concatenate([rgb, np.full((70, 90, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(segment(net, rgba, rgb=True, result="classes"), expected)
    rgba[5, 7, 3] = 254
    with pytest.raises(ValueError, match=r"shape \(70, 90, 4\); the model takes 3 channel.*alpha band is not opaque"):
        segment(net, rgba, rgb=True, result="classes")


def test_an_rgb_layer_is_read_tile_by_tile_not_whole():
    """An RGB layer's data went through np.asarray before the first tile: a lazy (dask, zarr) whole-slide image
    was read whole into memory. Its view reads only the tiles asked for."""
    data = Recorded(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    image, layout = model_input(data, True, 3)
    assert layout == "CYX" and image.shape == (3, 70, 90) and data.reads == []
    np.testing.assert_array_equal(image[:, 10:20, 30:45], np.moveaxis(data.data[10:20, 30:45], -1, 0))
    np.testing.assert_array_equal(image[1, ::7, 4], data.data[::7, 4, 1])
    assert data.reads == [(slice(10, 20), slice(30, 45), slice(0, 3)), (slice(None, None, 7), 4, slice(0, 3))]


def test_an_rgb_stack_is_a_stack_of_its_planes(model):
    """A (Z, Y, X, 3) RGB layer was refused where a (Y, X, 3) one is taken: its planes are read by the 2-D rules
    (grey saved in colour: its grey channel; an opaque alpha: no channel), lazily, and the labels lie on the layer."""
    grey = np.random.default_rng(0).integers(0, 255, (3, 70, 90), dtype=np.uint8)
    expected = predict_tiled(model, grey, output="labels", progress=False)
    opaque = np.full_like(grey, 255)
    for bands in ([grey] * 3, [grey] * 3 + [opaque]):
        recorded = Recorded(np.stack(bands, -1))
        image_in, layout = model_input(recorded, True, 1)
        assert layout == "ZCYX" and image_in.shape == (3, 1, 70, 90)
        np.testing.assert_array_equal(segment(model, recorded, rgb=True, result="classes"), expected)
        assert "all of it" not in recorded.reads
    np.testing.assert_array_equal(segment(model, np.stack([grey[None]] * 3, -1), rgb=True, result="classes"),
                                  expected[None])        # an axis of length 1 kept in the labels
    colour = np.stack([grey] * 3, -1)
    colour[2, 5, 7, 2] += 1            # the last plane's one pixel: a colour stack
    with pytest.raises(ValueError, match=r"RGB data of shape \(3, 70, 90, 3\); the model takes 1 channel.*Split RGB"):
        segment(model, colour, rgb=True, result="classes")

    torch.manual_seed(0)
    net = unet_fast.UNet(3, 2, depth=2, base_channels=4, backend="torch").eval()
    rgb = np.random.default_rng(1).integers(0, 255, (2, 70, 90, 3), dtype=np.uint8)
    planes = np.moveaxis(rgb, -1, 1)                    # (Z, C, Y, X)
    rgba = np.concatenate([rgb, np.full((2, 70, 90, 1), 255, np.uint8)], -1)
    image_in, layout = model_input(rgba, True, 3)
    assert layout == "ZCYX" and image_in.shape == (2, 3, 70, 90)
    np.testing.assert_array_equal(image_in[1, :, 10:20, 30:45], planes[1, :, 10:20, 30:45])
    np.testing.assert_array_equal(image_in[:, 2, ::7, 4], planes[:, 2, ::7, 4])
    expected = predict_tiled(net, planes, layout="ZCYX", output="labels", progress=False)
    for data in (rgb, rgba):
        np.testing.assert_array_equal(segment(net, data, rgb=True, result="classes"), expected)
    rgba[1, 5, 7, 3] = 254
    with pytest.raises(ValueError, match=r"shape \(2, 70, 90, 4\); the model takes 3 channel.*alpha band is not "
                                         r"opaque"):
        segment(net, rgba, rgb=True, result="classes")


@pytest.mark.parametrize("shape", [(1, 1, 70, 90), (3, 1, 70, 90), (1, 1, 3, 70, 90)])
def test_leading_axes_of_length_1_are_left_out(model, shape):
    """An OME-Zarr of bioformats2raw (t, c, z, y, x) opens, a layer a channel, as (1, 1, Y, X): the widget refused it
    ("the model takes 1 channel(s)") where `unet-fast segment` segments the file. Axes of length 1 are left out (read
    lazily: indexing a zarr array at 0 reads it whole), one longer axis is a stack, and the labels keep every axis of
    the layer, so they lie on it."""
    data = image(shape)
    planes = data.reshape((-1, 70, 90))
    expected = predict_tiled(model, planes if len(planes) > 1 else planes[0], output="labels", progress=False)
    recorded = Recorded(data)
    image_in, layout = model_input(recorded, False, 1)
    assert layout == ("ZYX" if len(planes) > 1 else "YX") and recorded.reads == []
    classes = segment(model, recorded, result="classes")
    assert classes.shape == shape[:-2] + (70, 90)
    np.testing.assert_array_equal(classes.reshape(expected.shape), expected)
    assert segment(model, data, result="instances").shape == classes.shape


def test_an_image_of_bands_last_is_refused_not_segmented_as_thin_images(model):
    """A grey + alpha PNG opens in napari as a (Y, X, 2) layer, not RGB: it was segmented as a stack of Y images 2
    pixels wide (minutes, a wrong result), where predict_tiled refuses such an image unless told its layout."""
    with pytest.raises(ValueError, match=r"shape \(70, 90, 2\), which napari shows as 70 images of 90 x 2 pixels"):
        segment(model, image((70, 90, 2)), result="classes")


def test_labels_layer_takes_the_images_rotation_shear_and_affine():
    """An image layer rotated, sheared or under an affine (registered to another) got its labels without them: they
    lay elsewhere in the world."""
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])
    affine = np.eye(4)
    affine[1, 2], affine[2, 3] = 0.1, 5.0
    _, kwargs = labels_layer(np.zeros((40, 50), np.int32), "cells", (2.0, 0.5, 0.25), (0.0, 10.0, 20.0),
                             rotate=rotate, shear=[0.0, 0.0, 0.2], affine=affine)
    np.testing.assert_array_equal(kwargs["rotate"], rotate[1:, 1:])
    np.testing.assert_array_equal(kwargs["shear"], [[1.0, 0.2], [0.0, 1.0]])
    np.testing.assert_array_equal(kwargs["affine"], [[1.0, 0.1, 0.0], [0.0, 1.0, 5.0], [0.0, 0.0, 1.0]])
    _, kwargs = labels_layer(np.zeros((3, 40, 50), np.int32), "cells", (2.0, 0.5, 0.25), (0.0, 10.0, 20.0),
                             rotate=rotate, shear=[0.0, 0.0, 0.2], affine=affine)
    np.testing.assert_array_equal(kwargs["rotate"], rotate)
    np.testing.assert_array_equal(kwargs["affine"], affine)


def test_a_run_warns_where_the_images_pixels_are_far_from_the_models():
    """`unet-fast segment` warns when the image's pixels are more than 1.5 times larger or smaller than the training
    images' (the model file's pixel_size); the widget segmented such a layer (its scale in micrometers, as the reader
    gives an OME-Zarr's) without a word."""
    from unet_fast.napari.segmentation import layer_pixel_size

    torch.manual_seed(0)
    net = unet_fast.UNet(1, 2, depth=2, base_channels=4, backend="torch").eval()
    net.metadata = {"pixel_size": {"y": 0.5, "x": 0.5, "unit": "micrometer"}}
    assert layer_pixel_size((1.0, 1.0), ("pixel", "pixel")) is None
    size = layer_pixel_size((5.0, 2.0, 2.0), ("micrometer",) * 3)
    assert (size.y, size.x, size.unit) == (2.0, 2.0, "micrometer")
    run = Segmentation(net, image((70, 90)), result="classes", pixel_size=size, name="cells")
    run_to_the_end(run)
    assert run.warning.startswith("cells: pixels of 2 x 2 micrometer, 4.0 times larger than the model's training")
    run = Segmentation(net, image((70, 90)), result="classes",
                       pixel_size=layer_pixel_size((600.0, 400.0), ("nanometer",) * 2), name="cells")
    run_to_the_end(run)
    assert run.warning is None


@needs_zarr
def test_the_reader_opens_a_microscopes_integer_image_as_an_image(tmp_path):
    """A uint16 OME-Zarr of a microscope (y, x, no channel axis) opened as Labels: shown in random colours, and not
    offered to the widget, which segments Image layers. Labels are the images NGFF marks as such ("image-label")."""
    path = write_pyramid(tmp_path / "raw.ome.zarr", [(40, 30)], [([0.5, 0.25], None)], dtype=np.uint16, label=False)
    [(_, kwargs, kind)] = read_ome_zarr(str(path))
    assert kind == "image" and "features" not in kwargs
    path = write_pyramid(tmp_path / "labels.ome.zarr", [(40, 30)], [([0.5, 0.25], None)], dtype=np.uint16, label=True)
    assert read_ome_zarr(str(path))[0][2] == "labels"


# ---- the reader: the TIFFs `unet-fast segment` writes (its default format), on the image's grid like its OME-Zarr

CLASSES = ["background", "nucleus", "cell border"]


def ome_tiff(path, data, *, z=None, position=(3.0, 7.5)):
    """An OME-TIFF input of pixels 0.5 x 0.25 um (z: the plane spacing of a stack), its first plane at ``position``."""
    import tifffile

    metadata = {"axes": "ZYX"[-data.ndim:], "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm", "PhysicalSizeX": 0.25,
                "PhysicalSizeXUnit": "µm"}
    if z is not None:
        metadata.update(PhysicalSizeZ=z, PhysicalSizeZUnit="µm")
    planes = data.shape[0] if data.ndim == 3 else 1
    if position is not None:
        metadata["Plane"] = {"PositionY": [position[0]] * planes, "PositionYUnit": ["µm"] * planes,
                             "PositionX": [position[1]] * planes, "PositionXUnit": ["µm"] * planes}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def segment_tiffs(tmp_path_factory):
    """{(output, input name): the TIFF `unet-fast segment` wrote}, by tiny untrained models (3 named classes; 2
    for instances): cells (70 x 90, placed on the stage), stack (3 planes 2 um apart), wide (40 x 2100: a pyramid
    of 3 levels, as segment makes one above 1024 px a side)."""
    from unet_fast import cli

    folder = tmp_path_factory.mktemp("segment_tiffs")
    torch.manual_seed(0)
    named = unet_fast.UNet(1, 3, depth=2, base_channels=4, backend="torch").eval()
    named.head.bias.data = torch.tensor([0.0, 0.3, -0.3])
    unet_fast.save_model(named, folder / "classes.safetensors", class_names=CLASSES)
    torch.manual_seed(3)
    two = unet_fast.UNet(1, 2, depth=2, base_channels=4, backend="torch").eval()
    logits = predict_tiled(two, image((70, 90)), output="logits", progress=False,
                           normalization=unet_fast.Normalization())
    two.head.bias.data[1] -= float(np.percentile(logits[1] - logits[0], 70))      # several objects, as segment reads
    unet_fast.save_model(two, folder / "two.safetensors")
    inputs = [ome_tiff(folder / "cells.ome.tif", image((70, 90))),
              ome_tiff(folder / "stack.ome.tif", image((3, 70, 90)), z=2.0, position=None),
              ome_tiff(folder / "wide.ome.tif", image((40, 2100)))]
    made = {}
    for output, model_file, files in (("labels", "classes", inputs), ("probabilities", "classes", inputs),
                                      ("instances", "two", inputs[:1])):
        assert cli.main(["segment", "-i", *map(str, files), "-o", str(folder / output), "-m",
                         str(folder / f"{model_file}.safetensors"), "--output", output, "--no-progress"]) == 0
        made.update({(output, path.name.removesuffix(".ome.tif")): folder / output / path.name.replace(".ome", "")
                     for path in files})
    return made


def read_with_plugin(path):
    """What the plugin's reader gives napari for ``path`` (it must claim the file)."""
    read = napari_get_reader(str(path))
    assert read is not None, f"the reader declined {path}"
    return read(str(path))


@needs_zarr
@pytest.mark.parametrize("output", ["labels", "instances", "probabilities"])
def test_the_reader_opens_segment_tiffs_on_the_images_grid(segment_tiffs, output):
    """napari's own reader opened segment's TIFF outputs in pixels (labels as an Image, probabilities as a (Y, X, 3)
    stack); the plugin opens them as their OME-Zarr twins: Labels (class labels named), an Image a class, each with
    the input's pixel size and stage position."""
    import tifffile

    path = segment_tiffs[output, "cells"]
    [(data, kwargs, kind)] = read_with_plugin(path)
    np.testing.assert_array_equal(np.asarray(data[...]), tifffile.imread(path))
    assert type(data).__module__.startswith("zarr") and "multiscale" not in kwargs       # lazy, one level
    if output == "probabilities":
        assert kind == "image" and kwargs["channel_axis"] == 2 and data.shape == (70, 90, 3)
        assert kwargs["name"] == [f"cells {name}" for name in CLASSES]
        assert kwargs["scale"] == [[0.5, 0.25]] * 3 and kwargs["translate"] == [[3.0, 7.5]] * 3
        assert kwargs["units"] == [["micrometer"] * 2] * 3 and kwargs["axis_labels"] == [["y", "x"]] * 3
    else:
        assert kind == "labels" and "channel_axis" not in kwargs and kwargs["name"] == "cells"
        assert kwargs["scale"] == [0.5, 0.25] and kwargs["translate"] == [3.0, 7.5]
        assert kwargs["units"] == ["micrometer"] * 2 and kwargs["axis_labels"] == ["y", "x"]
        if output == "labels":         # shown under the cursor, as an OME-Zarr's NGFF properties are
            assert kwargs["features"] == {"index": [0, 1, 2], "class": CLASSES}
        else:
            assert "features" not in kwargs and np.asarray(data[...]).max() > 1      # objects, not classes


@needs_zarr
@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_the_reader_opens_a_segment_tiff_stack_as_a_stack(segment_tiffs, output):
    import tifffile

    path = segment_tiffs[output, "stack"]
    [(data, kwargs, kind)] = read_with_plugin(path)
    np.testing.assert_array_equal(np.asarray(data[...]), tifffile.imread(path))
    grid = {key: kwargs[key] for key in ("scale", "translate", "units", "axis_labels")}
    expected = {"scale": [2.0, 0.5, 0.25], "translate": [0.0] * 3, "units": ["micrometer"] * 3,
                "axis_labels": ["z", "y", "x"]}
    if output == "probabilities":
        assert kind == "image" and data.shape == (3, 70, 90, 3) and kwargs["channel_axis"] == 3
        assert grid == {key: [value] * 3 for key, value in expected.items()}
    else:
        assert kind == "labels" and data.shape == (3, 70, 90) and grid == expected


@needs_zarr
@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_the_reader_opens_a_segment_tiff_pyramid_as_a_lazy_multiscale_layer(segment_tiffs, output):
    """Above 1024 px a side segment's TIFF is pyramidal (SubIFDs): napari gets its levels, full resolution first,
    as lazy zarr arrays over the file (a 50,000 px result is never read whole), on level 0's grid."""
    import tifffile

    path = segment_tiffs[output, "wide"]
    [(levels, kwargs, kind)] = read_with_plugin(path)
    assert kwargs["multiscale"] is True and isinstance(levels, list)
    assert all(type(level).__module__.startswith("zarr") for level in levels)
    channels = (3,) if output == "probabilities" else ()
    assert [level.shape for level in levels] == [(40, 2100) + channels, (20, 1050) + channels, (10, 525) + channels]
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(np.asarray(level[...]), tifffile.imread(path, series=0, level=k))
    if output == "probabilities":
        assert kind == "image" and kwargs["channel_axis"] == 2 and kwargs["name"] == [f"wide {c}" for c in CLASSES]
        assert kwargs["scale"] == [[0.5, 0.25]] * 3 and kwargs["translate"] == [[3.0, 7.5]] * 3
    else:
        assert kind == "labels" and kwargs["name"] == "wide"
        assert kwargs["scale"] == [0.5, 0.25] and kwargs["translate"] == [3.0, 7.5]


@needs_zarr
def test_the_reader_declines_tiffs_segment_did_not_write(segment_tiffs, tmp_path):
    """The manifest claims *.tif and *.tiff (segment's outputs have no suffix of their own), so the reader declines
    every TIFF without segment's provenance: napari's own reader opens those as it did."""
    import tifffile

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.arange(20, dtype=np.uint8).reshape(4, 5))
    foreign = tmp_path / "foreign.tiff"          # the private tag, used by another program
    tifffile.imwrite(foreign, np.zeros((4, 5), np.uint8), extratags=[(65001, "s", 0, '{"made by": "x"}', True)])
    for path in (plain, foreign, segment_tiffs["labels", "cells"].parent.parent / "cells.ome.tif"):   # an input
        assert napari_get_reader(str(path)) is None
    assert napari_get_reader([str(segment_tiffs["labels", "cells"])]) is not None
    napari = pytest.importorskip("napari", reason="opening files in napari needs the napari extra")
    import npe2
    from napari.components import ViewerModel
    from napari.plugins import _npe2

    npe2.PluginManager.instance().discover()
    assert set(_npe2.get_readers(str(plain))) == {"napari", "unet_fast"}         # both claim the name
    viewer = ViewerModel()
    [layer] = viewer.open(str(plain))                                             # napari's own reader
    assert isinstance(layer, napari.layers.Image)
    np.testing.assert_array_equal(np.asarray(layer.data), tifffile.imread(plain))
    with pytest.raises(ValueError, match="refused the file"):                     # declined, not misread
        viewer.open(str(plain), plugin="unet_fast")
    [labels] = viewer.open(str(segment_tiffs["labels", "cells"]), plugin="unet_fast")
    assert isinstance(labels, napari.layers.Labels) and tuple(labels.scale) == (0.5, 0.25)
    assert tuple(labels.translate) == (3.0, 7.5)


def test_a_layer_over_the_commands_pixel_limit_is_refused():
    """The widget holds a layer's labels in memory, whole: a huge lazy layer filled it. Above unet-fast segment's
    default limit (DEFAULT_MAX_PIXELS) it is refused, naming the command, which streams to disk."""
    from unet_fast.image_io import DEFAULT_MAX_PIXELS
    from unet_fast.napari.segmentation import size_problem

    assert DEFAULT_MAX_PIXELS == 16 * 8192 * 8192
    assert size_problem(np.broadcast_to(np.uint8(0), (16, 8192, 8192)), "cells") is None      # views: no memory
    over = np.broadcast_to(np.uint8(0), (16, 8192, 8193))
    problem = size_problem(over, "cells")
    assert problem.startswith("cells holds 1,073,872,896 pixels (shape (16, 8192, 8193)), above the limit of "
                              "1,073,741,824") and "unet-fast segment -i" in problem
    assert size_problem([over, over[:, ::2, ::2]], "cells") == problem       # a multiscale layer: its level 0
    assert size_problem(over, "cells", max_pixels=over.size) is None


def test_the_pixel_limit_counts_the_pixels_a_scaled_model_sees():
    """A model that resamples its images by input_scale holds scale^2 times the pixels, as unet-fast segment
    counts them: a layer a quarter of the limit is refused for a model of input_scale 2 once it is read, before
    any tile; one of input_scale 0.5 takes a layer of four times the plain limit."""
    from unet_fast.image_io import DEFAULT_MAX_PIXELS, ImageTooLargeError
    from unet_fast.napari.segmentation import size_problem

    quarter_over = np.broadcast_to(np.uint8(0), (16, 4096, 4097))      # a view: no memory
    assert size_problem(quarter_over, "cells") is None
    problem = size_problem(quarter_over, "cells", scale=2.0)
    assert problem.startswith("cells holds 268,500,992 pixels resampled by 2 (the model's input_scale) make "
                              "1,074,003,968 (shape (16, 4096, 4097)), above the limit of 1,073,741,824")
    assert size_problem(np.broadcast_to(np.uint8(0), (16, 16384, 16384)), "cells", scale=0.5) is None
    torch.manual_seed(0)
    scaled = unet_fast.UNet(1, 2, depth=2, base_channels=4, backend="torch").eval()
    scaled.input_scale = 2.0
    run = Segmentation(scaled, quarter_over, result="classes", name="cells")
    with pytest.raises(ImageTooLargeError) as refused:
        next(run.steps())
    assert str(refused.value) == problem
    assert 4 * quarter_over.size > DEFAULT_MAX_PIXELS


def test_the_float16_overflow_advice_names_the_widgets_precision():
    """The advice on float16's overflow named `--dtype bf16`; the widget's control for it is its precision."""
    from unet_fast.inference import nonfinite_cause
    from unet_fast.napari.segmentation import widget_wording

    worded = widget_wording(nonfinite_cause(torch.float16))
    assert "--dtype" not in worded and worded.endswith("use dtype 'bf16' (float32's range) or 'fp32' (the widget's "
                                                       "precision)")


def test_pixels_too_far_to_resample_name_no_flag():
    """Pixels beyond what resampling makes up for were "too far ... for --scale", an option the widget lacks."""
    from unet_fast.napari.segmentation import widget_wording
    from unet_fast.pixel_size import PixelSize, scale_warning

    net = unet_fast.UNet(1, 2, depth=2, base_channels=4, backend="torch")
    net.metadata = {"pixel_size": {"y": 0.5, "x": 0.5, "unit": "micrometer"}}
    worded = widget_wording(scale_warning(net, PixelSize(20.0, 20.0, "micrometer"), "cells"))
    assert "--scale" not in worded and "for predict_tiled(scale=...) to make up for;" in worded
