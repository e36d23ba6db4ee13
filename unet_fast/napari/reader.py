"""napari reader for OME-Zarr images (NGFF 0.4 and 0.5), such as `unet-fast segment --format ome.zarr` writes, and
for the TIFFs `unet-fast segment` writes (``read_segment_tiff``: those that record its provenance; napari's own
reader opens every other TIFF, as this reader declines it).

Integer label images without a channel axis (marked NGFF "image-label", as segment marks its class labels and
instances) open as Labels (the class names of its "properties", which segment writes for class labels, become the
layer's features, shown under the cursor), others (a microscope's integer images among them) as Images, a channel
axis (type "channel", or an untyped "c": e.g. class probabilities) split into one layer per channel. Every layer gets
the file's pixel size (the scale and translation of its first dataset, the multiscale's own transformations applied
after them) and units, so it lies on top of the image it was computed from, and where the image lies (a stage
position). The arrays stay lazy: napari reads what it shows. A pyramid (segment's outputs
of more than 1024 px a side have one) opens as a multiscale layer, the list of its levels from full resolution
down, so napari reads the level it shows, not level 0's every chunk when zoomed out.

napari takes one grid for a multiscale layer, level 0's (its scale and translate), and places each coarser level
by the ratio of its shape to level 0's, the centres of their first pixels together: NGFF's place for a level made
by picking pixels (segment's labels and instances: level k is level 0[::2**k, ::2**k], with no translation of its
own). A level of block means (segment's probabilities, ome-zarr-py's pyramids) has each pixel at its block's centre,
(2**k - 1) / 2 pixels of level 0 further along y and x (its translation): napari draws it that much up and left of
that, under half a pixel of the level, and only while it shows that level (zoomed out until a pixel of it is about a
pixel of the screen); one translate for every level cannot do better, and level 0, seen close up, is exact.
Anywhere in a level, napari's place and NGFF's differ by less than a pixel and a half of the level (the rest: a
level of an odd size covers a little more or less than level 0, and napari stretches it over level 0). A level napari
would draw further from where its metadata puts it (a crop, a shifted level, a scale its shape does not match), or
that cannot be read, ends the pyramid napari gets, with a warning naming the file: napari then shows the levels
above it, level 0 at least, where they belong.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import tifffile

from ..image_io import TIFF_SUFFIXES, open_tiff_level, tiff_axes
from ..inference import OUTPUTS
from ..ome_zarr import (NGFF_UNITS, OmeZarrImage, channel_labels, is_label_image, is_ome_zarr, label_classes,
                        open_ome_zarr)
from ..pixel_size import _unit_name, read_pixel_size
from ..sinks import read_provenance


def napari_get_reader(path):
    """The reader for ``path`` if it is an OME-Zarr image (``read_ome_zarr``) or a TIFF `unet-fast segment` wrote
    (``read_segment_tiff``: its provenance records the kind of result it holds), else None: napari then asks other
    readers, its own among them."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = str(path).rstrip("/")
    if is_ome_zarr(path):
        return read_ome_zarr
    if path.lower().endswith(TIFF_SUFFIXES) and (read_provenance(path) or {}).get("output") in OUTPUTS:
        return read_segment_tiff
    return None


def read_ome_zarr(path) -> list[tuple]:
    """napari layer data: [(data, layer keyword arguments, "labels" or "image")]. A ValueError naming ``path`` where
    its metadata is malformed (level 0's; a coarser level's ends the pyramid, with a warning)."""
    image = open_ome_zarr(path)
    names = image.names
    channel = _channel_axis(image, path)
    spatial = [i for i in range(len(names)) if i != channel]
    # a scale of 0 (files declare it for uncalibrated images), or not finite, napari refuses or cannot draw: pixels
    calibrated = [math.isfinite(image.scale[i]) and image.scale[i] != 0 for i in spatial]
    grid = {"scale": [image.scale[i] if known else 1.0 for i, known in zip(spatial, calibrated)],
            "translate": [image.translation[i] if math.isfinite(image.translation[i]) else 0.0 for i in spatial],
            "units": [(_napari_unit(image.axes[i].get("unit")) if known else None) or "pixel"
                      for i, known in zip(spatial, calibrated)],
            "axis_labels": [names[i] for i in spatial]}
    levels = _levels_napari_places(image, channel, path)
    if channel is not None:      # segment's probabilities: a layer a class, named by its class
        return _layers(path, levels, grid, channel=channel, channel_names=channel_labels(path))
    # a label image by its NGFF mark, not its type: microscopes write integers too (a uint16 image opened as Labels
    # could not be segmented, the widget takes Image layers)
    labels = np.dtype(image.levels[0].dtype).kind in "iu" and is_label_image(path)
    return _layers(path, levels, grid, classes=label_classes(path) if labels else None, labels=labels)


