"""Images in and out: reading (lazily where the format allows) and writing atomically.

Reading: TIFF (multi-page, BigTIFF, OME-TIFF) through tifffile, as a zarr array over the file so
only the parts that are indexed are decoded; OME-Zarr images (folders named *.zarr) as zarr arrays
of their full-resolution level (``unet_fast.ome_zarr``); PNG/JPEG through Pillow (decoded whole).
The declared size is checked against a pixel limit before any pixel is decoded (decompression-bomb
guard). Pixel sizes are read by ``unet_fast.pixel_size``.

Writing: every file appears under its final name only when complete (a temporary name in the same
folder, then os.replace), so an interrupted run never leaves a truncated file that looks finished.
Images written as they are computed, tile by tile, go through ``unet_fast.sinks``.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import shutil
import threading
import uuid
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import termination

DEFAULT_MAX_PIXELS = 2 ** 30  # about 1.07 gigapixels (32768 x 32768) per file
TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES
ZARR_SUFFIXES = (".zarr",)                   # folders: OME-Zarr images


class ImageTooLargeError(ValueError):
    """The declared size of an image exceeds the pixel limit."""


# ---- reading

@dataclass(frozen=True)
class ImageInfo:
    """What a file declares, read from its header only."""

    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str          # one letter per axis; Y, X last; C for channels/samples
    streamable: bool   # True when pieces can be decoded without decoding the whole image
    other_series: tuple = ()   # a TIFF's image series after the first (which is the image): their shapes

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
    from .ome_zarr import bioformats2raw_series, open_ome_zarr

    image = open_ome_zarr(path)
    other_series = []
    for name in (bioformats2raw_series(path) or [])[1:]:   # bioformats2raw's other images (series_warning)
        try:
            other_series.append(tuple(open_ome_zarr(Path(path) / name).levels[0].shape))
        except ValueError:
            other_series.append("unreadable")
    if not all(isinstance(name, str) and len(name) == 1 for name in image.names):   # NGFF allows any names
        raise ValueError(f"{path}: unet_fast reads OME-Zarr axes named by one letter (t, c, z, y, x), "
                         f"got {image.names}")
    array, axes = image.levels[0], "".join(name.upper() for name in image.names)
    if axes[-2:] != "YX":
        raise ValueError(f"{path}: the last two OME-Zarr axes must be y, x, got {image.names}")
    others = [i for i, a in enumerate(axes[:-2]) if a != "C"]
    # bioformats2raw and most writers store every image as t, c, z, y, x: one time point of one plane is a 2-D
    # image, not two extra axes unet_fast cannot process; so with more than one other axis, those of length
    # 1 go (as tifffile drops them from a TIFF's series)
    dropped = [i for i in others if array.shape[i] == 1] if len(others) > 1 else []
    order = ([i for i in others if i not in dropped] + [i for i, a in enumerate(axes) if a == "C"]
             + [len(axes) - 2, len(axes) - 1])
    info = ImageInfo(tuple(array.shape[i] for i in order), np.dtype(array.dtype), "".join(axes[i] for i in order),
                     streamable=True, other_series=tuple(other_series))
    return (array if order == list(range(array.ndim)) else _MovedAxes(array, order, dropped)), info


def image_info(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Shape, dtype and axes declared by a TIFF/PNG/JPEG file or an OME-Zarr image, without decoding pixels;
    except a PNG/JPEG in colour within ``max_pixels`` (None: any; 0: none, the header alone), decoded to see
    whether it is grey saved in colour (``grey_saved_in_colour``)."""
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
            axes = tiff_axes(series)
            info = _channels_first_info(tuple(series.shape), np.dtype(series.dtype), axes,
                                        streamable=chunk_pixels <= 64 * 2 ** 20)
            return replace(info, other_series=tuple(tuple(s.shape) for s in tif.series[1:]))
    if suffix in PIL_SUFFIXES:
        return _pil_image(path, max_pixels)[1]
    raise ValueError(f"{path}: unsupported image type {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")


def _tiff_chunk_pixels(page) -> int:
    """Pixels in the largest piece (tile or strip) a reader must decode at once."""
    if getattr(page, "is_tiled", False):
        return page.tilewidth * page.tilelength * max(1, page.tiledepth)
    rows = page.rowsperstrip or page.imagelength
    return min(rows, page.imagelength) * page.imagewidth


