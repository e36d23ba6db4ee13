"""Measuring objects: ``measure_objects`` (a table of the objects of one instance label image) and ``run``
(files to CSV), behind ``unet-fast measure``.

Instance labels are what ``unet-fast segment --output instances`` writes: 0 background, every other value one
object. A stack (Z, H, W) is measured plane by plane, with a ``plane`` column: segment numbers each plane's
objects on its own (``instances.label_instances``: 1..K per plane), so label 3 of plane 0 and label 3 of
plane 1 are two objects.

Every statistic is a sum, a minimum or a maximum over an object's pixels, so an image is read once, in bands of
whole rows (a multiple of the file's tile or strip height), and never held whole (but for a compressed file
stored in one piece, which its format lets no reader decode in parts; an uncompressed one is memory-mapped and
read by rows): each band is cut into runs
(maximal stretches of one label along a row), the runs' statistics are taken in one vectorised pass
(``np.add/minimum/maximum.reduceat``), grouped by label (a sort of the runs, not of the pixels) and merged into a
table of the objects seen so far. Memory holds one band and a table row per object; no array is as long as the
largest label, so ids may be any integers up to 2**64 - 1, sparse or not.

The columns (``measure_objects``), one row per object:

- ``plane`` (stacks only): the plane's index; ``label``: the object's value in the label image;
- ``area_px``: its pixels; ``area_<unit>2``: its area in the pixel size's unit squared (``area_um2``);
- ``centroid_y_px``, ``centroid_x_px``: the mean row and column of its pixels (pixel (0, 0)'s centre is 0, 0);
  ``centroid_y_<unit>``, ``centroid_x_<unit>``: the same in physical coordinates, as viewers place the image
  (row x pixel size + the image's translation where it records one: an OME-Zarr translation, an OME-TIFF plane
  position; ``pixel_size.PixelSize``); in a stack whose step between planes is known, ``centroid_z_<unit>``:
  plane x that step + the translation's z (every pixel of an object lies in its plane);
- ``bbox_min_row``, ``bbox_min_col``, ``bbox_max_row``, ``bbox_max_col``: its bounding box, in pixels, the maxima
  inclusive (the last row and column holding it);
- with an intensity image, per channel: ``intensity_mean``, ``intensity_min``, ``intensity_max`` and
  ``intensity_sum`` of its pixels in the image as stored (not normalised); with several channels each name ends
  in ``_c<k>`` (``intensity_mean_c0``). Sums are exact integers for images of integers up to 32 bits, float64
  otherwise; a NaN pixel makes its object's values NaN.

Physical columns appear where a pixel size is known: given, recorded in the label file (segment records the
input's), or else in the intensity image's file.
"""
from __future__ import annotations

import contextlib
import csv
import io
import numbers
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checks, image_io, termination
from .checks import BadArgument, failure_reason, same_file
from .pixel_size import UNIT_SYMBOLS, PixelSize, in_unit, read_pixel_size, scale_factor

__all__ = ["measure_objects", "run", "MeasureResult", "pair_files", "check_output_dir", "unit_symbol",
           "written_by_measure", "OBJECTS_CSV", "SUMMARY_CSV"]

#: pixels per band read at once (rounded to whole tiles or strips): 16 MB of uint32 labels
BAND_PIXELS = 2 ** 22
#: rows of partial tables (objects seen in earlier bands) merged into the running table once this many wait
MERGE_ROWS = 2 ** 17
#: the units whose symbols (pixel_size.UNIT_SYMBOLS) are no ASCII, as column headers spell them (``area_um2``)
ASCII_SYMBOLS = {"angstrom": "angstrom", "micrometer": "um"}
OBJECTS_CSV, SUMMARY_CSV = "objects.csv", "summary.csv"
STATISTICS = ("mean", "min", "max", "sum")


def unit_symbol(unit: str) -> str:
    """The name of ``unit`` (an OME-NGFF name, "micrometer") in column headers: "um"."""
    return ASCII_SYMBOLS.get(unit) or UNIT_SYMBOLS[unit]


# ---- what is read: labels (and an intensity image) as bands of rows of planes

@dataclass
class _Input:
    """An array (numpy, memmap, or a lazy zarr array of a file) with its axes: planes are read by ``band``
    as (rows, W) for labels, (C, rows, W) for images."""

    array: object
    axes: str                  # channels-first, e.g. "YX", "ZYX", "CYX", "ZCYX"
    name: str                  # the file, or "labels"/"image" for arrays: errors name it
    role: str                  # "labels" or "image"
    chunk_rows: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def planes(self) -> int | None:
        """Planes of a stack; None for one 2-D image."""
        others = [size for axis, size in zip(self.axes, self.shape) if axis not in "CYX"]
        return others[0] if others else None

    @property
    def channels(self) -> int | None:
        return self.shape[self.axes.index("C")] if "C" in self.axes else None

    def band(self, plane: int, y0: int, y1: int) -> np.ndarray:
        """Rows y0:y1 of ``plane``: (rows, W) for labels (their one channel, if any, dropped), else (C, rows, W)
        where the input has a channel axis, (rows, W) where it has none."""
        labels = self.role == "labels"
        key = tuple((0 if labels else slice(None)) if axis == "C" else plane for axis in self.axes[:-2])
        try:
            return np.asarray(self.array[key + (slice(y0, y1),)])
        except MemoryError:
            raise
        except Exception as error:      # a damaged tile (zlib.error, TiffFileError): which file, where
            where = f"rows {y0}-{y1 - 1}" + (f" of plane {plane}" if self.planes is not None else "")
            raise ValueError(f"{self.name}: {where} cannot be read: {failure_reason(error, self.name)}") from error


