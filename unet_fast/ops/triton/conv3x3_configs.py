"""Which tiles the conv3x3 kernels use: a per-layer table measured on GPUs, and a heuristic for the rest.

A problem is (kind, dtype, skip channels, x channels, output channels, GEMM rows): kind "forward" and
"dgrad" run conv3x3_kernel (rows = output pixels), "pool" is the forward with the 2x2 max-pool in its
epilogue (an encoder's second conv; rows = 4 per window; where the table has no "pool" entry the
"forward" one serves), "wgrad" runs conv3x3_wgrad_kernel (rows = the pixels it sums over). The table, conv3x3_configs.json beside this file, maps a device ("sm90-132":
compute capability and SM count) and a problem, its rows rounded up to a power of two, to the
configuration `python -m unet_fast.tune` measured fastest there, or to "aten" where cuDNN did the
same work faster than every candidate (``prefers_aten``: the op then calls aten for that part);
everything else (other GPUs, other shapes, exact fp32, the interpreter) gets ``heuristic``. Every
configuration in the table must compile for sm_90 and sm_80 without register spills, under the Triton of the GPU machines and the
current one (tests/test_triton_static.py), so a table entry can never be slower to build than to
measure.
"""
from __future__ import annotations

import functools
import json
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path

import torch

TABLE_PATH = Path(__file__).with_name("conv3x3_configs.json")
KINDS = ("forward", "pool", "dgrad", "wgrad")
#: the most accumulators a tile with the pooled epilogue holds: the H100 table's 256 x 128 forward tile, pooled,
#: spilled 16 bytes on sm_90 (triton 3.6 and 3.9; 160 and 336 on sm_80); its 128-row half does not
POOLED_MAX_TILE = 128 * 128
ATEN = "aten"  # a table entry: cuDNN/aten measured faster than every Triton candidate
SHARED_MEMORY_BUDGET = 200 * 1024  # bytes of pipelined operand tiles per program (sm_90: 227 KiB in all)


# The TMA kernel races on an H100 (triton 3.6; benchmarks/results/2026-11-26-NVIDIA_H100.md): with output-channel
# tiles of 128 or 256 and 3 or 4 pipeline stages, its outputs differ from run to run, relative error against
# fp32 up to 7.8e-3 at 128 and 0.24 at 256, where the pointer kernel's is 1.66e-3; reading the weight K-major
# instead did not help. Every 64-wide tile (2 to 4 stages), and every tile with 2 stages, ran right and
# deterministic on a plain and a skip layer: TMA runs only there (tma_measured_right).
TMA_MAX_BLOCK_N = 64
TMA_WIDE_MAX_STAGES = 2


def tma_measured_right(config: Config) -> bool:
    """Whether an H100 ran this tile right through the TMA kernel (see TMA_MAX_BLOCK_N)."""
    return config.block_n <= TMA_MAX_BLOCK_N or config.num_stages <= TMA_WIDE_MAX_STAGES


def tma_candidate(config: Config) -> Config:
    """``config`` through the TMA kernel, with the pipeline depth measured right where its own is not."""
    candidate = replace(config, tma=True)
    return candidate if tma_measured_right(candidate) else replace(candidate, num_stages=TMA_WIDE_MAX_STAGES)


@dataclass(frozen=True)
class Config:
    """Tiles of one launch. forward/dgrad: block_m pixels, block_n output channels, block_k input
    channels per step; swap computes the tile as (channels x pixels), the channels being the MMA's M;
    tma loads both operands by TMA (sm_90: ``conv3x3.tma_applies`` says where), block_m pixels as a
    (block_m / 16) x 16 patch. wgrad: block_m input channels, block_n output channels, block_k pixels per step."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    swap: bool = False
    tma: bool = False  # forward/dgrad: operands through tensor descriptors (conv3x3_tma_kernel), where it applies
    split_k: int = 1   # forward/dgrad, unpooled, pointer kernel: K split over this many programs per tile
    group_m: int = 1   # forward/dgrad, pointer kernel: row tiles that sweep the column tiles together

    def shared_bytes(self, element_size: int) -> int:
        return self.num_stages * (self.block_m + self.block_n) * self.block_k * element_size


# The interpreter's cost is mostly per program and per loop step, so it gets few, large tiles.
INTERPRETER = {"forward": Config(128, 32, 16, 4, 1), "pool": Config(128, 32, 16, 4, 1),
               "dgrad": Config(128, 32, 16, 4, 1), "wgrad": Config(32, 32, 128, 4, 1)}


def dtype_name(dtype: torch.dtype, precision: str) -> str:
    """The table's name for a compute type: bf16, fp16, tf32 (fp32 on tensor cores) or fp32 (exact)."""
    if dtype == torch.float32:
        return "tf32" if precision == "tf32" else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def rows_bucket(rows: int) -> int:
    return 1 << max(0, int(rows - 1).bit_length())