def tiff_axes(series) -> str:
    """A tifffile series' axes as unet_fast names them: its samples (S, an RGB image's) and channels (C) both C."""
    return "".join("C" if a in "CS" else a for a in series.axes)


def _channels_first_info(shape, dtype, axes, streamable) -> ImageInfo:
    order = _channels_first_order(axes)
    return ImageInfo(tuple(shape[i] for i in order), dtype, "".join(axes[i] for i in order), streamable)


def _channels_first_order(axes: str) -> list[int]:
    """The axes as unet_fast reads them: the others (Z, T, ...), then C, then Y, X. Samples (YXC) and
    OME-TIFFs stored channel-major (CZYX: Bio-Formats' XYZCT) both need it, or planes pass as channels."""
    if axes.count("C") != 1 or not axes.replace("C", "").endswith("YX"):
        return list(range(len(axes)))
    channel, y, x = axes.index("C"), axes.index("Y"), axes.index("X")
    return [i for i in range(len(axes)) if i not in (channel, y, x)] + [channel, y, x]


class _MovedAxes:
    """A lazy view of an array with its axes permuted; indexing reads only what is asked for."""

    def __init__(self, array, order, dropped=()):
        self._array = array
        self._order = list(order)
        self._dropped = set(dropped)     # axes of length 1 left out (indexed at 0); the others are in order
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
        position = {old: new for new, old in enumerate(self._order)}
        stored = tuple(0 if old in self._dropped else key[position[old]] for old in range(self._array.ndim))
        data = np.asarray(self._array[stored])
        kept = [old for old in range(self._array.ndim) if not isinstance(stored[old], (int, np.integer))]
        return np.transpose(data, [kept.index(old) for old in self._order if old in kept])

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)