def _open_file(path: Path, max_pixels: int | None, labels: bool,
               closing: contextlib.ExitStack | None = None) -> tuple[_Input, image_io.ImageInfo]:
    """The file as an _Input read lazily, its file closed when ``closing`` ends (else when the array is dropped)."""
    array, info = image_io.read_image(path, lazy=True, max_pixels=max_pixels, labels=labels)
    if closing is not None:
        closing.callback(image_io.close_image, array)
    chunk_rows = _array_chunk_rows(array)
    taller = chunk_rows is not None and chunk_rows * info.shape[-1] > BAND_PIXELS
    if taller and path.suffix.lower() in image_io.TIFF_SUFFIXES:
        mapped = _memory_map(path, info)      # strips taller than a band (one of the whole image): rows all the same
        if mapped is not None:
            array, chunk_rows = mapped, None
    return _Input(array, info.axes, str(path), "labels" if labels else "image", chunk_rows), info


def _memory_map(path: Path, info: image_io.ImageInfo) -> np.memmap | None:
    """An uncompressed TIFF stored in one piece as a memory map, where its axes are those ``read_image`` gives
    (zarr would read a whole strip to read any rows of it); None for others."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            axes = image_io.tiff_axes(tif.series[0])
        mapped = tifffile.memmap(path, series=0, mode="r")
    except (ValueError, OSError, IndexError):      # compressed or scattered: tifffile cannot map it
        return None
    return mapped if axes == info.axes and tuple(mapped.shape) == tuple(info.shape) else None


def _check_label_kind(name: str, dtype, axes: str, shape, recorded: str | None = None) -> None:
    """ValueError, naming the file and the fix, for what is no instance label image: floats (probabilities), a
    class or colour axis, a mask, more than one plane axis, a class-label output of segment."""
    dtype = np.dtype(dtype)
    fix = ("measure takes instance labels (integers: 0 background, 1..K one object each), as `unet-fast segment "
           "--output instances` writes them")
    if recorded is not None and recorded != "instances":
        what = {"labels": "class labels"}.get(recorded, recorded)
        raise ValueError(f"{name} holds {what} (segment --output {recorded}), not instance labels: segment again "
                         f"with --output instances, which numbers the objects (0 background, 1..K one object each)")
    if dtype.kind == "f":
        raise ValueError(f"{name} holds floats ({dtype}), such as probabilities, not instance labels: {fix}")
    if dtype.kind == "b":
        raise ValueError(f"{name} is a mask (bool), not instance labels: number its objects first (e.g. "
                         f"scipy.ndimage.label), or {fix}")
    if dtype.kind not in "iu":
        raise ValueError(f"{name} has pixels of type {dtype}, not instance labels: {fix}")
    shape = tuple(shape)
    if "C" in axes and shape[axes.index("C")] != 1:
        raise ValueError(f"{name} has {shape[axes.index('C')]} channels (axes {axes}, shape {shape}), such as "
                         f"the classes of probabilities or an RGB picture, not instance labels: {fix}")
    if len([axis for axis in axes if axis not in "CYX"]) > 1 or axes[-2:] != "YX":
        raise ValueError(f"{name} has axes {axes} (shape {shape}); measure takes a plane (Y, X) or a stack of "
                         f"planes (Z, Y, X): save each stack as a file of its own")


def _check_image_path(path: Path, argument: str) -> None:
    """FileNotFoundError for a missing file, ValueError for a folder that is no OME-Zarr image (measure_objects
    measures one image; ``run`` takes folders)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir() and not image_io.is_zarr_image(path):
        raise ValueError(f"{argument}: {path} is a folder, not an image file (nor an OME-Zarr folder, *.zarr); "
                         f"measure_objects measures one image: measure the files of a folder with unet-fast measure "
                         f"(unet_fast.measure.run)")


def _label_input(labels, max_pixels: int | None, closing: contextlib.ExitStack) -> tuple[_Input, PixelSize | None]:
    """The label image as an _Input, checked (ValueError naming it), and the pixel size its file records; a file
    opened is closed when ``closing`` ends."""
    if isinstance(labels, (str, Path)):
        from .sinks import read_provenance

        path = Path(labels)
        _check_image_path(path, "labels")
        if path.suffix.lower() in (".jpg", ".jpeg"):
            raise ValueError(f"{path}: a JPEG, whose lossy compression changes label values at object edges; "
                             f"save instance labels as TIFF, PNG or OME-Zarr")
        info = image_io.image_info(path, max_pixels=0)      # the header: refused before any pixel is decoded
        _check_label_kind(str(path), info.dtype, info.axes, info.shape, (read_provenance(path) or {}).get("output"))
        source, info = _open_file(path, max_pixels, labels=True, closing=closing)
        # what was read: a palette PNG's indices; a 1-bit PNG, whose header says 8 bits, decodes to bool (a mask)
        _check_label_kind(str(path), source.array.dtype, info.axes, info.shape)
        return source, read_pixel_size(path)
    array = _array(labels)
    if len(array.shape) not in (2, 3):
        raise ValueError(f"labels must be (H, W) or a stack (Z, H, W) of instance labels, got shape "
                         f"{tuple(array.shape)}")
    _check_label_kind("labels", array.dtype, "ZYX"[-len(array.shape):], array.shape)
    return _Input(array, "ZYX"[-len(array.shape):], "labels", "labels", _array_chunk_rows(array)), None