def read_segment_tiff(path) -> list[tuple]:
    """napari layer data of a TIFF `unet-fast segment` wrote, as ``read_ome_zarr`` gives an OME-Zarr output's:
    labels and instances as Labels (class labels' classes, named in its provenance, as features), probabilities
    and logits (the TIFF's samples) as an Image a class, named by class where the provenance names them; on the
    grid its OME-XML records (``read_pixel_size``: scale and units, the first plane's position as translation;
    pixels where it records none). A pyramid (its SubIFD levels) is a multiscale layer; every level stays lazy
    (``open_tiff_level``: napari reads the tiles it shows)."""
    path = str(path)
    made = read_provenance(path) or {}
    with tifffile.TiffFile(path) as tif:
        axes, count = tiff_axes(tif.series[0]), len(tif.series[0].levels)   # YX, or ZYX (IYX in plain TIFFs); C last
    channel = axes.index("C") if "C" in axes else None
    levels = _tiff_levels(path, count, channel)
    size = read_pixel_size(path)
    spatial = [axis if axis in "YX" else "Z" for axis in axes if axis != "C"]
    lengths = {} if size is None else {"Y": size.y, "X": size.x, "Z": size.z}
    position = dict(zip("ZYX", size.translation)) if size is not None and size.translation is not None else {}
    grid = {"scale": [lengths.get(axis) or 1.0 for axis in spatial],
            "translate": [position.get(axis, 0.0) for axis in spatial],
            "units": [size.unit if lengths.get(axis) else "pixel" for axis in spatial],
            "axis_labels": [axis.lower() for axis in spatial]}
    names = made.get("class_names")
    names = names if isinstance(names, list) and all(isinstance(name, str) for name in names) else None
    if channel is not None:
        return _layers(path, levels, grid, channel=channel, channel_names=names)
    labels = made.get("output") in ("labels", "instances") and np.dtype(levels[0].dtype).kind in "iu"
    classes = dict(enumerate(names)) if labels and made.get("output") == "labels" and names else None
    return _layers(path, levels, grid, classes=classes, labels=labels)


def _tiff_levels(path, count: int, channel: int | None) -> list:
    """A TIFF's ``count`` pyramid levels, lazy, full resolution first, down to the first that is no reduction of the
    level above it (of its dimensions, type and ``channel`` axis), with a warning naming ``path``."""
    levels = [open_tiff_level(path)]
    for k in range(1, count):
        level, above = open_tiff_level(path, k), levels[-1]
        if (level.ndim != above.ndim or level.dtype != above.dtype
                or (channel is not None and level.shape[channel] != above.shape[channel])
                or any(not 1 <= size <= finer for size, finer in zip(level.shape, above.shape))):
            warnings.warn(f"{path}: napari gets {len(levels)} of its {count} pyramid levels: level {k} of shape "
                          f"{level.shape} {level.dtype} is no reduction of level {k - 1}, {above.shape} {above.dtype}",
                          stacklevel=3)
            break
        levels.append(level)
    return levels


def _layers(path, levels: list, grid: dict, *, channel: int | None = None, channel_names=None, classes=None,
            labels: bool = False) -> list[tuple]:
    """napari layer data for the lazy ``levels`` of an image (full resolution first; more than one: a multiscale
    layer) named after ``path``, on ``grid`` (scale, translate, units and axis_labels of its axes but ``channel``):
    split along ``channel`` into an Image a channel (named by ``channel_names`` where it names each), else a Labels
    layer (``labels``: ``classes``, {value: name}, as its features, which napari shows under the cursor) or an
    Image."""
    name = re.sub(r"\.(zarr|tiff?)$", "", Path(str(path).rstrip("/")).name, flags=re.IGNORECASE).removesuffix(".ome")
    kwargs = {"name": name, **grid}
    data = levels if len(levels) > 1 else levels[0]
    if len(levels) > 1:
        kwargs["multiscale"] = True
    if channel is not None:      # one layer per channel: per-layer values, so napari cannot misread the lists
        channels = levels[0].shape[channel]
        per_layer = {key: [value] * channels for key, value in grid.items()}
        if channel_names is not None and len(channel_names) == channels:
            per_layer["name"] = [f"{name} {label}" for label in channel_names]
        return [(data, {**kwargs, **per_layer, "channel_axis": channel}, "image")]
    if labels and classes:
        kwargs["features"] = {"index": list(classes), "class": list(classes.values())}
    return [(data, kwargs, "labels" if labels else "image")]


