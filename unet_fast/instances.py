"""Instance labels from a foreground mask, block by block, with the same result for any block size.

The rules (``InstanceOptions``), applied to one 2-D plane:

1. objects are the 4-connected components of the foreground (for a network's output: the pixels whose
   foreground probability, smoothed by a Gaussian of ``smoothing`` px, is above ``threshold``);
   With ``split``, an object holding two or more cores -- 4-connected regions of at least
   ``core_size`` pixels where the foreground probability is above ``split`` -- is divided among its
   cores along the valleys of the probability -- a watershed of 1 - P (in 255 levels) from the cores,
   inside the object (Meyer's flooding, ``_flood``: each pixel joins the core it reaches by the path whose
   highest level is lowest; at equal costs, the core whose flood came first) -- each piece then an object;
2. objects of fewer than ``min_size`` pixels are removed (they become background);
3. with ``fill_holes``, a hole -- a 4-connected region of background (removed objects included)
   that does not touch the image border and whose 4-neighbours all belong to one object -- joins
   that object; a pocket enclosed by several objects stays background;
4. a background pixel within ``border`` px (Euclidean) of two or more objects -- the thin borders a
   U-Net draws between touching cells, 1 px per side when trained on the paper's separated labels --
   joins the nearest of them (at equal distances, the one with the smallest label);
5. objects are numbered 1..K in raster order of their first pixel (as ``scipy.ndimage.label`` does).

Every rule is defined on the whole plane, and the streamed computation gives exactly the whole-plane
labels (not only up to renumbering), for any block size: a first pass labels each block, merges
components across block seams (equivalences solved as a graph) and counts each component's area,
first pixel, contact with the image border and the background regions it touches (rules 1-3 need
nothing else; splitting reads each object with a core in its bounding box); a second pass maps each block's provisional labels to final ones and applies rule 4,
which looks ``border`` px around a pixel, with a halo of ``border`` px. Memory holds one block and
its halo, per-component tables and the seam rows; the mask and the provisional labels live in
``scratch`` arrays, in memory or memory-mapped files, so images larger than memory stream.
"""
from __future__ import annotations

import dataclasses
import errno
import heapq
import math
import operator
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import _extension, termination
from .instance_options import DEFAULT_SMOOTHING, MAX_BORDER, MAX_SMOOTHING, MIN_SMOOTHING, InstanceOptions  # noqa: F401 (re-exported)

__all__ = ["InstanceOptions", "label_instances", "instance_dtype", "Scratch", "ClassView", "foreground_mask",
           "smoothed"]

FOUR = ndimage.generate_binary_structure(2, 1)
#: pixels (all planes) above which the scratch arrays of a result not kept in memory go to disk
IN_MEMORY_PIXELS = 2 ** 24
DEFAULT_BLOCK = 1024
#: the Gaussian of ``InstanceOptions.smoothing``: taps out to this many sigmas (scipy's default); at most this sigma
TRUNCATE = 4.0


def smoothed(plane, sigma: float) -> np.ndarray:
    """A (H, W) plane of probabilities smoothed as ``InstanceOptions.smoothing`` says (float32; 0: as it is)."""
    plane = np.asarray(plane, dtype=np.float32)
    return ndimage.gaussian_filter(plane, sigma, mode="reflect", truncate=TRUNCATE) if sigma else plane


def foreground_mask(probability, options: InstanceOptions) -> np.ndarray:
    """The foreground of a (H, W) or (Z, H, W) foreground probability by ``options`` (smoothing, threshold)."""
    probability = np.asarray(probability)
    if probability.ndim == 3:
        return np.stack([foreground_mask(plane, options) for plane in probability])
    return smoothed(probability, options.smoothing) > options.threshold


