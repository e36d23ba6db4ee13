"""napari reader for OME-Zarr images (NGFF 0.4 and 0.5), such as `unet-fast segment --format ome.zarr` writes.

Integer images without a channel axis open as Labels (segmentations), others as Images, a channel
axis ("c", e.g. class probabilities) split into one layer per channel. Every layer gets the file's
pixel size (the scale and translation of its first dataset) and units, so it lies on top of the image
it was computed from. The arrays stay lazy: napari reads what it shows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def napari_get_reader(path):
    """The reader for ``path`` if it is an OME-Zarr image, else None (napari then asks other readers)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not str(path).rstrip("/").endswith(".zarr") or _multiscales(path) is None:
        return None
    return read_ome_zarr


def _multiscales(path) -> dict | None:
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except (OSError, ValueError, KeyError, TypeError):   # not a zarr group
        return None
    found = attrs.get("ome", attrs).get("multiscales")   # NGFF 0.5 nests the metadata under "ome"
    return found[0] if found else None


def read_ome_zarr(path) -> list[tuple]:
    """napari layer data: [(data, layer keyword arguments, "labels" or "image")]."""
    import zarr

    multiscales = _multiscales(path)
    if multiscales is None:
        raise ValueError(f"{path}: not an OME-Zarr image (no multiscales metadata)")
    group = zarr.open_group(str(path), mode="r")
    levels = [group[dataset["path"]] for dataset in multiscales["datasets"]]
    axes = multiscales["axes"]
    transforms = {t["type"]: t[t["type"]] for t in multiscales["datasets"][0]["coordinateTransformations"]}
    scale = transforms.get("scale", [1.0] * len(axes))
    translation = transforms.get("translation", [0.0] * len(axes))
    names = [axis["name"] for axis in axes]
    spatial = [i for i, axis in enumerate(axes) if axis.get("type") != "channel"]
    kwargs = {"name": Path(str(path).rstrip("/")).name.removesuffix(".zarr").removesuffix(".ome"),
              "scale": [scale[i] for i in spatial], "translate": [translation[i] for i in spatial],
              "units": [axes[i].get("unit") or "pixel" for i in spatial],
              "axis_labels": [names[i] for i in spatial]}
    data = levels if len(levels) > 1 else levels[0]
    if len(levels) > 1:
        kwargs["multiscale"] = True
    if "c" in names:
        return [(data, {**kwargs, "channel_axis": names.index("c")}, "image")]
    kind = "labels" if np.dtype(levels[0].dtype).kind in "iu" else "image"
    return [(data, kwargs, kind)]
