"""Where tiled inference writes its result as tiles finish: an array in memory, or a file streamed to
disk (a tiled BigTIFF or an OME-Zarr), committed atomically when complete.

Every sink has ``write(plane, y0, x0, block)``, ``close()`` (returns the result: the array or the
path) and ``abort()``. The file writers collect blocks into row bands and write each band as soon as
it is complete, so memory holds the bands of the current row of tiles, not the image. The OME-Zarr
writer also writes a multiscale pyramid as the bands come (``_Halving``), one band a level; the TIFF writer builds
the same levels as the bands come, in memory-mapped scratch files, and writes them as SubIFDs after level 0.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .checks import BadArgument
from .image_io import TIFF_SUFFIXES, ZARR_SUFFIXES, commit, discard, temporary_sibling
from .ome_zarr import channel_metadata, class_properties
from .pixel_size import PixelSize, ngff_axes_and_scale, tiff_options

log = logging.getLogger(__name__)


#: the private TIFF tag, and the OME-Zarr attribute, holding how a result was made (``read_provenance``)
PROVENANCE_TAG = 65001
PROVENANCE_ATTRIBUTE = "unet_fast"


def read_provenance(path) -> dict | None:
    """How the result file ``path`` was made, as its writer recorded it; None when it records nothing."""
    path = Path(path)
    try:
        if path.suffix.lower() in ZARR_SUFFIXES:
            import zarr

            found = zarr.open_group(str(path), mode="r").attrs.get(PROVENANCE_ATTRIBUTE)
            return dict(found) if isinstance(found, dict) else None
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            tag = tiff.pages[0].tags.get(PROVENANCE_TAG)
            found = json.loads(tag.value) if tag is not None else None
        return found if isinstance(found, dict) else None
    except Exception:       # unreadable or not ours: it records nothing we can use
        return None


def open_sink(out, shape: tuple[int, ...], dtype: torch.dtype, *, stacked: bool, channels: bool,
              pixel_size: PixelSize | None = None, provenance: dict | None = None, class_names=None):
    """A sink for a result of ``shape`` and ``dtype``: a new numpy array when ``out`` is None, ``out``
    itself when it is an array (of that shape), else a streaming writer for the path ``out``
    (``open_streaming_writer``, which records ``pixel_size`` and ``provenance`` in the file, and in an OME-Zarr of
    class labels ``class_names``: ``StreamingZarrWriter``). stacked: the first axis counts planes; channels: classes
    before Y, X."""
    if out is None:
        return ArraySink(np.zeros(shape, _numpy_dtype(dtype)), stacked)
    if isinstance(out, (str, Path)):
        from .inference import check_out_path

        check_out_path(out)     # before a writer thread or temporary file exists
        return open_streaming_writer(out, shape, _numpy_dtype(dtype), channels=channels, pixel_size=pixel_size,
                                     provenance=provenance, class_names=class_names)
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but this result needs {shape}")
    return ArraySink(out, stacked)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


class ArraySink:
    """Writes result blocks into an array-like ``out`` (numpy, memmap, zarr, torch tensor)."""

    def __init__(self, out, stacked: bool):
        self.out, self.stacked = out, stacked

    def write(self, plane, y0, x0, block):
        index = ((plane,) if self.stacked else ()) + (Ellipsis, slice(y0, y0 + block.shape[-2]),
                                                       slice(x0, x0 + block.shape[-1]))
        self.out[index] = torch.from_numpy(block) if isinstance(self.out, torch.Tensor) else block

    def close(self):
        return self.out

    def abort(self):
        pass


class _BandCollector:
    """Collects blocks of planes (..., H, W) written in any order and hands on complete row bands.

    Blocks arrive plane by plane, roughly row by row (as tiled inference produces them); a band of
    ``band`` rows is handed to ``emit(plane, row0, data)`` as soon as all its pixels were written,
    in order. Memory: the bands touched by the current row of tiles, not the image.
    """

    def __init__(self, shape, dtype, band: int, plane_dims: int, emit):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.band = band
        self.plane_dims = plane_dims               # leading dims indexing planes (0 or 1)
        self.height, self.width = self.shape[-2:]
        self.extra = self.shape[plane_dims:-2]     # per-pixel dims (e.g. classes) between plane and Y
        self.emit = emit
        self.bands: dict[tuple, np.ndarray] = {}
        self.counts: dict[tuple, int] = {}
        self.next = (0, 0)                         # (plane, band) to emit next

    def write(self, plane: int, y0: int, x0: int, block: np.ndarray) -> None:
        h, w = block.shape[-2:]
        if y0 < 0 or x0 < 0 or y0 + h > self.height or x0 + w > self.width:
            raise ValueError(f"block at ({y0}, {x0}) of size {h}x{w} lies outside {self.height}x{self.width}")
        for b in range(y0 // self.band, (y0 + h - 1) // self.band + 1):
            top = b * self.band
            rows = min(self.band, self.height - top)
            key = (plane, b)
            if key < self.next:
                raise ValueError(f"rows {top}..{top + rows} of plane {plane} were already written out")
            buffer = self.bands.get(key)
            if buffer is None:
                buffer = self.bands[key] = np.zeros(self.extra + (rows, self.width), self.dtype)
                self.counts[key] = 0
            a, z = max(y0, top), min(y0 + h, top + rows)
            buffer[..., a - top:z - top, x0:x0 + w] = block[..., a - y0:z - y0, :]
            self.counts[key] += (z - a) * w
        self._flush()

    def _flush(self) -> None:
        planes = math.prod(self.shape[:self.plane_dims])
        bands_per_plane = -(-self.height // self.band)
        while self.next in self.bands:
            plane, b = self.next
            rows = min(self.band, self.height - b * self.band)
            if self.counts[self.next] < rows * self.width:
                return
            self.emit(plane, b * self.band, self.bands.pop(self.next))
            del self.counts[self.next]
            self.next = (plane, b + 1) if b + 1 < bands_per_plane else (plane + 1, 0)
            if self.next[0] >= planes:
                return

    @property
    def complete(self) -> bool:
        return self.next[0] >= math.prod(self.shape[:self.plane_dims]) and not self.bands


def _sync(path: Path) -> None:
    """Flush a finished temporary file, or every file of a folder, to the disk before it is committed under its
    name: without, a crash of the machine (a power cut, a node lost) could leave an output of that name whose data
    never reached the disk (empty, or with chunks missing), which --continue would keep as finished."""
    path = Path(path)
    files = [path] if not path.is_dir() else [Path(folder, name) for folder, _, names in os.walk(path)
                                               for name in names]

    def sync(file: Path) -> None:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())

    # a Zarr's chunk files, many at once: 4000 of 64 KB took 2.6 s one by one here, 1.4 s sixteen at a time
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(files)))) as pool:
        list(pool.map(sync, files))


class StreamingTiffWriter:
    """A tiled BigTIFF written while blocks arrive (``write``), committed atomically by ``close``.

    shape: (H, W), (Z, H, W), or with classes (K, H, W) / (Z, K, H, W) when ``channels=True``;
    class values are stored as samples per pixel (tifffile reads them back channels-last).
    pixel_size: written as OME-XML physical sizes (its translation as plane positions) and TIFF resolution.
    provenance: a JSON-serialisable dict stored as JSON in the private tag ``PROVENANCE_TAG``
    (``read_provenance``).
    An image with a side above ``PYRAMID_MAX_SIDE`` becomes a pyramidal OME-TIFF as Bio-Formats (QuPath, Fiji)
    reads it: each plane's page (level 0) has the reduced levels of ``pyramid_sizes`` as its SubIFDs, made as
    the OME-Zarr writer makes its levels (``_Halving``: integers the top-left pixel of each 2 x 2 block, floats its
    mean). Level 0 streams into the file; the reduced levels (a third of its bytes) are built as its bands come
    into memory-mapped scratch files in a hidden folder beside the output, and written after level 0.
    Memory besides the collector's bands: up to 64 tiles queued for the writer thread, and the band of tiles
    tifffile's compression threads encode before writing it (``buffersize``), whatever the image's size.
    """

    def __init__(self, path, shape, dtype, *, channels: bool = False, tile: int = 256,
                 compression: str | None = "zlib", pixel_size: PixelSize | None = None,
                 provenance: dict | None = None):
        import tifffile

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = temporary_sibling(self.path)
        self.shape = tuple(int(s) for s in shape)
        self.tile = tile
        plane_dims = len(self.shape) - 2 - int(channels)
        if plane_dims not in (0, 1):
            raise ValueError(f"shape must be (H, W) or (Z, H, W) (plus a class axis), got {self.shape}")
        self.channels = channels
        self.plane_dims = plane_dims
        dtype = np.dtype(dtype)
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._collector = _BandCollector(self.shape, dtype, tile, plane_dims, self._emit)
        stored = self.shape[:plane_dims] + self.shape[-2:] + (self.shape[-3:-2] if channels else ())
        axes = "Z" * plane_dims + "YX" + "S" * int(channels)
        sizes = pyramid_sizes(*self.shape[-2:])
        physical = tiff_options(pixel_size, axes, planes=self.shape[0] if plane_dims else 1, ome=len(sizes) > 1)
        ome = physical.pop("ome", None)
        if provenance is not None:
            physical["extratags"] = [(PROVENANCE_TAG, "s", 0, json.dumps(provenance, sort_keys=True), True)]
        options = dict(dtype=dtype, tile=(tile, tile), compression=compression, photometric="minisblack",
                       planarconfig="contig" if channels else None)
        tile_bytes = tile * tile * (self.shape[-3] if channels else 1) * dtype.itemsize

        def band_of_tiles(width: int) -> int:
            """tifffile's ``buffersize`` (TiffWriter.write has it since 2023.9.26) for a level ``width`` px wide.
            With several compression threads (TIFF.MAXWORKERS: half the CPU cores) tifffile draws max(threads,
            buffersize // tile bytes) tiles from the stream and encodes them all before it writes one; its default,
            512 MiB, drew up to whole images ahead of the file. A band's worth bounds that to a band of tiles, and
            still gives the threads a band to share; one thread ignores it, encoding tile by tile."""
            return -(-width // tile) * tile_bytes
        self._error: BaseException | None = None
        self._ended = False
        self._levels_ready = False      # set by close() once every pixel came: only then are the levels written
        self.scratch: Path | None = None
        self._levels: list[np.ndarray] = []
        self._pyramid: _Halving | None = None      # level 1's, which hands on to the next
        try:       # an error (or SIGTERM) before the constructor returns: no caller could abort this writer
            if len(sizes) > 1:
                self.scratch = self.temporary.with_suffix(".pyramid")    # hidden, .NAME.<hex>.partial.pyramid
                self.scratch.mkdir()
                for level, size in enumerate(sizes[1:], 1):
                    self._levels.append(_scratch_array(self.scratch / f"{level}.raw", stored[:plane_dims] + size
                                                       + stored[plane_dims + 2:], dtype))
                self._pyramid = _halving_chain(
                    [lambda plane, row0, band, array=array: self._store(array, plane, row0, band)
                     for array in self._levels], [size[0] for size in sizes[:-1]], [tile] * len(self._levels), dtype)
        except BaseException:
            self.abort()
            raise

        def tiles():
            while (item := self._queue.get()) is not None:
                yield item
            self._ended = True

        def run():
            try:
                with tifffile.TiffWriter(self.temporary, bigtiff=True, ome=ome) as tif:
                    tif.write(tiles(), shape=stored, subifds=len(self._levels) or None,
                              buffersize=band_of_tiles(self.shape[-1]), **options, **physical)
                    # tifffile takes exactly the tiles of ``stored`` and returns without asking for more (and
                    # closes ``tiles()``: its peek_iterator wraps it in a ``yield from``): the end of the stream,
                    # put by close() or abort(), is awaited here, so _levels_ready is what close() decided. Read
                    # at once, it raced close(): a pause between the last band and close() (another writer's
                    # bands, a slow progress callable) let level 0 end first, and the pyramid was left out.
                    if not self._ended:
                        if self._queue.get() is not None:
                            raise RuntimeError("more tiles came than the image holds")
                        self._ended = True
                    if self._levels and self._levels_ready:
                        resolution = physical.get("resolution")
                        for level, array in enumerate(self._levels, 1):
                            extra = {} if resolution is None else {
                                "resolution": tuple(r / 2 ** level for r in resolution),
                                "resolutionunit": physical["resolutionunit"]}
                            tif.write(_tiles_of(array, tile, plane_dims), shape=array.shape, subfiletype=1,
                                      metadata=None, buffersize=band_of_tiles(array.shape[plane_dims + 1]),
                                      **options, **extra)
            except BaseException as error:  # handed to the caller in close()
                self._error = error
                while not self._ended and self._queue.get() is not None:  # never block the producer
                    pass

        self._thread = threading.Thread(target=run, name="unet_fast-tiff-writer", daemon=True)
        try:
            self._thread.start()
        except BaseException:   # e.g. SIGTERM while the thread starts: no caller holds this writer to abort it
            self.abort()
            raise

    def write(self, plane: int, y0: int, x0: int, block: np.ndarray) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self.path} failed: {self._error}") from self._error
        self._collector.write(plane, y0, x0, block)

    def _emit(self, plane, row0, band):
        if self._pyramid is not None:
            self._pyramid.add(plane, band)
        if self.channels:
            band = np.moveaxis(band, 0, -1)
        for x0 in range(0, band.shape[1], self.tile):
            self._queue.put(_padded(band[:, x0:x0 + self.tile], self.tile))

    def _store(self, array, plane, row0, band):
        """A band of a reduced level (classes first, as the collector hands them) into its scratch array."""
        if self.channels:
            band = np.moveaxis(band, 0, -1)
        array[(plane,) * self.plane_dims + (slice(row0, row0 + band.shape[0]),)] = band

    def close(self) -> Path:
        complete = self._collector.complete
        self._levels_ready = complete
        self._queue.put(None)
        self._thread.join()
        self._discard_scratch()
        if not complete:
            discard(self.temporary)
            raise RuntimeError(f"{self.path}: closed before every pixel was written")
        if self._error is not None:
            discard(self.temporary)
            raise RuntimeError(f"writing {self.path} failed: {self._error!r}") from self._error
        _sync(self.temporary)
        commit(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            thread.join()
        self._discard_scratch()
        discard(self.temporary)

    def _discard_scratch(self) -> None:
        self._levels, self._pyramid = [], None      # the memmaps closed (once unreferenced) before their folder goes
        if self.scratch is not None:
            discard(self.scratch)


def _scratch_array(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new memory-mapped array in the file ``path``, its disk space reserved up front where the system can
    (a full disk fails here, not as a SIGBUS when a page of the map is written later)."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    with open(path, "wb") as file:
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(file.fileno(), 0, size)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                file.truncate(size)
        else:
            file.truncate(size)
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)


def _tiles_of(array: np.ndarray, tile: int, plane_dims: int):
    """The tiles of ``array`` (planes, then Y, X, then samples) in the order tifffile writes them, padded to
    ``tile`` x ``tile``: one tile in memory at a time, never a page of it."""
    for plane in (array if plane_dims else [array]):
        height, width = plane.shape[:2]
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                yield _padded(plane[y0:y0 + tile, x0:x0 + tile], tile)


def _padded(piece: np.ndarray, tile: int) -> np.ndarray:
    """A (h, w, ...) piece of an image as a contiguous ``tile`` x ``tile`` tile, zeros past its edge (a TIFF's
    edge tiles are stored whole); a full one is only made contiguous."""
    if piece.shape[:2] == (tile, tile):
        return np.ascontiguousarray(piece)
    padded = np.zeros((tile, tile) + piece.shape[2:], piece.dtype)
    padded[:piece.shape[0], :piece.shape[1]] = piece
    return padded


#: the most bytes one OME-Zarr chunk holds (readers decompress whole chunks): 64 float32 classes of 512 x 512
MAX_CHUNK_BYTES = 64 << 20

#: an OME-Zarr or TIFF result gets pyramid levels, each halving y and x, until a level's larger side is at most this (a
#: viewer shows the whole of such a level from a few chunks, where level 0 of 50,000 x 50,000 px is 10,000 of them)
PYRAMID_MAX_SIDE = 1024


def pyramid_sizes(height: int, width: int, max_side: int | None = None) -> list[tuple[int, int]]:
    """(height, width) of every level of a pyramid: level 0, then each halving of the one before (rounding up:
    an odd last row or column makes a row or column of its own) while the level before has a side above
    ``max_side`` (default ``PYRAMID_MAX_SIDE``), so an image of at most that has level 0 only."""
    max_side = PYRAMID_MAX_SIDE if max_side is None else max_side
    sizes = [(int(height), int(width))]
    while max(sizes[-1]) > max_side:
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


def _pick_top_left(rows: np.ndarray) -> np.ndarray:
    """Labels and instances: the top-left pixel of each 2 x 2 block (ids are never averaged). It exists in the
    blocks of an odd last row or column too, so level k is level 0[::2**k, ::2**k]. A copy: a view would keep the
    finer band whole in memory while the rows wait for the rest of their band (``_Halving``)."""
    return np.ascontiguousarray(rows[..., ::2, ::2])


def _mean_of_blocks(rows: np.ndarray) -> np.ndarray:
    """Probabilities (floats): the mean of each 2 x 2 block, of the pixels it has in an odd last row or column,
    in float32 at least: the means of the pairs of rows, then of their pairs of columns (copies of half and a
    quarter of ``rows``, never a float32 copy of it all)."""
    work = np.result_type(rows.dtype, np.float32)
    return _mean_of_pairs(_mean_of_pairs(rows, -2, work), -1, work).astype(rows.dtype, copy=False)


def _mean_of_pairs(values: np.ndarray, axis: int, work: np.dtype) -> np.ndarray:
    """The mean of each pair of rows (axis -2) or columns (-1) of ``values``, the last alone where they are odd."""
    def every_other(start: int) -> tuple:
        return (Ellipsis, slice(start, None, 2)) + (slice(None),) * (-1 - axis)

    means = values[every_other(0)].astype(work)                  # a copy: summed into in place
    paired = (Ellipsis, slice(0, values.shape[axis] // 2)) + (slice(None),) * (-1 - axis)
    means[paired] += values[every_other(1)]
    means[paired] *= 0.5
    return means


class _Halving:
    """One pyramid level written while the level above it (finer, twice its size) arrives in bands.

    ``add(plane, rows)`` takes the finer level's next rows, planes in order and rows in order within each; each
    pair of them makes one row here (``reduce``), the finer level's odd last row one on its own. These rows are
    gathered into bands of ``band`` rows (this level's chunk rows, so no chunk is written twice), each band
    ``store``d and handed to ``coarser`` (the next level) as soon as it is full or its plane ends.
    Memory: this level's band and one unpaired row of the finer, never the level."""

    def __init__(self, store, finer_height: int, band: int, reduce, coarser: "_Halving | None"):
        self.store, self.finer_height, self.band = store, finer_height, band
        self.reduce, self.coarser = reduce, coarser
        self.unpaired: np.ndarray | None = None       # the finer row waiting for its partner
        self.received = 0                             # finer rows of the current plane
        self.pieces: list[np.ndarray] = []            # this level's rows not yet stored (under a band)
        self.gathered = 0                             # rows in pieces
        self.row0 = 0                                 # where the next band starts in the current plane

    def add(self, plane: int, rows: np.ndarray) -> None:
        self.received += rows.shape[-2]
        end = self.received == self.finer_height
        if self.unpaired is not None:
            rows = np.concatenate([self.unpaired, rows], axis=-2)
            self.unpaired = None
        if rows.shape[-2] % 2 and not end:
            self.unpaired = rows[..., -1:, :].copy()
            rows = rows[..., :-1, :]
        if rows.shape[-2]:
            reduced = self.reduce(rows)
            self.pieces.append(reduced)
            self.gathered += reduced.shape[-2]
        while self.gathered >= self.band or (end and self.gathered):
            gathered = np.concatenate(self.pieces, axis=-2) if len(self.pieces) > 1 else self.pieces[0]
            band, rest = gathered[..., :self.band, :], gathered[..., self.band:, :]
            self.store(plane, self.row0, band)
            if self.coarser is not None:
                self.coarser.add(plane, band)
            self.row0 += band.shape[-2]
            self.pieces, self.gathered = ([rest.copy()] if rest.shape[-2] else []), rest.shape[-2]
        if end:
            self.received, self.row0 = 0, 0


def _halving_chain(stores, finer_heights, bands, dtype) -> _Halving | None:
    """The ``_Halving`` of pyramid level 1, handing on to level 2's and so on (None without reduced levels): level
    k + 1 stores through ``stores[k]`` in bands of ``bands[k]`` rows, made from the ``finer_heights[k]`` rows of
    level k; integer results by their top-left pixels, floats by their means."""
    reduce = _pick_top_left if np.dtype(dtype).kind != "f" else _mean_of_blocks
    head = None
    for store, height, band in reversed(list(zip(stores, finer_heights, bands))):   # coarsest first
        head = _Halving(store, height, band, reduce, head)
    return head


def _level_transformations(level0: list[dict], names: list[str], level: int, centred: bool) -> list[dict]:
    """The NGFF coordinateTransformations of pyramid level ``level``: level 0's scale times 2**level in y and x;
    its translation moved by (2**level - 1) / 2 of level 0's pixel in y and x where a level's pixel is the mean
    of its block (``centred``: NGFF's convention, its centre at the block's centre), unchanged where it is the
    block's top-left pixel (its centre at that pixel's centre)."""
    factor = [2 ** level if name in ("y", "x") else 1 for name in names]
    scale = level0[0]["scale"]
    translation = next((t["translation"] for t in level0 if t["type"] == "translation"), [0.0] * len(names))
    if centred:
        translation = [t + (f - 1) / 2 * s for t, f, s in zip(translation, factor, scale)]
    transformations = [{"type": "scale", "scale": [s * f for s, f in zip(scale, factor)]}]
    if any(translation):
        transformations.append({"type": "translation", "translation": list(translation)})
    return transformations


class StreamingZarrWriter:
    """An OME-Zarr (NGFF 0.4, zarr format 2) image written band by band, committed atomically.

    shape as ``StreamingTiffWriter``'s; a stack with classes (Z, K, H, W) is stored (K, Z, H, W), axes c, z, y, x:
    NGFF orders axes by type, channel before space, and readers (ome-zarr-py, napari) refuse z before c.
    pixel_size: the scale and units of the y, x (and z) axes. provenance: stored as the group's attribute
    "unet_fast" (``read_provenance``; its "output" says which kind of result the file holds).
    An integer result without a class axis (class labels, instances) is a label image in NGFF's sense (integers
    "corresponding to certain labels with custom meanings", a class or an object): the group carries NGFF's
    "image-label" metadata, so ome-zarr-py and napari-ome-zarr open it as labels. It stands alone, not in the
    "labels" group of an image (the image it was computed from may be no OME-Zarr), so it names no "source".
    class_names: the classes' names, 0 the first (background): of class labels, NGFF's "image-label" "properties",
    one {"label-value": value, "class": name} a class (``ome_zarr.class_properties``; unet_fast's napari reader shows
    the class under the cursor); of probabilities, the class axis' channels' labels in the "omero" metadata
    (``ome_zarr.channel_metadata``; the reader names each class's layer by it).
    A multiscale pyramid comes with level 0 (datasets "1", "2", ...; ``pyramid_sizes``): y and x halved a level
    (z and classes never), integer results (labels, instances) by the top-left pixel of each 2 x 2 block, floats
    (probabilities) by its mean; each written from the level above as that one's bands come."""

    def __init__(self, path, shape, dtype, *, channels: bool = False, chunk: int = 512,
                 pixel_size: PixelSize | None = None, provenance: dict | None = None, class_names=None):
        import zarr

        dtype = np.dtype(dtype)
        label_image = dtype.kind in "iu" and not channels   # class labels, instances: NGFF's label image
        if class_names is not None:
            _check_class_names(class_names, label_image, dtype, channels, shape)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = temporary_sibling(self.path)
        self.shape = tuple(int(s) for s in shape)
        plane_dims = len(self.shape) - 2 - int(channels)
        if plane_dims not in (0, 1):
            raise ValueError(f"shape must be (H, W) or (Z, H, W) (plus a class axis), got {self.shape}")
        self.channels_first = channels and plane_dims == 1
        self.plane_dims = plane_dims
        stored = self.shape[1::-1] + self.shape[2:] if self.channels_first else self.shape
        names = ["c"] * int(channels) + ["z"] * plane_dims + ["y", "x"]
        picked = dtype.kind != "f"      # ids and classes are picked, never averaged
        self._store = _stoppable_store(self.temporary)
        try:       # an error (or SIGTERM) before the constructor returns: no caller could abort this writer
            self._group = group = zarr.open_group(self._store, mode="w", zarr_format=2)
            axes, transformations = ngff_axes_and_scale(pixel_size, names)
            self.levels, datasets = [], []
            for level, size in enumerate(pyramid_sizes(*stored[-2:])):
                # NGFF keeps chunks in nested folders ("/" its only separator); zarr's format 2 default is "."
                self.levels.append(group.create_array(
                    str(level), shape=stored[:-2] + size, chunks=_chunks(names, stored[:-2] + size, chunk, dtype),
                    dtype=dtype, chunk_key_encoding={"name": "v2", "separator": "/"}))
                datasets.append({"path": str(level), "coordinateTransformations": transformations if level == 0
                                 else _level_transformations(transformations, names, level, centred=not picked)})
            self.array = self.levels[0]
            multiscale = {"version": "0.4", "axes": axes, "datasets": datasets}
            if len(datasets) > 1:     # NGFF 0.4's "type" and "metadata" of the downscaling
                from . import __version__

                multiscale["type"] = "nearest" if picked else "mean"
                multiscale["metadata"] = {
                    "description": "y and x halved a level, rounding up; " + (
                        "the top-left pixel of each 2x2 block (translation unchanged)" if picked else
                        "the mean of each 2x2 block, of the pixels it has at an odd edge (translation moved by "
                        "half a pixel of the level above)"),
                    "method": f"unet_fast.sinks.{'_pick_top_left' if picked else '_mean_of_blocks'}",
                    "version": __version__}
            attributes = {"multiscales": [multiscale]}
            if label_image:
                attributes["image-label"] = {"version": "0.4"}
                if class_names is not None:
                    attributes["image-label"]["properties"] = class_properties(class_names)
            elif channels and class_names is not None:
                attributes["omero"] = channel_metadata(class_names)
            if provenance is not None:
                attributes[PROVENANCE_ATTRIBUTE] = provenance
            group.attrs.update(attributes)     # one write of the group's attributes
        except BaseException:
            self.abort()
            raise
        self._pyramid = _halving_chain(
            [lambda plane, row0, band, array=array: self._put(array, plane, row0, band) for array in self.levels[1:]],
            [level.shape[-2] for level in self.levels[:-1]], [level.chunks[-2] for level in self.levels[1:]], dtype)
        self._collector = _BandCollector(self.shape, dtype, self.array.chunks[-2], plane_dims, self._emit)

    def set_attributes(self, attributes: dict) -> None:
        """Add to or replace the group's attributes (e.g. a label image's NGFF "image-label", which the writer makes,
        given "colors" or "properties"), through the writer's store (so an abort waits for this write too)."""
        self._group.attrs.update(attributes)

    def write(self, plane: int, y0: int, x0: int, block: np.ndarray) -> None:
        self._collector.write(plane, y0, x0, block)

    def _emit(self, plane, row0, band):
        self._put(self.array, plane, row0, band)
        if self._pyramid is not None:
            self._pyramid.add(plane, band)

    def _put(self, array, plane, row0, band):
        rows = slice(row0, row0 + band.shape[-2])
        planes = (slice(None), plane) if self.channels_first else (plane,) * self.plane_dims
        array[planes + (Ellipsis, rows, slice(None))] = band

    def close(self) -> Path:
        if not self._collector.complete:
            discard(self.temporary)
            raise RuntimeError(f"{self.path}: closed before every pixel was written")
        _sync(self.temporary)
        commit(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        # the writes under way end before the folder is removed, even if a signal (SIGTERM, Ctrl-C) arrives
        # while waiting for them: it is raised once the folder is gone
        interrupted = None
        while True:
            try:
                settled = self._store.stop_writes()
                break
            except (KeyboardInterrupt, SystemExit) as error:
                interrupted = interrupted or error
        if not settled:
            log.warning("%s: zarr writes still under way after %.0f s; its temporary folder %s may remain",
                        self.path, STOP_WRITES_TIMEOUT, self.temporary)
        discard(self.temporary)
        if interrupted is not None:
            raise interrupted


_STOPPABLE_STORE = None
STOP_WRITES_TIMEOUT = 60.0   # seconds an abort waits for the zarr writes under way


def _check_class_names(class_names, label_image: bool, dtype: np.dtype, channels: bool, shape) -> None:
    """A BadArgument naming class_names unless they are strings that name the values of class labels, or one each
    the channels of a class axis (probabilities)."""
    if not isinstance(class_names, (list, tuple)) or not class_names or \
            not all(isinstance(name, str) for name in class_names):
        raise BadArgument("class_names", f"class_names must be a non-empty list of the classes' names (strings), value "
                                         f"0 first; got {class_names!r:.80}")
    if channels:
        if len(class_names) != shape[-3]:
            raise BadArgument("class_names", f"class_names lists {len(class_names)} classes, but the result has "
                                             f"{shape[-3]} along its class axis: name each once")
        return
    if not label_image:
        raise BadArgument("class_names", f"class_names name the values of class labels (integers without a class "
                                         f"axis); this result holds {dtype}{' with a class axis' * channels}: leave "
                                         f"class_names out")
    if len(class_names) - 1 > np.iinfo(dtype).max:
        raise BadArgument("class_names", f"class_names lists {len(class_names)} classes, but {dtype} holds values up "
                                         f"to {np.iinfo(dtype).max}: write the labels as a wider integer type")


def _stoppable_store(root):
    """A zarr LocalStore at ``root`` whose writes ``stop_writes()`` ends: it returns when no write is under
    way, and none starts after it. zarr writes the chunks of one assignment concurrently; when one fails
    (a full disk) the assignment raises while the others are still being written, and they would re-create
    the folder an abort had just removed."""
    global _STOPPABLE_STORE
    if _STOPPABLE_STORE is None:
        from zarr.storage import LocalStore

        class StoppableLocalStore(LocalStore):
            def __init__(self, root, *, read_only: bool = False):   # with_read_only() builds one so
                super().__init__(root, read_only=read_only)
                self._guard = threading.Condition()
                self._writing_now, self._stopped = 0, False

            @contextlib.contextmanager
            def _writing(self):
                with self._guard:
                    if self._stopped:
                        raise RuntimeError(f"{self.root}: the writer was aborted")
                    self._writing_now += 1
                try:
                    yield
                finally:
                    with self._guard:
                        self._writing_now -= 1
                        self._guard.notify_all()

            def stop_writes(self) -> bool:
                """Whether every write had ended within STOP_WRITES_TIMEOUT seconds; none starts after this."""
                with self._guard:
                    self._stopped = True
                    return self._guard.wait_for(lambda: self._writing_now == 0, STOP_WRITES_TIMEOUT)

            async def set(self, key, value):
                with self._writing():
                    return await super().set(key, value)

            async def set_if_not_exists(self, key, value):
                with self._writing():
                    return await super().set_if_not_exists(key, value)

            def set_sync(self, key, value):
                with self._writing():
                    return super().set_sync(key, value)

        _STOPPABLE_STORE = StoppableLocalStore
    return _STOPPABLE_STORE(root)


def _chunks(names: list[str], shape: tuple[int, ...], chunk: int, dtype: np.dtype) -> tuple[int, ...]:
    """The chunks of an OME-Zarr array: no larger than the array (format 2 stores edge chunks whole: a 40 x 30
    image in 512 x 512 chunks is read as 1 MB a plane), one plane of z, and every class in one chunk, up to
    MAX_CHUNK_BYTES (1000 classes' float32 probabilities would be 1 GB chunks)."""
    rows, columns = (max(1, min(chunk, size)) for size in shape[-2:])
    classes = max(1, MAX_CHUNK_BYTES // (rows * columns * np.dtype(dtype).itemsize))
    return tuple(1 if name == "z" else min(size, classes) for name, size in zip(names, shape[:-2])) + (rows, columns)


def open_streaming_writer(path, shape, dtype, *, channels: bool = False, pixel_size: PixelSize | None = None,
                          provenance: dict | None = None, class_names=None):
    """A streaming writer chosen by suffix: .tif/.tiff (tiled BigTIFF) or .zarr (OME-Zarr). A TIFF of float16
    (the probabilities of fp16/bf16 inference) is written as float32: OME-XML, ImageJ and Bio-Formats know no
    16-bit floats (tifffile refused to write the OME metadata of one). class_names: an OME-Zarr's names of the
    classes (``StreamingZarrWriter``); a TIFF has no place for them but its provenance."""
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        dtype = np.dtype(np.float32) if np.dtype(dtype) == np.float16 else dtype
        return StreamingTiffWriter(path, shape, dtype, channels=channels, pixel_size=pixel_size, provenance=provenance)
    if suffix in ZARR_SUFFIXES:
        return StreamingZarrWriter(path, shape, dtype, channels=channels, pixel_size=pixel_size, provenance=provenance,
                                   class_names=class_names)
    raise ValueError(f"out path {str(path)!r} must end in .tif, .tiff or .zarr (got {suffix!r})")
