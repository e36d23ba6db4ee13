"""Reading OME-Zarr images (OME-NGFF 0.4, zarr format 2, and 0.5, zarr format 3): arrays, axes, pixel size.

Only what unet_fast needs: the pyramid's arrays (lazy zarr arrays), the axis names and types, and the
scale, translation and units of the full-resolution level, from which the pixel size follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .pixel_size import PixelSize, _length, _unit_name, in_unit


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
        if "y" not in named or "x" not in named:
            return None
        unit = named["x"][1]
        y, x = in_unit(*named["y"], unit), in_unit(*named["x"], unit)     # y may be in another unit than x
        if y is None or x is None:
            return None
        # the spacing of planes where there are planes: a z of length 1 is dropped when read (``image_io``) beside
        # a longer t, which its spacing must not describe
        planes = self.levels[0].shape[self.names.index("z")] if "z" in named else 1
        shifted = {axis["name"]: in_unit(offset, _unit_name(axis.get("unit")), unit)
                   for axis, offset in zip(self.axes, self.translation) if axis["name"] in ("z", "y", "x") and offset}
        translation = None if not shifted or None in shifted.values() else tuple(
            shifted.get(name, 0.0) for name in "zyx")
        return PixelSize(y, x, unit, in_unit(*named["z"], unit) if planes > 1 else None, translation)


def _attrs(path) -> dict | None:
    """The NGFF attributes of the zarr group at ``path`` (NGFF 0.5 nests them under "ome"); None: no group."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except (OSError, ValueError, KeyError, TypeError):   # no zarr group there
        return None
    return attrs.get("ome", attrs)


def bioformats2raw_series(path) -> list[str] | None:
    """The image groups of bioformats2raw's layout at ``path`` (a root group marked "bioformats2raw.layout",
    the images of the converted file in 0/, 1/, ..., listed in OME/'s "series" where it is written); None for
    any other path."""
    attrs = _attrs(path)
    if attrs is None or "bioformats2raw.layout" not in attrs:
        return None
    listed = (_attrs(Path(path) / "OME") or {}).get("series")
    if isinstance(listed, list) and listed and all(isinstance(name, str) for name in listed):
        return listed
    found = sorted((child.name for child in Path(path).iterdir() if child.name.isdigit() and child.is_dir()), key=int)
    return found or ["0"]


def image_path(path) -> Path:
    """Where the image at ``path`` is: ``path`` itself, or the first image of bioformats2raw's layout."""
    series = bioformats2raw_series(path)
    return Path(path) / series[0] if series else Path(path)


def multiscales(path) -> dict | None:
    """The first multiscales entry of the image at ``path`` (``image_path``); None if it is no OME-Zarr image."""
    return _multiscales_at(image_path(path))


def _multiscales_at(where) -> dict | None:
    """The first multiscales entry of the zarr group ``where``; None if it has none."""
    attrs = _attrs(where)
    if attrs is None:
        return None
    found = attrs.get("multiscales")
    return (found[0] if isinstance(found, list) else found) or None     # a malformed one: open_ome_zarr says so


def open_ome_zarr(path) -> OmeZarrImage:
    """The image at ``path``; a ValueError naming the path and what is wrong where its metadata is malformed."""
    import zarr

    where = image_path(path)
    entry = _multiscales_at(where)
    if entry is None:
        raise ValueError(f"{path}: not an OME-Zarr image (a zarr group with multiscales metadata, or "
                         f"bioformats2raw's layout of them)")
    group = zarr.open_group(str(where), mode="r")
    try:
        if not entry["datasets"]:
            raise ValueError("it lists no datasets")
        missing = [dataset["path"] for dataset in entry["datasets"] if dataset["path"] not in group]
        if missing:
            raise ValueError(f"its dataset {missing[0]!r} is no array of the group")
        levels = [group[dataset["path"]] for dataset in entry["datasets"]]
        axes = [axis if isinstance(axis, dict) else {"name": axis} for axis in entry["axes"]]   # 0.3 listed names
        if len(axes) != levels[0].ndim:
            raise ValueError(f"it names {len(axes)} axes for an array of {levels[0].ndim} dimensions")
        scale, translation = _transformation(entry["datasets"][0], len(axes))
        # transformations of the multiscale as a whole come after each dataset's (NGFF 0.4)
        whole_scale, whole_translation = _transformation(entry, len(axes))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        detail = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path}: malformed OME-Zarr multiscales metadata ({detail})") from None
    return OmeZarrImage(levels, axes, [s * w for s, w in zip(scale, whole_scale)],
                        [t * w + u for t, w, u in zip(translation, whole_scale, whole_translation)])


def _transformation(entry: dict, count: int) -> tuple[list[float], list[float]]:
    """(scale, translation) of an NGFF coordinateTransformations list, one number per axis."""
    transforms = {t["type"]: t.get(t["type"]) for t in entry.get("coordinateTransformations", [])
                  if t["type"] in ("scale", "translation")}
    if None in transforms.values():
        raise ValueError("a scale or translation not given inline (unet_fast reads no 'path' to one)")
    scale = [float(s) for s in transforms.get("scale", [1.0] * count)]
    translation = [float(t) for t in transforms.get("translation", [0.0] * count)]
    if len(scale) != count or len(translation) != count:
        raise ValueError(f"a scale or translation of {len(scale)}, {len(translation)} numbers for {count} axes")
    return scale, translation


def is_ome_zarr(path) -> bool:
    return Path(path).name.lower().endswith(".zarr") and multiscales(path) is not None