def check_stack_size(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse a TIFF stack (of labelled images, read whole into memory) whose header declares more than
    ``max_pixels``: a small file can declare enough to exhaust memory. Unreadable files are left to the reader."""
    try:
        info = image_info(path)
    except Exception:
        return
    if info.pixels > max_pixels:
        raise ImageTooLargeError(f"{path}: declares {info.pixels:,} pixels (shape {info.shape}), above the "
                                 f"{max_pixels:,} a stack read whole may hold; split it into smaller stacks or files")


def read_tiff_stack(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A multi-page TIFF stack read whole (``check_stack_size`` first): its first series as (Z, H, W), or
    (Z, C, H, W) where its pages have channels (an RGB image's samples, stored last, come before Y, X); one image
    is a stack of one page. Read by its axes, not its shape: an RGB image's (H, W, 3) was H pages of (W, 3)."""
    import tifffile

    check_stack_size(path, max_pixels)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = tiff_axes(series)
        stack = series.asarray()
    order = _channels_first_order(axes)
    stack = stack.transpose(order)
    return stack[None] if stack.ndim == 2 or "".join(axes[i] for i in order) == "CYX" else stack


def check_pixel_limit(info: ImageInfo, path, max_pixels: int | None) -> None:
    """Refuse files whose declared size exceeds max_pixels (None: no limit). Files that can be read
    piece by piece too: memory stays bounded for them, but the time does not (a 1 MB file can declare
    10^10 pixels), so a file that large must be asked for by raising the limit."""
    if max_pixels is None or info.pixels <= max_pixels:
        return
    how = ("it can be read piece by piece, so if you mean to process it, raise the limit to at least "
           f"{info.pixels} (--max-pixels, or max_pixels=)" if info.streamable else
           "and cannot be read piece by piece; raise the limit (--max-pixels, or max_pixels=) if you trust the file")
    raise ImageTooLargeError(f"{path}: declares {info.pixels:,} pixels (shape {info.shape}), above the limit of "
                             f"{max_pixels:,}; {how}")


def series_warning(path, info: ImageInfo | None = None) -> str | None:
    """What a TIFF of several image series (positions, an OME-TIFF of many images), or bioformats2raw's OME-Zarr
    of several images, loses, read as its first series as ``read_image`` reads it; None for one series, other
    files, or a file that cannot be read.
    ``info``: the file's ``image_info``, when the caller has it (else it is read)."""
    if info is None:
        try:
            info = image_info(path)
        except Exception:       # read_image reports an unreadable file
            return None
    if not info.other_series:
        return None
    others = ", ".join(str(shape) for shape in info.other_series[:3]) + (" ..." if len(info.other_series) > 3 else "")
    fix = ("convert each series on its own (bioformats2raw --series N) to segment it" if is_zarr_image(path) else
           "save each series as a file of its own to segment it")
    return (f"{path} holds {len(info.other_series) + 1} image series; only the first, {info.shape}, is read; the "
            f"others ({others}) are left out: {fix}")


def read_image(path, *, lazy: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS, labels: bool = False):
    """Open an image; returns (array, ImageInfo) with channels before Y, X ("CYX", "ZCYX", ...).

    OME-Zarr images (folders named *.zarr) open as lazy zarr arrays of their full-resolution level.

    TIFF with ``lazy=True`` gives a zarr array over the file (or a lazy axis-moving view of one):
    indexing decodes only the tiles/strips touched (the file, opened at the first read, closes when the array
    is dropped; at once with ``close_image``, or read it in ``with opened_image(path) as (array, info)``);
    without zarr installed, a memory map where the file allows one, else the whole image decoded.
    PNG/JPEG are decoded into numpy; one that is grey saved in colour (``grey_saved_in_colour``) comes as YX, a
    palette PNG as its colours (its indices with ``labels``: label images are saved with palettes). A TIFF of
    several series is read as its first: a note says so (``series_warning``).
    The declared size is checked against ``max_pixels`` before decoding (None: no limit).
    """
    path = Path(path)
    if is_zarr_image(path):
        array, info = _ome_zarr(path)
        return (array if lazy else np.asarray(array[...])), info
    suffix = _suffix(path)
    if suffix in PIL_SUFFIXES:
        data, info = _pil_image(path, max_pixels, decode=True, labels=labels)
        if data.shape != info.shape:
            raise ValueError(f"{path}: decoded shape {data.shape} differs from the declared {info.shape}")
        return data, info
    info = image_info(path)
    check_pixel_limit(info, path, max_pixels)
    if suffix in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            raw_axes = tiff_axes(tif.series[0])
        if lazy and _zarr() is not None:
            array = open_tiff_level(path)
        elif lazy:
            array = _tiff_without_zarr(path)
        else:
            array = tifffile.imread(path, series=0)
        if raw_axes != info.axes:
            order = _channels_first_order(raw_axes)
            array = _MovedAxes(array, order) if lazy else np.transpose(array, order)
        return array, info
    raise AssertionError(f"image_info accepted {suffix!r}")  # it raises for every other type


def open_tiff_level(path, level: int = 0):
    """A lazy zarr array over pyramid level ``level`` of a TIFF's first series (0: full resolution; 1, 2, ...: its
    SubIFD levels), its axes as stored: indexing decodes only the tiles touched; the file closes when the array
    is dropped (or ``close_image``). Needs zarr."""
    import tifffile
    import zarr

    return _closing_when_dropped(zarr, tifffile.imread(path, aszarr=True, series=0, level=level))


#: {id of a zarr array over a TIFF that read_image returned, while it lives: tifffile's store of it}
_OPEN_TIFFS: dict = {}


def _closing_when_dropped(zarr, store):
    """A zarr array over tifffile's ``store``, whose file closes when the array is dropped (or ``close_image``).
    The store reopens the file at its first read and keeps it open; the TiffFile it hangs from is in reference
    cycles, so the file stayed open until the garbage collector ran, then closed with a ResourceWarning (a run
    over thousands of files held as many handles). A zarr array is in none: dropping it closes the file at once."""
    try:
        array = zarr.open(store, mode="r")
    except BaseException:
        store.close()
        raise
    _OPEN_TIFFS[id(array)] = store
    weakref.finalize(array, _close_store, id(array), store)
    return array


def _close_store(key: int, store) -> None:
    _OPEN_TIFFS.pop(key, None)
    store.close()


def close_image(array) -> None:
    """Close the file a lazy image of ``read_image`` holds open (a TIFF read through zarr, or a lazy view of one)
    now, not when the array is dropped; nothing for other arrays (numpy, OME-Zarr folders, which hold no file
    open; memory maps, which hold theirs until dropped). An array read again after it opens its file again, which
    closes when it is dropped."""
    store = _OPEN_TIFFS.get(id(array._array if isinstance(array, _MovedAxes) else array))
    if store is not None:
        store.close()


@contextlib.contextmanager
def opened_image(path, **options):
    """``read_image(path, **options)`` as a context: yields (array, ImageInfo) and closes the file (``close_image``)
    at its end, however it ends."""
    array, info = read_image(path, **options)
    try:
        yield array, info
    finally:
        close_image(array)


def _zarr():
    """The zarr module, or None where it is missing (a declared dependency, but the GPU machines of
    benchmarks/README.md run without it)."""
    try:
        import zarr
    except ImportError:
        return None
    return zarr


def _tiff_without_zarr(path):
    """A TIFF's first series without zarr: memory-mapped where its pixels are stored uncompressed in one
    piece (still read piece by piece), else decoded whole."""
    import tifffile

    try:
        return tifffile.memmap(path, series=0, mode="r")
    except ValueError:     # compressed, tiled or scattered: tifffile cannot map it
        decoded = tifffile.imread(path, series=0).view(_DecodedFile)
        decoded.filename = str(path)
        return decoded


class _DecodedFile(np.ndarray):
    """A file decoded whole that says which file it is (``filename``, as a numpy.memmap does), so that
    ``predict_tiled`` still refuses an ``out`` that would replace it."""

    filename: str | None = None


#: Pillow modes of colour images that may hold a grey image: grey + alpha, RGB, RGB + alpha
_COLOUR_MODES = {"LA": 1, "RGB": 3, "RGBA": 3}


def grey_saved_in_colour(pixels: np.ndarray, mode: str) -> bool:
    """Whether decoded (H, W, bands) pixels of Pillow ``mode`` are a grey image saved in colour: every
    colour band equal to the first and the alpha band, if any, fully opaque. Such files are common (the
    2018 Data Science Bowl ships its fluorescence nuclei as RGBA PNGs) and are read as one grey channel,
    which they are, so that they fit a model of one input channel and a model trained on them fits grey
    TIFFs. Exact equality only: a colour image is never made grey."""
    colours = _COLOUR_MODES.get(mode)
    if colours is None or pixels.ndim != 3:
        return False
    grey = pixels[..., 0]
    if any(not np.array_equal(pixels[..., band], grey) for band in range(1, colours)):
        return False
    return pixels.shape[-1] == colours or bool((pixels[..., colours] == np.iinfo(pixels.dtype).max).all())


def opaque_alpha(pixels: np.ndarray, mode: str) -> bool:
    """Whether decoded (H, W, bands) pixels of Pillow ``mode`` end in an alpha band that is fully opaque
    everywhere. Such a band holds no information (the 2018 Data Science Bowl ships its colour histology as
    RGBA PNGs so), and is dropped: an RGBA photograph is read as the 3 channels of its RGB image, so that it
    fits a model of 3 input channels, as its RGB or JPEG copy does."""
    return (mode in ("LA", "RGBA") and pixels.ndim == 3 and pixels.shape[-1] in (2, 4)
            and bool((pixels[..., -1] == np.iinfo(pixels.dtype).max).all()))


_PIL_OPEN = threading.Lock()


def _open_pil(path):
    """PIL.Image.open without Pillow's own pixel limit (a warning over 89 Mpx, an error over 179 Mpx, naming no
    flag): the caller checks ``max_pixels`` (--max-pixels) on the size the header declares."""
    from PIL import Image

    with _PIL_OPEN:                         # the limit is Pillow's global: lifted only while this thread opens
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pil_image(path, max_pixels: int | None, decode: bool = False, labels: bool = False):
    """(pixels or None, ImageInfo) of a PNG/JPEG. The pixels are decoded when ``decode``, or when the file
    is in colour and within ``max_pixels``, to tell grey saved in colour (read as YX) from colour (CYX).
    A palette image is its colours, unless it holds ``labels``: then its indices are the labels."""
    with _open_pil(path) as img:
        rawmode = img.tile[0][3] if img.tile else ""        # PNG: a string; JPEG: (rawmode, ...)
        rawmode = rawmode if isinstance(rawmode, str) else str(rawmode[0]) if rawmode else ""
        palette = img.mode in ("P", "PA") and not labels
        width, height = img.size
        bands, mode = len(img.getbands()), img.mode
        if bands > 1 and ";16" in rawmode:     # Pillow has no 16-bit colour modes: it keeps each band's high byte
            raise ValueError(f"{path}: a 16-bit colour PNG ({rawmode}), whose values Pillow would cut to their "
                             f"high 8 bits; save it as a TIFF (a grey one as a 16-bit grey PNG or a TIFF)")
        dtype = np.dtype(np.uint16) if mode.startswith("I;16") else (
            np.dtype(np.int32) if mode == "I" else np.dtype(np.float32) if mode == "F" else np.dtype(np.uint8))
        declared = ImageInfo((height, width) if bands == 1 else (bands, height, width), dtype,
                             "YX" if bands == 1 else "CYX", streamable=False)
        within = max_pixels is None or declared.pixels <= max_pixels
        if not (decode or ((mode in _COLOUR_MODES or palette) and within)):
            return None, declared
        check_pixel_limit(declared, path, max_pixels)
        if palette:       # the colours the indices stand for
            img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
            mode = img.mode
            declared = ImageInfo((len(img.getbands()), height, width), np.dtype(np.uint8), "CYX", streamable=False)
        pixels = np.asarray(img)
    if grey_saved_in_colour(pixels, mode):
        return np.ascontiguousarray(pixels[..., 0]), ImageInfo((height, width), pixels.dtype, "YX", streamable=False)
    if opaque_alpha(pixels, mode):      # an alpha band that hides nothing is no channel of the image
        pixels = pixels[..., :-1]
        declared = ImageInfo((pixels.shape[-1], height, width), pixels.dtype, "CYX", streamable=False)
    return (np.moveaxis(pixels, -1, 0) if pixels.ndim == 3 else pixels), declared


# ---- atomic writing

def temporary_sibling(path, suffix: str | None = None) -> Path:
    """A hidden, unique name next to ``path`` that keeps its suffix (so writers pick the format), or ends in
    ``suffix`` (a scratch folder of its writing: ".scratch"), as ``remove_leftovers`` finds them."""
    path = Path(path)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".ome.zarr") else path.suffix
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{suffix}")