def _image_input(image, labels: _Input, max_pixels: int | None,
                 closing: contextlib.ExitStack) -> tuple[_Input, PixelSize | None]:
    """The intensity image as an _Input of the labels' planes and size (ValueError naming both otherwise), and
    the pixel size its file records; a file opened is closed when ``closing`` ends."""
    pixel_size = None
    if isinstance(image, (str, Path)):
        path = Path(image)
        _check_image_path(path, "image")
        source, info = _open_file(path, max_pixels, labels=False, closing=closing)
        pixel_size = read_pixel_size(path)
        if len([axis for axis in info.axes if axis not in "CYX"]) > 1:
            raise ValueError(f"{path} has axes {info.axes} (shape {info.shape}); an intensity image is a plane, "
                             f"(C,) Y, X, or a stack of them, as its labels")
    else:
        array = _array(image)
        stacked = labels.planes is not None
        if len(array.shape) not in (2 + stacked, 3 + stacked):
            raise ValueError("image must be " + ("(Z, H, W) or (Z, C, H, W)" if stacked else "(H, W) or (C, H, W)")
                             + f" for labels of shape {labels.shape}, got shape {tuple(array.shape)}")
        axes = ("Z" if stacked else "") + ("C" if len(array.shape) == 3 + stacked else "") + "YX"
        source = _Input(array, axes, "image", "image", _array_chunk_rows(array))
    dtype = np.dtype(source.array.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"{source.name} has pixels of type {dtype}; intensities are bool, integers or floats")

    def planes(item: _Input) -> int | None:     # a stack of one plane (an OME-Zarr's z of 1) is that plane
        return None if item.planes == 1 else item.planes

    if (planes(source), source.shape[-2:]) != (planes(labels), labels.shape[-2:]):
        def described(item: _Input) -> str:
            return (f"{item.shape[-2]} x {item.shape[-1]} px" +
                    (f" in {item.planes} planes" if item.planes is not None else " (one plane)"))
        raise ValueError(f"{labels.name} is {described(labels)} but its image {source.name} is {described(source)}; "
                         f"an intensity image must be the image the labels were made of, of the same size")
    return source, pixel_size


def _array(array):
    """``array`` as it is where it is read by slices with a numpy dtype (numpy, a memmap, zarr, a lazy view),
    else as a numpy array (nested lists, a torch tensor)."""
    if isinstance(array, np.ndarray):
        return array
    if not isinstance(array, (list, tuple)) and hasattr(array, "shape") and hasattr(array, "__getitem__"):
        try:
            if getattr(array, "dtype", None) is not None:
                np.dtype(array.dtype)
                return array
        except TypeError:                 # torch's dtypes are no numpy dtypes
            pass
    return np.asarray(array)


def _array_chunk_rows(array) -> int | None:
    """The rows of a zarr array's chunks (a TIFF's tiles or strips, an OME-Zarr's chunks); None for others."""
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and len(chunks) == len(array.shape) and all(isinstance(c, int) for c in chunks):
        return chunks[-2]
    return None