class ClassView:
    """One class of a (K, H, W) or (Z, K, H, W) array of probabilities, lazily, as ``label_instances``
    reads it block by block: the values, or with ``threshold`` whether they are above it (a mask), after
    ``smoothed`` by ``smoothing`` px. A smoothed block is read with a halo of the Gaussian's radius (or up to
    the image's edge, where the mirror is the whole plane's), so it equals that block of the whole smoothed
    plane exactly."""

    def __init__(self, probabilities, channel: int = 1, stacked: bool = False, threshold: float | None = None,
                 smoothing: float = 0.0):
        self.probabilities, self.channel, self.stacked = probabilities, channel, stacked
        self.threshold, self.smoothing = threshold, smoothing
        shape = tuple(probabilities.shape)
        self.shape = shape[:1] + shape[2:] if stacked else shape[1:]

    def __getitem__(self, key):
        if self.stacked and isinstance(key, (int, np.integer)):
            return ClassView(self.probabilities[key], self.channel, threshold=self.threshold,
                             smoothing=self.smoothing)
        key = key if isinstance(key, tuple) else (key,)
        values = self._smoothed(key) if self.smoothing else np.asarray(self.probabilities[(self.channel,) + key])
        return values if self.threshold is None else values > self.threshold

    def _smoothed(self, key) -> np.ndarray:
        """The smoothed values at ``key``: up to two integers or step-1 slices (rows, then columns)."""
        radius = int(TRUNCATE * self.smoothing + 0.5)          # scipy's: the Gaussian's last tap
        if len(key) > 2:
            raise IndexError(f"a smoothed ClassView takes at most 2 indices (rows, columns), got {len(key)}")
        read, keep = [], []
        for index, size in zip(key + (slice(None),) * (2 - len(key)), self.shape[-2:]):
            if isinstance(index, slice):
                start, stop, step = index.indices(size)
                if step != 1:
                    raise IndexError(f"a smoothed ClassView reads step-1 slices only, got step {step}")
                stop = max(stop, start)
            else:
                start = operator.index(index)         # an integer (not Ellipsis, None or an array)
                if not -size <= start < size:
                    raise IndexError(f"index {start} is out of range for {size} pixels")
                start %= size
                stop = start + 1
            low, high = max(start - radius, 0), min(stop + radius, size)
            read.append(slice(low, high))
            keep.append(slice(start - low, stop - low) if isinstance(index, slice) else start - low)
        return smoothed(self.probabilities[(self.channel, *read)], self.smoothing)[tuple(keep)]


def instance_dtype(count: int) -> np.dtype:
    """The smallest unsigned type of a label image with ``count`` objects: uint16 or uint32 (uint64 beyond)."""
    for dtype in (np.uint16, np.uint32):
        if count < np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class Scratch:
    """Temporary arrays: numpy in memory, or memory-mapped files in a temporary folder (removed by
    ``close``) when ``directory`` or ``beside`` is given. ``beside``: a result file the folder is made beside,
    named as its temporary siblings are (``.NAME.<hex>.partial.scratch``), so that what a killed run
    (SIGKILL, a power cut) left there is removed with them (``image_io.remove_leftovers``, as ``segment`` does
    before each file): 8 bytes a pixel of a huge image stayed in the output folder for good."""

    def __init__(self, directory=None, beside=None):
        if beside is not None:
            from .image_io import temporary_sibling

            self._folder = _NamedFolder(temporary_sibling(beside, ".scratch"))
        elif directory is not None:
            self._folder = tempfile.TemporaryDirectory(prefix=".unet_fast-scratch-", dir=directory)
        else:
            self._folder = None
        self._count = 0

    def array(self, shape, dtype) -> np.ndarray:
        if self._folder is None:
            return np.zeros(shape, dtype)
        self._count += 1
        path = Path(self._folder.name) / f"{self._count}.dat"
        size = math.prod(shape) * np.dtype(dtype).itemsize
        free = shutil.disk_usage(self._folder.name).free
        if size > free:
            # the file is sparse: a full disk would surface as a SIGBUS killing the process mid-write, not an error
            raise OSError(errno.ENOSPC, f"not enough free disk space for a scratch array of {size / 2**30:.1f} GiB "
                                        f"in {Path(self._folder.name).parent} ({free / 2**30:.1f} GiB free): free "
                                        f"space there, or point TMPDIR (or the output) at a larger disk")
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NamedFolder:
    """A new folder at ``path``, removed with what it holds by ``cleanup`` (TemporaryDirectory's interface)."""

    def __init__(self, path: Path):
        path.mkdir()
        self.name = str(path)

    def cleanup(self) -> None:
        shutil.rmtree(self.name, ignore_errors=True)


