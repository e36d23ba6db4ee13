"""napari reader for OME-Zarr images (NGFF 0.4 and 0.5), such as `unet-fast segment --format ome.zarr` writes.

Integer images without a channel axis open as Labels (segmentations), others as Images, a channel
axis ("c", e.g. class probabilities) split into one layer per channel. Every layer gets the file's
pixel size (the scale and translation of its first dataset) and units, so it lies on top of the image
it was computed from. The arrays stay lazy: napari reads what it shows. A pyramid (segment's outputs of more
than 1024 px a side have one) opens as a multiscale layer, the list of its levels from full resolution down,
so napari reads the level it shows, not level 0's every chunk when zoomed out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..ome_zarr import is_ome_zarr, open_ome_zarr


def napari_get_reader(path):
    """The reader for ``path`` if it is an OME-Zarr image, else None (napari then asks other readers)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_ome_zarr if is_ome_zarr(str(path).rstrip("/")) else None


def read_ome_zarr(path) -> list[tuple]:
    """napari layer data: [(data, layer keyword arguments, "labels" or "image")]."""
    image = open_ome_zarr(path)
    names = image.names
    spatial = [i for i, axis in enumerate(image.axes) if axis.get("type") != "channel"]
    kwargs = {"name": Path(str(path).rstrip("/")).name.removesuffix(".zarr").removesuffix(".ome"),
              "scale": [image.scale[i] for i in spatial], "translate": [image.translation[i] for i in spatial],
              "units": [image.axes[i].get("unit") or "pixel" for i in spatial],
              "axis_labels": [names[i] for i in spatial]}
    data = image.levels if len(image.levels) > 1 else image.levels[0]
    if len(image.levels) > 1:
        kwargs["multiscale"] = True
    if "c" in names:       # one layer per channel: per-layer values, so napari cannot misread the lists
        channels = image.levels[0].shape[names.index("c")]
        per_layer = {key: [kwargs[key]] * channels for key in ("scale", "translate", "units", "axis_labels")}
        return [(data, {**kwargs, **per_layer, "channel_axis": names.index("c")}, "image")]
    kind = "labels" if np.dtype(image.levels[0].dtype).kind in "iu" else "image"
    return [(data, kwargs, kind)]
