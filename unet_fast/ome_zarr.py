"""Reading OME-Zarr images (OME-NGFF 0.4, zarr format 2, and 0.5, zarr format 3): arrays, axes, pixel size.

Only what unet_fast needs: the pyramid's arrays (lazy zarr arrays), the axis names and types, and the
scale, translation and units of the full-resolution level, from which the pixel size follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .pixel_size import PixelSize, _length, _unit_name


@dataclass(frozen=True)
class OmeZarrImage:
    levels: list                 # zarr arrays, full resolution first
    axes: list[dict]             # NGFF axes: name, type, unit
    scale: list[float]           # of levels[0], one per axis
    translation: list[float]

    @property
    def names(self) -> list[str]:
        return [axis["name"] for axis in self.axes]

    @property
    def pixel_size(self) -> PixelSize | None:
        """From the y and x axes' scale, where they have a unit unet_fast knows."""
        named = {axis["name"]: (_length(scale), _unit_name(axis.get("unit")))
                 for axis, scale in zip(self.axes, self.scale)}
        if "y" not in named or "x" not in named or named["y"][1] is None or named["y"][1] != named["x"][1] \
                or None in (named["y"][0], named["x"][0]):
            return None
        z = named.get("z", (None, None))
        return PixelSize(named["y"][0], named["x"][0], named["y"][1], z[0] if z[1] == named["y"][1] else None)


def multiscales(path) -> dict | None:
    """The first multiscales entry of the group at ``path``; None if it is no OME-Zarr image."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except (OSError, ValueError, KeyError, TypeError):   # no zarr group there
        return None
    found = attrs.get("ome", attrs).get("multiscales")   # NGFF 0.5 nests the metadata under "ome"
    return found[0] if found else None


def open_ome_zarr(path) -> OmeZarrImage:
    import zarr

    entry = multiscales(path)
    if entry is None:
        raise ValueError(f"{path}: not an OME-Zarr image (a zarr group with multiscales metadata)")
    group = zarr.open_group(str(path), mode="r")
    levels = [group[dataset["path"]] for dataset in entry["datasets"]]
    axes = [axis if isinstance(axis, dict) else {"name": axis} for axis in entry["axes"]]   # 0.3 listed names
    transforms = {t["type"]: t[t["type"]] for t in entry["datasets"][0].get("coordinateTransformations", [])}
    return OmeZarrImage(levels, axes, [float(s) for s in transforms.get("scale", [1.0] * len(axes))],
                        [float(t) for t in transforms.get("translation", [0.0] * len(axes))])


def is_ome_zarr(path) -> bool:
    return Path(path).name.lower().endswith(".zarr") and multiscales(path) is not None
