"""Images in and out: reading (lazily where the format allows), normalising, writing atomically.

Reading: TIFF (multi-page, BigTIFF, OME-TIFF) through tifffile, as a zarr array over the file so
only the parts that are indexed are decoded; PNG/JPEG through Pillow (decoded whole). The declared
size is checked against a pixel limit before any pixel is decoded (decompression-bomb guard).

Normalisation: one documented rule (`Normalization`) that is stored with a model, so training and
inference turn raw uint8/uint16/float pixels into the same network inputs.

Writing: every file appears under its final name only when complete (a temporary name in the same
folder, then os.replace), so an interrupted run never leaves a truncated file that looks finished.
`StreamingTiffWriter` / `StreamingZarrWriter` write huge outputs band by band as they are computed.
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_MAX_PIXELS = 2 ** 30  # about 1.07 gigapixels (32768 x 32768) per file
TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
ZARR_SUFFIXES = (".zarr",)
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES
NORMALIZATION_MODES = ("percentile", "fixed", "dtype", "none")


class ImageTooLargeError(ValueError):
    """The declared size of an image exceeds the pixel limit."""


# ----------------------------------------------------------------------------- normalisation

@dataclass(frozen=True)
class Normalization:
    """How raw pixels become network inputs; stored with a model (``to_dict``/``from_dict``).

    mode:
      - "percentile" (default): ``(x - P_low) / (P_high - P_low)`` where P_low, P_high are the
        ``low``-th and ``high``-th percentiles (0..100) of the whole image (all slices of a stack),
        per channel when ``per_channel``. For images above ``sample_pixels`` the percentiles are
        taken from a regular strided subsample, so huge images need no second full copy in memory.
      - "fixed": ``(x - low) / (high - low)`` with fixed values (e.g. low=0, high=4095 for 12 bit).
      - "dtype": integers divided by their type's maximum (uint8 / 255, uint16 / 65535); floats as is.
      - "none": cast to float32 unchanged.
    ``clip`` clips the result to [0, 1] (not for "none").
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    per_channel: bool = True
    clip: bool = False
    sample_pixels: int = 4_000_000

    def __post_init__(self):
        if self.mode not in NORMALIZATION_MODES:
            raise ValueError(f"Normalization mode must be one of {NORMALIZATION_MODES}, got {self.mode!r}")
        if self.mode in ("percentile", "fixed") and not float(self.high) > float(self.low):
            raise ValueError(f"Normalization needs high > low, got low={self.low!r}, high={self.high!r}")
        if self.mode == "percentile" and not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        if not isinstance(self.sample_pixels, int) or self.sample_pixels < 1:
            raise ValueError(f"sample_pixels must be a positive integer, got {self.sample_pixels!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        if not isinstance(data, dict):
            raise TypeError(f"Normalization.from_dict needs a dict, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Normalization fields {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def statistics(self, image, channel_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) per channel (1-D, length C, or 1 without per-channel statistics).

        ``image`` may be lazy (zarr, memmap): the last two axes are Y, X and are read in bands.
        """
        channels = image.shape[channel_axis] if channel_axis is not None and self.per_channel else 1
        if self.mode == "none":
            return np.zeros(channels), np.ones(channels)
        if self.mode == "fixed":
            return np.full(channels, float(self.low)), np.full(channels, float(self.high) - float(self.low))
        if self.mode == "dtype":
            dtype = np.dtype(image.dtype)
            top = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
            return np.zeros(channels), np.full(channels, top)
        sample = _subsample(image, channel_axis if self.per_channel else None, self.sample_pixels)
        lo = np.percentile(sample, self.low, axis=1)
        hi = np.percentile(sample, self.high, axis=1)
        return lo, np.maximum(hi - lo, 1e-6 * np.maximum(np.abs(hi), 1.0))

    def apply(self, x: np.ndarray, offset: np.ndarray, scale: np.ndarray,
              channel_axis: int | None = None) -> np.ndarray:
        """Normalise an in-memory block with statistics from ``statistics`` (float32 result)."""
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "none":
            return x
        shape = [1] * x.ndim
        if channel_axis is not None and len(offset) > 1:
            shape[channel_axis] = len(offset)
        out = (x - offset.astype(np.float32).reshape(shape)) / scale.astype(np.float32).reshape(shape)
        return np.clip(out, 0.0, 1.0, out=out) if self.clip else out

    def __call__(self, image, channel_axis: int | None = None) -> np.ndarray:
        """Normalise a whole image (in memory) by this rule."""
        offset, scale = self.statistics(image, channel_axis)
        return self.apply(np.asarray(image), offset, scale, channel_axis)


def _subsample(image, channel_axis: int | None, max_pixels: int) -> np.ndarray:
    """(C, M) float64 sample of the image, read in row bands with a regular stride."""
    shape = tuple(image.shape)
    if len(shape) < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., H, W), got shape {shape}")
    channel_axis = None if channel_axis is None else channel_axis % len(shape)
    if channel_axis is not None and channel_axis >= len(shape) - 2:
        raise ValueError(f"channel_axis {channel_axis} must come before the Y, X axes of shape {shape}")
    stride = max(1, math.ceil(math.sqrt(math.prod(shape) / max_pixels)))
    height = shape[-2]
    band = max(stride, (4096 // stride) * stride)
    parts = []
    for y0 in range(0, height, band):
        block = np.asarray(image[..., y0:min(y0 + band, height):stride, ::stride], dtype=np.float64)
        if channel_axis is None:
            parts.append(block.reshape(1, -1))
        else:
            parts.append(np.moveaxis(block, channel_axis, 0).reshape(block.shape[channel_axis], -1))
    return np.concatenate(parts, axis=1)


# ----------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class ImageInfo:
    """What a file declares, read from its header only."""

    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str          # one letter per axis; Y, X last; C for channels/samples
    streamable: bool   # True when pieces can be decoded without decoding the whole image

    @property
    def pixels(self) -> int:
        return math.prod(self.shape)


def _suffix(path) -> str:
    return Path(path).suffix.lower()


def is_zarr_image(path) -> bool:
    """True for a folder named *.zarr (read as an OME-Zarr image)."""
    return _suffix(path) in ZARR_SUFFIXES and Path(path).is_dir()


def _ome_zarr(path):
    """(full-resolution array, ImageInfo) of an OME-Zarr image, axes ordered as unet_fast reads them:
    other axes (Z, T), then C, then Y, X (NGFF stores C before Z)."""
    from .ome_zarr import open_ome_zarr

    image = open_ome_zarr(path)
    array, axes = image.levels[0], "".join(name.upper() for name in image.names)
    if axes[-2:] != "YX":
        raise ValueError(f"{path}: the last two OME-Zarr axes must be y, x, got {image.names}")
    order = ([i for i, a in enumerate(axes[:-2]) if a != "C"] + [i for i, a in enumerate(axes) if a == "C"]
             + [len(axes) - 2, len(axes) - 1])
    info = ImageInfo(tuple(array.shape[i] for i in order), np.dtype(array.dtype), "".join(axes[i] for i in order),
                     streamable=True)
    return (array if order == sorted(order) else _MovedAxes(array, order)), info


def image_info(path) -> ImageInfo:
    """Shape, dtype and axes declared by a TIFF/PNG/JPEG file or an OME-Zarr image, without decoding pixels."""
    path = Path(path)
    suffix = _suffix(path)
    if is_zarr_image(path):
        return _ome_zarr(path)[1]
    if suffix in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError(f"{path}: the TIFF file holds no image series")
            series = tif.series[0]
            page = series.pages[0] if series.pages else tif.pages[0]
            chunk_pixels = _tiff_chunk_pixels(page)
            axes = "".join("C" if a in "CS" else a for a in series.axes)
            return _channels_first_info(tuple(series.shape), np.dtype(series.dtype), axes,
                                        streamable=chunk_pixels <= 64 * 2 ** 20)
    if suffix in PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
            bands = len(img.getbands())
            dtype = np.dtype(np.uint16) if img.mode.startswith("I;16") else (
                np.dtype(np.int32) if img.mode == "I" else np.dtype(np.float32) if img.mode == "F"
                else np.dtype(np.uint8))
        if bands == 1:
            return ImageInfo((height, width), dtype, "YX", streamable=False)
        return ImageInfo((bands, height, width), dtype, "CYX", streamable=False)
    raise ValueError(f"{path}: unsupported image type {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")


def _tiff_chunk_pixels(page) -> int:
    """Pixels in the largest piece (tile or strip) a reader must decode at once."""
    if getattr(page, "is_tiled", False):
        return page.tilewidth * page.tilelength * max(1, page.tiledepth)
    rows = page.rowsperstrip or page.imagelength
    return min(rows, page.imagelength) * page.imagewidth


def _channels_first_info(shape, dtype, axes, streamable) -> ImageInfo:
    if axes.endswith("C") and len(axes) >= 3 and axes[-3:-1] == "YX":
        order = _channels_first_order(axes)
        return ImageInfo(tuple(shape[i] for i in order), dtype, "".join(axes[i] for i in order), streamable)
    return ImageInfo(shape, dtype, axes, streamable)


def _channels_first_order(axes: str) -> list[int]:
    n = len(axes)
    return list(range(n - 3)) + [n - 1, n - 3, n - 2]


class _MovedAxes:
    """A lazy view of an array with its axes permuted; indexing reads only what is asked for."""

    def __init__(self, array, order):
        self._array = array
        self._order = list(order)
        self.shape = tuple(array.shape[i] for i in self._order)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if not all(isinstance(k, (slice, int, np.integer)) for k in key):
            raise TypeError("only integers and slices index a lazy image")
        inverse = [0] * self.ndim
        for new, old in enumerate(self._order):
            inverse[old] = new
        data = np.asarray(self._array[tuple(key[inverse[old]] for old in range(self.ndim))])
        kept = [old for old in range(self.ndim) if not isinstance(key[inverse[old]], (int, np.integer))]
        return np.transpose(data, [kept.index(old) for old in self._order if old in kept])

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)


def check_pixel_limit(info: ImageInfo, path, max_pixels: int | None) -> None:
    """Refuse files whose declared size exceeds max_pixels, unless they can be streamed."""
    if max_pixels is None or info.pixels <= max_pixels or info.streamable:
        return
    raise ImageTooLargeError(
        f"{path}: declares {info.pixels} pixels (shape {info.shape}), above the limit of {max_pixels}, "
        f"and cannot be read piece by piece; raise the limit (--max-pixels) if you trust the file")


def read_image(path, *, lazy: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Open an image; returns (array, ImageInfo) with channels before Y, X ("CYX", "ZCYX", ...).

    OME-Zarr images (folders named *.zarr) open as lazy zarr arrays of their full-resolution level.

    TIFF with ``lazy=True`` gives a zarr array over the file (or a lazy axis-moving view of one):
    indexing decodes only the tiles/strips touched. PNG/JPEG are decoded into numpy.
    The declared size is checked against ``max_pixels`` before decoding (None: no limit).
    """
    path = Path(path)
    if is_zarr_image(path):
        array, info = _ome_zarr(path)
        return (array if lazy else np.asarray(array[...])), info
    info = image_info(path)
    check_pixel_limit(info, path, max_pixels)
    suffix = _suffix(path)
    if suffix in TIFF_SUFFIXES:
        import tifffile

        if lazy:
            import zarr

            store = tifffile.imread(path, aszarr=True, series=0, level=0)
            array = zarr.open(store, mode="r")
        else:
            array = tifffile.imread(path, series=0)
        with tifffile.TiffFile(path) as tif:
            raw_axes = "".join("C" if a in "CS" else a for a in tif.series[0].axes)
        if raw_axes != info.axes:
            order = _channels_first_order(raw_axes)
            array = _MovedAxes(array, order) if lazy else np.transpose(array, order)
        return array, info
    from PIL import Image

    with Image.open(path) as img:
        data = np.asarray(img)
    if data.ndim == 3:
        data = np.moveaxis(data, -1, 0)
    if data.shape != info.shape:
        raise ValueError(f"{path}: decoded shape {data.shape} differs from the declared {info.shape}")
    return data, info


# ----------------------------------------------------------------------------- atomic writing

def temporary_sibling(path) -> Path:
    """A hidden, unique name next to ``path`` that keeps its suffix (so writers pick the format)."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".ome.zarr") else path.suffix
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def commit(temporary, path) -> None:
    """Move a finished temporary file or folder onto ``path`` (os.replace; folders swapped)."""
    temporary, path = Path(temporary), Path(path)
    if temporary.is_dir() and path.exists():
        old = temporary_sibling(path)
        os.replace(path, old)
        os.replace(temporary, path)
        _remove(old)
    else:
        os.replace(temporary, path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it becomes ``path`` on success and is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        commit(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_image(path, array, *, compression: str | None = "zlib") -> Path:
    """Write an in-memory image atomically: .tif/.tiff (tifffile, BigTIFF when large), .png/.jpg, .npy."""
    path = Path(path)
    array = np.asarray(array)
    suffix = _suffix(path)
    with atomic_path(path) as temporary:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(temporary, array, bigtiff=array.nbytes > 2 ** 31 - 2 ** 25,
                             compression=compression, photometric="minisblack")
        elif suffix in PIL_SUFFIXES:
            from PIL import Image

            Image.fromarray(array).save(temporary)
        elif suffix == ".npy":
            np.save(temporary, array)
        else:
            raise ValueError(f"{path}: cannot write {suffix!r}; use .tif, .tiff, .png, .jpg or .npy")
    return path


# ----------------------------------------------------------------------------- streaming writers

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


class StreamingTiffWriter:
    """A tiled BigTIFF written while blocks arrive (``write``), committed atomically by ``close``.

    shape: (H, W), (Z, H, W), or with classes (K, H, W) / (Z, K, H, W) when ``channels=True``;
    class values are stored as samples per pixel (tifffile reads them back channels-last).
    pixel_size (a unet_fast.pixel_size.PixelSize): written as OME-XML and TIFF resolution.
    """

    def __init__(self, path, shape, dtype, *, channels: bool = False, tile: int = 256,
                 compression: str | None = "zlib", pixel_size=None):
        import tifffile

        from .pixel_size import tiff_options

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = temporary_sibling(self.path)
        self.shape = tuple(int(s) for s in shape)
        self.tile = tile
        plane_dims = len(self.shape) - 2 - int(channels)
        if plane_dims not in (0, 1):
            raise ValueError(f"shape must be (H, W) or (Z, H, W) (plus a class axis), got {self.shape}")
        self.channels = channels
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._collector = _BandCollector(self.shape, dtype, tile, plane_dims, self._emit)
        stored = self.shape[:plane_dims] + self.shape[-2:] + (self.shape[-3:-2] if channels else ())
        physical = tiff_options(pixel_size, "Z" * plane_dims + "YX" + "S" * int(channels))
        self._error: BaseException | None = None
        self._ended = False

        def tiles():
            while (item := self._queue.get()) is not None:
                yield item
            self._ended = True

        def run():
            try:
                tifffile.imwrite(self.temporary, tiles(), shape=stored, dtype=np.dtype(dtype),
                                 tile=(tile, tile), bigtiff=True, compression=compression,
                                 photometric="minisblack", planarconfig="contig" if channels else None,
                                 **physical)
            except BaseException as error:  # handed to the caller in close()
                self._error = error
                while not self._ended and self._queue.get() is not None:  # never block the producer
                    pass

        self._thread = threading.Thread(target=run, name="unet_fast-tiff-writer", daemon=True)
        self._thread.start()

    def write(self, plane: int, y0: int, x0: int, block: np.ndarray) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self.path} failed: {self._error}") from self._error
        self._collector.write(plane, y0, x0, block)

    def _emit(self, plane, row0, band):
        if self.channels:
            band = np.moveaxis(band, 0, -1)
        rows = band.shape[0]
        for x0 in range(0, band.shape[1], self.tile):
            piece = band[:, x0:x0 + self.tile]
            if piece.shape[0] < self.tile or piece.shape[1] < self.tile:
                padded = np.zeros((self.tile, self.tile) + piece.shape[2:], piece.dtype)
                padded[:rows, :piece.shape[1]] = piece
                piece = padded
            self._queue.put(np.ascontiguousarray(piece))

    def close(self) -> Path:
        complete = self._collector.complete
        self._queue.put(None)
        self._thread.join()
        if not complete:
            _remove(self.temporary)
            raise RuntimeError(f"{self.path}: closed before every pixel was written")
        if self._error is not None:
            _remove(self.temporary)
            raise RuntimeError(f"writing {self.path} failed: {self._error!r}") from self._error
        commit(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join()
        _remove(self.temporary)


class StreamingZarrWriter:
    """An OME-Zarr (NGFF 0.4, zarr format 2) image written band by band, committed atomically.

    pixel_size (a unet_fast.pixel_size.PixelSize): the scale and units of the y, x (and z) axes."""

    def __init__(self, path, shape, dtype, *, channels: bool = False, chunk: int = 512, pixel_size=None):
        import zarr

        from .pixel_size import ngff_axes_and_scale

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = temporary_sibling(self.path)
        self.shape = tuple(int(s) for s in shape)
        plane_dims = len(self.shape) - 2 - int(channels)
        if plane_dims not in (0, 1):
            raise ValueError(f"shape must be (H, W) or (Z, H, W) (plus a class axis), got {self.shape}")
        names = ["z"] * plane_dims + ["c"] * int(channels) + ["y", "x"]
        group = zarr.open_group(str(self.temporary), mode="w", zarr_format=2)
        chunks = (1,) * plane_dims + self.shape[plane_dims:-2] + (chunk, chunk)
        self.array = group.create_array("0", shape=self.shape, chunks=chunks, dtype=np.dtype(dtype))
        axes, scale = ngff_axes_and_scale(pixel_size, names)
        group.attrs["multiscales"] = [{
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }]
        self.plane_dims = plane_dims
        self._collector = _BandCollector(self.shape, dtype, chunk, plane_dims, self._emit)

    def write(self, plane: int, y0: int, x0: int, block: np.ndarray) -> None:
        self._collector.write(plane, y0, x0, block)

    def _emit(self, plane, row0, band):
        index = (plane,) * self.plane_dims + (Ellipsis, slice(row0, row0 + band.shape[-2]), slice(None))
        self.array[index] = band

    def close(self) -> Path:
        if not self._collector.complete:
            _remove(self.temporary)
            raise RuntimeError(f"{self.path}: closed before every pixel was written")
        commit(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        _remove(self.temporary)


def open_streaming_writer(path, shape, dtype, *, channels: bool = False, pixel_size=None):
    """A streaming writer chosen by suffix: .tif/.tiff (tiled BigTIFF) or .zarr (OME-Zarr)."""
    suffix = _suffix(path)
    if suffix in TIFF_SUFFIXES:
        return StreamingTiffWriter(path, shape, dtype, channels=channels, pixel_size=pixel_size)
    if suffix in ZARR_SUFFIXES:
        return StreamingZarrWriter(path, shape, dtype, channels=channels, pixel_size=pixel_size)
    raise ValueError(f"out path {str(path)!r} must end in .tif, .tiff or .zarr (got {suffix!r})")