_PARTIAL = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.partial(\..*)?")


def remove_leftovers(path) -> list[Path]:
    """Remove what killed runs (SIGKILL, a power cut) left of ``path``: the hidden
    ``.NAME.<hex>.partial.*`` files or folders ``temporary_sibling`` names beside it. Returns them."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.partial*"):
            match = _PARTIAL.fullmatch(candidate.name)
            if match and match["name"] == path.name:
                discard(candidate)
                removed.append(candidate)
    return removed


def discard(path) -> None:
    """Remove a file or a folder, if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def commit(temporary, path) -> None:
    """Move a finished temporary file or folder onto ``path`` (os.replace; folders swapped). After a
    SIGTERM or the command line's Ctrl-C (``termination``) the temporary is removed instead and SystemExit or
    KeyboardInterrupt raised: a stopped run commits nothing, even where the signal's first exception was
    swallowed."""
    temporary, path = Path(temporary), Path(path)
    if termination.stopping():
        discard(temporary)
        termination.check()
    if temporary.is_dir() and path.exists():
        old = temporary_sibling(path)
        os.replace(path, old)
        os.replace(temporary, path)
        discard(old)
    else:
        os.replace(temporary, path)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode(temporary) -> None:
    """Give a finished temporary file the mode a plain open() would have (0666 less the umask): some
    writers (safetensors) create files 0600, and the outputs of one run should not differ in that."""
    temporary = Path(temporary)
    if temporary.is_file() and not temporary.is_symlink():
        os.chmod(temporary, 0o666 & ~_umask())


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it becomes ``path`` on success and is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        default_file_mode(temporary)
        commit(temporary, path)
    except BaseException:
        discard(temporary)
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


def write_bytes_atomically(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path