def scratch_for(out, pixels: int) -> Scratch:
    """Scratch space for a result written to ``out``: memory when the result is kept in memory
    (``out`` None) or small, else files beside a path ``out``, in the folder of a memory-mapped ``out`` (the
    disk its caller chose: an instance result's scratch mask, resampled by ``scale``, put its logits in the
    system's temporary folder, often a small one), or in the system's temporary folder."""
    if out is None or pixels <= IN_MEMORY_PIXELS:
        return Scratch()
    if isinstance(out, (str, Path)):
        return Scratch(beside=out) if Path(out).parent.exists() else Scratch(tempfile.gettempdir())
    filename = getattr(out, "filename", None)      # np.memmap (open_memmap's too)
    if isinstance(out, np.memmap) and filename is not None and Path(filename).parent.is_dir():
        return Scratch(Path(filename).parent)
    return Scratch(tempfile.gettempdir())


def label_instances(foreground, options: InstanceOptions | None = None, *, probability=None, out=None,
                    stacked: bool | None = None, block: int | None = None, scratch: Scratch | None = None,
                    pixel_size=None, provenance: dict | None = None):
    """Instance labels (``InstanceOptions`` rules) of a foreground mask (nonzero = foreground).

    foreground: (H, W), or (Z, H, W) with ``stacked`` (default: 3-D means stacked), each plane labelled
        on its own; a numpy array, memmap or any lazy array indexable by slices.
    probability: the foreground probability, the same shape (lazy too), for ``options.split``; without
        it objects are not split.
    out: None (a new numpy array of ``instance_dtype``), an integer array to fill, or a path ending in
        .tif/.tiff or .zarr (streamed, committed atomically; an OME-Zarr is marked as a label image,
        NGFF "image-label"). block: edge of the square blocks processed at once (default: 1024; the result does
        not depend on it). scratch: where the provisional labels go (default: ``scratch_for(out, ...)``).
    pixel_size: written into a file ``out`` (a ``unet_fast.pixel_size.PixelSize``); provenance: too (a dict, see
    ``unet_fast.sinks.read_provenance``).
    Returns the array, or the path written.
    """
    options = options or InstanceOptions()
    if not isinstance(options, InstanceOptions):
        raise TypeError(f"options must be an InstanceOptions, got {type(options).__name__}")
    shape = tuple(int(s) for s in foreground.shape)
    stacked = len(shape) == 3 if stacked is None else stacked
    if len(shape) != 2 + int(stacked) or min(shape) < 1:
        raise ValueError(f"foreground must be a non-empty {'(Z, H, W)' if stacked else '(H, W)'} mask, "
                         f"got shape {shape}")
    if probability is not None and tuple(probability.shape) != shape:
        raise ValueError(f"probability must have the foreground's shape {shape}, got {tuple(probability.shape)}")
    if probability is None:
        options = dataclasses.replace(options, split=None)
    block = DEFAULT_BLOCK if block is None else block
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    planes = shape[0] if stacked else 1
    height, width = shape[-2:]
    own_scratch = scratch is None
    scratch = scratch_for(out, planes * height * width) if own_scratch else scratch
    try:
        # provisional ids: at most one per pixel, and the pieces of split objects (at most one per core)
        provisional = scratch.array((planes, height, width), np.uint32 if height * width < 2 ** 31 else np.uint64)
        tables = []
        for plane in range(planes):
            mask = foreground[plane] if stacked else foreground
            chance = None if options.split is None else (probability[plane] if stacked else probability)
            graph = _first_pass(mask, provisional[plane], block, chance)
            tables.append(_resolve(graph, options, provisional[plane], chance))
        count = max(count for _, count in tables)
        sink = _open_output(out, shape, count, pixel_size, provenance)
        dtype = instance_dtype(count)
        try:
            for plane, (final, _) in enumerate(tables):
                _second_pass(provisional[plane], final.astype(dtype, copy=False), options.border, block,
                             lambda y, x, labels, plane=plane: sink.write(plane, y, x, labels))
            return sink.close()
        except BaseException:
            sink.abort()
            raise
    finally:
        if own_scratch:
            scratch.close()


