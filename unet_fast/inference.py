"""Exact overlap-tile inference for images of any size: ``predict_tiled``.

The tiles, and why the result equals one whole-image pass, are ``unet_fast.tiling``'s (which plans
tile and batch from free memory); results go to a sink (``unet_fast.sinks``): an array, or a file
streamed to disk. Memory: only the tiles in flight are read (lazy inputs: numpy memmap, zarr,
tifffile aszarr) and results are written tile by tile.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import queue
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from . import checks, termination
from .geometry import mirror_indices
from .model_file import class_names_of
from .normalization import Normalization
from .ops.frozen_weights import frozen_weights
from .ops.triton import on_device
from .rescale import Resampled, model_scale, scaled_size
from .sinks import open_sink
from .tile_graphs import capturing, has_tile_graph, tile_graph
from .tiling import (SATURATING_BATCH_PIXELS, TilePlan, cpu_available_bytes, cpu_convolutions_use_onednn,
                     cuda_free_bytes, estimate_activation_bytes, kept_output, memory_budget, model_device,
                     model_geometry, parse_compute_dtype, plan_tiles, same_padding_margin, usable_tile_sizes)

__all__ = ["predict_tiled", "predict_images", "OUTPUTS", "LAYOUTS", "check_chosen_plan_fits", "NonFiniteOutputError",
           # planning moved to unet_fast.tiling; importable from here as before
           "TilePlan", "plan_tiles", "estimate_activation_bytes", "memory_budget", "same_padding_margin",
           "usable_tile_sizes"]

log = logging.getLogger(__name__)

OUTPUTS = ("labels", "probabilities", "logits", "instances")
LAYOUTS = ("YX", "CYX", "ZYX", "ZCYX")
#: threads reading the tiles of one batch (``_Runner._tile_readers``)
MAX_TILE_READERS = 8
#: input pixels of a batch above which predict_tiled captures no CUDA graph by default: its forward then
#: computes for tens of milliseconds (the network: about 0.9 TFLOP a megapixel, some 400 TFLOP/s on an
#: H200) against a millisecond or two of launches, and a graph keeps the batch's activations as its pool
GRAPH_MAX_BATCH_PIXELS = 4 * SATURATING_BATCH_PIXELS


class NonFiniteOutputError(ValueError):
    """The network's output (its logits) for an image holds NaN or infinite values, from finite inputs: the
    labels, probabilities or objects made from it would be silently wrong, so none of that image is written (a
    file ``out`` is left as it was). plane: the slice of a stack (the image of predict_images) it was found in,
    or None; detail: the message without the words naming that plane (for callers naming the image their way)."""

    def __init__(self, message: str, plane: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.plane, self.detail = plane, message if detail is None else detail


def finite_tiles(logits: torch.Tensor) -> torch.Tensor:
    """Per tile of a (B, K, h, w) batch of logits, whether all of them are finite: a (B,) bool tensor on their
    device, computed without waiting for it (a CUDA graph captures it with the forward). Two reductions, exact:
    NaN carries through amax and amin, and an infinity is one of them."""
    dims = tuple(range(1, logits.dim()))
    return logits.amax(dims).isfinite() & logits.amin(dims).isfinite()


def nonfinite_cause(compute_dtype: torch.dtype) -> str:
    """What makes a network's output non-finite from finite inputs under ``compute_dtype``, and what to do."""
    if compute_dtype == torch.float16:
        return ("in float16 (dtype 'fp16'), whose largest value is 65504, the network's activations overflowed: "
                "use dtype 'bf16' (float32's range) or 'fp32' (unet-fast segment, evaluate: --dtype bf16)")
    return ("the model makes them itself, in float32's range: check its weights (NaN or infinite ones: did its "
            "training diverge?) and the image's normalisation (inputs far outside the range it was trained on can "
            "make the activations overflow)")


# ---- input

class _Source:
    """The input as (slices, C, H, W), read window by window with mirrored borders."""

    @classmethod
    def open(cls, image, layout: str | None, in_channels: int) -> "_Source":
        """The image in ``layout`` ("YX", "CYX", "ZYX", "ZCYX"; None: from its dimensions)."""
        if layout is None:
            if not hasattr(image, "shape"):
                image = np.asarray(image)
            layout = _infer_layout(image, in_channels)
        elif layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if len(image.shape) != len(layout):
            raise ValueError(f"layout {layout!r} needs a {len(layout)}-D image, got shape {tuple(image.shape)}")
        return cls(image, layout, in_channels)

    def __init__(self, image, layout: str, in_channels: int):
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.dtype.is_floating_point and image.dtype not in (torch.float16, torch.float32, torch.float64):
                image = image.float()   # bfloat16, float8: no numpy type holds them; float32 holds them exactly
            image = image.numpy()
        if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
            image = np.asarray(image)
        self.image, self.layout = image, layout
        self.stacked = layout.startswith("Z")
        shape = tuple(image.shape)
        self.slices = shape[0] if layout.startswith("Z") else 1
        self.channels = shape[layout.index("C")] if "C" in layout else 1
        self.height, self.width = shape[-2:]
        try:                # the pixels' type where the image says (read_tile gathers float32 straight in)
            self.dtype = np.dtype(image.dtype)
        except (AttributeError, TypeError):
            self.dtype = None
        if self.channels != in_channels:
            raise ValueError(f"image has {self.channels} channel(s) (shape {shape}, layout {layout!r}) but "
                             f"the model expects in_channels={in_channels}")
        if self.height < 1 or self.width < 1 or self.slices < 1:
            raise ValueError(f"image must not be empty, got shape {shape}")
        problem = checks.pixel_type_problem(getattr(image, "dtype", np.float64))
        if problem:
            raise ValueError(f"image {problem}")

    def window(self, n: int, y0: int, y1: int, x0: int, x1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows y0..y1, columns x0..x1 of slice n as (C, h, w), mirrored beyond the borders; into ``out``
        (C, h, w; any dtype the pixels cast to) when given, else a view where no pixel is mirrored."""
        ys, xs = mirror_indices(y0, y1, self.height), mirror_indices(x0, x1, self.width)
        ya, yb, xa, xb = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        lead = (n,) if self.layout.startswith("Z") else ()
        block = np.asarray(self.image[lead + (Ellipsis, slice(ya, yb), slice(xa, xb))])
        if "C" not in self.layout:
            block = block[None]
        if out is None and (yb - ya, xb - xa) == (y1 - y0, x1 - x0) and (ys[0], xs[0]) == (ya, xa):
            return block   # nothing mirrored (a window wholly in a mirrored margin has the size, reversed)
        if out is None:
            out = np.empty((block.shape[0], y1 - y0, x1 - x0), block.dtype)
        _mirror_copy(out, block, ys - ya, xs - xa)
        return out


#: above this many runs of consecutive indices along an axis (an image a few pixels long, mirrored again and
#: again), _mirror_copy gathers with index arrays instead of copying run by run
MAX_MIRROR_RUNS = 8


def _index_runs(indices: np.ndarray) -> list[tuple[slice, slice]] | None:
    """``indices`` (mirrored positions: steps of +1, -1 or 0) as (destination, source) slice pairs, one per
    run of a constant step; None when there are more than MAX_MIRROR_RUNS of them."""
    steps = np.diff(indices)
    runs, start, count = [], 0, len(indices)
    while start < count:
        step = int(steps[start]) if start + 1 < count else 1
        changes = np.flatnonzero(steps[start:] != step)   # the run ends at the first other step
        end = start + 1 + (int(changes[0]) if len(changes) else count - 1 - start)
        first, last = int(indices[start]), int(indices[end - 1])
        if step == 0:       # a 1-pixel axis: the one pixel, broadcast
            source = slice(first, first + 1)
        else:
            stop = last + step
            source = slice(first, None if stop < 0 else stop, step)
        runs.append((slice(start, end), source))
        if len(runs) > MAX_MIRROR_RUNS:
            return None
        start = end
    return runs


def _mirror_copy(out: np.ndarray, block: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> None:
    """out[:, i, j] = block[:, rows[i], columns[j]]. A tile at the image border mirrors a margin on one or two
    sides: a few strided slice copies (one plain copy inside the image). The 2-D fancy index that did this
    before (block[:, rows[:, None], columns[None, :]]) gathered every pixel by two index arrays: 236 ms on a
    2-core CPU for the 16 border tiles of 1836 px of an 8192^2 image, before the forward could start."""
    row_runs, column_runs = _index_runs(rows), _index_runs(columns)
    if row_runs is None or column_runs is None:   # one axis at a time: 1-D gathers, still no 2-D index
        out[...] = np.take(np.take(block, rows, axis=1), columns, axis=2)
        return
    for target_rows, source_rows in row_runs:
        for target_columns, source_columns in column_runs:
            out[:, target_rows, target_columns] = block[:, source_rows, source_columns]


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def graphs_pay(model, plan, channels: int, key: tuple | None = None) -> bool:
    """predict_tiled's default for cuda_graphs: a graph of this batch shape (and computation ``key``: output,
    dtypes, crop, TTA), kept from an earlier call, replays even a single batch; any other is captured only
    where it pays (two full batches or more, of launches that matter beside the batch's compute: at most
    GRAPH_MAX_BATCH_PIXELS), as its memory pool stays on the model."""
    small = plan.batch_size * plan.tile[0] * plan.tile[1] <= GRAPH_MAX_BATCH_PIXELS
    return (plan.tiles >= 2 * plan.batch_size and small) or has_tile_graph(
        model, (plan.batch_size, channels, *plan.tile), key)


def _infer_layout(image, in_channels: int) -> str:
    ndim = len(image.shape)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        shape = tuple(image.shape)
        if shape[-1] <= 4 < min(shape[:2]) and shape[0] != in_channels:
            # (H, W, 1) or an RGB (H, W, 3) from imageio/PIL: read as a stack of 1-4 px wide planes (or as H
            # channels) it would give a result of the input's shape, and a silently wrong one
            raise ValueError(f"image of shape {shape} looks channels-last (H, W, C); unet_fast takes channels "
                             f"first: pass np.moveaxis(image, -1, 0) (or image[..., 0] for one channel), or say "
                             f"how to read it with layout= ('ZYX' for a stack of {shape[0]} planes "
                             f"{shape[1]} x {shape[2]} px)")
        return "CYX" if in_channels > 1 else "ZYX"
    if ndim == 4:
        return "ZCYX"
    raise ValueError(f"image must be (H, W), (C, H, W), (Z, H, W) or (Z, C, H, W); got shape {tuple(image.shape)}")


# ---- prediction

class _Runner:
    def __init__(self, model, source, plan, device, compute_dtype, output, out_dtype, sink, normalize,
                 cuda_graphs: bool, tta: bool = False):
        self.model, self.source, self.plan, self.device = model, source, plan, device
        self.tta = tta
        self.compute_dtype, self.output, self.out_dtype = compute_dtype, output, out_dtype
        self.sink, self.normalize = sink, normalize
        self.depth, self.padding = model.depth, model.padding
        self.fallback_tile: int | None = None
        if cuda_graphs is None:
            cuda_graphs = graphs_pay(model, plan, source.channels, self.graph_key(self.plan_offset(), plan.stride))
        self.cuda_graphs = bool(cuda_graphs) and device.type == "cuda"

    def plan_offset(self) -> tuple:
        """Where a planned tile's kept output starts in its network output."""
        return tuple(kept_output(t, self.depth, self.padding)[2] for t in self.plan.tile)

    def graph_key(self, offset, size) -> tuple:
        """What, beside the batch shape and the parameters, a tile graph computes (tile_graphs' key)."""
        return self.output, self.out_dtype, self.compute_dtype, tuple(offset), tuple(size), self.tta

    # -- reading
    def read_tile(self, n, y, x, tile, lead, out: np.ndarray | None = None) -> np.ndarray:
        """The normalised input tile (C, h, w), float32; written into ``out`` (a slot of a batch) when given.
        A float32 image is gathered straight into ``out`` and normalised there (mode "none" changes nothing:
        no further copy); other pixels are normalised from their own block, then copied in."""
        y0, x0 = y - lead[0], x - lead[1]
        direct = out is not None and self.source.dtype == np.float32
        block = self.source.window(n, y0, y0 + tile[0], x0, x0 + tile[1], out=out if direct else None)
        normalized = self.normalize(block)
        if out is not None and normalized is not out:
            out[...] = normalized
        return normalized if out is None else out

    # -- computing
    def compute(self, x: torch.Tensor, offset, size) -> tuple[torch.Tensor, torch.Tensor]:
        """The model on a device batch, cropped to the kept pixels and turned into the output kind; and which
        tiles' kept logits are finite (``finite_tiles``), checked when the result is written (``check_finite``)."""
        with torch.autocast(self.device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            logits = dihedral_mean_logits(self.model, x) if self.tta else self.model(x)
        logits = logits[..., offset[0]:offset[0] + size[0], offset[1]:offset[1] + size[1]]
        finite = finite_tiles(logits)
        if self.output == "labels":   # argmax of bf16/fp16 logits is theirs in float32 (exact, monotone cast):
            return logits.argmax(1).to(self.out_dtype), finite   # no float32 copy of the logits
        logits = logits.float()
        if self.output == "probabilities":
            return torch.softmax(logits, 1).to(self.out_dtype), finite
        return logits.to(self.out_dtype), finite

    def launch(self, batch: torch.Tensor, offset, size):
        """Start a batch: (its result on the host, its tiles' finite flags on the host, the event after which
        both are there, None on the CPU). On CUDA nothing waits here: the copies back run on the stream after
        the forward, into pinned memory, so the next batch is launched before this one is written (the flags
        are looked at then, after the wait for the result: no synchronisation of their own)."""
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.device.type != "cuda":
            return *self.compute(x, offset, size), None
        graph = None
        if self.cuda_graphs and batch.shape[0] == self.plan.batch_size:
            try:
                graph = tile_graph(self.model, tuple(x.shape), lambda t: self.compute(t, offset, size),
                                   self.graph_key(offset, size), self.device)
            except torch.OutOfMemoryError:  # no room for a graph's own pool (None later: tile_graph remembers)
                pass
            if graph is None:  # eager from here on; released outside the handler: see _release
                self.cuda_graphs = False
                self._release()
        result, finite = graph(x) if graph is not None else self.compute(x, offset, size)
        host, host_finite = (torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (result, finite))
        host.copy_(result, non_blocking=True)
        host_finite.copy_(finite, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, host_finite, done

    def forward(self, batch: torch.Tensor, offset, size) -> tuple[torch.Tensor, torch.Tensor]:
        host, finite, done = self.launch(batch, offset, size)
        if done is not None:
            done.synchronize()
        return host, finite

    def launch_splitting(self, batch, offset, size):
        """launch, halving the batch on out-of-memory errors (same tiles, same results). A batch read before
        an earlier halving goes in parts of the batch size that worked, not at the size that failed."""
        if batch.shape[0] > self.plan.batch_size:
            parts = [self.launch_splitting(part, offset, size) for part in batch.split(self.plan.batch_size)]
            return self._joined(parts)
        try:
            return self.launch(batch, offset, size)
        except torch.OutOfMemoryError:
            if batch.shape[0] == 1:
                raise
        self._release()  # outside the handler: see _release
        half = max(1, batch.shape[0] // 2)
        planned = self.plan.batch_size
        self.plan.batch_size = min(planned, half)
        self.plan.estimated_bytes = self.plan.estimated_bytes * self.plan.batch_size // planned  # explain() says so
        self.plan.retries.append(f"out of memory at batch {batch.shape[0]}: batch {half}")
        log.warning("out of memory at batch %d; retrying with batch %d", batch.shape[0], half)
        parts = [self.launch_splitting(part, offset, size) for part in batch.split(half)]
        return self._joined(parts)

    @staticmethod
    def _joined(parts):
        for *_, done in parts:
            if done is not None:
                done.synchronize()
        return torch.cat([host for host, _, _ in parts]), torch.cat([finite for _, finite, _ in parts]), None

    def _release(self):
        """Return the allocator's free blocks to the driver before a retry after an out-of-memory error.
        Called after the ``except`` block, never in it: while the error is handled its traceback keeps
        the failed forward's frames, and so their activations (or a half-captured graph's pool), alive.
        An H100 (2026-11-26) ran out of memory at every halved batch, 25 down to 1, that way."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def write(self, n, y, x, result):
        h = min(result.shape[-2], self.source.height - y)
        w = min(result.shape[-1], self.source.width - x)
        self.sink.write(n, y, x, result[..., :h, :w].numpy())

    def check_finite(self, tiles, finite: torch.Tensor, size) -> None:
        """NonFiniteOutputError for the first of ``tiles`` ((n, y, x) each, output pixels; ``size`` kept) whose
        flag in ``finite`` (on the host) is False: its result must not be written. A flag covers the whole kept
        tile, past the image's border too (mirrored pixels of the image: what overflows there overflows in it)."""
        if bool(finite.all()):
            return
        n, y, x = tiles[int((~finite).nonzero()[0])]
        height, width = self.source.height, self.source.width
        grid = f" of the image resampled to {height}x{width}" if isinstance(self.source.image, Resampled) else ""
        detail = (f"the network's output holds NaN or infinite values (in the tile of output rows "
                  f"{y}..{min(y + size[0], height)}, columns {x}..{min(x + size[1], width)}{grid}), "
                  f"so its result would be wrong: nothing is written; {nonfinite_cause(self.compute_dtype)}")
        if not self.source.stacked:
            raise NonFiniteOutputError(detail)
        raise NonFiniteOutputError(f"slice {n}: {detail}", n, detail)

    def compute_region(self, n, y0, x0, h, w, tile: int):
        """Output rows y0..y0+h, columns x0..x0+w (offsets pool-aligned) with square tiles of
        ``tile`` px, one at a time; on out-of-memory, again with the next smaller usable tile."""
        stride, lead, offset = kept_output(tile, self.depth, self.padding)
        try:
            for y in range(y0, y0 + h, stride):
                for x in range(x0, x0 + w, stride):
                    hh, ww = min(stride, y0 + h - y), min(stride, x0 + w - x)
                    # into a batch of its own: a view of the image (a tile with nothing mirrored) may have
                    # negative strides (np.flip), which torch.from_numpy refuses
                    batch = _host_batch((1, self.source.channels, tile, tile), self.device.type == "cuda")
                    self.read_tile(n, y, x, (tile, tile), (lead, lead), out=batch.numpy()[0])
                    result, finite = self.forward(batch, (offset, offset), (hh, ww))
                    self.check_finite([(n, y, x)], finite, (hh, ww))
                    self.write(n, y, x, result)
            return
        except torch.OutOfMemoryError:
            usable = [t for t in usable_tile_sizes(self.depth, self.padding, tile) if t < tile]
            smaller = [t for t in usable if t <= tile // 2 + 1] or usable
            if not smaller:
                raise
        self._release()  # outside the handler: see _release
        self.fallback_tile = smaller[-1]
        self.plan.retries.append(f"out of memory with a {tile} px tile: {smaller[-1]} px tiles")
        log.warning("out of memory with a %d px tile; retrying with %d px tiles", tile, smaller[-1])
        self.compute_region(n, y0, x0, h, w, smaller[-1])

    def run(self, progress):
        """Every tile of the plan: read on a background thread (here when there is one batch: nothing to
        overlap its reading with, and a thread's start and hand-off cost each small image a fraction of a
        millisecond), computed and written here. progress: show a bar (bool), or a callable told the
        fraction of tiles done after each batch."""
        from tqdm.auto import tqdm

        plan = self.plan
        jobs = [(n, r * plan.stride[0], c * plan.stride[1]) for n in range(plan.slices)
                for r in range(plan.grid[0]) for c in range(plan.grid[1])]
        single = len(jobs) <= plan.batch_size
        # unbounded for a single batch read here: a put (of the batch, None, or an error a signal raised
        # between those) must never wait for a reader that is this very thread
        staged: queue.Queue = queue.Queue(maxsize=0 if single else 2)
        stop = threading.Event()
        reader = None
        if single:
            self._read_batches(jobs, staged, stop)
        else:
            reader = threading.Thread(target=self._read_batches, args=(jobs, staged, stop),
                                      name="unet_fast-tile-reader", daemon=True)
            reader.start()
        bar = tqdm(total=len(jobs), unit="tile", disable=callable(progress) or not progress, desc="predict_tiled")
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            bar.update(count)
            if callable(progress):
                progress(done / len(jobs))

        in_flight = None  # the batch launched last, written after the next one is launched
        try:
            while (item := staged.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                chunk, batch = item
                termination.check()   # SIGTERM, even where its exception was swallowed
                launched = self._launch_batch(chunk, batch)
                if in_flight is not None:
                    self._finish_batch(*in_flight)
                    advance(len(in_flight[0]))
                in_flight = launched
            if in_flight is not None:
                self._finish_batch(*in_flight)
                advance(len(in_flight[0]))
        finally:
            stop.set()
            while reader is not None and reader.is_alive():  # unblock the reader if it waits on a full queue
                try:
                    staged.get(timeout=0.1)
                except queue.Empty:
                    pass
            bar.close()

    def _read_batches(self, jobs, staged: queue.Queue, stop: threading.Event):
        """Put (tiles, batch) on ``staged`` batch by batch, then None; or the error that stopped it."""
        plan, pin = self.plan, self.device.type == "cuda"
        try:
            with self._tile_readers() as readers:
                start = 0
                while start < len(jobs):
                    if stop.is_set():
                        return
                    chunk = jobs[start:start + plan.batch_size]  # the batch size may shrink on OOM
                    start += len(chunk)
                    staged.put((chunk, self._read_batch(chunk, pin, readers)))
            staged.put(None)
        except BaseException as error:  # re-raised on the main thread
            staged.put(error)

    def _read_batch(self, chunk, pin: bool, readers) -> torch.Tensor:
        """The tiles of ``chunk`` as one (B, C, h, w) float32 batch, in pinned memory for a CUDA device. Each
        tile is read (gathered, normalised) straight into its slot of the batch. Before, the tiles were read
        apart, np.stack copied them into a batch and pin_memory() copied that again: two more passes over
        337 MB for the 25 tiles of 1836 px of an 8192^2 image (182 ms on a 2-core CPU), all before the
        single batch's forward could start."""
        plan = self.plan
        batch = _host_batch((len(chunk), self.source.channels, *plan.tile), pin)
        slots = batch.numpy()

        def read(index: int) -> None:
            n, y, x = chunk[index]
            self.read_tile(n, y, x, plan.tile, plan.lead, out=slots[index])

        if readers is None:
            for index in range(len(chunk)):
                read(index)
        else:   # numpy releases the GIL while copying: tiles are read side by side (errors in tile order)
            for _ in readers.map(read, range(len(chunk))):
                pass
        return batch

    @contextlib.contextmanager
    def _tile_readers(self):
        """Threads reading the tiles of a batch side by side, or None: for an image in memory (a numpy
        array or memmap; lazy stores read through one file handle stay on one thread) and batches of
        several tiles. One thread copied the 337 MB of a batch of 25 tiles of 1836 px, and checked them
        for NaN, while the GPU waited."""
        workers = min(self.plan.batch_size, _usable_cpus(), MAX_TILE_READERS)
        if workers < 2 or not isinstance(self.source.image, np.ndarray):
            yield None
            return
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="unet_fast-tile-read") as readers:
            yield readers

    def _launch_batch(self, chunk, batch):
        """Start one batch of tiles: (tiles, host result, its finite flags, its event), or (tiles, None, None,
        None) when it was computed and written here, tile by tile with smaller tiles, after an out-of-memory
        error."""
        plan = self.plan
        if self.fallback_tile is None:
            offset = self.plan_offset()
            try:
                return (chunk, *self.launch_splitting(batch, offset, plan.stride))
            except torch.OutOfMemoryError:
                pass
            self._release()  # outside the handler: see _release
        for n, y, x in chunk:
            self.compute_region(n, y, x, *plan.stride, self.fallback_tile or min(plan.tile))
        return chunk, None, None, None

    def _finish_batch(self, chunk, results, finite, done):
        if results is None:  # written already
            return
        if done is not None:
            done.synchronize()
        self.check_finite(chunk, finite, self.plan.stride)   # before any of the batch is written
        for (n, y, x), result in zip(chunk, results):
            self.write(n, y, x, result)


def _host_batch(shape: tuple, pin: bool) -> torch.Tensor:
    """An empty float32 batch in host memory, pinned for a CUDA device: never while a tile graph is captured on
    another thread (tile_graphs.capturing), which a pinned allocation's CUDA calls would make fail."""
    with capturing if pin else contextlib.nullcontext():
        return torch.empty(shape, dtype=torch.float32, pin_memory=pin)


def dihedral_mean_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: the log of the mean, over the 8 flips and 90-degree rotations of the tiles
    ``x``, of the model's softmax probabilities (each view turned back first), in float32. They are
    logits whose softmax is that mean, summed in log space so that they stay finite (a class no view
    gives any probability would be log 0 = -inf, and NaN once resampled). Exact for any legal tile,
    square or not: a flip or rotation of a tile whose every level has an even size keeps the pooling
    pairs, so each view predicts the same pixels."""
    total = None
    for k in range(8):
        view = torch.rot90(x, k % 4, dims=(-2, -1))
        view = view.flip(-1) if k >= 4 else view
        log_probabilities = torch.log_softmax(model(view.contiguous(memory_format=torch.channels_last)).float(), 1)
        log_probabilities = log_probabilities.flip(-1) if k >= 4 else log_probabilities
        log_probabilities = torch.rot90(log_probabilities, -(k % 4), dims=(-2, -1))
        total = log_probabilities if total is None else torch.logaddexp(total, log_probabilities)
    return total - math.log(8)


def _sequence(values, argument: str, what: str) -> list:
    """``values`` as a list: BadArgument when it is a single array, a path or not a sequence at all."""
    if isinstance(values, (str, Path, np.ndarray, torch.Tensor)) or not hasattr(values, "__iter__"):
        raise checks.BadArgument(argument, f"{argument} must be {what}, got {type(values).__name__}")
    return list(values)


@contextlib.contextmanager
def _naming(index: int, argument: str = "images"):
    """A ValueError about one image (or out) says which, keeping its type (NonFiniteInputError, ...)."""
    try:
        yield
    except ValueError as error:
        if isinstance(error, checks.BadArgument):
            raise
        raise type(error)(f"{argument}[{index}]: {error}") from error


def predict_tiled(model, image, *, tile_size=None, batch_size=None, device=None, dtype=None,
                  output: str = "labels", progress=None, out=None,
                  normalization: Normalization | None = None, layout: str | None = None,
                  memory_budget_bytes: int | None = None, cuda_graphs: bool | None = None, pixel_size=None,
                  nonfinite: str | None = None, instance_options=None, tta: bool = False, scale=None,
                  provenance: dict | None = None):
    """Segment an image of any size by overlap-tile inference (see the module docstring).

    model: any module with unet_fast's config attributes (depth, padding, in_channels,
        num_classes), e.g. unet_fast.UNet or unet_fast.reference.UNet. It is moved to ``device``,
        switched to channels_last and run in eval mode (its training flag is restored after).
    image: (H, W), (C, H, W), (Z, H, W) or (Z, C, H, W): numpy array, torch tensor, or a lazy
        array (numpy memmap, zarr array, ``tifffile.imread(..., aszarr=True)`` opened with zarr);
        only the tiles in flight are read. ``layout`` ("YX", "CYX", "ZYX", "ZCYX") says which; by
        default 3-D means (C, H, W) if the model has in_channels > 1, else a (Z, H, W) stack.
        Stacks are processed slice by slice, tiles of several slices batched together.
    tile_size: input tile edge (int) or (h, w), each a legal input size, at most (an axis one tile covers gets
        the smallest tile that does); None: planned (see ``plan_tiles``; the plan is logged on the
        ``unet_fast.inference`` logger).
    batch_size: tiles per forward; None: planned. device: default the model's device.
    dtype: None/"fp32", "bf16" or "fp16" (autocast).
    output: "labels" (argmax, uint8; int32 above 256 classes), "probabilities" (softmax; float16
        when dtype is fp16/bf16, else float32; a TIFF ``out`` holds float32), "logits" (float32), or
        "instances" for a 2-class
        model: objects numbered 1..K (uint16, uint32 above 65534 objects), by the rules of
        ``instance_options`` (an ``unet_fast.instances.InstanceOptions``; default: its defaults), the
        same labels whatever the tiles; an array ``out`` sets the type.
    progress: a tqdm bar over tiles (True, False; None: only when stderr is a terminal), or a callable
        given the fraction of the tiles done after each batch (an exception it raises stops the
        prediction: nothing is written, as on any error).
    out: None (a numpy array is returned), an array to fill (shape (..., H, W) for labels,
        (..., K, H, W) otherwise; of an integer type that holds every class for labels and instances, a
        floating-point type for probabilities and logits), or a path ending in .tif/.tiff (tiled
        BigTIFF; classes stored as samples per pixel) or .zarr (OME-Zarr), written as tiles finish and
        committed atomically.
    pixel_size: the image's (unet_fast.pixel_size.PixelSize), written into a file ``out``.
    provenance: a JSON-serialisable dict of how the result was made, written into a file ``out``
        (``unet_fast.sinks.read_provenance`` reads it back; ``unet-fast segment --continue`` compares it).
    normalization: how raw pixels become inputs; None: ``model.normalization`` (set by
        load_model) if present, else percentiles (Normalization()) for integer images and no
        change for float images.
    tta: test-time augmentation: the mean of the predictions of the 8 flips and 90-degree rotations of
        every tile (``dihedral_mean_logits``); 8 times the compute, a slightly smoother, more accurate
        result (real nuclei, 4 models of the default recipe: foreground IoU +0.5 to +0.7 points), the same
        whatever the tiles.
    scale: resample the image by this factor before the network and its logits back after it (see
        ``unet_fast.rescale``): None: ``model.input_scale`` (set by load_model from the model file: the
        factor training resampled its images by to bring their objects to the recipe's size), else 1.
        Results are on the image's own grid whatever the scale.
    cuda_graphs: on CUDA, replay each full batch as one captured graph (unet_fast.tile_graphs; a graph's
        buffers are shared: calls on one model from several threads at once need cuda_graphs=False),
        kept on the model for later calls (the two most recently used batch shapes: each holds its own
        memory pool); None: when the image has at least two full batches of at most GRAPH_MAX_BATCH_PIXELS
        input pixels, or a graph of this batch shape is kept already. Results are the same either way.
    nonfinite: NaN and infinite pixels of a float image: None (the normalization's rule, by default
        "error": ``NonFiniteInputError``), "error", or "zero" (statistics of the finite pixels, and
        the non-finite ones become 0 after normalising; see ``Normalization``).
    memory_budget_bytes: bytes the plan may use (None: planned from free memory).
    An ``out`` path that is, or would replace, the file ``image`` is read from (through symlinks and
    hard links too) is refused before anything is read.
    The network's output (its kept logits) is checked tile by tile as it is written: NaN or infinite values
    (float16 activations that overflow, NaN weights) raise ``NonFiniteOutputError`` naming the tile and the
    cause; no file ``out`` is written. The check reads the logits twice (amax, amin) and comes back with each
    batch's result: no wait of its own on a GPU.
    Returns the result array, ``out``, or the path written.
    """
    _, _, in_channels, num_classes = model_geometry(model)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    checks.check_bool(tta, "tta")
    scale = model_scale(model, scale)
    if memory_budget_bytes is not None and (isinstance(memory_budget_bytes, bool) or not isinstance(
            memory_budget_bytes, int) or memory_budget_bytes < 1):
        raise checks.BadArgument("memory_budget_bytes", f"memory_budget_bytes must be None or a positive number "
                                                        f"of bytes, got {memory_budget_bytes!r}")
    if isinstance(out, (str, Path)):
        check_out_path(out)
        checks.check_output_is_not_an_input(out, _backing_files(image), "out", "file the image is read from")
    if output == "instances":
        return _predict_instances(model, image, instance_options, out=out, layout=layout, tile_size=tile_size,
                                  batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                                  normalization=normalization, memory_budget_bytes=memory_budget_bytes,
                                  cuda_graphs=cuda_graphs, pixel_size=pixel_size,
                                  nonfinite=nonfinite, tta=tta, scale=scale, provenance=provenance)
    if instance_options is not None:
        raise ValueError(f"instance_options applies to output='instances' only, got output={output!r}")
    if scale != 1.0:
        return _predict_rescaled(model, image, scale, output=output, out=out, layout=layout, dtype=dtype,
                                 normalization=normalization, nonfinite=nonfinite, pixel_size=pixel_size,
                                 provenance=provenance,
                                 tile_size=tile_size, batch_size=batch_size, device=device, progress=progress,
                                 memory_budget_bytes=memory_budget_bytes, cuda_graphs=cuda_graphs, tta=tta)
    compute_dtype = parse_compute_dtype(dtype)
    source = _Source.open(image, layout, in_channels)
    device = checks.check_device(device) or model_device(model)
    warn_slow_cpu_precision(device, compute_dtype)
    normalization = normalization if normalization is not None else getattr(model, "normalization", None)
    normalize = _normalizer(normalization, source, nonfinite)
    shape = ((source.slices,) if source.stacked else ()) + (
        (source.height, source.width) if output == "labels" else (num_classes, source.height, source.width))
    out_dtype = _output_dtype(output, compute_dtype, num_classes, out)
    plan = plan_tiles(model, (source.height, source.width), slices=source.slices, tile_size=tile_size,
                      batch_size=batch_size, device=device, dtype=compute_dtype,
                      memory_budget_bytes=memory_budget_bytes)
    log.info("predict_tiled plan: %s", plan.explain())
    check_chosen_plan_fits(plan, tile_size, batch_size, memory_budget_bytes)
    was_training = model.training
    # the sink last, and everything after it under the try: an error (or SIGTERM) before the first
    # tile must leave neither its temporary file nor its writer thread behind
    sink = open_sink(out, shape, out_dtype, stacked=source.stacked, channels=output != "labels",
                     pixel_size=pixel_size, provenance=provenance, class_names=label_names(model, output))
    try:
        _ready_for_inference(model, device)
        runner = _Runner(model, source, plan, device, compute_dtype, output, out_dtype, sink, normalize,
                         cuda_graphs, tta)
        # on the model's GPU as the current device: the events, stream and graph captures of the run are its own
        # (a plain torch.cuda.Event() records on the current device's stream, cuda:0 for a model on cuda:1)
        with torch.inference_mode(), frozen_weights(), on_device(device):  # the weights cannot change during it
            runner.run(sys.stderr.isatty() if progress is None else progress)
        result = sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        if was_training:
            model.train()
    if plan.retries:
        log.info("predict_tiled finished after retries: %s", plan.explain())
    return result


def _ready_for_inference(model, device: torch.device) -> None:
    """The model on ``device``, its 4-D weights channels_last, in eval mode; without touching a model that is so
    already: ``Module.to`` and ``eval`` walk every module in Python (about 1.5 ms for a U-Net of depth 5, a fifth
    of a 512 x 512 image's forward on an H200: a folder of small images paid it on every image)."""
    if device.index is None and device.type != "cpu":     # "cuda", "mps": the device .to would put it on
        device = torch.device(device.type, torch.cuda.current_device() if device.type == "cuda" else 0)
    tensors = itertools.chain(model.parameters(), model.buffers())
    if not all(t.device == device and (t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last))
               for t in tensors):
        model.to(device=device, memory_format=torch.channels_last)
    if any(module.training for module in model.modules()):
        model.eval()


#: pixels per band when rescaled logits are turned back to the image's grid
BACK_BAND_PIXELS = 2 ** 22


def _predict_rescaled(model, image, scale: float, *, output, out, layout, dtype, normalization, nonfinite,
                      pixel_size, provenance, progress, **predict):
    """predict_tiled with ``scale`` != 1: the logits of the image resampled by ``scale`` (a lazy view,
    normalised with the statistics of the image as given), into scratch space, then resampled back to
    the image's grid band by band and turned into ``output``. Every pixel of both resamplings is read
    from a fixed neighbourhood, so the result is the same whatever the tiles."""
    from .instances import IN_MEMORY_PIXELS, Scratch, scratch_for

    _, _, in_channels, num_classes = model_geometry(model)
    source = _Source.open(image, layout, in_channels)
    normalization = normalization if normalization is not None else getattr(model, "normalization", None)
    normalize = _normalizer(normalization, source, nonfinite)
    channels = "C" in source.layout
    size = (scaled_size(source.height, scale), scaled_size(source.width, scale))
    virtual = Resampled(source.image, size,   # blocks come as (C, h, w) or (h, w): one plane at a time
                        lambda block: normalize(block) if channels else normalize(block[None])[0])
    planes = (source.slices,) if source.stacked else ()
    compute_dtype = parse_compute_dtype(dtype)
    out_dtype = _output_dtype(output, compute_dtype, num_classes, out)
    shape = planes + ((source.height, source.width) if output == "labels" else
                      (num_classes, source.height, source.width))
    # scale^2 times the image's pixels: on disk when large, where scratch_for puts it (beside a file ``out``, named
    # after it: what a killed run left there goes with its other leftovers), in the system's temporary folder for a
    # result returned in memory
    pixels = source.slices * num_classes * size[0] * size[1]
    with (scratch_for(out, pixels) if out is not None else
          Scratch(tempfile.gettempdir() if pixels > IN_MEMORY_PIXELS else None)) as scratch:
        logits = scratch.array(planes + (num_classes,) + size, np.float32)
        # the sink before the network: an out array of the wrong shape is refused before any work, not after it
        sink = open_sink(out, shape, out_dtype, stacked=source.stacked, channels=output != "labels",
                         pixel_size=pixel_size, provenance=provenance, class_names=label_names(model, output))
        try:
            predict_tiled(model, virtual, layout=source.layout, output="logits", out=logits, dtype=dtype, scale=1.0,
                          normalization=Normalization(mode="none"), progress=progress, **predict)
            back = Resampled(logits, (source.height, source.width))
            band = max(1, BACK_BAND_PIXELS // (num_classes * source.width))
            for n in range(source.slices):
                for y0 in range(0, source.height, band):
                    termination.check()
                    lead = (n,) if source.stacked else ()
                    block = torch.from_numpy(back[lead + (slice(None), slice(y0, y0 + band), slice(None))])
                    if output == "labels":
                        block = argmax_classes(block)
                    elif output == "probabilities":
                        block = torch.softmax(block, 0)
                    sink.write(n, y0, 0, block.to(out_dtype).numpy())
            return sink.close()
        except BaseException:
            sink.abort()
            raise


def argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """argmax over the class axis of (K, h, w) scores (the first class on ties, as argmax), class by class:
    torch's argmax over a leading contiguous axis is 20x slower on the CPU (68 ms per megapixel)."""
    best, index = scores[0], torch.zeros(scores.shape[1:], dtype=torch.int64, device=scores.device)
    for k in range(1, scores.shape[0]):
        index[scores[k] > best] = k
        best = torch.maximum(best, scores[k])
    return index


def check_out_path(out) -> Path:
    """A path ``out`` a result can be written to, checked before any work (BadArgument "out"): it ends in
    .tif/.tiff (a file: not an existing folder) or .zarr (a folder: not an existing file), in a folder
    that is, or can be created, writable."""
    from .image_io import TIFF_SUFFIXES, ZARR_SUFFIXES

    path = Path(out)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return checks.check_writable_file(path, "out")
    if suffix in ZARR_SUFFIXES:
        if path.exists() and not path.is_dir():
            raise checks.BadArgument("out", f"{str(path)!r} is a file, but a .zarr result is a folder; name "
                                            f"another")
        checks.check_writable_folder(path.parent if str(path.parent) else Path("."), "out")
        return path
    raise checks.BadArgument("out", f"out path {str(path)!r} must end in .tif, .tiff or .zarr (got {suffix!r})")


def available_memory(device) -> int | None:
    """Bytes free on ``device`` now (on the CPU ``tiling.cpu_available_bytes``: MemAvailable, or a container's
    memory limit where that leaves less); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_free_bytes(device)
    return cpu_available_bytes()


def check_chosen_plan_fits(plan: TilePlan, tile_size, batch_size, memory_budget_bytes=None) -> None:
    """A tile or batch size the caller chose must fit: in ``memory_budget_bytes`` when given, else in
    the memory free on the device. The planner never picks more than fits; a chosen tile of 10^5 px
    a side would not fail but take the machine down, so it is refused (BadArgument) before any work."""
    if tile_size is None and batch_size is None:
        return
    limit = memory_budget_bytes if memory_budget_bytes is not None else available_memory(plan.device)
    if limit is None or plan.estimated_bytes <= limit:
        return
    argument = "tile_size" if tile_size is not None else "batch_size"
    where = "the memory budget (memory_budget_bytes)" if memory_budget_bytes is not None else \
        f"the memory free on {plan.device}"
    raise checks.BadArgument(argument, f"a batch of {plan.batch_size} tile(s) of {plan.tile[0]}x{plan.tile[1]} px "
                                       f"needs about {plan.estimated_bytes / 2 ** 30:.3g} GiB, more than "
                                       f"{where}, {limit / 2 ** 30:.3g} GiB; choose a smaller {argument}"
                                       f"{' or batch_size' if tile_size is not None and batch_size is not None else ''}"
                                       f", or leave it out to have it planned")


def _backing_files(image) -> list[str]:
    """The files a lazy image reads from, where it says: a numpy memmap, a zarr array over a folder or
    over a TIFF (tifffile's aszarr store), or unet_fast's axis-moving view of one of these."""
    image = getattr(image, "_array", image)           # image_io._MovedAxes
    filename = getattr(image, "filename", None)       # numpy.memmap
    if isinstance(filename, (str, Path)):
        return [str(filename)]
    store = getattr(image, "store", None)
    root = getattr(store, "root", None)               # zarr LocalStore
    if isinstance(root, (str, Path)):
        return [str(root)]
    files = []
    for series in getattr(store, "_data", None) or []:   # tifffile.ZarrTiffStore: its TiffPageSeries
        path = getattr(getattr(getattr(series, "parent", None), "filehandle", None), "path", None)
        if isinstance(path, str):
            files.append(path)
    return files


def _normalizer(normalization: Normalization | None, source: "_Source", nonfinite: str | None = None):
    """The function that turns a raw (C, h, w) block into network inputs: ``normalization`` with
    statistics of the whole image, by default percentiles for integer images and none for float ones;
    ``nonfinite`` overrides its rule for NaN/inf pixels."""
    if normalization is None:
        raw_dtype = np.dtype(source.image.dtype) if hasattr(source.image, "dtype") else np.dtype(np.float32)
        normalization = Normalization(mode="none") if raw_dtype.kind == "f" else Normalization()
    if not isinstance(normalization, Normalization):
        raise TypeError(f"normalization must be a unet_fast.Normalization, got {type(normalization).__name__}")
    if nonfinite is not None:
        normalization = dataclasses.replace(normalization, nonfinite=nonfinite)
    offset, scale = normalization.statistics(source.image, source.layout.index("C") if "C" in source.layout else None)
    return lambda block: normalization.apply(block, offset, scale, 0)


def warn_slow_cpu_precision(device: torch.device, compute_dtype: torch.dtype,
                            instead: str = "use fp32 (the default)") -> None:
    """A warning where a CPU has no oneDNN kernels for a low precision (fp16 on CPUs without AVX-512 FP16 or AMX;
    bf16 on AVX2-only CPUs): aten's im2col fallback ran a 572 px tile 8-11x slower than fp32 on a 2-core AVX-512
    EPYC, in 2-2.3x the memory (benchmarks/results/2026-11-27-cpu-precision.md), where bf16 with kernels ran 1.9-2.3x
    faster than fp32. instead: the way out, as the caller names it."""
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(compute_dtype)
    if device.type != "cpu" or name is None or cpu_convolutions_use_onednn(compute_dtype):
        return
    other = (", or bf16, which this CPU has oneDNN kernels for (about 2x faster than fp32 where measured)"
             if name == "fp16" and cpu_convolutions_use_onednn(torch.bfloat16) else "")
    warnings.warn(f"{name} on this CPU: torch has no oneDNN kernels for it here, and its fallback convolutions ran "
                  f"8-11x slower than fp32 in about twice the memory where measured; {instead}{other}",
                  stacklevel=3)    # the caller of predict_tiled or fit


def label_names(model, output: str) -> list[str] | None:
    """What an OME-Zarr of class labels names its values by (NGFF "image-label" "properties"), or of probabilities
    its class axis' channels ("omero"): ``class_names_of`` the model; None for instances."""
    return class_names_of(model) if output in ("labels", "probabilities") else None


def _output_dtype(output: str, compute_dtype: torch.dtype, num_classes: int, out) -> torch.dtype:
    if out is not None and not isinstance(out, (str, Path)) and hasattr(out, "dtype"):
        dtype = out.dtype if isinstance(out.dtype, torch.dtype) else _torch_dtype(out.dtype)
        if output in ("labels", "instances"):
            if dtype is None or dtype.is_floating_point or dtype.is_complex:
                raise ValueError(f"labels need an integer out array, got {out.dtype}")
            if output == "instances" and dtype == torch.bool:      # ids, not a mask
                raise ValueError(f"out must be an integer array that holds labels, got {out.dtype}")
            top = 1 if dtype == torch.bool else torch.iinfo(dtype).max
            if top < num_classes - 1:   # a cast would wrap the higher classes round, silently
                raise ValueError(f"out of type {out.dtype} cannot hold the labels of {num_classes} "
                                 f"classes (up to {num_classes - 1}); give an out array of a wider "
                                 f"integer type (np.int32), or none")
        elif dtype is None or not dtype.is_floating_point:   # a cast would truncate them, silently
            raise ValueError(f"{output} need an out array of a floating-point type (np.float32), got {out.dtype}")
        if dtype not in (torch.float16, torch.float32, torch.float64) and dtype.is_floating_point:
            return torch.float32   # a bfloat16 tensor: results come as numpy blocks, cast when written into it
        return dtype
    if output == "labels":
        return torch.uint8 if num_classes <= 256 else torch.int32
    if output == "probabilities" and compute_dtype != torch.float32:
        return torch.float16
    return torch.float32


def _torch_dtype(dtype) -> torch.dtype | None:
    """The torch type of a numpy (or zarr) array's ``dtype`` in native byte order; None where torch has none."""
    try:
        return torch.from_numpy(np.zeros(0, np.dtype(dtype).newbyteorder("="))).dtype
    except (TypeError, ValueError):
        return None


def _predict_instances(model, image, options, *, out, layout, pixel_size, provenance=None, **predict):
    """output="instances": the class labels of a 2-class model into a scratch mask, then the objects
    (``unet_fast.instances``), streamed through scratch files when the result goes to a file."""
    from .instances import scratch_for
    from .sinks import ZARR_SUFFIXES
    from .image_io import TIFF_SUFFIXES

    _, _, in_channels, num_classes = model_geometry(model)
    options = _instance_options(options, num_classes, model_scale(model, predict.get("scale")))
    if isinstance(out, (str, Path)) and Path(out).suffix.lower() not in TIFF_SUFFIXES + ZARR_SUFFIXES:
        raise ValueError(f"out path {str(out)!r} must end in .tif, .tiff or .zarr")
    source = _Source.open(image, layout, in_channels)
    planes = (source.slices,) if source.stacked else ()
    if out is not None and not isinstance(out, (str, Path)):   # before any work (the type is checked again with
        if tuple(out.shape) != planes + (source.height, source.width):       # the count of objects, after it)
            raise ValueError(f"out has shape {tuple(out.shape)} but the labels need "
                             f"{planes + (source.height, source.width)}")
        _output_dtype("instances", torch.float32, 2, out)
    kind = _instance_input(options)
    with scratch_for(out, source.slices * source.height * source.width) as scratch:
        prediction = scratch.array(planes + ((source.height, source.width) if kind == "labels" else
                                             (2, source.height, source.width)), np.uint8 if kind == "labels"
                                   else np.float32)
        predict_tiled(model, source.image, layout=source.layout, output=kind, out=prediction, **predict)
        return _label_prediction(prediction, options, out=out, stacked=source.stacked, scratch=scratch,
                                 pixel_size=pixel_size, provenance=provenance)


def _instance_options(options, num_classes: int, scale: float = 1.0):
    """The instance rules (None: the defaults), checked, for a model of ``num_classes``, which must be 2, in
    the pixels of the image the model resamples by ``scale`` (``InstanceOptions.in_image_pixels``)."""
    from .instance_options import InstanceOptions

    if num_classes != 2:
        raise ValueError(f"output='instances' needs a model of 2 classes (background, foreground); this one has "
                         f"{num_classes}: use output='labels' (a class per pixel) and label each class's regions, "
                         f"or train a 2-class model")
    options = InstanceOptions() if options is None else options
    if not isinstance(options, InstanceOptions):
        raise TypeError(f"instance_options must be a unet_fast.instances.InstanceOptions, got {type(options).__name__}")
    return options.in_image_pixels(scale)


def _instance_input(options) -> str:
    """What the instance rules need of the network: its "labels" when the foreground is where it wins the
    argmax (1 byte a pixel), else its "probabilities" (smoothing, a threshold other than 0.5, or splitting)."""
    return "labels" if options.threshold == 0.5 and options.split is None and not options.smoothing \
        else "probabilities"


def _label_prediction(prediction, options, *, stacked: bool, **label):
    """The objects (``label_instances``) of a prediction made as ``_instance_input`` says."""
    from .instances import ClassView, label_instances

    if _instance_input(options) == "labels":
        return label_instances(prediction, options, stacked=stacked, **label)
    return label_instances(ClassView(prediction, stacked=stacked, threshold=options.threshold,
                                     smoothing=options.smoothing), options,
                           probability=ClassView(prediction, stacked=stacked), stacked=stacked, **label)


def predict_images(model, images, *, outs=None, pixel_sizes=None, provenance: dict | None = None,
                   layout: str | None = None, output: str = "labels", normalization: Normalization | None = None,
                   nonfinite: str | None = None, instance_options=None, tile_size=None, batch_size=None,
                   device=None, dtype=None, progress=None, memory_budget_bytes: int | None = None,
                   cuda_graphs: bool | None = None, tta: bool = False, scale=None) -> list:
    """Segment many images of one shape together: each is normalised with its own statistics and its result
    is ``predict_tiled``'s on it alone, but the tiles of all of them go through one planned run and share
    the network's batches, which for small images (one or a few tiles each) is faster than one call per
    image. (Tiles batched differently can differ in the last bits of floating point, so a pixel where two
    classes tie to those bits may get the other label.)

    images: a sequence of (H, W) or (C, H, W) images of one shape, read whole into memory; layout: "YX" or
        "CYX" (None: from the dimensions and the model's in_channels, as predict_tiled).
    outs: None (arrays are returned), or one out per image as predict_tiled's ``out`` (a path, an array,
        or None), each written when all are predicted; pixel_sizes: one per image, or None, for files.
    Every other argument is predict_tiled's, for every image.
    Returns the results (arrays or the paths written), in the order of ``images``.
    """
    images = _sequence(images, "images", "a list of (H, W) or (C, H, W) images (for one image or a (Z, H, W) "
                                          "stack: predict_tiled)")
    if not images:
        return []
    outs = [None] * len(images) if outs is None else _sequence(outs, "outs", "a list with one out per image")
    pixel_sizes = [None] * len(images) if pixel_sizes is None else \
        _sequence(pixel_sizes, "pixel_sizes", "a list with one pixel size (or None) per image")
    for name, values in (("outs", outs), ("pixel_sizes", pixel_sizes)):
        if len(values) != len(images):
            raise checks.BadArgument(name, f"{name} must have one entry per image ({len(images)}), got {len(values)}")
    if output not in OUTPUTS:
        raise checks.BadArgument("output", f"output must be one of {OUTPUTS}, got {output!r}")
    if layout not in (None, "YX", "CYX"):
        raise checks.BadArgument("layout", f"layout must be None, 'YX' or 'CYX' (predict_images takes single "
                                           f"planes; segment a stack with predict_tiled), got {layout!r}")
    _, _, in_channels, num_classes = model_geometry(model)
    sources = []
    for index, image in enumerate(images):
        with _naming(index):
            sources.append(_Source.open(image, layout, in_channels))
        if sources[-1].stacked:
            raise checks.BadArgument("images", f"images[{index}] has shape {tuple(sources[-1].image.shape)}, a stack "
                                               f"(Z, H, W); predict_images takes single planes: segment stacks with "
                                               f"predict_tiled")
        if (sources[-1].layout, sources[-1].image.shape) != (sources[0].layout, sources[0].image.shape):
            raise checks.BadArgument("images", f"images[{index}] has shape {tuple(sources[-1].image.shape)} but "
                                               f"images[0] has {tuple(sources[0].image.shape)}; predict_images needs "
                                               f"images of one shape (group them by shape)")
    if output == "instances":
        options = _instance_options(instance_options, num_classes, model_scale(model, scale))
    elif instance_options is not None:
        raise ValueError(f"instance_options applies to output='instances' only, got output={output!r}")
    shape = (height, width) = sources[0].height, sources[0].width
    result_shape = shape if output in ("labels", "instances") else (num_classes, *shape)
    read_from = [path for image in images for path in _backing_files(image)]
    paths = [Path(out).resolve() for out in outs if isinstance(out, (str, Path))]
    if len(set(paths)) != len(paths):
        raise checks.BadArgument("outs", "outs names one file twice, so one result would replace another; give "
                                         "each image its own out")
    for index, out in enumerate(outs):
        if isinstance(out, (str, Path)):
            check_out_path(out)
            checks.check_output_is_not_an_input(out, read_from, "outs", "file an image is read from")
        elif out is not None:
            if tuple(out.shape) != result_shape:
                raise checks.BadArgument("outs", f"outs[{index}] has shape {tuple(out.shape)} but this result needs "
                                                 f"{result_shape}")
            with _naming(index, "outs"):
                _output_dtype(output, torch.float32, num_classes, out)
    normalization = normalization if normalization is not None else getattr(model, "normalization", None)
    # each image normalised as predict_tiled would (a pointwise rule with its own statistics), so the stack
    # goes through unchanged
    stack = np.empty((len(sources), sources[0].channels, height, width), np.float32)
    for index, source in enumerate(sources):
        with _naming(index):
            stack[index] = _normalizer(normalization, source, nonfinite)(source.window(0, 0, height, 0, width))
    kind = _instance_input(options) if output == "instances" else output
    # the instance rules read float32 probabilities, as predict_tiled(output="instances") keeps them (float16
    # ones, what fp16/bf16 give by default, would move the smoothed outlines and the split's cores)
    scratch = np.empty((len(sources), num_classes, height, width), np.float32) \
        if output == "instances" and kind == "probabilities" else None
    try:
        predicted = predict_tiled(model, stack, layout="ZCYX", output=kind, normalization=Normalization(mode="none"),
                                  tile_size=tile_size, batch_size=batch_size, device=device, dtype=dtype,
                                  progress=progress, memory_budget_bytes=memory_budget_bytes, cuda_graphs=cuda_graphs,
                                  tta=tta, scale=scale, out=scratch)
    except NonFiniteOutputError as error:   # the stack's slices are the images
        raise NonFiniteOutputError(f"images[{error.plane}]: {error.detail}", error.plane, error.detail) from None
    results = []
    for index, out in enumerate(outs):
        if output == "instances":
            results.append(_label_prediction(predicted[index], options, stacked=False, out=out,
                                             pixel_size=pixel_sizes[index], provenance=provenance))
            continue
        sink = open_sink(out, predicted.shape[1:], torch.from_numpy(predicted[:0]).dtype, stacked=False,
                         channels=output != "labels", pixel_size=pixel_sizes[index], provenance=provenance,
                         class_names=label_names(model, output))
        try:
            sink.write(0, 0, 0, predicted[index])
            results.append(sink.close())
        except BaseException:
            sink.abort()
            raise
    return results
