"""Exact overlap-tile inference for images of any size (``predict_tiled``) and its tile planner.

Valid-padding nets (the paper's): each output tile is computed from an input tile carrying the
context the net consumes (92 px per side at depth 5); beyond the image border the input is
mirrored (reflection without repeating the edge pixel, repeated as often as needed). Output
tiles do not overlap. The result equals ONE pass of the net over the whole image mirrored by the
context on every side (then cropped), because every tile starts at a multiple of 2^(depth-1)
pixels from that padded origin: max-pooling then sees the same 2x2 cells in the tile as in the
whole-image pass. (Tiles placed at arbitrary offsets, e.g. every 388 px at depth 5, would shift
the pooling grid and change the result; so each tile keeps the largest multiple of 2^(depth-1)
pixels of its output and the next tile starts there.)

Same-padding nets: tiles overlap and each discards a margin of its output on every side, where
zero padding inside the tile makes values unreliable. The margin is how far zero padding at a
tile edge reaches into the output, walked through the net and rounded up to a multiple of
2^(depth-1) (``same_padding_margin``: 96 px at depth 5): every output pixel kept then has its whole receptive
field inside the tile, so the result equals one pass over the image mirrored by the margin. It is
NOT equal to a plain whole-image pass of a same-padding net (which zero-pads the image border),
and it is exact only in that sense: only valid nets give the paper's seamless result by design.

Memory: only the tiles in flight are read (lazy inputs: numpy memmap, zarr, tifffile aszarr) and
results are written tile by tile into ``out`` (an array, or a streaming TIFF / OME-Zarr file).
"""
from __future__ import annotations

import logging
import math
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import geometry, io
from .geometry import mirror_indices
from .io import Normalization

log = logging.getLogger(__name__)

OUTPUTS = ("labels", "probabilities", "logits")
LAYOUTS = ("YX", "CYX", "ZYX", "ZCYX")
DTYPES = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32, torch.float32: torch.float32,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, torch.bfloat16: torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, torch.float16: torch.float16}
CPU_BUDGET_CAP = 2 ** 30
WORKSPACE_FACTOR = 1.25  # convolution workspaces and allocator slack on top of live activations


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class AxisTiling:
    """Tiling along one axis: input tiles of ``tile`` px, each keeping ``stride`` output px."""

    tile: int
    stride: int
    lead: int        # input pixels in front of the first kept output pixel (context or margin)
    offset: int      # index of the first kept pixel in the tile's output
    count: int       # tiles along the axis


def _keep(tile: int, depth: int, padding: str) -> tuple[int, int, int]:
    """(stride, lead, offset) of an input tile; stride 0 when the tile keeps nothing."""
    step = geometry.size_step(depth)
    if padding == "valid":
        out = geometry.output_size(tile, depth, padding)
        return out - out % step, geometry.context(depth, padding), 0
    margin = same_padding_margin(depth)
    return max(0, tile - 2 * margin), margin, margin