# ---- first pass: provisional labels, seams, per-component tables

@dataclass
class _Graph:
    """What the first pass learns about one plane's provisional components (ids 1..n; 0 unused)."""

    foreground: np.ndarray   # bool per id
    area: np.ndarray         # int64 pixels per id
    first: np.ndarray        # int64 raster index of the id's first pixel
    border: np.ndarray       # bool: touches the image border
    same: np.ndarray         # (2, E) ids of the same component (across seams)
    touching: np.ndarray     # (2, F) (foreground id, background id) 4-adjacent pairs
    box: np.ndarray | None = None    # (n + 1, 4) y0, y1, x0, x1 of each object id (for splitting)
    peak: np.ndarray | None = None   # highest foreground probability of each object id (for splitting)


def _first_pass(mask, provisional: np.ndarray, block: int, probability=None) -> _Graph:
    height, width = provisional.shape
    foreground, area, first, border = [np.zeros(1, bool)], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], \
        [np.zeros(1, bool)]
    same, touching = [], []
    box, peak = [np.zeros((1, 4), np.int64)], [np.zeros(1)]
    next_id = 1
    # the foreground along the seams, kept from the blocks that read it (a smoothed mask would smooth a strip
    # as wide as its Gaussian again to read one row): the last row of the block row above, the last column
    # of the block on the left
    row_above, row_here = np.zeros(width, bool), np.zeros(width, bool)
    for y0 in range(0, height, block):
        y1 = min(y0 + block, height)
        row_above, row_here = row_here, row_above
        column_left = None
        for x0 in range(0, width, block):
            termination.check()   # SIGTERM (even swallowed), or a GUI's Cancel: between blocks
            x1 = min(x0 + block, width)
            fg = np.asarray(mask[y0:y1, x0:x1]) != 0
            objects, n_objects = ndimage.label(fg, FOUR)
            background, n_background = ndimage.label(~fg, FOUR)
            local = np.where(fg, objects, background + n_objects)        # every pixel: 1..n
            n = n_objects + n_background
            ids = local.astype(provisional.dtype) + (next_id - 1)
            provisional[y0:y1, x0:x1] = ids
            foreground.append(np.arange(n) < n_objects)
            area.append(np.bincount(local.ravel(), minlength=n + 1)[1:])
            first.append(np.concatenate([_first_pixels(objects, y0, x0, width),      # only objects are ordered
                                         np.zeros(n_background, np.int64)]))
            edge = np.zeros(n + 1, bool)
            for hit, pixels in ((y0 == 0, local[0]), (y1 == height, local[-1]),
                                (x0 == 0, local[:, 0]), (x1 == width, local[:, -1])):
                if hit:
                    edge[pixels] = True
            border.append(edge[1:])
            if probability is not None:
                box.append(np.array([[s[0].start + y0, s[0].stop + y0, s[1].start + x0, s[1].stop + x0]
                                     for s in ndimage.find_objects(objects)] + [[0, 0, 0, 0]] * n_background,
                                    np.int64).reshape(n, 4))
                chance = np.asarray(probability[y0:y1, x0:x1], dtype=np.float64)
                highest = np.full(n_objects + 1, -np.inf)     # np.maximum.at: 40x ndimage.maximum's speed here
                np.maximum.at(highest, objects.ravel(), chance.ravel())
                peak.append(np.concatenate([highest[1:], np.zeros(n_background)]))
            pairs = [(ids[:, :-1], ids[:, 1:], fg[:, :-1], fg[:, 1:]), (ids[:-1], ids[1:], fg[:-1], fg[1:])]
            if y0 > 0:   # the seam with the block above, already labelled
                above = provisional[y0 - 1, x0:x1]
                pairs.append((above, ids[0], row_above[x0:x1], fg[0]))
            if x0 > 0:   # the seam with the block on the left
                left = provisional[y0:y1, x0 - 1]
                pairs.append((left, ids[:, 0], column_left, fg[:, 0]))
            row_here[x0:x1], column_left = fg[-1], fg[:, -1]
            for index, (a, b, fa, fb) in enumerate(pairs):
                a, b, fa, fb = a.ravel(), b.ravel(), fa.ravel(), fb.ravel()
                if index >= 2:   # across a seam: equal kinds are one component
                    one = fa == fb
                    same.append(_unique_pairs(a[one], b[one]))
                mixed = fa != fb   # (object, background) neighbours
                touching.append(_unique_pairs(np.where(fa, a, b)[mixed], np.where(fa, b, a)[mixed]))
            next_id += n
    return _Graph(np.concatenate(foreground), np.concatenate(area), np.concatenate(first), np.concatenate(border),
                  np.concatenate(same, axis=1) if same else np.zeros((2, 0), np.int64),
                  np.concatenate(touching, axis=1) if touching else np.zeros((2, 0), np.int64),
                  np.concatenate(box) if probability is not None else None,
                  np.concatenate(peak) if probability is not None else None)