def _band_rows(width: int, height: int, *chunk_rows) -> int:
    """Rows per band: about BAND_PIXELS, a multiple of the labels' chunk height (whole tiles or strips decoded
    once each)."""
    rows = max(1, BAND_PIXELS // max(width, 1))
    chunk = next((c for c in chunk_rows if c), None)
    if chunk:
        rows = max(chunk, rows // chunk * chunk)
    return max(1, min(rows, height))


# ---- the statistics: runs of a band, grouped by label, merged over bands

class _Ops:
    """How each statistic of a table combines: summed, or the minimum or maximum kept."""

    def __init__(self, channels: int):
        self.names = ["area", "sum_y", "sum_x", "min_row", "max_row", "min_col", "max_col"]
        self.ufuncs = [np.add, np.add, np.add, np.minimum, np.maximum, np.minimum, np.maximum]
        for c in range(channels):
            self.names += [f"sum{c}", f"min{c}", f"max{c}"]
            self.ufuncs += [np.add, np.minimum, np.maximum]


def _group(ids: np.ndarray, table: list[np.ndarray], ops: _Ops) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows of equal id combined (by ``ops``): (the distinct ids, sorted; their statistics)."""
    if ids.size == 0:
        return ids, table
    if ids.size > 1 and not (ids[1:] > ids[:-1]).all():
        order = np.argsort(ids, kind="stable")
        ids, table = ids[order], [column[order] for column in table]
    firsts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    if firsts.size == ids.size:
        return ids, table
    with np.errstate(invalid="ignore", over="ignore"):      # sums of inf and -inf from two bands: NaN
        return ids[firsts], [ufunc.reduceat(column, firsts) for ufunc, column in zip(ops.ufuncs, table)]


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    """Intensity sums: exact int64 for integers of up to 32 bits (2**31 pixels of 2**32 - 1 fit), else float64."""
    return np.dtype(np.int64) if dtype.kind in "biu" and dtype.itemsize <= 4 else np.dtype(np.float64)


def _band_table(labels: np.ndarray, y0: int, values: np.ndarray | None, ops: _Ops, name: str
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The statistics of the objects in one band (rows y0.. of a plane): its runs (stretches of one label along a
    row), each run's sums, minima and maxima, then grouped by label."""
    width = labels.shape[1]
    flat = np.ascontiguousarray(labels).reshape(-1)
    starts_here = np.empty(flat.size, bool)
    starts_here[0] = True
    np.not_equal(flat[1:], flat[:-1], out=starts_here[1:])
    starts_here[::width] = True                     # a run never continues onto the next row
    starts = np.flatnonzero(starts_here)
    ids = flat[starts]
    if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
        at = int(starts[np.argmax(ids < 0)])
        raise ValueError(f"{name} has negative values (e.g. {int(flat[at])} at row {y0 + at // width}, column "
                         f"{at % width}); instance labels are 0 (background) and objects numbered from 1")
    lengths = np.diff(starts, append=flat.size)
    channel_stats = []
    if values is not None:
        for channel in values:
            channel = np.ascontiguousarray(channel).reshape(-1)
            with np.errstate(invalid="ignore", over="ignore"):      # inf - inf: NaN, as documented, unannounced
                channel_stats += [np.add.reduceat(channel, starts, dtype=_sum_dtype(channel.dtype)),
                                  np.minimum.reduceat(channel, starts), np.maximum.reduceat(channel, starts)]
    objects = ids != 0
    ids, starts, lengths = ids[objects], starts[objects], lengths[objects]
    row, column = np.divmod(starts, width)
    row += y0
    last = column + lengths - 1
    table = [lengths, lengths * row, lengths * column + lengths * (lengths - 1) // 2, row, row, column, last]
    table += [stat[objects] for stat in channel_stats]
    return _group(ids.astype(ids.dtype.newbyteorder("="), copy=False), table, ops)


class _Objects:
    """The statistics of every object seen so far in a plane: band tables wait in ``parts`` and are merged into
    one when as many rows wait as the table holds (amortised: each row is merged a few times)."""

    def __init__(self, ops: _Ops):
        self.ops = ops
        self.parts: list[tuple[np.ndarray, list[np.ndarray]]] = []
        self.waiting = 0
        self.merged = 0

    def add(self, part) -> None:
        self.parts.append(part)
        self.waiting += part[0].size
        if self.waiting > max(MERGE_ROWS, self.merged):
            self._merge()

    def _merge(self) -> None:
        if len(self.parts) > 1:
            ids = np.concatenate([ids for ids, _ in self.parts])
            table = [np.concatenate(columns) for columns in zip(*(table for _, table in self.parts))]
            self.parts = [_group(ids, table, self.ops)]
        self.merged = self.parts[0][0].size if self.parts else 0
        self.waiting = 0

    def result(self, dtype) -> tuple[np.ndarray, list[np.ndarray]]:
        self._merge()
        if self.parts:
            return self.parts[0]
        return np.zeros(0, dtype), [np.zeros(0, np.int64) for _ in self.ops.names]


def _measure_plane(labels: _Input, image: _Input | None, plane: int, ops: _Ops, reader: ThreadPoolExecutor):
    """The table of one plane: read in blocks of whole chunks (tiles or strips) of about BAND_PIXELS, the next
    block on ``reader``'s thread while this one is measured, each in bands of at most BAND_PIXELS (a file stored
    in one piece is read whole, once: its format allows no less, but the bands bound the work arrays)."""
    height, width = labels.shape[-2:]
    objects = _Objects(ops)
    block = _band_rows(width, height, labels.chunk_rows, image.chunk_rows if image is not None else None)
    band = _band_rows(width, height)

    def read(y0: int):
        y1 = min(height, y0 + block)
        values = None
        if image is not None:
            values = image.band(plane, y0, y1)
            values = values[None] if values.ndim == 2 else values
            values = values.view(np.uint8) if values.dtype == bool else values
        return labels.band(plane, y0, y1), values

    starts = list(range(0, height if width else 0, block))
    coming = reader.submit(read, starts[0]) if starts else None
    for k, y0 in enumerate(starts):
        rows, values = coming.result()
        coming = reader.submit(read, starts[k + 1]) if k + 1 < len(starts) else None
        for b0 in range(0, rows.shape[0], band):
            termination.check()
            b1 = min(rows.shape[0], b0 + band)
            objects.add(_band_table(rows[b0:b1], y0 + b0, None if values is None else values[:, b0:b1], ops,
                                    labels.name))
    return objects.result(np.dtype(labels.array.dtype).newbyteorder("="))


def _columns(ids, table, ops: _Ops, channels: int | None, image_dtype, pixel_size: PixelSize | None,
             plane: int | None) -> dict[str, np.ndarray]:
    """The statistics of one plane as the named columns of the module docstring."""
    stats = dict(zip(ops.names, table))
    area = stats["area"].astype(np.int64)
    columns: dict[str, np.ndarray] = {}
    if plane is not None:
        columns["plane"] = np.full(ids.size, plane, np.int64)
    columns["label"] = ids
    columns["area_px"] = area
    unit = unit_symbol(pixel_size.unit) if pixel_size is not None else None
    if pixel_size is not None:
        columns[f"area_{unit}2"] = area * (pixel_size.y * pixel_size.x)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid_y = stats["sum_y"] / area
        centroid_x = stats["sum_x"] / area
    columns["centroid_y_px"], columns["centroid_x_px"] = centroid_y, centroid_x
    if pixel_size is not None:
        _, ty, tx = pixel_size.translation or (0.0, 0.0, 0.0)
        columns[f"centroid_y_{unit}"] = centroid_y * pixel_size.y + ty
        columns[f"centroid_x_{unit}"] = centroid_x * pixel_size.x + tx
        if plane is not None and pixel_size.z is not None:
            tz = (pixel_size.translation or (0.0,))[0]
            columns[f"centroid_z_{unit}"] = np.full(ids.size, plane * pixel_size.z + tz)
    for name in ("min_row", "min_col", "max_row", "max_col"):
        columns[f"bbox_{name}"] = stats[name].astype(np.int64)
    if channels is not None:
        for c in range(channels):
            suffix = f"_c{c}" if channels > 1 else ""
            total = stats[f"sum{c}"]
            with np.errstate(invalid="ignore", divide="ignore"):
                columns[f"intensity_mean{suffix}"] = total / area
            columns[f"intensity_min{suffix}"] = stats[f"min{c}"].astype(image_dtype, copy=False)
            columns[f"intensity_max{suffix}"] = stats[f"max{c}"].astype(image_dtype, copy=False)
            columns[f"intensity_sum{suffix}"] = total.astype(_sum_dtype(image_dtype), copy=False)
    return columns


def _pixel_size(value) -> PixelSize | None:
    """``pixel_size=`` as a PixelSize: one already, a number (square pixels) or (y, x), in micrometers."""
    def number(v) -> bool:          # numpy's numbers too (a size read from metadata): np.float32(0.5)
        return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))

    if value is None or isinstance(value, PixelSize):
        return value
    if number(value):
        return PixelSize(float(value), float(value))
    if isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2 and all(number(v) for v in value):
        return PixelSize(float(value[0]), float(value[1]))
    raise TypeError(f"pixel_size must be a unet_fast.pixel_size.PixelSize, a number or (y, x) in micrometers, or "
                    f"None, got {value!r}")


@contextlib.contextmanager
def _opened(labels, image, pixel_size, max_pixels):
    """The inputs opened and checked, and the pixel size that applies (given, the labels' file's, the image's);
    the files opened are closed when the context ends (a run over thousands held them until garbage collection)."""
    given = _pixel_size(pixel_size)
    with contextlib.ExitStack() as closing:
        label_source, recorded = _label_input(labels, max_pixels, closing)
        image_source, image_recorded = ((None, None) if image is None else
                                        _image_input(image, label_source, max_pixels, closing))
        yield label_source, image_source, given or recorded or image_recorded


def measure_objects(labels, image=None, pixel_size=None, *, max_pixels: int | None = image_io.DEFAULT_MAX_PIXELS
                    ) -> dict[str, np.ndarray]:
    """A table of the objects of an instance label image: {column name: a 1-D array}, one entry per object, in
    the order of (plane,) label; the columns of the module docstring (``pandas.DataFrame(table)`` takes it).

    labels: instance labels (integers >= 0 of any integer type; 0 background): (H, W), or a stack (Z, H, W) of
    planes each numbered on its own (a batch too), as a numpy array or anything read by slices (a zarr array,
    a memmap); or the path of a file ``unet-fast segment`` writes (TIFF, OME-Zarr; PNG too), read in bands of
    rows. image: the intensity image, None, or its path: (H, W) or (C, H, W) for a plane, (Z, H, W) or
    (Z, C, H, W) for a stack. pixel_size: a ``PixelSize``, a number or (y, x) in micrometers, or None: the
    label file's, else the image file's, else pixels only. max_pixels: files declaring more pixels are refused
    (None: any; see ``image_io.check_pixel_limit``).

    Raises ValueError naming the input for what is no instance label image (floats, a class axis, bool, negative
    values), or an image of another size; FileNotFoundError for a missing file.
    """
    from .checks import check_positive_int

    check_positive_int(max_pixels, "max_pixels", allow_none=True)
    with _opened(labels, image, pixel_size, max_pixels) as (label_source, image_source, size):
        return _measure(label_source, image_source, size)


def _measure(labels: _Input, image: _Input | None, pixel_size: PixelSize | None) -> dict[str, np.ndarray]:
    channels = None if image is None else (image.channels or 1)
    image_dtype = None if image is None else np.dtype(image.array.dtype).newbyteorder("=")
    if image_dtype == bool:         # a mask as intensities: 0 and 1
        image_dtype = np.dtype(np.uint8)
    ops = _Ops(channels or 0)
    planes = labels.planes
    tables = []
    label_dtype = np.dtype(labels.array.dtype).newbyteorder("=")
    with ThreadPoolExecutor(1, thread_name_prefix="unet_fast-measure-reader") as reader:
        for plane in range(1 if planes is None else planes):
            ids, table = _measure_plane(labels, image, plane, ops, reader)
            tables.append(_columns(ids, table, ops, channels, image_dtype, pixel_size,
                                   None if planes is None else plane))
    if not tables:                      # a stack of no planes: the columns, empty
        tables.append(_columns(*_Objects(ops).result(label_dtype), ops, channels, image_dtype, pixel_size, 0))
    if len(tables) == 1:
        return tables[0]
    return {name: np.concatenate([table[name] for table in tables]) for name in tables[0]}


# ---- files to CSV: ``unet-fast measure``

#: the columns ``run`` writes (``_header``, ``_summary_header``), a unit's symbol as <u>: a table whose header
#: holds any other (a column the user added to annotate the objects) is the user's, never replaced
_OBJECTS_COLUMNS = re.compile(r"plane|label|area_px|area_[a-z]+2|centroid_[yxz]_[a-z]+|bbox_(min|max)_(row|col)|"
                              r"intensity_(mean|min|max|sum)(_c[0-9]+)?")
_SUMMARY_COLUMNS = re.compile(r"area_(total|mean|median)_(px|[a-z]+2)|pixel_size_[yxz]_[a-z]+")


def written_by_measure(path) -> bool:
    """Whether ``path`` is an objects.csv or summary.csv that ``run`` writes, by its header (its first columns'
    names, and no column ``run`` does not write): only such a file is replaced."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            names = next(csv.reader([file.readline()]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if names[:4] == ["file", "image_file", "planes", "objects"]:
        return all(_SUMMARY_COLUMNS.fullmatch(name) for name in names[4:])
    return (names[1:3] == ["label", "area_px"] or names[1:4] == ["plane", "label", "area_px"]) and \
        names[0] == "file" and all(_OBJECTS_COLUMNS.fullmatch(name) for name in names[1:])


@dataclass
class _Pair:
    """A label file, its intensity image (or None), and what their headers say."""

    labels: Path
    image: Path | None
    planes: int | None = None
    channels: int | None = None
    pixel_size: PixelSize | None = None


@dataclass
class MeasureResult:
    """What ``run`` did: the files measured, those that failed (file, reason), objects counted, the CSVs."""

    measured: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    objects: int = 0
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_status(self) -> int:
        return 1 if self.failed else 0


def _base_name(path: Path) -> str:
    from .segment import output_name

    return output_name(Path(path), "")


def pair_files(label_files: list[Path], image_files: list[Path] | None, label_suffix: str = "",
               places: dict[Path, Path] | None = None) -> list[_Pair]:
    """Each label file with the image of its base name (``segment``'s output name: the input's without its
    suffix, ".ome.tif" and ".ome.zarr" counting as one), less ``label_suffix``. places: {file: its subfolder in
    the folder named} of label and image files alike (``segment.output_subfolders``: a recursive run's), where
    the image in the label file's own subfolder is taken first (plates/p1/A01.tif for out/p1/A01.tif, where every
    plate has an A01). BadArgument ("images") for a label file without its image, or two images it could be."""
    if image_files is None:
        return [_Pair(path, None) for path in label_files]
    places = places or {}
    by_name: dict[str, list[Path]] = {}
    by_place: dict[tuple[Path, str], list[Path]] = {}
    for path in image_files:
        by_name.setdefault(_base_name(path), []).append(path)
        by_place.setdefault((places.get(path, Path()), _base_name(path)), []).append(path)
    pairs, missing = [], []
    for path in label_files:
        name = _base_name(path)
        wanted = name[:len(name) - len(label_suffix)] if name.endswith(label_suffix) else None
        found = [image for image in by_place.get((places.get(path, Path()), wanted), []) if not same_file(image, path)]
        if not found:
            found = [image for image in by_name.get(wanted, []) if not same_file(image, path)]
        if len(found) > 1:
            where = ("" if places else "; -r pairs a label file with the image in the same subfolder of the "
                                       "folders named")
            raise BadArgument("images", f"{', '.join(map(str, found))} have the same base name {wanted!r}: which "
                                        f"is the image of {path} is ambiguous; name one of them{where}")
        if not found:
            missing.append(str(path))
        else:
            pairs.append(_Pair(path, found[0]))
    if missing:
        hint = (f" less --label-suffix {label_suffix!r}" if label_suffix else
                "; label files named <image name><suffix> need --label-suffix SUFFIX")
        raise BadArgument("images", f"no image for {len(missing)} label file(s): {', '.join(missing[:5])}"
                                    f"{' ...' if len(missing) > 5 else ''} (an image is found by the label file's "
                                    f"base name{hint})")
    return pairs


def _check_pair(pair: _Pair, max_pixels: int | None) -> None:
    """Open a pair (headers, checks) and note its planes, channels and pixel size; ValueError/OSError if bad."""
    with contextlib.ExitStack() as closing:
        labels, pixel_size = _label_input(pair.labels, max_pixels, closing)
        image, recorded = (None, None) if pair.image is None else _image_input(pair.image, labels, max_pixels, closing)
    pair.planes = labels.planes
    pair.channels = None if image is None else (image.channels or 1)
    if recorded is not None and pixel_size is not None and scale_factor(recorded, pixel_size) > 1.001:
        import warnings

        warnings.warn(f"{pair.labels} records pixels of {pixel_size.y:.4g} x {pixel_size.x:.4g} "
                      f"{pixel_size.unit} but its image {pair.image} {recorded.y:.4g} x {recorded.x:.4g} "
                      f"{recorded.unit}; the label file's are used", stacklevel=2)
    pair.pixel_size = pixel_size or recorded


def _in_unit(pixel_size: PixelSize | None, unit: str | None) -> PixelSize | None:
    if pixel_size is None or unit is None or pixel_size.unit == unit:
        return pixel_size
    translation = None if pixel_size.translation is None else tuple(
        in_unit(t, pixel_size.unit, unit) for t in pixel_size.translation)
    return PixelSize(in_unit(pixel_size.y, pixel_size.unit, unit), in_unit(pixel_size.x, pixel_size.unit, unit),
                     unit, None if pixel_size.z is None else in_unit(pixel_size.z, pixel_size.unit, unit), translation)


def _header(pairs: list[_Pair], unit: str | None) -> list[str]:
    """objects.csv's columns: the file, then ``measure_objects``' columns, the union over the files."""
    symbol = unit_symbol(unit) if unit else None
    columns = ["file"] + (["plane"] if any(pair.planes is not None for pair in pairs) else [])
    columns += ["label", "area_px"] + ([f"area_{symbol}2"] if symbol else [])
    columns += ["centroid_y_px", "centroid_x_px"] + ([f"centroid_y_{symbol}", f"centroid_x_{symbol}"] if symbol else [])
    if symbol and _stacks_with_a_step(pairs):
        columns.append(f"centroid_z_{symbol}")
    columns += ["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]
    channels = max((pair.channels or 0 for pair in pairs), default=0)
    if channels == 1 and all(pair.channels in (None, 1) for pair in pairs):
        columns += [f"intensity_{statistic}" for statistic in STATISTICS]
    for c in range(channels if channels > 1 else 0):
        columns += [f"intensity_{statistic}_c{c}" for statistic in STATISTICS]
    return columns


def _stacks_with_a_step(pairs: list[_Pair]) -> bool:
    """Whether a pair is a stack whose step between planes is known: the tables get z columns."""
    return any(pair.planes is not None and pair.pixel_size is not None and pair.pixel_size.z is not None
               for pair in pairs)


def _summary_header(unit: str | None, z: bool = False) -> list[str]:
    symbol = unit_symbol(unit) if unit else None
    physical = [f"area_total_{symbol}2", f"area_mean_{symbol}2", f"area_median_{symbol}2",
                f"pixel_size_y_{symbol}", f"pixel_size_x_{symbol}"] + ([f"pixel_size_z_{symbol}"] if z else []) \
        if symbol else []
    return ["file", "image_file", "planes", "objects", "area_total_px", "area_mean_px", "area_median_px"] + physical


def _cells(values: np.ndarray) -> list[str]:
    """CSV cells of a column: integers as they are, floats the shortest text that reads back as the same value
    (NaN as nan)."""
    if values.dtype.kind == "f" and values.dtype.itemsize < 8:     # shortest in its own precision: 0.06666667
        return values.astype(str).tolist()
    if values.dtype.kind == "f":
        return list(map(repr, values.tolist()))          # Python's repr: faster than numpy's astype(str)
    return list(map(str, values.tolist()))


def _text(value) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue()


def _object_rows(file: str, columns: dict[str, np.ndarray], header: list[str], rows: int = 2 ** 15):
    """The CSV lines of one file's objects under ``header`` (cells of columns it lacks empty), as text of up to
    ``rows`` lines at a time: the text of a whole large image's objects would be hundreds of MB of strings."""
    count = columns["label"].size
    name = _text(file) + ","
    keys = []
    for column in header[1:]:
        if column not in columns and column.endswith("_c0") and column[:-3] in columns:
            column = column[:-3]                # a one-channel image in a table of several
        keys.append(column if column in columns else None)
    for start in range(0, count, rows):
        stop = min(count, start + rows)
        cells = [_cells(columns[key][start:stop]) if key else [""] * (stop - start) for key in keys]
        yield "".join(name + ",".join(row) + "\n" for row in zip(*cells))


def _summary_row(pair: _Pair, columns: dict[str, np.ndarray], unit: str | None, z: bool = False) -> list[str]:
    area = columns["area_px"]
    count = area.size
    mean, median = (float(np.mean(area)), float(np.median(area))) if count else (None, None)
    row = [str(pair.labels), "" if pair.image is None else str(pair.image),
           str(1 if pair.planes is None else pair.planes), str(count),
           str(int(area.sum())), "" if mean is None else repr(mean), "" if median is None else repr(median)]
    if unit:
        size = _in_unit(pair.pixel_size, unit)
        if size is None:
            row += [""] * (6 if z else 5)
        else:
            square = size.y * size.x
            row += [repr(float(area.sum()) * square), "" if mean is None else repr(mean * square),
                    "" if median is None else repr(median * square), repr(size.y), repr(size.x)]
            if z:
                row.append("" if size.z is None or pair.planes is None else repr(size.z))
    return row


def check_output_dir(output_dir, inputs: list[Path]) -> None:
    """``output_dir`` can take objects.csv and summary.csv: a folder that can be written (not a .csv name), not
    inside an input (an OME-Zarr folder), and holding no such file that ``run`` did not write. BadArgument."""
    from .checks import check_output_is_not_an_input, check_writable_folder

    output_dir = Path(output_dir)
    if output_dir.suffix.lower() == ".csv" and not output_dir.is_dir():
        raise BadArgument("output_dir", f"{str(output_dir)!r} names a file; -o is a folder, where {OBJECTS_CSV} (a "
                                        f"row per object) and {SUMMARY_CSV} (a row per file) are written: e.g. -o "
                                        f"{output_dir.with_suffix('')}")
    check_writable_folder(output_dir, "output_dir")
    for path in inputs:
        if image_io.is_zarr_image(path) and Path(path).resolve() in (output_dir.resolve(), *output_dir.resolve().parents):
            raise BadArgument("output_dir", f"{str(output_dir)!r} lies inside the input {str(path)!r}; choose another "
                                            f"output folder")
    for name in (OBJECTS_CSV, SUMMARY_CSV):
        target = output_dir / name
        check_output_is_not_an_input(target, inputs, "output_dir")
        if target.is_dir():
            raise BadArgument("output_dir", f"{str(target)!r} is a folder, which the table cannot replace; choose "
                                            f"another output folder")
        if target.exists() and not written_by_measure(target):
            raise BadArgument("output_dir", f"{str(target)!r} exists and is no table unet-fast measure wrote, which "
                                            f"this run would replace; choose another output folder or move that file")


def run(inputs, output_dir, *, images=None, label_suffix: str = "", recursive: bool = False,
        max_pixels: int | None = image_io.DEFAULT_MAX_PIXELS, log=print) -> MeasureResult:
    """Measure the objects of every label file ``inputs`` name (files, folders, glob patterns, as ``segment``
    takes them) into ``output_dir``/objects.csv (a row per object, the file first) and ``output_dir``/summary.csv
    (a row per file: objects, total, mean and median area): ``unet-fast measure`` from Python.

    images: files, folders or patterns of the intensity images, each label file paired with the image of its
    base name (``pair_files``; ``label_suffix``: label files are named <image name><suffix>), or None.
    recursive: folders give the files in their subfolders at any depth too (as ``segment -r`` lists its inputs
    and places its outputs), each label file paired with the image of its subfolder first; the overlays segment
    wrote there (OUTDIR/overlays/...) are passed over. So are the tables an earlier run wrote, where a pattern
    matches them (-i 'out/*' -o out, run again).
    Usage errors (nothing to measure, a label file without its image, an output folder that cannot be written or
    holds tables it did not write) raise BadArgument before anything is read. A file that cannot be measured
    (unreadable, no instance labels, of another size than its image) is reported by ``log`` as FAILED and left
    out; the tables are written (atomically, each replacing one ``run`` wrote; summary.csv first, so that a
    failure leaves the earlier run's pair) when any file was measured.
    """
    from .checks import check_bool, check_positive_int
    from .overlays import written_by_unet_fast
    from .segment import expand_inputs, output_subfolders

    check_bool(recursive, "recursive")
    check_positive_int(max_pixels, "max_pixels", allow_none=True)
    if not isinstance(label_suffix, str):
        raise BadArgument("label_suffix", f"label_suffix must be a string (\"\" for none), got {label_suffix!r}")
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise BadArgument("output_dir", f"output_dir must be the path of a folder, got {output_dir!r}")
    started = time.perf_counter()
    result = MeasureResult()
    items = [str(item) for item in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not items:
        raise BadArgument("input", "no label image given: name files, folders or patterns of instance labels")
    label_files, problems = expand_inputs(items, recursive=recursive)
    if recursive:       # segment -r's OUTDIR/overlays/<subfolders>/*.png: pictures, not labels
        overlays = [path for path in label_files if written_by_unet_fast(path)]
        if overlays:
            passed = set(overlays)
            label_files = [path for path in label_files if path not in passed]
            log(f"note: {len(overlays)} overlay(s) segment or evaluate drew passed over (e.g. {overlays[0]})")
    label_files = _without_tables(label_files, log)
    if not label_files:
        shown = "; ".join(f"{item}: {reason}" for item, reason in problems[:5])
        raise BadArgument("input", f"no label image to measure: {shown}"
                          + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    image_files = None
    if images is not None:
        image_items = [str(item) for item in ([images] if isinstance(images, (str, Path)) else images)]
        image_files, image_problems = expand_inputs(image_items, recursive=recursive)
        image_files = _without_tables(image_files, log)
        if image_problems:
            item, reason = image_problems[0]
            raise BadArgument("images", f"{item}: {reason}")
    elif label_suffix:
        raise BadArgument("label_suffix", "--label-suffix pairs label files with --images; give --images too")
    places = ({**output_subfolders(label_files, items), **output_subfolders(image_files or [], image_items)}
              if recursive and images is not None else None)
    if label_suffix and image_files:    # labels beside their images (-i data/ --images data/): the others are images
        given = {Path(path).resolve() for path in image_files}
        label_files = [path for path in label_files
                       if _base_name(path).endswith(label_suffix) or Path(path).resolve() not in given]
    pairs = pair_files(label_files, image_files, label_suffix, places)
    check_output_dir(output_dir, label_files + (image_files or []))
    output_dir = Path(output_dir)
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadArgument("output_dir", f"{str(output_dir)!r} cannot be created: {error.strerror or error}") from None
    for name in (OBJECTS_CSV, SUMMARY_CSV):
        image_io.remove_leftovers(output_dir / name)
    for item, reason in problems:
        result.failed.append((item, reason))
        log(f"FAILED {item}: {reason}", file=sys.stderr)
    usable = []
    for pair in pairs:                   # headers only: the columns are known before the first row is written
        try:
            _check_pair(pair, max_pixels)
        except Exception as error:      # unreadable (tifffile's, zarr's, zlib's errors), or no instance labels
            result.failed.append((str(pair.labels), str(error)))
            log(f"FAILED {pair.labels}: {failure_reason(error, pair.labels)}", file=sys.stderr)
            continue
        usable.append(pair)
    if not usable:
        return _nothing_measured(result, output_dir, created, started, log)
    unit = next((pair.pixel_size.unit for pair in usable if pair.pixel_size is not None), None)
    header = _header(usable, unit)
    z_step = unit is not None and _stacks_with_a_step(usable)
    summary_rows = []
    try:
        with image_io.atomic_path(output_dir / OBJECTS_CSV) as temporary:
            with open(temporary, "w", encoding="utf-8", newline="") as table:
                table.write(",".join(header) + "\n")
                for pair in usable:
                    began = time.perf_counter()
                    try:
                        with _opened(pair.labels, pair.image, None, max_pixels) as (labels, image, _):
                            columns = _measure(labels, image, _in_unit(pair.pixel_size, unit))
                    except Exception as error:      # a file that fails while read (a truncated tile, a negative id)
                        result.failed.append((str(pair.labels), str(error)))
                        log(f"FAILED {pair.labels}: {failure_reason(error, pair.labels)}", file=sys.stderr)
                        continue
                    table.writelines(_object_rows(str(pair.labels), columns, header))
                    summary_rows.append(_summary_row(pair, columns, unit, z_step))
                    result.measured.append(str(pair.labels))
                    result.objects += columns["label"].size
                    log(f"ok {pair.labels}: {columns['label'].size} objects"
                        + (f" in {pair.planes} planes" if pair.planes is not None else "")
                        + (f", intensities of {pair.image}" if pair.image is not None else "")
                        + f" ({time.perf_counter() - began:.1f} s)")
                    doubt = scattered_objects(columns)
                    if doubt:
                        log(f"warning: {pair.labels}: {doubt}", file=sys.stderr)
            if not result.measured:
                raise _NothingMeasured()          # the temporary table is discarded: an earlier one stays
            # summary.csv is written (and committed) before objects.csv is: a failure writing it (a full disk)
            # leaves both tables of the earlier run, not its summary beside this run's objects
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(_summary_header(unit, z_step))
            writer.writerows(summary_rows)
            image_io.write_bytes_atomically(output_dir / SUMMARY_CSV, buffer.getvalue().encode())
    except _NothingMeasured:
        return _nothing_measured(result, output_dir, created, started, log)
    result.written = [output_dir / OBJECTS_CSV, output_dir / SUMMARY_CSV]
    result.seconds = time.perf_counter() - started
    return result


def _without_tables(files: list[Path], log) -> list[Path]:
    """``files`` less the tables an earlier run wrote there, which a pattern matches (-i 'out/*' -o out: run
    again, its inputs were its own outputs), with a note."""
    tables = [path for path in files if Path(path).name in (OBJECTS_CSV, SUMMARY_CSV) and written_by_measure(path)]
    if tables:
        log(f"note: {len(tables)} table(s) measure wrote passed over (e.g. {tables[0]})")
    return [path for path in files if path not in tables]


def scattered_objects(columns: dict[str, np.ndarray], least: int = 10) -> str | None:
    """Why a file measured as instance labels looks like an intensity image, or None (``checks.scattered_objects``)."""
    boxes = (columns["bbox_max_row"] - columns["bbox_min_row"] + 1) * \
        (columns["bbox_max_col"] - columns["bbox_min_col"] + 1)
    doubt = checks.scattered_objects(columns["area_px"], boxes, least)
    return doubt and (doubt + "; give instance labels (segment --output instances) to -i, and the image to --images")


def _nothing_measured(result: MeasureResult, output_dir: Path, created: bool, started: float, log) -> MeasureResult:
    """Every file failed: nothing is written (an earlier run's tables stay), a folder made for them is removed."""
    if created and output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()
    log(f"nothing measured ({len(result.failed)} failed); nothing written", file=sys.stderr)
    result.seconds = time.perf_counter() - started
    return result


class _NothingMeasured(Exception):
    """Every file failed: no table is written."""