def same_padding_margin(depth: int) -> int:
    """Output pixels discarded per tile side for same-padding nets.

    How far the zero padding at a tile's edge reaches into the output, walked through the net
    in input pixels: each 3x3 convolution at level l spreads it by 2^l, each 2x2 pooling rounds it
    up to its cell (2^(l+1)); the result is rounded up to a multiple of 2^(depth-1) so tiles stay
    pool-aligned (96 px at depth 5, against 92 px of context for the valid net).
    """
    geometry.size_step(depth)  # validates depth
    reach = 0
    for level in range(depth):
        reach += 2 * 2 ** level
        if level < depth - 1:
            cell = 2 ** (level + 1)
            reach = -(-reach // cell) * cell
    for level in reversed(range(depth - 1)):
        reach += 2 * 2 ** level
    step = geometry.size_step(depth)
    return -(-reach // step) * step


def usable_tile_sizes(depth: int, padding: str, max_size: int) -> list[int]:
    """Legal input tile sizes up to max_size that keep at least one output pixel, smallest first."""
    return list(range(_smallest_tile_covering(1, depth, padding), max_size + 1, geometry.size_step(depth)))


def _smallest_tile_covering(stride: int, depth: int, padding: str) -> int:
    """Smallest usable tile keeping at least ``stride`` px (kept pixels grow by one step per step)."""
    step = geometry.size_step(depth)
    first = geometry.min_input_size(depth, padding)
    while _keep(first, depth, padding)[0] < 1:
        first += step
    missing = stride - _keep(first, depth, padding)[0]
    return first + max(0, -(-missing // step)) * step


def axis_tiling(length: int, tile: int, depth: int, padding: str) -> AxisTiling:
    stride, lead, offset = _keep(tile, depth, padding)
    return AxisTiling(tile, stride, lead, offset, -(-length // stride))


def balanced_axis_tiling(length: int, max_tile: int, depth: int, padding: str) -> AxisTiling:
    """The smallest tile that covers ``length`` in as few tiles as ``max_tile`` would."""
    count = -(-length // _keep(max_tile, depth, padding)[0])
    tile = _smallest_tile_covering(-(-length // count), depth, padding)
    return axis_tiling(length, min(tile, max_tile), depth, padding)


# ----------------------------------------------------------------------------- memory model

def _base_channels(model) -> int:
    base = getattr(model, "base_channels", None)
    if base is None:
        first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        base = first.out_channels if first is not None else 64
    return int(base)


def estimate_activation_bytes(depth: int, padding: str, in_channels: int, num_classes: int,
                              base_channels: int, height: int, width: int, batch: int = 1,
                              element_size: int = 4) -> int:
    """Peak bytes of live activations of one inference forward pass, walked layer by layer.

    Counts the kept skip connections plus, at every layer, its input, output and the ReLU
    copy (the forward is not in place), times ``WORKSPACE_FACTOR`` for workspaces.
    """
    loss = 2 if padding == "valid" else 0
    h, w, channels = height, width, in_channels
    skips: list[int] = []
    peak = 0

    def double_conv(h, w, c_in, c_out, live):
        nonlocal peak
        h1, w1 = h - loss, w - loss
        h2, w2 = h1 - loss, w1 - loss
        peak = max(peak, live + c_in * h * w + 2 * c_out * h1 * w1, live + c_out * (h1 * w1 + 2 * h2 * w2))
        return h2, w2

    for level in range(depth):
        width_l = base_channels * 2 ** level
        h, w = double_conv(h, w, channels, width_l, sum(skips))
        channels = width_l
        if level < depth - 1:
            skips.append(channels * h * w)
            h, w = h // 2, w // 2
    for level in reversed(range(depth - 1)):
        width_l = base_channels * 2 ** level
        skip = skips.pop()
        up = width_l * 4 * h * w
        peak = max(peak, sum(skips) + skip + channels * h * w + up + 2 * up)  # up-conv + concat
        h, w = double_conv(2 * h, 2 * w, 2 * width_l, width_l, sum(skips))
        channels = width_l
    peak = max(peak, (channels + 2 * num_classes) * h * w)
    return int(peak * batch * element_size * WORKSPACE_FACTOR)


def memory_budget(device) -> int:
    """Bytes inference may use: 80 % of free memory on CUDA; on CPU a quarter of available RAM
    (at most 1 GiB: one tile already keeps the cores busy, and larger tiles save little)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return CPU_BUDGET_CAP if available is None else int(min(CPU_BUDGET_CAP, available // 4))


# ----------------------------------------------------------------------------- planning

@dataclass
class TilePlan:
    """The tiling predict_tiled uses, and why (``explain()``)."""

    tile: tuple[int, int]          # input tile (h, w)
    stride: tuple[int, int]        # output pixels each tile keeps; tiles do not overlap there
    lead: tuple[int, int]          # context (valid) or margin (same) per side
    grid: tuple[int, int]          # tiles per slice (rows, columns)
    slices: int
    batch_size: int
    estimated_bytes: int           # activations of one batch
    budget_bytes: int
    device: str
    reason: str
    retries: list[str] = field(default_factory=list)

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1] * self.slices

    def explain(self) -> str:
        text = (f"tiles {self.tile[0]}x{self.tile[1]} in, {self.stride[0]}x{self.stride[1]} kept "
                f"({self.lead[0]} px context/margin per side); grid {self.grid[0]}x{self.grid[1]} x "
                f"{self.slices} slice(s) = {self.tiles} tiles; batch {self.batch_size}; estimated "
                f"{self.estimated_bytes / 2 ** 20:.0f} MiB of a {self.budget_bytes / 2 ** 20:.0f} MiB "
                f"budget on {self.device}: {self.reason}")
        return text + "".join(f"; retry: {r}" for r in self.retries)


def _model_geometry(model) -> tuple[int, str, int, int]:
    missing = [a for a in ("depth", "padding", "in_channels", "num_classes") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model must have unet_fast's config attributes (depth, padding, in_channels, "
                        f"num_classes); {type(model).__name__} lacks {missing}")
    return model.depth, model.padding, model.in_channels, model.num_classes


def _tile_pair(tile_size) -> tuple[int, int]:
    if isinstance(tile_size, int) and not isinstance(tile_size, bool):
        return tile_size, tile_size
    if (isinstance(tile_size, (tuple, list)) and len(tile_size) == 2
            and all(isinstance(t, int) and not isinstance(t, bool) for t in tile_size)):
        return tuple(tile_size)
    raise ValueError(f"tile_size must be an int or (height, width), got {tile_size!r}")


def plan_tiles(model, image_size, *, slices: int = 1, tile_size=None, batch_size: int | None = None,
               device=None, dtype=None, memory_budget_bytes: int | None = None) -> TilePlan:
    """Choose tile and batch for an image of ``image_size`` = (H, W) (``slices`` of them).

    Without ``tile_size``: the largest legal square-capped tile whose activations fit the
    budget (larger tiles recompute fewer context pixels), shrunk to the smallest tile that
    covers the image in the same number of tiles. Batch: 1 on CPU (one tile fills the cores;
    more only costs memory), else as many tiles as fit the budget (at most 64).
    """
    depth, padding, in_channels, num_classes = _model_geometry(model)
    height, width = (int(s) for s in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {image_size!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    compute_dtype = _compute_dtype(dtype)
    element = torch.empty((), dtype=compute_dtype).element_size()
    budget = memory_budget_bytes if memory_budget_bytes is not None else memory_budget(device)
    base = _base_channels(model)

    def cost(th, tw, batch=1):
        return estimate_activation_bytes(depth, padding, in_channels, num_classes, base, th, tw, batch, element)

    if tile_size is not None:
        th, tw = _tile_pair(tile_size)
        for name, t in (("height", th), ("width", tw)):
            trace = geometry.trace_sizes(t, depth, padding)
            if trace.problem is not None:
                raise ValueError(f"tile_size {name}: " + geometry.size_error_message(t, depth, padding, trace.problem))
            if _keep(t, depth, padding)[0] < 1:
                smallest = usable_tile_sizes(depth, padding, t + 64 * geometry.size_step(depth))[0]
                raise ValueError(f"tile_size {name} {t} keeps no output pixel; the smallest usable tile is {smallest}")
        rows, cols = axis_tiling(height, th, depth, padding), axis_tiling(width, tw, depth, padding)
        reason = "tile size given by the caller"
    else:
        need = max(_smallest_tile_covering(height, depth, padding), _smallest_tile_covering(width, depth, padding))
        rows = cols = None
        larger = None  # the next larger tiling, which does not fit
        for cap in usable_tile_sizes(depth, padding, need):
            r, c = balanced_axis_tiling(height, cap, depth, padding), balanced_axis_tiling(width, cap, depth, padding)
            if rows is not None and cost(r.tile, c.tile) > budget:
                larger = (r, c)
                break
            rows, cols = r, c
        if cost(rows.tile, cols.tile) > budget:
            reason = "even the smallest usable tile exceeds the memory budget; trying it anyway"
        elif larger is None:
            reason = "the whole image fits in one tile within the budget"
        else:
            r, c = larger
            reason = (f"largest tiles that fit the budget; the next larger tiling ({r.count}x{c.count} tiles of "
                      f"{r.tile}x{c.tile}) needs {cost(r.tile, c.tile) / 2 ** 20:.0f} MiB")
    per_tile = cost(rows.tile, cols.tile)
    tiles = rows.count * cols.count * slices
    if batch_size is not None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch = batch_size
    elif device.type == "cpu":
        batch = 1
    else:
        batch = max(1, min(64, tiles, budget // max(per_tile, 1)))
    return TilePlan((rows.tile, cols.tile), (rows.stride, cols.stride), (rows.lead, cols.lead),
                    (rows.count, cols.count), slices, batch, per_tile * batch, budget, str(device), reason)


def _model_device(model) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _compute_dtype(dtype) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"dtype must be one of None, 'fp32', 'bf16', 'fp16' (or the torch dtypes), "
                         f"got {dtype!r}") from None


# ----------------------------------------------------------------------------- input and output

class _Source:
    """The input as (slices, C, H, W), read window by window with mirrored borders."""

    def __init__(self, image, layout: str, in_channels: int):
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
            image = np.asarray(image)
        self.image, self.layout = image, layout
        shape = tuple(image.shape)
        self.slices = shape[0] if layout.startswith("Z") else 1
        self.channels = shape[layout.index("C")] if "C" in layout else 1
        self.height, self.width = shape[-2:]
        if self.channels != in_channels:
            raise ValueError(f"image has {self.channels} channel(s) (shape {shape}, layout {layout!r}) but "
                             f"the model expects in_channels={in_channels}")
        if self.height < 1 or self.width < 1 or self.slices < 1:
            raise ValueError(f"image must not be empty, got shape {shape}")

    def window(self, n: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ys, xs = mirror_indices(y0, y1, self.height), mirror_indices(x0, x1, self.width)
        ya, yb, xa, xb = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        lead = (n,) if self.layout.startswith("Z") else ()
        block = np.asarray(self.image[lead + (Ellipsis, slice(ya, yb), slice(xa, xb))])
        if "C" not in self.layout:
            block = block[None]
        if yb - ya != y1 - y0 or xb - xa != x1 - x0:
            block = block[:, (ys - ya)[:, None], (xs - xa)[None, :]]
        return block


def _infer_layout(image, in_channels: int) -> str:
    ndim = len(image.shape)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "CYX" if in_channels > 1 else "ZYX"
    if ndim == 4:
        return "ZCYX"
    raise ValueError(f"image must be (H, W), (C, H, W), (Z, H, W) or (Z, C, H, W); got shape {tuple(image.shape)}")


class _ArraySink:
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


# ----------------------------------------------------------------------------- prediction

class _Runner:
    def __init__(self, model, source, plan, device, compute_dtype, output, out_dtype, sink, normalize):
        self.model, self.source, self.plan, self.device = model, source, plan, device
        self.compute_dtype, self.output, self.out_dtype = compute_dtype, output, out_dtype
        self.sink, self.normalize = sink, normalize
        self.depth, self.padding = model.depth, model.padding
        self.fallback_tile: int | None = None

    # -- reading
    def read_tile(self, n, y, x, tile, lead):
        block = self.source.window(n, y - lead[0], y - lead[0] + tile[0], x - lead[1], x - lead[1] + tile[1])
        return self.normalize(block)

    # -- computing
    def forward(self, batch: torch.Tensor, offset, size) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            logits = self.model(x)
        logits = logits[..., offset[0]:offset[0] + size[0], offset[1]:offset[1] + size[1]].float()
        if self.output == "labels":
            result = logits.argmax(1).to(self.out_dtype)
        elif self.output == "probabilities":
            result = torch.softmax(logits, 1).to(self.out_dtype)
        else:
            result = logits.to(self.out_dtype)
        return result.cpu()

    def forward_splitting(self, batch, offset, size) -> torch.Tensor:
        """forward, halving the batch on out-of-memory errors (same tiles, same results)."""
        try:
            return self.forward(batch, offset, size)
        except torch.OutOfMemoryError:
            self._release()
            if batch.shape[0] == 1:
                raise
            half = max(1, batch.shape[0] // 2)
            self.plan.batch_size = min(self.plan.batch_size, half)
            self.plan.retries.append(f"out of memory at batch {batch.shape[0]}: batch {half}")
            log.warning("out of memory at batch %d; retrying with batch %d", batch.shape[0], half)
            return torch.cat([self.forward_splitting(part, offset, size) for part in batch.split(half)])

    def _release(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def write(self, n, y, x, result):
        h = min(result.shape[-2], self.source.height - y)
        w = min(result.shape[-1], self.source.width - x)
        self.sink.write(n, y, x, result[..., :h, :w].numpy())

    def compute_region(self, n, y0, x0, h, w, tile: int):
        """Output rows y0..y0+h, columns x0..x0+w (offsets pool-aligned) with square tiles of
        ``tile`` px, one at a time; on out-of-memory, again with the next smaller usable tile."""
        stride, lead, offset = _keep(tile, self.depth, self.padding)
        try:
            for y in range(y0, y0 + h, stride):
                for x in range(x0, x0 + w, stride):
                    hh, ww = min(stride, y0 + h - y), min(stride, x0 + w - x)
                    batch = torch.from_numpy(self.read_tile(n, y, x, (tile, tile), (lead, lead))[None])
                    self.write(n, y, x, self.forward(batch, (offset, offset), (hh, ww)))
        except torch.OutOfMemoryError:
            self._release()
            smaller = [t for t in usable_tile_sizes(self.depth, self.padding, tile) if t <= tile // 2 + 1] or \
                [t for t in usable_tile_sizes(self.depth, self.padding, tile) if t < tile]
            if not smaller:
                raise
            self.fallback_tile = smaller[-1]
            self.plan.retries.append(f"out of memory with a {tile} px tile: {smaller[-1]} px tiles")
            log.warning("out of memory with a %d px tile; retrying with %d px tiles", tile, smaller[-1])
            self.compute_region(n, y0, x0, h, w, smaller[-1])

    def run(self, progress: bool):
        from tqdm.auto import tqdm

        plan = self.plan
        jobs = [(n, r * plan.stride[0], c * plan.stride[1]) for n in range(plan.slices)
                for r in range(plan.grid[0]) for c in range(plan.grid[1])]
        offset = (_keep(plan.tile[0], self.depth, self.padding)[2], _keep(plan.tile[1], self.depth, self.padding)[2])
        pin = self.device.type == "cuda"
        staged: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def produce():
            try:
                start = 0
                while start < len(jobs):
                    if stop.is_set():
                        return
                    chunk = jobs[start:start + plan.batch_size]  # the batch size may shrink on OOM
                    start += len(chunk)
                    batch = torch.from_numpy(np.stack([self.read_tile(n, y, x, plan.tile, plan.lead)
                                                       for n, y, x in chunk]))
                    staged.put((chunk, batch.pin_memory() if pin else batch))
                staged.put(None)
            except BaseException as error:  # re-raised on the main thread
                staged.put(error)

        reader = threading.Thread(target=produce, name="unet_fast-tile-reader", daemon=True)
        reader.start()
        bar = tqdm(total=len(jobs), unit="tile", disable=not progress, desc="predict_tiled")
        try:
            while (item := staged.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                chunk, batch = item
                if self.fallback_tile is None:
                    try:
                        results = self.forward_splitting(batch, offset, plan.stride)
                        for (n, y, x), result in zip(chunk, results):
                            self.write(n, y, x, result)
                    except torch.OutOfMemoryError:
                        self._release()
                        for n, y, x in chunk:
                            self.compute_region(n, y, x, *plan.stride, self.fallback_tile or min(plan.tile))
                else:
                    for n, y, x in chunk:
                        self.compute_region(n, y, x, *plan.stride, self.fallback_tile)
                bar.update(len(chunk))
        finally:
            stop.set()
            while reader.is_alive():  # unblock the reader if it waits on a full queue
                try:
                    staged.get(timeout=0.1)
                except queue.Empty:
                    pass
            bar.close()


def predict_tiled(model, image, *, tile_size=None, batch_size=None, device=None, dtype=None,
                  output: str = "labels", progress=None, out=None,
                  normalization: Normalization | None = None, layout: str | None = None,
                  memory_budget_bytes: int | None = None, pixel_size=None):
    """Segment an image of any size by overlap-tile inference (see the module docstring).

    model: any module with unet_fast's config attributes (depth, padding, in_channels,
        num_classes), e.g. unet_fast.UNet or unet_fast.reference.UNet. It is moved to ``device``,
        switched to channels_last and run in eval mode (its training flag is restored after).
    image: (H, W), (C, H, W), (Z, H, W) or (Z, C, H, W): numpy array, torch tensor, or a lazy
        array (numpy memmap, zarr array, ``tifffile.imread(..., aszarr=True)`` opened with zarr);
        only the tiles in flight are read. ``layout`` ("YX", "CYX", "ZYX", "ZCYX") says which; by
        default 3-D means (C, H, W) if the model has in_channels > 1, else a (Z, H, W) stack.
        Stacks are processed slice by slice, tiles of several slices batched together.
    tile_size: input tile edge (int) or (h, w), each a legal input size; None: planned (see
        ``plan_tiles``; the plan is logged on the ``unet_fast.inference`` logger).
    batch_size: tiles per forward; None: planned. device: default the model's device.
    dtype: None/"fp32", "bf16" or "fp16" (autocast).
    output: "labels" (argmax, uint8; int32 above 256 classes), "probabilities" (softmax; float16
        when dtype is fp16/bf16, else float32) or "logits" (float32); an array ``out`` sets the type.
    progress: a tqdm bar over tiles; None: only when stderr is a terminal.
    out: None (a numpy array is returned), an array to fill (shape (..., H, W) for labels,
        (..., K, H, W) otherwise), or a path ending in .tif/.tiff (tiled BigTIFF; classes stored as
        samples per pixel) or .zarr (OME-Zarr), written as tiles finish and committed atomically.
    pixel_size: the image's (unet_fast.pixel_size.PixelSize), written into a file ``out``.
    normalization: how raw pixels become inputs; None: ``model.normalization`` (set by
        load_model) if present, else percentiles (io.Normalization()) for integer images and no
        change for float images.
    Returns the result array, ``out``, or the path written.
    """
    depth, padding, in_channels, num_classes = _model_geometry(model)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    compute_dtype = _compute_dtype(dtype)
    if layout is None:
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        layout = _infer_layout(image, in_channels)
    elif layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if len(image.shape) != len(layout):
        raise ValueError(f"layout {layout!r} needs a {len(layout)}-D image, got shape {tuple(image.shape)}")
    source = _Source(image, layout, in_channels)
    device = torch.device(device) if device is not None else _model_device(model)

    raw_dtype = np.dtype(source.image.dtype) if hasattr(source.image, "dtype") else np.dtype(np.float32)
    if normalization is None:
        normalization = getattr(model, "normalization", None) or (
            Normalization(mode="none") if raw_dtype.kind == "f" else Normalization())
    if not isinstance(normalization, Normalization):
        raise TypeError(f"normalization must be a unet_fast.io.Normalization, got {type(normalization).__name__}")
    channel_axis = layout.index("C") if "C" in layout else None
    norm_offset, norm_scale = normalization.statistics(source.image, channel_axis)

    def normalize(block):  # (C, h, w)
        return normalization.apply(block, norm_offset, norm_scale, 0)

    stacked = layout.startswith("Z")
    lead_shape = (source.slices,) if stacked else ()
    shape = lead_shape + ((source.height, source.width) if output == "labels"
                          else (num_classes, source.height, source.width))
    out_dtype = _output_dtype(output, compute_dtype, num_classes, out)
    if out is None:
        sink = _ArraySink(np.zeros(shape, _numpy_dtype(out_dtype)), stacked)
    elif isinstance(out, (str, Path)):
        sink = io.open_streaming_writer(out, shape, _numpy_dtype(out_dtype), channels=output != "labels",
                                        pixel_size=pixel_size)
    else:
        if tuple(out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)} but this {output} result needs {shape}")
        sink = _ArraySink(out, stacked)

    plan = plan_tiles(model, (source.height, source.width), slices=source.slices, tile_size=tile_size,
                      batch_size=batch_size, device=device, dtype=compute_dtype,
                      memory_budget_bytes=memory_budget_bytes)
    log.info("predict_tiled plan: %s", plan.explain())
    if progress is None:
        progress = sys.stderr.isatty()

    was_training = model.training
    model.to(device=device, memory_format=torch.channels_last).eval()
    runner = _Runner(model, source, plan, device, compute_dtype, output, out_dtype, sink, normalize)
    try:
        with torch.inference_mode():
            runner.run(progress)
        result = sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        model.train(was_training)
    if plan.retries:
        log.info("predict_tiled finished after retries: %s", plan.explain())
    return result


def _output_dtype(output: str, compute_dtype: torch.dtype, num_classes: int, out) -> torch.dtype:
    if out is not None and not isinstance(out, (str, Path)) and hasattr(out, "dtype"):
        dtype = out.dtype if isinstance(out.dtype, torch.dtype) else torch.from_numpy(np.zeros(0, out.dtype)).dtype
        if output == "labels" and dtype.is_floating_point:
            raise ValueError(f"labels need an integer out array, got {out.dtype}")
        return dtype
    if output == "labels":
        return torch.uint8 if num_classes <= 256 else torch.int32
    if output == "probabilities" and compute_dtype != torch.float32:
        return torch.float16
    return torch.float32


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype
