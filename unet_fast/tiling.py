"""Overlap-tile plans for images of any size, and the memory model that sizes tiles and batches.

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

Everything here is arithmetic on sizes; ``unet_fast.inference`` runs the plan.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from . import geometry

DTYPES = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32, torch.float32: torch.float32,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, torch.bfloat16: torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, torch.float16: torch.float16}
CPU_BUDGET_CAP = 2 ** 30
WORKSPACE_FACTOR = 1.25  # convolution workspaces and allocator slack on top of live activations (GPU)
#: The CPU forward's peak resident memory (RSS) over the torch allocator's peak, as glibc's malloc serves it.
#: Tensors below its mmap threshold (which grows to 32 MiB as tensors are freed) come from its heap, which
#: keeps up to twice that threshold of freed memory, and blocks the next, differently sized, tensors do not
#: fit: proportional fragmentation (the factor), plus what it keeps freed (a fraction of the forward, at most
#: the cap). With MALLOC_TRIM_THRESHOLD_=0 the excess went (and the forward ran 1.7x slower). Fitted, with
#: CPU_RUNTIME_BYTES, to 112 fresh-process peaks (benchmarks/results/2026-11-27-cpu-memory-estimate.md); the
#: factor raised from 1.1 when the forward began to free each tensor once read, which leaves the heap more holes
#: (130 peaks of that forward: benchmarks/results/2026-11-27-cpu-forward-memory.md).
CPU_ALLOCATOR_FACTOR = 1.15
CPU_HEAP_KEPT_FRACTION = 0.3
CPU_HEAP_KEPT_MAX = 32 * 2 ** 20
#: what a process's first CPU forward adds once, whatever the tile: the code pages of the kernels it runs
#: (13 MiB of file pages measured), oneDNN's generated kernels, the heap's first growth
CPU_RUNTIME_BYTES = 12 * 2 ** 20


# ---- tiles along one axis

@dataclass(frozen=True)
class AxisTiling:
    """Tiling along one axis: input tiles of ``tile`` px, each keeping ``stride`` output px."""

    tile: int
    stride: int
    lead: int        # input pixels in front of the first kept output pixel (context or margin)
    offset: int      # index of the first kept pixel in the tile's output
    count: int       # tiles along the axis


# The planner asks these pure functions of integers thousands of times per plan, and predict_tiled plans
# for every image of a folder: cached, a repeated plan costs microseconds instead of milliseconds.
@functools.lru_cache(maxsize=4096)
def kept_output(tile: int, depth: int, padding: str) -> tuple[int, int, int]:
    """(stride, lead, offset) of an input tile: output pixels it keeps, input pixels before the first
    kept one, index of the first kept one in its output; stride 0 when the tile keeps nothing."""
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


@functools.lru_cache(maxsize=4096)
def _smallest_tile_covering(stride: int, depth: int, padding: str) -> int:
    """Smallest usable tile keeping at least ``stride`` px (kept pixels grow by one step per step)."""
    step = geometry.size_step(depth)
    first = geometry.min_input_size(depth, padding)
    while kept_output(first, depth, padding)[0] < 1:
        first += step
    missing = stride - kept_output(first, depth, padding)[0]
    return first + max(0, -(-missing // step)) * step


def axis_tiling(length: int, tile: int, depth: int, padding: str) -> AxisTiling:
    stride, lead, offset = kept_output(tile, depth, padding)
    return AxisTiling(tile, stride, lead, offset, -(-length // stride))


@functools.lru_cache(maxsize=4096)   # the planner tries every cap for each axis: 64 calls per 512^2 image
def balanced_axis_tiling(length: int, max_tile: int, depth: int, padding: str) -> AxisTiling:
    """The smallest tile that covers ``length`` in as few tiles as ``max_tile`` would."""
    count = -(-length // kept_output(max_tile, depth, padding)[0])
    tile = _smallest_tile_covering(-(-length // count), depth, padding)
    return axis_tiling(length, min(tile, max_tile), depth, padding)


# ---- memory model

def _base_channels(model) -> int:
    base = getattr(model, "base_channels", None)
    if base is None:
        first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        base = first.out_channels if first is not None else 64
    return int(base)


def estimate_activation_bytes(depth: int, padding: str, in_channels: int, num_classes: int,
                              base_channels: int, height: int, width: int, batch: int = 1,
                              element_size: int = 4, device_type: str = "cuda", onednn: bool | None = None) -> int:
    """Peak bytes of live activations of one inference forward pass, walked layer by layer.

    ``device_type`` "cpu": the resident memory (RSS) the forward adds to a process (the input batch is the
    caller's): ``_cpu_forward_bytes``, the live set of unet_fast.UNet's forward on the CPU as its code keeps
    it, as malloc holds it (``cpu_resident_bytes``); ``onednn`` None: ``cpu_convolutions_use_onednn`` for
    float32 (element size 4) or bfloat16 (2). Any other device (the GPU model, unchanged
    since an H200 measured it): the kept skip connections plus, at every layer, its input, output and a
    ReLU copy, times ``WORKSPACE_FACTOR`` for workspaces.
    """
    if device_type != "cpu":
        return _gpu_activation_bytes(depth, padding, in_channels, num_classes, base_channels, height, width, batch,
                                     element_size)
    if onednn is None:   # asked here, not cached: torch.backends.mkldnn can be switched off and on
        onednn = cpu_convolutions_use_onednn(torch.float32 if element_size == 4 else torch.bfloat16)
    return cpu_resident_bytes(_cpu_forward_bytes(depth, padding, in_channels, num_classes, base_channels,
                                                 height, width, batch, element_size, onednn))


@functools.lru_cache(maxsize=4096)
def _gpu_activation_bytes(depth: int, padding: str, in_channels: int, num_classes: int, base_channels: int,
                          height: int, width: int, batch: int, element_size: int) -> int:
    """estimate_activation_bytes off the CPU (the planner asks it thousands of times a plan: cached)."""
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


def cpu_resident_bytes(allocated: int) -> int:
    """Peak resident memory a process gains on the CPU for work whose tensors peak at ``allocated`` bytes: the
    allocator's fragmentation and the freed memory it keeps, and the first run's fixed cost (see the constants)."""
    return int(allocated * CPU_ALLOCATOR_FACTOR + min(CPU_HEAP_KEPT_MAX, CPU_HEAP_KEPT_FRACTION * allocated)) + \
        CPU_RUNTIME_BYTES


def cpu_convolutions_use_onednn(dtype: torch.dtype) -> bool:
    """Whether aten runs the CPU forward's convolutions in ``dtype`` through oneDNN (a packed copy of each weight)
    rather than its own im2col GEMM (a column buffer 9 times the convolution's input): float32 where oneDNN is
    built and enabled (torch.backends.mkldnn); bfloat16 and float16 only where the CPU has oneDNN kernels for
    them (bf16: AVX-512 and up, not AVX2-only CPUs)."""
    mkldnn = torch.backends.mkldnn
    if not (mkldnn.is_available() and mkldnn.enabled):
        return False
    if dtype == torch.float32:
        return True
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    try:
        return check is not None and bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):   # a torch without the query: the im2col path's larger estimate
        return False


#: aten's float32 CPU convolution of a single image with at most this many input values is its own im2col
#: GEMM, not oneDNN ("for some case, native is faster": ConvParams::use_mkldnn)
ATEN_SMALL_CONVOLUTION = 20480


@functools.lru_cache(maxsize=4096)
def _cpu_forward_bytes(depth: int, padding: str, in_channels: int, num_classes: int, base: int, height: int,
                       width: int, batch: int, element: int, onednn: bool = True) -> int:
    """Peak bytes the torch allocator holds above the input during unet_fast.UNet's forward on the CPU
    (backend "torch"), step by step as ``UNet._forward_torch`` keeps its tensors alive (exact, to the
    allocation, against torch.profiler's memory events: tests/test_memory_estimate.py):

    - every skip connection lives until its decoder level's concatenation has read it;
    - each tensor lives until the next layer's output is made (``x`` rebound after every layer; ReLU is in
      place: no copies): a convolution's input beside its output, not beyond;
    - each convolution, while it runs: through oneDNN (``onednn``: ``cpu_convolutions_use_onednn``) a packed
      copy of its weight (under bf16 autocast a cast, then a packed copy of that: 36 MiB at the bottom of a
      depth-5, base-64 net); through aten's im2col GEMM (float32 convolutions of one small image, and every
      convolution without oneDNN) a column buffer 9 times its input's channels at its output's size;
    - the 2x2 max-pool writes int64 indices beside its output (8 bytes per pooled value);
    - the up-convolution (aten's transposed convolution) a column buffer of one sample's output and its
      weight's copy through oneDNN, of the whole batch's output without;
    - the concatenation a new tensor while both its parts live; under autocast the first convolution's copy
      of the input.
    """
    loss = 2 if padding == "valid" else 0
    cast = element < 4   # autocast: each weight cast for each use, then packed

    def tensor(channels, h, w, size=element, n=batch):
        return n * channels * h * w * size

    def conv_scratch(c_in, c_out, h, w, h_out, w_out, kernel=9):
        weight = kernel * c_in * c_out * element
        if onednn and (cast or batch > 1 or c_in * h * w > ATEN_SMALL_CONVOLUTION):
            return weight * (1 + cast)
        return weight * cast + tensor(kernel * c_in, h_out, w_out)

    peak = skips = 0
    skip_bytes = []     # each level's, popped by the decoder level that reads it
    h, w, channels, x = height, width, in_channels, 0   # x: the level's input, the caller's at level 0

    def double_conv(h, w, c_in, c_out, live, x, input_copy=0):
        nonlocal peak
        h1, w1 = h - loss, w - loss
        h2, w2 = h1 - loss, w1 - loss
        first, second = tensor(c_out, h1, w1), tensor(c_out, h2, w2)
        peak = max(peak, live + x + input_copy + first + conv_scratch(c_in, c_out, h, w, h1, w1),
                   live + first + second + conv_scratch(c_out, c_out, h1, w1, h2, w2))
        return h2, w2, second

    for level in range(depth):
        width_l = base * 2 ** level
        input_copy = tensor(in_channels, h, w) if level == 0 and cast else 0
        h, w, x = double_conv(h, w, channels, width_l, skips, x, input_copy)
        channels = width_l
        if level < depth - 1:
            skips += x
            skip_bytes.append(x)
            h, w = h // 2, w // 2
            pooled = tensor(channels, h, w)
            peak = max(peak, skips + pooled + tensor(channels, h, w, size=8))   # values + int64 indices
            x = pooled
    for level in reversed(range(depth - 1)):
        width_l = base * 2 ** level
        up = tensor(width_l, 2 * h, 2 * w)
        weight = 4 * channels * width_l * element
        if onednn:
            upconv = tensor(width_l, 2 * h, 2 * w, n=1) + weight * (1 + cast)
        else:
            upconv = up + weight * cast
        concatenated = tensor(2 * width_l, 2 * h, 2 * w)
        peak = max(peak, skips + x + up + upconv, skips + up + concatenated)
        skips -= skip_bytes.pop()
        h, w, x = double_conv(2 * h, 2 * w, 2 * width_l, width_l, skips, concatenated)
        channels = width_l
    head = conv_scratch(channels, num_classes, h, w, h, w, kernel=1)
    return max(peak, x + tensor(num_classes, h, w) + head)


#: float32 input batches predict_tiled holds at once on the CPU: the one computed, two staged by its reader
#: thread (inference._Runner.run's queue) and one that thread is filling
CPU_INPUT_BATCHES = 4


def cpu_batch_bytes(depth: int, padding: str, in_channels: int, num_classes: int, base_channels: int,
                    height: int, width: int, batch: int = 1, element_size: int = 4,
                    onednn: bool | None = None) -> int:
    """Peak bytes one batch of predict_tiled adds on the CPU: the forward (``estimate_activation_bytes`` on
    "cpu") or the conversion of its logits after it (the largest, probabilities: a float32 copy of
    low-precision logits, their softmax and its cast), whichever is larger; plus the float32 input batches in
    flight (``CPU_INPUT_BATCHES``; with more than one channel also the channels_last copy of the one computed)
    and the previous batch's result, written only after this batch's forward. ``onednn``: as for
    ``estimate_activation_bytes`` (plan_tiles asks ``cpu_convolutions_use_onednn`` for its dtype)."""
    forward = estimate_activation_bytes(depth, padding, in_channels, num_classes, base_channels, height, width,
                                        batch, element_size, "cpu", onednn)
    outputs = batch * num_classes * geometry.output_size(height, depth, padding) * \
        geometry.output_size(width, depth, padding)
    low = element_size < 4
    converted = outputs * (element_size + 4 * low + 4 + 2 * low)
    inputs = batch * in_channels * height * width * 4 * (CPU_INPUT_BATCHES + (in_channels > 1))
    return max(forward, cpu_resident_bytes(converted)) + inputs + 4 * outputs


def cuda_free_bytes(device) -> int:
    """Bytes a new allocation on this GPU can have: the driver's free memory plus what PyTorch's caching
    allocator holds unused (blocks of earlier work in this process: training, another image), which the
    driver counts as taken, so a plan made after such work saw less memory than there was."""
    device = torch.device(device)
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + max(0, _reusable_cached_bytes(device)))


def _reusable_cached_bytes(device: torch.device) -> int:
    """What the caching allocator holds unused and can hand to any allocation: its default pool's free bytes.
    A kept CUDA graph's private pool (unet_fast.tile_graphs) is reserved and mostly unallocated, but only its
    graph reuses it: counting it planned batches that then ran out of memory."""
    fallback = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        segments = torch.cuda.memory_snapshot()
        unused = 0
        for segment in segments:
            if segment.get("device", index) != index:
                continue
            if tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0):  # a graph's private pool
                continue
            unused += segment["total_size"] - segment["allocated_size"]
        return unused
    except (KeyError, TypeError, RuntimeError, AssertionError):  # no snapshot as expected: the totals
        return fallback


def cpu_available_bytes(proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes a new allocation in host memory can have: the kernel's MemAvailable, or less where a memory cgroup
    of this process (a container's limit; v2, or v1's memory controller) leaves less: its limit less its usage,
    the page cache it can drop (inactive_file) counted free. None where neither can be read. Inside a container
    MemAvailable is the host's: a 4 GiB container on a 64 GiB machine saw some 60 GiB free, and was killed by
    its cgroup's OOM killer instead of being refused a batch."""
    available = None
    try:
        with open(f"{proc}/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    for left in _cgroup_room(proc, cgroup_root):
        available = left if available is None else min(available, left)
    return None if available is None else max(0, available)


def _cgroup_room(proc: str, root: str):
    """Limit - (usage - inactive_file) of each limited memory cgroup of this process and its ancestors."""
    try:
        with open(f"{proc}/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return
    for fields in lines:
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":       # v2: limit, usage, stat files in the unified hierarchy
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = f"{root}/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [part for part in path.split("/") if part]
        # the process's own cgroup and its ancestors; a cgroup namespace mounts the own one at the root instead
        for depth in range(len(parts), -1, -1):
            room = _cgroup_files_room(base + "".join("/" + part for part in parts[:depth]), *files)
            if room is not None:
                yield room


def _cgroup_files_room(folder: str, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        with open(f"{folder}/{limit_file}") as f:
            limit = f.read().strip()
        if limit == "max" or int(limit) >= 2 ** 60:  # unlimited (v1 writes PAGE_COUNTER_MAX's bytes)
            return None
        with open(f"{folder}/{usage_file}") as f:
            usage = int(f.read().strip())
        inactive = 0
        try:
            with open(f"{folder}/memory.stat") as f:
                inactive = next((int(line.split()[1]) for line in f if line.split()[:1] == [inactive_key]), 0)
        except OSError:
            pass
        return int(limit) - (usage - inactive)
    except (OSError, ValueError):
        return None


def memory_budget(device) -> int:
    """Bytes inference may use: 80 % of free memory on CUDA (cuda_free_bytes); on CPU a quarter of available
    RAM (``cpu_available_bytes``: a container's limit too; at most 1 GiB: one tile already keeps the cores busy,
    and larger tiles save little)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(0.8 * cuda_free_bytes(device))
    available = cpu_available_bytes()
    return CPU_BUDGET_CAP if available is None else int(min(CPU_BUDGET_CAP, available // 4))


# ---- planning

@dataclass
class TilePlan:
    """The tiling predict_tiled uses, and why (``explain()``)."""

    tile: tuple[int, int]          # input tile (h, w)
    stride: tuple[int, int]        # output pixels each tile keeps; tiles do not overlap there
    lead: tuple[int, int]          # context (valid) or margin (same) per side
    grid: tuple[int, int]          # tiles per slice (rows, columns)
    slices: int
    batch_size: int
    estimated_bytes: int           # one batch's activations (on the CPU: the resident memory its step adds)
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


def model_geometry(model) -> tuple[int, str, int, int]:
    """(depth, padding, in_channels, num_classes) of a unet_fast U-Net."""
    missing = [a for a in ("depth", "padding", "in_channels", "num_classes") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model must have unet_fast's config attributes (depth, padding, in_channels, "
                        f"num_classes); {type(model).__name__} lacks {missing}")
    return model.depth, model.padding, model.in_channels, model.num_classes


def _integer(value) -> bool:
    """An int, or a numpy integer (a size read from an array or a config), but not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _tile_pair(tile_size) -> tuple[int, int]:
    if _integer(tile_size):
        return int(tile_size), int(tile_size)
    if isinstance(tile_size, (tuple, list)) and len(tile_size) == 2 and all(_integer(t) for t in tile_size):
        return int(tile_size[0]), int(tile_size[1])
    raise ValueError(f"tile_size must be an int or (height, width), got {tile_size!r}")


#: the largest tile side planned on a GPU: a batch of such tiles is many times the work that saturated an
#: H200 (8 tiles of 572 px: 346 TFLOP/s); one giant tile instead (8380 px for an 8192^2 image on 141 GB)
#: leaves nothing to overlap reading and writing with, and its first forward took over a minute there
MAX_ACCELERATOR_TILE = 2048
#: input pixels of a batch that keep a GPU busy (an H200: 8 tiles of 572 px, 2.6 Mpx, ran the network at
#: 346 TFLOP/s) ...
SATURATING_BATCH_PIXELS = 8 * 572 * 572
#: ... beyond which an image's tiles go in at least this many batches, so that reading one batch and writing
#: another overlap a third's forward (an H200, 2026-11-27: one batch of the 25 tiles of 1836 px of an 8192^2
#: image took 875 ms in predict_tiled against 335 ms for its bare forward: nothing overlapped)
PIPELINED_BATCHES = 3


def plan_tiles(model, image_size, *, slices: int = 1, tile_size=None, batch_size: int | None = None,
               device=None, dtype=None, memory_budget_bytes: int | None = None) -> TilePlan:
    """Choose tile and batch for an image of ``image_size`` = (H, W) (``slices`` of them).

    Without ``tile_size``: the largest legal square-capped tile whose activations fit the
    budget (larger tiles recompute fewer context pixels), at most ``MAX_ACCELERATOR_TILE`` px off
    the CPU, shrunk to the smallest tile that covers the image in the same number of tiles. Batch: 1 on CPU
    (one tile fills the cores; more only costs memory), else as many tiles as fit the budget (at most 64),
    but no more than a third of the tiles where fewer still make SATURATING_BATCH_PIXELS (reading and
    writing then overlap the forward of another batch).
    """
    depth, padding, in_channels, num_classes = model_geometry(model)
    height, width = (int(s) for s in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {image_size!r}")
    device = torch.device(device) if device is not None else model_device(model)
    compute_dtype = parse_compute_dtype(dtype)
    element = torch.empty((), dtype=compute_dtype).element_size()
    budget = memory_budget_bytes if memory_budget_bytes is not None else memory_budget(device)
    base = _base_channels(model)
    onednn = cpu_convolutions_use_onednn(compute_dtype) if device.type == "cpu" else None

    def cost(th, tw, batch=1):
        if device.type == "cpu":
            return cpu_batch_bytes(depth, padding, in_channels, num_classes, base, th, tw, batch, element, onednn)
        return estimate_activation_bytes(depth, padding, in_channels, num_classes, base, th, tw, batch, element)

    if tile_size is not None:
        th, tw = _tile_pair(tile_size)
        for name, t in (("height", th), ("width", tw)):
            trace = geometry.trace_sizes(t, depth, padding)
            if trace.problem is not None:
                raise ValueError(f"tile_size {name}: " + geometry.size_error_message(t, depth, padding, trace.problem,
                                                                                    tile=True))
            if kept_output(t, depth, padding)[0] < 1:
                smallest = usable_tile_sizes(depth, padding, t + 64 * geometry.size_step(depth))[0]
                raise ValueError(f"tile_size {name} {t} keeps no output pixel; the smallest usable tile is {smallest}")
        # a tile larger than the image would compute padding: the smallest tile covering the axis gives the
        # same pixels (a folder of mixed sizes with one --tile-size gets it for its small images)
        covering = _smallest_tile_covering(height, depth, padding), _smallest_tile_covering(width, depth, padding)
        reason = "tile size given by the caller"
        if th > covering[0] or tw > covering[1]:
            th, tw = min(th, covering[0]), min(tw, covering[1])
            reason += f", cut to the image's {th} x {tw} (one tile covers it)"
        rows, cols = axis_tiling(height, th, depth, padding), axis_tiling(width, tw, depth, padding)
    else:
        need = max(_smallest_tile_covering(height, depth, padding), _smallest_tile_covering(width, depth, padding))
        caps = usable_tile_sizes(depth, padding, need)
        capped = device.type != "cpu" and caps[-1] > MAX_ACCELERATOR_TILE
        if capped:
            caps = [cap for cap in caps if cap <= MAX_ACCELERATOR_TILE] or caps[:1]
        rows = cols = None
        larger = None  # the next larger tiling, which does not fit
        for cap in caps:
            r, c = balanced_axis_tiling(height, cap, depth, padding), balanced_axis_tiling(width, cap, depth, padding)
            if rows is not None and cost(r.tile, c.tile) > budget:
                larger = (r, c)
                break
            rows, cols = r, c
        if cost(rows.tile, cols.tile) > budget:
            reason = "even the smallest usable tile exceeds the memory budget; trying it anyway"
        elif larger is None and capped:
            reason = (f"the largest tiles up to {MAX_ACCELERATOR_TILE} px, batched (on {device.type}, larger tiles "
                      f"add no throughput, only a longer wait before the first tile is written)")
        elif larger is None:
            reason = "the whole image fits in one tile within the budget"
        else:
            r, c = larger
            reason = (f"largest tiles that fit the budget; the next larger tiling ({r.count}x{c.count} tiles of "
                      f"{r.tile}x{c.tile}) needs {cost(r.tile, c.tile) / 2 ** 20:.0f} MiB")
    per_tile = cost(rows.tile, cols.tile)
    tiles = rows.count * cols.count * slices
    if batch_size is not None:
        if not _integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch = int(batch_size)  # as asked, and charged so: a batch that cannot fit is refused, whatever the image
    elif device.type == "cpu":
        batch = 1
    else:
        fits = max(1, min(64, tiles, budget // max(per_tile, 1)))
        saturating = -(-SATURATING_BATCH_PIXELS // (rows.tile * cols.tile))
        batch = min(fits, max(-(-tiles // PIPELINED_BATCHES), saturating))
        if batch < fits:
            reason += (f"; batches of {batch} of the {tiles} tiles, so reading and writing overlap the forward of "
                       f"another batch ({fits} would fit; {batch} still make "
                       f"{batch * rows.tile * cols.tile / 1e6:.1f} Mpx, enough to keep the GPU busy)")
    # on the CPU the batch is walked as it is: its weights' packed copies do not grow with it
    estimated = cost(rows.tile, cols.tile, batch) if device.type == "cpu" else per_tile * batch
    return TilePlan((rows.tile, cols.tile), (rows.stride, cols.stride), (rows.lead, cols.lead),
                    (rows.count, cols.count), slices, batch, estimated, budget, str(device), reason)


def model_device(model) -> torch.device:
    """The device of the model's parameters (the CPU without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def parse_compute_dtype(dtype) -> torch.dtype:
    """The torch dtype of a dtype argument: None, "fp32", "bf16", "fp16" or the torch dtypes."""
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"dtype must be one of None, 'fp32', 'bf16', 'fp16' (or the torch dtypes), "
                         f"got {dtype!r}") from None
