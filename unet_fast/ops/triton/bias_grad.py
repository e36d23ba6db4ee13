"""A convolution's bias gradient, the sum of its output gradient over batch and pixels, optionally with
the ReLU's mask applied on the way:

    masked = where(y <= 0, 0, grad)        (only when y is given; a NaN passes, as the other masks)
    bias_grad[c] = sum over n, h, w of (masked or grad)[n, c, h, w], in float32

Where cuDNN computes a layer's weight gradient (the measured table's choice), aten's bias gradient is a
reduction of a bf16 channels_last tensor that ran at about a quarter of the memory bandwidth (an H200,
2026-11-27 run 1: 21 such reductions, 2.1 ms of a 23.3 ms step, for about 1.8 GB read). Here each
program sums a band of rows (pixels) for a block of channels, reading the channels contiguously, and
writes one partial row; the partials are summed afterwards, so the result is deterministic (no atomics).
With y, the masked gradient is written from the same pass: the mask's own pass then costs nothing more.
"""
from __future__ import annotations

import torch

from . import Launch, triton_or_none

triton = triton_or_none()

BLOCK_ROWS = 64
BLOCK_CHANNELS = 64
PROGRAMS_PER_SM = 4  # row bands per channel block and SM on a GPU: enough to fill it, few partials to sum
INTERPRETER_BANDS = 3  # the interpreter: a few bands, so the partial sums are exercised

if triton is not None:
    import triton.language as tl

    @triton.jit(do_not_specialize=["ROWS", "C", "HW", "W", "ROWS_PER_BAND"])
    def bias_grad_kernel(
        grad_ptr, y_ptr, out_ptr, partial_ptr,
        sg_n, sg_c, sg_h, sg_w, sy_n, sy_c, sy_h, sy_w, so_n, so_c, so_h, so_w,
        ROWS, C, HW, W, ROWS_PER_BAND,
        MASK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        band = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < C
        c64 = c.to(tl.int64)
        total = tl.zeros((BLOCK_C,), tl.float32)
        first = band * ROWS_PER_BAND
        last = tl.minimum(first + ROWS_PER_BAND, ROWS)
        for start in range(first, last, BLOCK_R):
            row = start + tl.arange(0, BLOCK_R)
            ok = (row < last)[:, None] & c_ok[None, :]
            n = (row // HW).to(tl.int64)
            h = ((row % HW) // W).to(tl.int64)
            w = (row % W).to(tl.int64)
            g = tl.load(grad_ptr + (n * sg_n + h * sg_h + w * sg_w)[:, None] + (c64 * sg_c)[None, :], mask=ok,
                        other=0.0).to(tl.float32)
            if MASK:
                y = tl.load(y_ptr + (n * sy_n + h * sy_h + w * sy_w)[:, None] + (c64 * sy_c)[None, :], mask=ok,
                            other=0.0).to(tl.float32)
                g = tl.where(y <= 0, 0.0, g)
                tl.store(out_ptr + (n * so_n + h * so_h + w * so_w)[:, None] + (c64 * so_c)[None, :],
                         g.to(out_ptr.dtype.element_ty), mask=ok)
            total += tl.sum(g, axis=0)
        tl.store(partial_ptr + band.to(tl.int64) * C + c64, total, mask=c_ok)


def bands(rows: int, channel_blocks: int, device: torch.device) -> int:
    """How many row bands (programs per channel block) sum ``rows`` rows."""
    blocks = triton.cdiv(rows, BLOCK_ROWS)
    if device.type != "cuda":
        return max(1, min(blocks, INTERPRETER_BANDS))
    target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(blocks, triton.cdiv(target, channel_blocks)))


def plan(grad: torch.Tensor, y: torch.Tensor | None, out: torch.Tensor | None, partial: torch.Tensor) -> Launch:
    n, c, h, w = grad.shape
    rows = n * h * w
    band_count = partial.shape[0]
    per_band = triton.cdiv(triton.cdiv(rows, band_count), BLOCK_ROWS) * BLOCK_ROWS
    mask = y is not None
    y, out = (y, out) if mask else (grad, grad)  # unread, unwritten without the mask
    args = (grad, y, out, partial, *grad.stride(), *y.stride(), *out.stride(), rows, c, h * w, w, per_band)
    grid = (band_count, triton.cdiv(c, BLOCK_CHANNELS))
    return Launch(bias_grad_kernel, grid, args, dict(MASK=mask, BLOCK_R=BLOCK_ROWS, BLOCK_C=BLOCK_CHANNELS,
                                                     num_warps=4))


def bias_grad(grad: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(masked gradient, channels_last, or None without y; the bias gradient, float32, shape (C,))."""
    n, c, h, w = grad.shape
    partial = torch.empty((bands(n * h * w, triton.cdiv(c, BLOCK_CHANNELS), grad.device), c), device=grad.device,
                          dtype=torch.float32)
    out = None
    if y is not None:
        grad = grad.to(y.dtype)
        out = torch.empty(y.shape, device=y.device, dtype=y.dtype, memory_format=torch.channels_last)
    plan(grad, y, out, partial).run()
    return out, partial.sum(0)
