"""Reading OME-Zarr images (OME-NGFF 0.4, zarr format 2, and 0.5, zarr format 3): arrays, axes, pixel size.

Only what unet_fast needs: the pyramid's arrays (lazy zarr arrays), the axis names and types, and the
scale, translation and units of the full-resolution level, from which the pixel size follows; and, for viewers, the
scale and translation of each coarser level (``OmeZarrImage.level_grid``) and a label image's class names
(``label_classes``; ``class_properties`` writes them). Level 0's metadata must be well formed (a
ValueError naming the file says what is not); a coarser level that cannot be read ends the pyramid there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .pixel_size import PixelSize, _length, _unit_name, in_unit


#: the units NGFF 0.4 and 0.5 name for axes of type "space" and "time" (UDUNITS-2 names, which napari's pint knows)
NGFF_UNITS = frozenset(
    "angstrom attometer centimeter decimeter exameter femtometer foot gigameter hectometer inch kilometer megameter "
    "meter micrometer mile millimeter nanometer parsec petameter picometer terameter yard yoctometer yottameter "
    "zeptometer zettameter attosecond centisecond day decisecond exasecond femtosecond gigasecond hectosecond hour "
    "kilosecond megasecond microsecond millisecond minute nanosecond petasecond picosecond second terasecond "
    "yoctosecond yottasecond zeptosecond zettasecond".split())


@dataclass(frozen=True)
class OmeZarrImage:
    levels: list                 # zarr arrays, full resolution first
    axes: list[dict]             # NGFF axes: name, type, unit
    scale: list[float]           # of levels[0], one per axis
    translation: list[float]
    entry: dict = field(default_factory=dict, repr=False, compare=False)    # the multiscales entry read
    unread: str | None = None    # why the dataset after the last of ``levels`` cannot be read; None: all were

    @property
    def names(self) -> list[str]:
        return [axis["name"] for axis in self.axes]

    def level_grid(self, level: int) -> tuple[list[float], list[float]]:
        """(scale, translation) of ``levels[level]``, one number per axis: its dataset's coordinateTransformations
        followed by the multiscale's (level 0's are ``scale`` and ``translation``). A ValueError saying what is
        malformed where they are (only level 0's are checked when the image opens: its coarser levels are read
        by viewers only)."""
        try:
            return _grid(self.entry, self.entry["datasets"][level], len(self.axes))
        except _MALFORMED as error:
            raise ValueError(_detail(error)) from None

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
    nested = attrs.get("ome")
    return nested if isinstance(nested, dict) else attrs


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
    if isinstance(found, list):
        found = found[0] if found else None
    return found or None      # a malformed one (not an object): open_ome_zarr says so


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
        if not isinstance(entry, dict):
            raise ValueError(f"its multiscales entry {entry!r:.80} is no object")
        datasets = entry["datasets"]
        if not isinstance(datasets, list):
            raise ValueError(f"its datasets {datasets!r:.80} are no list")
        if not datasets:
            raise ValueError("it lists no datasets")
        levels, unread = [_array(group, datasets[0])], None
        for dataset in datasets[1:]:    # a coarser level that cannot be read ends the pyramid: level 0 is the image
            try:
                levels.append(_array(group, dataset))
            except _MALFORMED as error:
                unread = _detail(error)
                break
        if not isinstance(entry["axes"], list):
            raise ValueError(f"its axes {entry['axes']!r:.80} are no list")
        axes = [axis if isinstance(axis, dict) else {"name": axis} for axis in entry["axes"]]   # 0.3 listed names
        names = [axis.get("name") for axis in axes]
        if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
            raise ValueError(f"its axes are named {names!r:.80}: NGFF names each by a string of its own")
        if len(axes) != levels[0].ndim:
            raise ValueError(f"it names {len(axes)} axes for an array of {levels[0].ndim} dimensions")
        scale, translation = _grid(entry, datasets[0], len(axes))
    except _MALFORMED as error:
        raise ValueError(f"{path}: malformed OME-Zarr multiscales metadata ({_detail(error)})") from None
    return OmeZarrImage(levels, axes, scale, translation, entry, unread)


def _array(group, dataset: dict):
    """The zarr array of the multiscales dataset ``dataset`` in ``group``; a ValueError saying why there is none."""
    import zarr

    where = dataset["path"]
    if not isinstance(where, str):
        raise ValueError(f"a dataset path {where!r:.80} that is no string")
    try:
        found = group[where]
    except KeyError:
        found = None
    except Exception as error:      # a path zarr refuses, array metadata it cannot parse
        raise ValueError(f"its dataset {where!r} cannot be read: {type(error).__name__}: {error}") from None
    if not isinstance(found, zarr.Array):
        raise ValueError(f"its dataset {where!r} is no array of the group")
    return found


_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def _detail(error: Exception) -> str:
    return f"no {error}" if isinstance(error, KeyError) else str(error)


def _grid(entry: dict, dataset: dict, count: int) -> tuple[list[float], list[float]]:
    """(scale, translation) of ``dataset`` of the multiscales ``entry``: the dataset's transformations, then the
    multiscale's as a whole (NGFF 0.4 applies them after each dataset's)."""
    scale, translation = _transformation(dataset, count)
    whole_scale, whole_translation = _transformation(entry, count)
    return ([s * w for s, w in zip(scale, whole_scale)],
            [t * w + u for t, w, u in zip(translation, whole_scale, whole_translation)])


def _transformation(entry: dict, count: int) -> tuple[list[float], list[float]]:
    """(scale, translation) of an NGFF coordinateTransformations list, one number per axis."""
    listed = entry.get("coordinateTransformations", [])
    if not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
        raise ValueError(f"coordinateTransformations {listed!r:.80} is no list of objects")
    transforms = {t.get("type"): t.get(t.get("type")) for t in listed if t.get("type") in ("scale", "translation")}
    if None in transforms.values():
        raise ValueError("a scale or translation not given inline (unet_fast reads no 'path' to one)")
    scale, translation = transforms.get("scale", [1.0] * count), transforms.get("translation", [0.0] * count)
    for name, values in (("scale", scale), ("translation", translation)):
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise ValueError(f"a {name} of {values!r:.80}, not a list of numbers")
    if len(scale) != count or len(translation) != count:
        raise ValueError(f"a scale or translation of {len(scale)}, {len(translation)} numbers for {count} axes")
    return [float(s) for s in scale], [float(t) for t in translation]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def class_properties(class_names) -> list[dict]:
    """NGFF 0.4's "image-label" "properties" of class labels: one object per class, its pixel value ("label-value",
    the class's index: 0 the first class, background) and its name ("class", the key of NGFF's own example)."""
    return [{"label-value": value, "class": name} for value, name in enumerate(class_names)]


#: the colours of a class axis' channels in the "omero" metadata: background grey, then distinct hues
CHANNEL_COLOURS = ("808080", "FFFF00", "00FFFF", "FF00FF", "00FF00", "FF8000", "0080FF", "FF0000")


def channel_metadata(class_names) -> dict:
    """The "omero" metadata (NGFF 0.4, transitional) of probabilities with a class axis: one channel a class,
    labelled by its name, displayed over [0, 1] (what viewers that read it, ome-zarr-py's napari plugin among them,
    take for the channels' names and contrast)."""
    return {"channels": [{"label": name, "color": CHANNEL_COLOURS[k % len(CHANNEL_COLOURS)], "active": True,
                          "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}}
                         for k, name in enumerate(class_names)]}


def channel_labels(path) -> list[str] | None:
    """The labels of the channels the "omero" metadata of the image at ``path`` lists, or None where it lists none
    or any without a string label."""
    omero = (_attrs(image_path(path)) or {}).get("omero")
    listed = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(listed, list) or not listed or not all(
            isinstance(entry, dict) and isinstance(entry.get("label"), str) for entry in listed):
        return None
    return [entry["label"] for entry in listed]


def is_label_image(path) -> bool:
    """Whether the image at ``path`` is marked as a label image (NGFF "image-label", which segment's class labels and
    instances carry): a segmentation, not pixels of a microscope, whatever its type."""
    return "image-label" in (_attrs(image_path(path)) or {})


def label_classes(path) -> dict[int, str]:
    """{label value: class name} of the label image at ``path``, from its "image-label" "properties": the entries with
    an integer "label-value" and a string "class" (NGFF lets a label have other keys, or none; of two entries for
    one value, the last, as NGFF asks of readers); {} where there are none."""
    label = (_attrs(image_path(path)) or {}).get("image-label")
    listed = label.get("properties") if isinstance(label, dict) else None
    if not isinstance(listed, list):
        return {}
    return {entry["label-value"]: entry["class"] for entry in listed
            if isinstance(entry, dict) and isinstance(entry.get("label-value"), int)
            and not isinstance(entry["label-value"], bool) and isinstance(entry.get("class"), str)}


def is_ome_zarr(path) -> bool:
    return Path(path).name.lower().endswith(".zarr") and multiscales(path) is not None
