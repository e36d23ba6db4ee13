"""Physical pixel sizes: read from OME-TIFF, ImageJ TIFF and OME-Zarr, written into outputs, checked.

A network learns structures at the scale of its training images, so unet_fast carries the pixel size
along: ``unet-fast segment`` writes the input's pixel size and position into every output (OME-Zarr
scale, translation and units; OME-TIFF physical sizes and plane positions, plus TIFF resolution tags),
``unet-fast train`` records the training images' pixel size in the model file (metadata "pixel_size"),
and segmenting an image whose pixels are much larger or smaller than that draws a warning. Units are
the OME-NGFF names ("micrometer").
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .rescale import MAX_SCALE

MICROMETERS_PER_UNIT = {"angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3,
                        "centimeter": 1e4, "meter": 1e6}
UNIT_NAMES = {"Å": "angstrom", "nm": "nanometer", "µm": "micrometer", "\u03bcm": "micrometer", "um": "micrometer",
              "micron": "micrometer", "microns": "micrometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
              **{name: name for name in MICROMETERS_PER_UNIT}}
UNIT_SYMBOLS = {"angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "centimeter": "cm",
                "meter": "m"}
SCALE_WARNING_FACTOR = 1.5      # pixels this many times larger or smaller than the training data's: warn


@dataclass(frozen=True)
class PixelSize:
    """Size of one pixel along y and x (and of the step between planes, z, where known) in ``unit``; and where
    the image lies (``translation``: z, y, x of its first pixel, in ``unit``; an OME-Zarr's translation, or an
    OME-TIFF's first plane position), so that results lie on the image in a viewer. A model records no
    translation."""

    y: float
    x: float
    unit: str = "micrometer"
    z: float | None = None
    translation: tuple[float, float, float] | None = None

    def __post_init__(self):
        if self.unit not in MICROMETERS_PER_UNIT:
            raise ValueError(f"unit must be one of {sorted(MICROMETERS_PER_UNIT)}, got {self.unit!r}")
        for axis in ("y", "x", "z"):
            value = getattr(self, axis)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"pixel size {axis} must be a positive number, got {value!r}")
        if self.translation is not None:
            if not (isinstance(self.translation, (tuple, list)) and len(self.translation) == 3 and all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                    for t in self.translation)):
                raise ValueError(f"translation must be None or 3 finite numbers (z, y, x), got {self.translation!r}")
            object.__setattr__(self, "translation", tuple(float(t) for t in self.translation))

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "PixelSize":
        return cls(**data)

    def micrometers(self) -> tuple[float, float]:
        """(y, x) in micrometers."""
        factor = MICROMETERS_PER_UNIT[self.unit]
        return self.y * factor, self.x * factor


def _unit_name(text) -> str | None:
    """The NGFF name of a unit as files spell it, ImageJ's \\u00B5m too: ImageJ reads its description as Java
    properties, which unescape \\uXXXX, and scripts write µm so into that ASCII text."""
    if text is None:
        return None
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda escape: chr(int(escape[1], 16)), str(text).strip())
    return UNIT_NAMES.get(text)


def _length(value) -> float | None:
    """A declared pixel size as a float; None where it is no positive finite number: files declare 0 for
    uncalibrated images (Bio-Formats ignores those too), and such an image is still one to segment."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def read_pixel_size(path) -> PixelSize | None:
    """The pixel size an OME-TIFF, ImageJ TIFF or OME-Zarr declares; None where it declares none."""
    path = Path(path)
    if path.name.lower().endswith(".zarr"):
        from .ome_zarr import open_ome_zarr

        return open_ome_zarr(path).pixel_size
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome:
            return _from_ome_xml(tif.ome_metadata)
        if tif.is_imagej:
            return _from_imagej(tif.imagej_metadata or {}, tif.pages[0])
    return None


def _from_ome_xml(xml: str) -> PixelSize | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:      # tifffile reads such a file as a plain TIFF: an image with no pixel size
        return None
    pixels = next((element for element in root.iter() if element.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None
    y, x = _length(pixels.get("PhysicalSizeY")), _length(pixels.get("PhysicalSizeX"))
    if y is None or x is None:
        return None
    unit = _unit_name(pixels.get("PhysicalSizeXUnit", "µm"))
    y = in_unit(y, _unit_name(pixels.get("PhysicalSizeYUnit", "µm")), unit)
    if unit is None or y is None:
        return None            # a unit unet_fast does not know
    # one plane has no spacing to keep (and with time points, tifffile reads them as the planes: TYX)
    z = _length(pixels.get("PhysicalSizeZ")) if pixels.get("SizeZ") != "1" else None
    z = in_unit(z, _unit_name(pixels.get("PhysicalSizeZUnit", "µm")), unit)    # an unknown unit: no z
    return PixelSize(y, x, unit, z, _plane_position(pixels, unit, z))


def _plane_position(pixels, unit: str, z_step: float | None = None) -> tuple[float, float, float] | None:
    """z, y, x in ``unit`` of the first plane (TheZ, TheT, TheC 0) of an OME-XML Pixels element, from its
    PositionZ/Y/X (one not given is 0, as an OME-Zarr axis without a translation); None where none is given,
    all are 0, or one is no finite number or in a unit unet_fast does not know: OME's default unit, "reference
    frame", is none (the stage's own, of no known length), and a position in it cannot be placed.
    Where the first plane gives no position (files that list positions on some planes, or not plane 0), the
    plane of the lowest TheZ (then TheT, TheC) that gives one stands for it, its PositionZ moved back TheZ steps
    of ``z_step`` (the z spacing in ``unit``, where known): plane 3's z is not where the stack begins."""
    def index(plane, axis: str) -> float:
        try:
            return int(plane.get(f"The{axis}", "0"))
        except ValueError:
            return math.inf

    placed = [element for element in pixels if element.tag.endswith("}Plane")
              and any(element.get(f"Position{axis}") is not None for axis in "ZYX")]
    if not placed:
        return None
    first = min(placed, key=lambda plane: tuple(index(plane, axis) for axis in "ZTC"))   # the first of equals
    position = []
    for axis in "ZYX":
        text = first.get(f"Position{axis}")
        if text is None:
            position.append(0.0)
            continue
        try:
            value = float(text)
        except ValueError:
            return None
        value = in_unit(value, _unit_name(first.get(f"Position{axis}Unit", "reference frame")), unit)
        if axis == "Z" and value is not None and z_step is not None and 0 < index(first, "Z") < math.inf:
            value -= index(first, "Z") * z_step
        if value is None or not math.isfinite(value):    # an unknown unit; inf, NaN, or too far for ``unit``
            return None
        position.append(value)
    return tuple(position) if any(position) else None


def in_unit(length: float | None, unit: str | None, wanted: str | None) -> float | None:
    """``length`` in ``unit`` converted to ``wanted`` (files may give y and x in different units); None
    where a unit is unknown."""
    if length is None or unit not in MICROMETERS_PER_UNIT or wanted not in MICROMETERS_PER_UNIT:
        return None
    return length if unit == wanted else length * MICROMETERS_PER_UNIT[unit] / MICROMETERS_PER_UNIT[wanted]


def _from_imagej(metadata: dict, page) -> PixelSize | None:
    """ImageJ keeps the unit in its metadata and the pixels per unit in the TIFF resolution tags."""
    unit = _unit_name(metadata.get("unit"))
    tags = page.tags
    if unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    (x_num, x_den), (y_num, y_den) = tags["XResolution"].value, tags["YResolution"].value
    if not (x_num and y_num) or _length(y_den / y_num) is None or _length(x_den / x_num) is None:
        return None
    # ImageJ writes spacing= for time-lapses too: frames without slices have no planes that far apart (as SizeZ="1")
    time_series = (_length(metadata.get("frames")) or 1) > 1 and (_length(metadata.get("slices")) or 1) == 1
    return PixelSize(y_den / y_num, x_den / x_num, unit, None if time_series else _length(metadata.get("spacing")))


def tiff_options(pixel_size: PixelSize | None, axes: str, planes: int = 1, ome: bool = False) -> dict:
    """tifffile.imwrite arguments recording ``pixel_size``: OME-XML physical sizes (read by Fiji's
    Bio-Formats, QuPath, napari) and the TIFF resolution tags in centimetres (read by most viewers); and its
    translation, where it has one, as the position of each of the image's ``planes`` planes (OME-XML Plane
    PositionX/Y/Z): plane k of a stack with a known z step lies k steps below the first. ``ome``: an OME-TIFF
    even without a pixel size (a pyramid: Bio-Formats reads SubIFD levels of OME-TIFFs)."""
    if pixel_size is None:
        return {"ome": True, "metadata": {"axes": axes}} if ome else {"metadata": None}
    y_um, x_um = pixel_size.micrometers()
    symbol = UNIT_SYMBOLS[pixel_size.unit]
    metadata = {"axes": axes, "PhysicalSizeX": pixel_size.x, "PhysicalSizeXUnit": symbol,
                "PhysicalSizeY": pixel_size.y, "PhysicalSizeYUnit": symbol}
    if pixel_size.z is not None and "Z" in axes:
        metadata.update(PhysicalSizeZ=pixel_size.z, PhysicalSizeZUnit=symbol)
    if pixel_size.translation is not None and any(pixel_size.translation):
        z, y, x = pixel_size.translation
        step = pixel_size.z if pixel_size.z is not None and "Z" in axes else 0.0
        metadata["Plane"] = {"PositionX": [x] * planes, "PositionXUnit": [symbol] * planes,
                             "PositionY": [y] * planes, "PositionYUnit": [symbol] * planes,
                             "PositionZ": [z + k * step for k in range(planes)], "PositionZUnit": [symbol] * planes}
    return {"ome": True, "metadata": metadata, "resolution": (1e4 / x_um, 1e4 / y_um), "resolutionunit": "CENTIMETER"}


def ngff_axes_and_scale(pixel_size: PixelSize | None, names: list[str]) -> tuple[list[dict], list[dict]]:
    """OME-NGFF axes (with units where known) and the coordinateTransformations of dataset 0 (its scale, and
    the translation where ``pixel_size`` has one) for axes named z/c/y/x."""
    sizes = {} if pixel_size is None else {"y": pixel_size.y, "x": pixel_size.x, "z": pixel_size.z}
    axes, scale = [], []
    for name in names:
        axis = {"name": name, "type": "channel" if name == "c" else "space"}
        if sizes.get(name) is not None:
            axis["unit"] = pixel_size.unit
        axes.append(axis)
        scale.append(float(sizes.get(name) or 1.0))
    transformations = [{"type": "scale", "scale": scale}]
    if pixel_size is not None and pixel_size.translation is not None and any(pixel_size.translation):
        offsets = dict(zip("zyx", pixel_size.translation))
        transformations.append({"type": "translation", "translation": [offsets.get(name, 0.0) for name in names]})
    return axes, transformations


def common_pixel_size(paths) -> tuple[PixelSize | None, str | None]:
    """The pixel size shared by image files, and a warning where they disagree or only some declare one."""
    found = {str(path): read_pixel_size(path) for path in paths}
    declared = {path: size for path, size in found.items() if size is not None}
    if not declared:
        return None, None
    sizes = sorted(declared.values(), key=lambda size: size.micrometers())
    typical = sizes[len(sizes) // 2]
    problem = None
    if len(declared) < len(found):
        problem = (f"{len(found) - len(declared)} of {len(found)} training images declare no pixel size; "
                   f"recording {typical.y} x {typical.x} {typical.unit} from the others")
    elif scale_factor(sizes[0], sizes[-1]) > SCALE_WARNING_FACTOR:
        problem = (f"the training images' pixel sizes range from {sizes[0].y} x {sizes[0].x} to {sizes[-1].y} x "
                   f"{sizes[-1].x} ({typical.unit}); recording the median, {typical.y} x {typical.x}")
    return replace(typical, translation=None), problem


def scale_factor(a: PixelSize, b: PixelSize) -> float:
    """How many times larger the pixels of one are than the other's (>= 1), the worse of y and x."""
    return max(max(p, q) / min(p, q) for p, q in zip(a.micrometers(), b.micrometers()))


def scale_warning(model, pixel_size: PixelSize | None, name, scale: float | None = None) -> str | None:
    """A warning when ``pixel_size`` differs from the model's training pixel size by more than
    SCALE_WARNING_FACTOR and ``scale`` (the factor given instead of the model's ``input_scale``) does not
    make up for it; None when it does not, or when either pixel size is unknown."""
    trained = (getattr(model, "metadata", None) or {}).get("pixel_size")
    if trained is None or pixel_size is None:
        return None
    trained = PixelSize.from_dict(trained)
    factor = scale_factor(trained, pixel_size)
    # objects of this image are (its pixel / the training pixel) times fewer pixels across: enlarge by that
    suggested = getattr(model, "input_scale", 1.0) * pixel_size.micrometers()[1] / trained.micrometers()[1]
    if scale is not None:
        factor = max(scale / suggested, suggested / scale)
    if factor <= SCALE_WARNING_FACTOR:
        return None
    if not 1 / MAX_SCALE <= suggested <= MAX_SCALE:
        return (f"{name}: pixels of {pixel_size.y:.4g} x {pixel_size.x:.4g} {pixel_size.unit}, too far from the "
                f"model's training images' ({trained.y:.4g} x {trained.x:.4g} {trained.unit}) for --scale; "
                f"the model sees objects at a size it was not trained on")
    return (f"{name}: pixels of {pixel_size.y:.4g} x {pixel_size.x:.4g} {pixel_size.unit}, {factor:.1f} times "
            f"{'larger' if pixel_size.micrometers()[1] > trained.micrometers()[1] else 'smaller'} than the model's "
            f"training images ({trained.y:.4g} x {trained.x:.4g} {trained.unit}); pass --scale {suggested:.3g} "
            f"(predict_tiled(scale=...)) or resample the image to about that pixel size, or the model sees objects "
            f"at a size it was not trained on")