def _first_pixels(objects: np.ndarray, y0: int, x0: int, width: int) -> np.ndarray:
    """Raster index in the plane of each object's first pixel; ``ndimage.label`` numbers objects in
    the order of their first pixels, so they are where the running maximum of the labels grows."""
    flat = objects.ravel()
    at = np.flatnonzero(flat)
    labels = flat[at]
    grows = labels > np.maximum.accumulate(np.concatenate([[0], labels[:-1]]))
    at = at[grows]
    return (y0 + at // objects.shape[1]) * width + x0 + at % objects.shape[1]


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The distinct pairs (a[i], b[i]) as a (2, E) int64 array."""
    if a.size == 0:
        return np.zeros((2, 0), np.int64)
    if max(a.max(), b.max()) >= 2 ** 32:          # planes of more than 2^32 pixels
        return np.unique(np.stack([a.astype(np.int64), b.astype(np.int64)]), axis=1)
    keys = np.unique((a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64))
    return np.stack([keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)]).astype(np.int64)


def _components(nodes: int, edges: np.ndarray) -> np.ndarray:
    """Component index of each of ``nodes`` nodes joined by ``edges`` (2, E)."""
    graph = coo_matrix((np.ones(edges.shape[1], np.int8), (edges[0], edges[1])), shape=(nodes, nodes))
    return connected_components(graph, directed=False)[1]


def _resolve(graph: _Graph, options: InstanceOptions, provisional=None, probability=None) -> tuple[np.ndarray, int]:
    """(final label of every provisional id, number of objects): rules 1-3 and the numbering."""
    ids = len(graph.area)
    root = _components(ids, graph.same)
    roots = root.max() + 1
    area = np.bincount(root, weights=graph.area, minlength=roots)
    first = np.full(roots, np.iinfo(np.int64).max)
    np.minimum.at(first, root[1:], graph.first[1:])
    border = np.bincount(root, weights=graph.border, minlength=roots) > 0
    foreground = np.zeros(roots, bool)
    foreground[root[1:]] = graph.foreground[1:]
    foreground[root[0]] = False                             # id 0 is unused
    touching = np.unique(root[graph.touching], axis=1) if graph.touching.size else np.zeros((2, 0), np.int64)
    node = root
    if options.split is not None:
        pieces = _split(graph, options, root, foreground, provisional, probability)
        if pieces.count:
            node = np.concatenate([root, roots + np.arange(pieces.count)])
            area = np.concatenate([area, pieces.area])
            first = np.concatenate([first, pieces.first])
            border = np.concatenate([border, pieces.border])
            foreground = np.concatenate([foreground, np.ones(pieces.count, bool)])
            foreground[pieces.replaced] = False              # the split objects are gone, their pieces stay
            siblings = pieces.siblings + roots              # a removed piece is background beside the others
            touching = np.concatenate([touching[:, ~np.isin(touching[0], pieces.replaced)],
                                       pieces.touching + np.array([[roots], [0]]), siblings, siblings[::-1]], axis=1)
            roots += pieces.count
    kept = foreground & (area >= options.min_size)
    final = np.zeros(roots, np.int64)
    order = np.flatnonzero(kept)[np.argsort(first[kept], kind="stable")]
    final[order] = np.arange(1, len(order) + 1)
    if options.fill_holes and len(order):
        small = touching[:, ~kept[touching[0]] & ~kept[touching[1]]]   # removed objects join the background
        group = _components(roots, small)
        group_border = np.bincount(group, weights=border, minlength=roots) > 0
        neighbours = np.unique(np.stack([group[touching[1]], touching[0]])[:, kept[touching[0]]], axis=1)
        count = np.bincount(neighbours[0], minlength=roots)
        enclosed = (count == 1) & ~group_border
        owner = np.zeros(roots, np.int64)
        owner[neighbours[0]] = neighbours[1]
        holes = ~kept & enclosed[group]
        final[holes] = final[owner[group[holes]]]
    return final[node], len(order)


@dataclass
class _Pieces:
    """Objects split among their cores: the new nodes (pieces) and the objects they replace."""

    count: int
    area: np.ndarray
    first: np.ndarray
    border: np.ndarray
    touching: np.ndarray      # (2, F) (piece index, background root)
    siblings: np.ndarray      # (2, S) (piece index, piece index) of 4-adjacent pieces
    replaced: np.ndarray      # roots of the split objects


def _split(graph: _Graph, options: InstanceOptions, root, foreground, provisional, probability) -> _Pieces:
    """Rule 1's split, object by object in its bounding box and a 1-pixel margin; the pieces get new
    provisional ids (after every id of the first pass), written over their pixels in ``provisional``."""
    height, width = provisional.shape
    ids, roots = len(graph.area), len(foreground)
    box = np.stack([np.full(roots, height), np.zeros(roots, np.int64), np.full(roots, width),
                    np.zeros(roots, np.int64)], 1)
    objects = np.flatnonzero(graph.foreground)
    for column, reduce in ((0, np.minimum), (1, np.maximum), (2, np.minimum), (3, np.maximum)):
        reduce.at(box[:, column], root[objects], graph.box[objects, column])
    peak = np.zeros(roots)
    np.maximum.at(peak, root[objects], graph.peak[objects])
    area = np.bincount(root, weights=graph.area, minlength=roots)
    found = dict(area=[], first=[], border=[], touching=[], siblings=[], replaced=[])
    count = 0
    for r in np.flatnonzero(foreground & (peak > options.split) & (area >= 2 * options.core_size)):
        termination.check()
        y0, y1 = max(box[r, 0] - 1, 0), min(box[r, 1] + 1, height)
        x0, x1 = max(box[r, 2] - 1, 0), min(box[r, 3] + 1, width)
        here = np.asarray(provisional[y0:y1, x0:x1]).astype(np.int64)
        node = np.where(here < ids, root[np.minimum(here, ids - 1)], -1)    # -1: a piece of an earlier split
        inside = node == r
        chance = np.asarray(probability[y0:y1, x0:x1], dtype=np.float64)
        cores, n_cores = ndimage.label((chance > options.split) & inside, FOUR)
        big = np.flatnonzero(np.bincount(cores.ravel(), minlength=n_cores + 1) >= options.core_size)
        big = big[big > 0]
        if len(big) < 2:
            continue
        renumber = np.zeros(n_cores + 1, np.int32)
        renumber[big] = np.arange(1, len(big) + 1)
        level = np.rint((1 - np.clip(chance, 0, 1)) * 254).astype(np.uint8)
        piece = _flood(level, renumber[cores], inside)
        found["area"].append(np.bincount(piece.ravel(), minlength=len(big) + 1)[1:])
        at = np.flatnonzero(piece.ravel())
        _, where = np.unique(piece.ravel()[at], return_index=True)   # each piece's first pixel
        at = at[where]
        found["first"].append((y0 + at // piece.shape[1]) * width + x0 + at % piece.shape[1])
        edge = np.zeros(len(big) + 1, bool)
        for hit, pixels in ((y0 == 0, piece[0]), (y1 == height, piece[-1]), (x0 == 0, piece[:, 0]),
                            (x1 == width, piece[:, -1])):
            if hit:
                edge[pixels] = True
        found["border"].append(edge[1:])
        for a, b, na, nb in ((piece[:, :-1], piece[:, 1:], node[:, :-1], node[:, 1:]),
                             (piece[:-1], piece[1:], node[:-1], node[1:])):
            ba, bb = (na >= 0) & ~foreground[np.maximum(na, 0)], (nb >= 0) & ~foreground[np.maximum(nb, 0)]
            found["touching"] += [_unique_pairs(a[(a > 0) & bb] - 1 + count, nb[(a > 0) & bb]),
                                  _unique_pairs(b[(b > 0) & ba] - 1 + count, na[(b > 0) & ba])]
            apart = (a > 0) & (b > 0) & (a != b)
            found["siblings"].append(_unique_pairs(a[apart] - 1 + count, b[apart] - 1 + count))
        provisional[y0:y1, x0:x1] = np.where(inside, ids + count + piece - 1, here).astype(provisional.dtype)
        found["replaced"].append(r)
        count += len(big)
    if not count:
        return _Pieces(0, np.zeros(0), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros((2, 0), np.int64),
                       np.zeros((2, 0), np.int64), np.zeros(0, np.int64))
    return _Pieces(count, np.concatenate(found["area"]), np.concatenate(found["first"]),
                   np.concatenate(found["border"]), np.unique(np.concatenate(found["touching"], axis=1), axis=1),
                   np.unique(np.concatenate(found["siblings"], axis=1), axis=1), np.array(found["replaced"], np.int64))


def _flood(level: np.ndarray, markers: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Meyer's flooding of ``level`` (uint8) from ``markers`` (labels > 0) within ``inside``, 4-connected: a path
    costs its highest level, each pixel joins the marker of its cheapest path, at equal costs the one whose
    flood reached it first (markers enter in raster order); pixels outside ``inside`` are 0. Not scipy's
    ``watershed_ift``, whose paths cost their steepest step (largest difference of neighbours): on a smooth
    probability every step is small, and a core's flood runs over the valley into its neighbour's slopes.
    The extension's C++ kernel where it is built (a bucket queue: about 60x faster), else ``_flood_python``."""
    if _extension.has_kernel("watershed_flood", "cpu"):
        import torch

        def tensor(array, dtype):  # a C-ordered copy: torch takes no negative strides, which views may have
            return torch.from_numpy(np.array(array, dtype, order="C"))

        return torch.ops.unet_fast.watershed_flood(tensor(level, np.uint8), tensor(markers, np.int64),
                                                   tensor(inside, bool)).numpy()
    return _flood_python(level, markers, inside)


def _flood_python(level: np.ndarray, markers: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``_flood`` with a heap ordered by (cost, order of entry): the same labels as the C++ kernel's bucket
    queue, which takes the buckets in cost order and each in the order its pixels came."""
    height, width = level.shape
    levels = level.ravel().tolist()
    labels = np.where(inside, markers, 0).ravel()
    free = (inside.ravel() & (labels == 0)).tolist()
    queue = [(levels[i], n, i) for n, i in enumerate(np.flatnonzero(labels).tolist())]
    labels = labels.tolist()
    heapq.heapify(queue)
    entered = len(queue)
    while queue:
        cost, _, i = heapq.heappop(queue)
        y, x = divmod(i, width)
        for j, within in ((i - width, y > 0), (i + width, y < height - 1), (i - 1, x > 0), (i + 1, x < width - 1)):
            if within and free[j]:
                free[j] = False
                labels[j] = labels[i]
                heapq.heappush(queue, (max(cost, levels[j]), entered, j))
                entered += 1
    return np.array(labels, np.int64).reshape(level.shape)


# ---- second pass: final labels and the borders given back, block by block

def _second_pass(provisional: np.ndarray, final: np.ndarray, band: int, block: int, write) -> None:
    height, width = provisional.shape
    for y0 in range(0, height, block):
        y1 = min(y0 + block, height)
        for x0 in range(0, width, block):
            termination.check()
            x1 = min(x0 + block, width)
            if band == 0:
                write(y0, x0, final[np.asarray(provisional[y0:y1, x0:x1])])
                continue
            window = np.zeros((y1 - y0 + 2 * band, x1 - x0 + 2 * band), final.dtype)   # outside the image: none
            ya, yb, xa, xb = max(y0 - band, 0), min(y1 + band, height), max(x0 - band, 0), min(x1 + band, width)
            window[ya - y0 + band:yb - y0 + band, xa - x0 + band:xb - x0 + band] = \
                final[np.asarray(provisional[ya:yb, xa:xb])]
            write(y0, x0, give_back_borders(window, band))


def _disc_rings(band: int) -> list[list[tuple[int, int]]]:
    """Offsets within ``band`` px (Euclidean), grouped by distance, nearest first (the centre left out)."""
    rings: dict[int, list] = {}
    for dy in range(-band, band + 1):
        for dx in range(-band, band + 1):
            if 0 < dy * dy + dx * dx <= band * band:
                rings.setdefault(dy * dy + dx * dx, []).append((dy, dx))
    return [rings[d] for d in sorted(rings)]


def give_back_borders(window: np.ndarray, band: int) -> np.ndarray:
    """Rule 4 on the inside of ``window`` (labels with a margin of ``band`` px on every side): each
    background pixel with two different objects within ``band`` px takes the nearest (the smallest
    label among the nearest); returns the inside, the margin cropped."""
    h, w = window.shape[0] - 2 * band, window.shape[1] - 2 * band
    inside = window[band:band + h, band:band + w]
    if band == 0 or not inside.size:
        return inside.copy()
    none = np.iinfo(window.dtype).max
    nearest = np.zeros_like(inside)
    seen = np.zeros_like(inside)
    several = np.zeros(inside.shape, bool)
    for ring in _disc_rings(band):
        closest = np.full(inside.shape, none, window.dtype)
        for dy, dx in ring:
            other = window[band + dy:band + dy + h, band + dx:band + dx + w]
            present = other > 0
            several |= present & (seen > 0) & (other != seen)
            seen = np.where((seen == 0) & present, other, seen)
            closest = np.where(present, np.minimum(closest, other), closest)
        nearest = np.where((nearest == 0) & (closest != none), closest, nearest)
    return np.where((inside == 0) & several, nearest, inside)


# ---- outputs

def _open_output(out, shape, count: int, pixel_size=None, provenance=None):
    from .sinks import ArraySink, open_streaming_writer

    stacked = len(shape) == 3
    if out is None:
        return ArraySink(np.zeros(shape, instance_dtype(count)), stacked)
    if isinstance(out, (str, Path)):    # an OME-Zarr of them is marked "image-label" by its writer
        return open_streaming_writer(out, shape, instance_dtype(count), pixel_size=pixel_size, provenance=provenance)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)} but the labels need {tuple(shape)}")
    kind = np.dtype(out.dtype)
    if kind.kind not in "iu" or np.iinfo(kind).max < count:
        raise ValueError(f"out must be an integer array that holds labels up to {count}, got {out.dtype}")
    return ArraySink(out, stacked)