BACKWARD_KINDS = ("dgrad", "wgrad")


def problem_key(kind: str, dtype: str, skip_channels: int, x_channels: int, out_channels: int, rows: int) -> str:
    return f"{kind}/{dtype}/{skip_channels}+{x_channels}->{out_channels}/{rows_bucket(rows)}"


def device_key(device: torch.device) -> str:
    return _device_key(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _device_key(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return f"sm{props.major}{props.minor}-{props.multi_processor_count}"


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """{device key: {problem key: Config or ATEN}} from TABLE_PATH (empty when there is none)."""
    if not TABLE_PATH.exists():
        return {}
    raw = json.loads(TABLE_PATH.read_text())
    return {device: {key: ATEN if entry == ATEN else Config(*entry) for key, entry in problems.items()}
            for device, problems in raw.get("devices", {}).items()}


def table_entry(config) -> list | str:
    """config as the table stores it: its fields in order, without trailing defaults after ``swap`` (entries
    written before those fields existed read the same)."""
    if config == ATEN:
        return ATEN
    entry = list(astuple(config))
    while len(entry) > 6 and entry[-1] == getattr(Config, [f.name for f in fields(Config)][len(entry) - 1]):
        entry.pop()  # trailing defaults (tma False, split_k 1): the table's older entries read the same
    return entry


def _measured(kind: str, device: torch.device, dtype: str, skip_channels: int, x_channels: int,
              out_channels: int, rows: int):
    if device.type != "cuda" or dtype == "fp32" or not torch.cuda.is_available():
        return None  # (planning for a GPU without one: the static checks)
    problems = table().get(device_key(device), {})
    entry = problems.get(problem_key(kind, dtype, skip_channels, x_channels, out_channels, rows))
    if entry is None and kind == "pool":  # a table tuned before pooled problems were: the forward's entry
        entry = problems.get(problem_key("forward", dtype, skip_channels, x_channels, out_channels, rows))
    return entry


def prefers_aten(kind: str, device: torch.device, dtype: str, skip_channels: int, x_channels: int,
                 out_channels: int, rows: int) -> bool:
    """True where the table says cuDNN/aten does this problem faster than any Triton tile here; for a
    backward problem the table does not list (another GPU, dtype or layer), True as well: cuDNN's
    dgrad and wgrad beat ours on every layer but the first's wgrad on the H200 (run 2: ours 0.27-0.74x),
    so an unmeasured backward goes to cuDNN until ``python -m unet_fast.tune`` says otherwise."""
    measured = _measured(kind, device, dtype, skip_channels, x_channels, out_channels, rows)
    on_gpu = device.type == "cuda" and torch.cuda.is_available()
    return aten_wins(kind, measured) if on_gpu else measured == ATEN


def aten_wins(kind: str, entry) -> bool:
    """prefers_aten's rule for a GPU's table ``entry`` of a ``kind`` problem (None: not in the table)."""
    return entry == ATEN or (entry is None and kind in BACKWARD_KINDS)


def choose(kind: str, device: torch.device, dtype: str, skip_channels: int, x_channels: int,
           out_channels: int, rows: int) -> Config:
    """The configuration for this problem on this device: the measured one, else the heuristic."""
    if device.type != "cuda":
        return INTERPRETER[kind]
    measured = _measured(kind, device, dtype, skip_channels, x_channels, out_channels, rows)
    if isinstance(measured, Config):
        return measured
    return heuristic(kind, dtype, skip_channels, x_channels, out_channels)


def channel_block(channels: int) -> int:
    """A channel tile no wider than needed (the first layer's 1 input channel), at most 128."""
    return min(128, max(16, 1 << max(0, int(channels - 1).bit_length())))


def warps(block_m: int, block_n: int) -> int:
    # 8 warps from 128x64 tiles up: with 4, the fp32 accumulator alone takes 64 registers per
    # thread and the sm_80 build spills (ptxas -v, tests/triton_static.py).
    return 8 if block_m * block_n >= 128 * 64 else 4


def heuristic(kind: str, dtype: str, skip_channels: int, x_channels: int, out_channels: int) -> Config:
    """Tiles sized to the layer, for problems the table does not hold (pool: the forward's)."""
    wide = max(skip_channels, x_channels)
    if kind == "wgrad":
        block_m, block_n = channel_block(skip_channels + x_channels), channel_block(out_channels)
        if dtype == "fp32":
            return Config(block_m, block_n, 16, warps(block_m, block_n), 2)
        return Config(block_m, block_n, 32 if dtype == "tf32" else 64, warps(block_m, block_n), 3)
    block_n = channel_block(out_channels)
    if dtype == "fp32":
        # Exact fp32 reading fewer than 16 channels (a thin first layer: FMA, never TF32): with 2 stages
        # the sm_80 build spills 16-32 bytes under triton 3.9 (1 and 3 channels; ptxas -v,
        # tests/triton_static.py); 1 stage does not, under 3.6 or 3.9 (its loads are a few bytes).
        return Config(128, block_n, 16, warps(128, block_n), 1 if wide < 16 else 2)
    # TF32 tiles are twice the bytes: halve K. Narrow inputs (the first layer) get a narrow K.
    block_k = min(32 if dtype == "tf32" else 64, channel_block(wide))
    # TF32 into at most 64 output channels, reading a skip or (dgrad) masking by the ReLU: 3 stages spill
    # 8-12 bytes on sm_80 under triton 3.9 (ptxas -v, tests/triton_static.py); 2 stages do not, under 3.6 or 3.9.
    stages = 2 if dtype == "tf32" and (skip_channels or kind == "dgrad") and block_n <= 64 else 3
    return Config(128, block_n, block_k, warps(128, block_n), stages)


# forward/dgrad with fewer output tiles than this many per SM try split-K: four waves at two programs per SM
# (the deepest layers of the paper's network at batch 8 run 1.5-2.8 waves on an H100: a partial last wave
# idles SMs)
SPLIT_K_BELOW_PROGRAMS_PER_SM = 4 * 2


def candidates(kind: str, dtype: str, skip_channels: int, x_channels: int, out_channels: int,
               tma: bool = False, rows: int | None = None, sms: int = 132) -> list[Config]:
    """What the tuner tries for a problem: the heuristic's choice first, then a few tiles of other shapes
    and pipeline depths, and (forward/dgrad, up to 64 output channels) the swapped product; with ``tma``
    (a GPU with TMA, sm_90 on), forward/dgrad in 16-bit types also try the first three through tensor
    descriptors; given the GEMM's ``rows``, forward/dgrad whose heuristic tiles are fewer than
    SPLIT_K_BELOW_PROGRAMS_PER_SM times the GPU's ``sms`` also try them with the K loop split 2 and 4 ways
    (the small deep layers).
    Few on purpose: each is a compile on the GPU machine, whose time is short."""
    base = heuristic(kind, dtype, skip_channels, x_channels, out_channels)
    if dtype == "fp32":
        return [base]
    if kind == "pool":  # the pooled epilogue: pixels as rows, one pass, pointer kernel, a capped tile
        return [c for c in candidates("forward", dtype, skip_channels, x_channels, out_channels, sms=sms)
                if not (c.swap or c.tma or c.split_k > 1) and c.block_m * c.block_n <= POOLED_MAX_TILE]
    element = 4 if dtype == "tf32" else 2
    k = 32 if dtype == "tf32" else 64
    narrow_in = channel_block(skip_channels + x_channels if kind == "wgrad" else max(skip_channels, x_channels))
    narrow_out = channel_block(out_channels)
    found = [base]
    if kind == "wgrad":  # (input channels, output channels, pixels per step)
        shapes = [(128, 128, k, 3), (128, 128, k, 4), (128, 128, 2 * k, 3), (64, 128, 2 * k, 3), (128, 64, 2 * k, 3),
                  (64, 64, k, 4), (64, 64, 2 * k, 3)]
        for m, n, steps, stages in shapes:
            if m <= max(narrow_in, 64) and n <= max(narrow_out, 64):
                found.append(Config(m, n, steps, warps(m, n), stages))
    else:  # (pixels, output channels, input channels per step)
        block_k = min(k, narrow_in)
        shapes = [(128, 128, 4), (128, 256, 3), (256, 128, 3), (64, 256, 4), (128, 64, 4), (256, 64, 3)]
        for m, n, stages in shapes:
            if n <= narrow_out * (2 if out_channels >= 256 else 1) and (n >= 128 or out_channels <= 64):
                found.append(Config(m, n, block_k, warps(m, n), stages))
        if out_channels <= 64:  # 8 warps: with 4, the 64 x 256 swapped accumulator spills (ptxas -v)
            for m, stages in ((128, 4), (256, 3)):
                found.append(Config(m, narrow_out, block_k, 8, stages, swap=True))
    unique = []
    for config in found:
        if config not in unique and config.shared_bytes(element) <= SHARED_MEMORY_BUDGET:
            unique.append(config)
    plain = list(unique)
    if tma and kind != "wgrad" and dtype in ("bf16", "fp16"):  # TF32 rounds its operands in registers: no TMA
        unique += list(dict.fromkeys(tma_candidate(config) for config in plain))[:3]
    if rows is not None and kind != "wgrad":
        tiles = -(-rows // base.block_m) * -(-out_channels // base.block_n)
        if tiles < SPLIT_K_BELOW_PROGRAMS_PER_SM * sms:
            unique += [replace(base, split_k=split) for split in (2, 4)]
    if kind != "wgrad" and -(-out_channels // base.block_n) >= 4:  # several column tiles: grouped rows
        unique.append(replace(base, group_m=8))
    return unique
