"""unet_fast.ome_zarr: level 0 read strictly, coarser levels (for viewers) read as far as they can be."""
import numpy as np
import pytest

from optional_deps import needs_zarr

pytestmark = needs_zarr


def _pyramid(path, datasets, *, zarr_format=2, shapes=((40, 30), (20, 15), (10, 8)), whole=None):
    """An OME-Zarr image of arrays "0", "1", "2" of ``shapes`` whose multiscales lists ``datasets`` (NGFF 0.5 nests
    the metadata under "ome" in zarr format 3)."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for k, shape in enumerate(shapes):
        group.create_array(str(k), shape=shape, dtype=np.uint16)[...] = k + 1
    entry = {"axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"], "datasets": datasets}
    if whole is not None:
        entry["coordinateTransformations"] = whole
    if zarr_format == 3:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [entry]}
    else:
        group.attrs["multiscales"] = [dict(entry, version="0.4")]
    return path


def _dataset(path, scale, translation=None):
    listed = [{"type": "scale", "scale": scale}]
    if translation is not None:
        listed.append({"type": "translation", "translation": translation})
    return {"path": path, "coordinateTransformations": listed}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_level_grid_gives_each_levels_scale_and_translation_after_the_multiscales_own(tmp_path, zarr_format):
    from unet_fast.ome_zarr import open_ome_zarr

    path = _pyramid(tmp_path / "a.ome.zarr", [_dataset("0", [1.0, 1.0]), _dataset("1", [2.0, 2.0], [0.5, 0.5]),
                                              _dataset("2", [4.0, 4.0], [1.5, 1.5])], zarr_format=zarr_format,
                    whole=[{"type": "scale", "scale": [0.5, 0.25]},
                           {"type": "translation", "translation": [10.0, 20.0]}])
    image = open_ome_zarr(path)
    assert [level.shape for level in image.levels] == [(40, 30), (20, 15), (10, 8)] and image.unread is None
    assert (image.scale, image.translation) == image.level_grid(0) == ([0.5, 0.25], [10.0, 20.0])
    assert image.level_grid(1) == ([1.0, 0.5], [10.25, 20.125])
    assert image.level_grid(2) == ([2.0, 1.0], [10.75, 20.375])


@pytest.mark.parametrize("second, unread", [
    ({"path": "gone"}, "its dataset 'gone' is no array of the group"),
    ({"path": 1}, "a dataset path 1 that is no string"),
    ("1", "string indices must be integers"),
    ({"scale": [2.0, 2.0]}, "no 'path'"),
])
def test_a_coarser_level_that_cannot_be_read_ends_the_pyramid_and_level_0_still_reads(tmp_path, second, unread):
    """A missing or malformed coarser level failed the whole image (segment reads level 0 only): now the levels
    before it are the pyramid, and ``unread`` says why it ends."""
    from unet_fast import image_io
    from unet_fast.ome_zarr import open_ome_zarr

    path = _pyramid(tmp_path / "a.ome.zarr", [_dataset("0", [0.5, 0.25]), second, _dataset("2", [2.0, 1.0])])
    image = open_ome_zarr(path)
    assert len(image.levels) == 1 and unread in image.unread
    array, info = image_io.read_image(path)
    assert info.shape == (40, 30) and np.all(np.asarray(array[...]) == 1)


def test_a_malformed_coarser_grid_is_an_error_of_level_grid_only(tmp_path):
    from unet_fast.ome_zarr import open_ome_zarr

    path = _pyramid(tmp_path / "a.ome.zarr", [_dataset("0", [0.5, 0.25]), _dataset("1", ["1", 0.5]),
                                              _dataset("2", [2.0, 1.0, 1.0])])
    image = open_ome_zarr(path)                 # level 0 is well formed: the image opens, its pixel size reads
    assert len(image.levels) == 3 and image.pixel_size.y == 0.5
    with pytest.raises(ValueError, match=r"a scale of \['1', 0.5\], not a list of numbers"):
        image.level_grid(1)
    with pytest.raises(ValueError, match="a scale or translation of 3, 2 numbers for 2 axes"):
        image.level_grid(2)


@pytest.mark.parametrize("scale, message", [
    ("12", "a scale of '12', not a list of numbers"),            # its characters were read: a scale of [1.0, 2.0]
    ([False, 1], r"a scale of \[False, 1\], not a list of numbers"),
    ([None, 1], r"a scale of \[None, 1\], not a list of numbers"),
])
def test_a_scale_of_other_than_numbers_is_named(tmp_path, scale, message):
    from unet_fast.ome_zarr import open_ome_zarr

    path = _pyramid(tmp_path / "a.ome.zarr", [_dataset("0", scale)], shapes=[(40, 30)])
    with pytest.raises(ValueError, match=rf"a.ome.zarr: malformed OME-Zarr multiscales metadata \({message}"):
        open_ome_zarr(path)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_label_classes_are_the_named_entries_of_image_label_properties(tmp_path, zarr_format):
    """NGFF lets each label's "properties" entry hold any keys beside its "label-value", or none: the class names are
    the entries with an integer "label-value" and a string "class", the last of two for one value (as NGFF asks of
    readers); the napari reader gives them to the Labels layer as its features (shown under the cursor)."""
    import zarr

    from unet_fast.napari.reader import read_ome_zarr
    from unet_fast.ome_zarr import label_classes

    path = _pyramid(tmp_path / "a.ome.zarr", [_dataset("0", [1.0, 1.0])], zarr_format=zarr_format, shapes=((40, 30),))
    assert label_classes(path) == {} and "features" not in read_ome_zarr(path)[0][1]     # no "image-label"
    properties = [{"label-value": 0, "class": "background"}, {"label-value": 1, "area (pixels)": 1200},
                  {"label-value": True, "class": "yes"}, {"label-value": 2.0, "class": "two"}, {"class": "none"},
                  "cell", {"label-value": 3, "class": "cell"}, {"label-value": 3, "class": "neuron"}]
    for listed, want in ((properties, {0: "background", 3: "neuron"}), ("cells", {}), (None, {})):
        group = zarr.open_group(str(path), mode="r+")
        label = {"version": "0.4"} if listed is None else {"version": "0.4", "properties": listed}
        if zarr_format == 3:
            group.attrs["ome"] = {**group.attrs["ome"], "image-label": label}
        else:
            group.attrs["image-label"] = label
        assert label_classes(path) == want
        [(_, layer, kind)] = read_ome_zarr(path)
        assert kind == "labels" and layer.get("features") == (
            {"index": list(want), "class": list(want.values())} if want else None)
