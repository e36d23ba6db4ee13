"""Timing for the GPU goal benchmarks: CUDA events around each call, L2 flushed between calls.

On the CPU (gpu.sh --dry-run) the same calls are timed with perf_counter. Each measurement runs for
a bounded time (at least ``min_reps`` calls, then until ``max_seconds`` of timed work or
``max_reps``), so a slow candidate cannot eat a stage's budget, and reports the median with the
interquartile range: a difference between two candidates smaller than their spread is noise.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current GPU's L2 (H100 50 MB, H200 60 MB)


@dataclass
class Timing:
    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    reps: int

    def as_dict(self) -> dict:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (IQR {self.q25_ms:.3f}-{self.q75_ms:.3f}, {self.reps} reps)"


def _summarise(times_ms: list[float]) -> Timing:
    times_ms = sorted(times_ms)
    if len(times_ms) >= 4:
        q = statistics.quantiles(times_ms, n=4)
        q25, q75 = q[0], q[2]
    else:
        q25, q75 = times_ms[0], times_ms[-1]
    return Timing(statistics.median(times_ms), q25, q75, times_ms[0], len(times_ms))


def measure(fn, device: torch.device | str, *, warmup: int = 3, min_reps: int = 5, max_reps: int = 100,
            max_seconds: float = 1.0, flush_l2: bool = True) -> Timing:
    """Time ``fn()`` (no arguments) on ``device``: warm-up calls first, then one timed call per rep."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        spent = 0.0
        while len(times) < min_reps or (spent < max_seconds and len(times) < max_reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
            spent += times[-1] / 1e3
        return _summarise(times)

    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if flush_l2 else None
    torch.cuda.synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < min_reps or (spent < max_seconds and len(times) < max_reps):
        batch = min_reps if not times else max(1, min(max_reps - len(times), 10))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(batch)]
        for start, end in events:
            if flush is not None:
                flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        new = [start.elapsed_time(end) for start, end in events]
        times += new
        spent += sum(new) / 1e3
    return _summarise(times)


def copy_bandwidth(device: torch.device | str, gigabytes: float = 2.0) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written): the memory ceiling of this card."""
    n = int(gigabytes * 1e9 / 2)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device, warmup=2, min_reps=5, max_reps=20, flush_l2=False)
    return 2 * n / (timing.median_ms / 1e3) / 1e9


def matmul_tflops(device: torch.device | str, n: int = 8192, dtype=torch.bfloat16) -> float:
    """Dense matrix-product rate in TFLOP/s on random data: the arithmetic ceiling of this card."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = measure(lambda: a @ b, device, warmup=3, min_reps=5, max_reps=20, flush_l2=False)
    return 2 * n ** 3 / (timing.median_ms / 1e3) / 1e12