def _channel_axis(image: OmeZarrImage, path) -> int | None:
    """The index of the channel axis: of type "channel", or untyped and named "c" (NGFF 0.3 named axes only)."""
    found = [i for i, axis in enumerate(image.axes)
             if axis.get("type") == "channel" or ("type" not in axis and axis.get("name") == "c")]
    if len(found) > 1:
        raise ValueError(f"{path}: malformed OME-Zarr multiscales metadata (axes {[image.names[i] for i in found]} "
                         f"are all channel axes; NGFF allows one)")
    return found[0] if found else None


def _napari_unit(unit) -> str | None:
    """The NGFF name of an axis's unit (a length as files spell it too: "µm"); None where NGFF names no such unit."""
    if not isinstance(unit, str):
        return None
    return _unit_name(unit) or (unit.strip() if unit.strip() in NGFF_UNITS else None)


def _levels_napari_places(image: OmeZarrImage, channel: int | None, path) -> list:
    """The levels of ``image`` down to the first that cannot be read or that napari would misplace (``_misplaced``),
    with a warning naming ``path`` and what is wrong with that level."""
    levels = [image.levels[0]]
    problem = None
    for k in range(1, len(image.levels)):
        problem = _misplaced(image, k, levels[-1], channel)
        if problem is not None:
            problem = f"level {k} (dataset {image.entry['datasets'][k]['path']!r}) {problem}"
            break
        levels.append(image.levels[k])
    else:
        if image.unread is not None:
            problem = f"level {len(image.levels)} cannot be read: {image.unread}"
    if problem is not None:
        listed = image.entry["datasets"]
        warnings.warn(f"{path}: napari gets {len(levels)} of its {len(listed)} pyramid levels: {problem}", stacklevel=3)
    return levels


def _misplaced(image: OmeZarrImage, k: int, finer, channel: int | None) -> str | None:
    """Why napari cannot show ``image.levels[k]`` in the layer of level 0 (``finer``: the level above it); None
    where it can: its data fit (the same dimensions, type and channels as level 0, no side longer than the level
    above), and on every axis that level 0 calibrates it covers level 0's extent but for less than one of its pixels
    and starts within half a pixel of it (NGFF's place for a block mean; a picked pixel's is level 0's own), so
    napari, which stretches it over level 0's extent, draws it within a pixel and a half of where it belongs."""
    level, first = image.levels[k], image.levels[0]
    if level.ndim != first.ndim:
        return f"has {level.ndim} dimensions, level 0 {first.ndim}"
    if np.dtype(level.dtype) != np.dtype(first.dtype):
        return f"holds {level.dtype}, level 0 {first.dtype}"
    if channel is not None and level.shape[channel] != first.shape[channel]:
        return f"has {level.shape[channel]} channels, level 0 {first.shape[channel]}"
    if any(not 1 <= size <= above for size, above in zip(level.shape, finer.shape)):
        return f"of shape {tuple(level.shape)} is no reduction of the level above it, {tuple(finer.shape)}"
    try:
        scale, translation = image.level_grid(k)
    except ValueError as error:
        return f"has malformed coordinateTransformations ({error})"
    axes = zip(image.names, first.shape, level.shape, image.scale, scale, image.translation, translation)
    for i, (name, n0, n, s0, s, t0, t) in enumerate(axes):
        if i == channel or not (math.isfinite(s0) and s0 != 0):
            continue       # napari shows an uncalibrated axis in pixels: the shapes alone place the level
        slack = 1e-6 * abs(s)
        if not (math.isfinite(s) and math.isfinite(t) and s / s0 > 0):
            return f"has a scale of {s} and a translation of {t} along {name!r}, level 0 {s0} and {t0}"
        if abs(n * s - n0 * s0) > abs(s) - abs(s0) + slack:
            return (f"covers {n} x {abs(s):g} along {name!r} where level 0 covers {n0} x {abs(s0):g}: its scale does "
                    f"not match its shape")
        if abs(t - t0) > (abs(s) - abs(s0)) / 2 + slack:
            return (f"starts at {t:g} along {name!r}, level 0 at {t0:g}: more than half its pixel ({abs(s):g}) "
                    f"from where napari draws it")
    return None
