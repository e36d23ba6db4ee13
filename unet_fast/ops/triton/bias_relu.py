"""The epilogue of a cuDNN convolution, as one pass: y = relu(z + bias), in place, and optionally the 2x2
max-pool of y, for the layers where the measured table picks cuDNN's forward.

aten's composite adds the bias and applies the ReLU as two passes over the output (on an H200, 2026-11-27
run 1, the compiled reference's forward spent 1.3 ms of 5.5 in such Triton epilogues, which torch.compile
fuses as this does; the eager composite twice that). Each program reads a block of 2x2 windows of z (all
channels of a block, NHWC), writes y over z and, with POOL, the max of each whole window: aten's rules
(relu passes a NaN; the pool takes a NaN over any number; trailing odd rows and columns belong to no
window, as the pool floors).
"""
from __future__ import annotations

import torch

from . import Launch, triton_or_none

triton = triton_or_none()

if triton is not None:
    import triton.language as tl

    from .conv3x3 import _max_propagating_nan
    from .relu_pool_backward import window_taps

    @triton.jit
    def _relu_tap(z_ptr, n, h, w, s_n, s_h, s_w, c_offsets, mask, bias):
        at = z_ptr + (n * s_n + h.to(tl.int64) * s_h + w.to(tl.int64) * s_w)[:, None] + c_offsets[None, :]
        v = tl.load(at, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
        y = tl.where(v <= 0, 0.0, v)  # a NaN passes, as aten's relu
        tl.store(at, y.to(z_ptr.dtype.element_ty), mask=mask)
        return y

    @triton.jit(do_not_specialize=["N", "H", "W", "PH", "PW", "C"])
    def bias_relu_kernel(
        z_ptr, bias_ptr, pool_ptr,
        sz_n, sz_c, sz_h, sz_w, sp_n, sp_c, sp_h, sp_w,
        N, H, W, PH, PW, C,
        HAS_BIAS: tl.constexpr, POOL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Rows: the ceil(H/2) x ceil(W/2) grid of 2x2 windows per image (trailing odd rows/columns included)."""
        pid_m = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < C
        c64 = c.to(tl.int64)
        bias = tl.zeros((BLOCK_C,), tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        n, top, left, ok, m00, m01, m10, m11 = window_taps(pid_m, N, H, W, c_ok, BLOCK_M)
        cz = c64 * sz_c
        y00 = _relu_tap(z_ptr, n, top, left, sz_n, sz_h, sz_w, cz, m00, bias)
        y01 = _relu_tap(z_ptr, n, top, left + 1, sz_n, sz_h, sz_w, cz, m01, bias)
        y10 = _relu_tap(z_ptr, n, top + 1, left, sz_n, sz_h, sz_w, cz, m10, bias)
        y11 = _relu_tap(z_ptr, n, top + 1, left + 1, sz_n, sz_h, sz_w, cz, m11, bias)
        if POOL:
            pooled = _max_propagating_nan(_max_propagating_nan(_max_propagating_nan(y00, y01), y10), y11)
            whole = ok & (top // 2 < PH) & (left // 2 < PW)
            rows = n * sp_n + (top // 2).to(tl.int64) * sp_h + (left // 2).to(tl.int64) * sp_w
            tl.store(pool_ptr + rows[:, None] + (c64 * sp_c)[None, :], pooled.to(pool_ptr.dtype.element_ty),
                     mask=whole[:, None] & c_ok[None, :])


def plan(z: torch.Tensor, bias: torch.Tensor | None, pooled: torch.Tensor | None) -> Launch:
    n, c, h, w = z.shape
    windows = n * ((h + 1) // 2) * ((w + 1) // 2)
    # 64 channels: a whole 128-byte line of a bf16 pixel per load (the layers it serves have 512 or more)
    block_m, block_c = (32, 64) if z.device.type == "cuda" else (32, 32)
    grid = (triton.cdiv(windows, block_m), triton.cdiv(c, block_c))
    pool_strides = pooled.stride() if pooled is not None else (0, 0, 0, 0)
    ph, pw = (pooled.shape[2], pooled.shape[3]) if pooled is not None else (0, 0)
    args = (z, bias if bias is not None else z, pooled if pooled is not None else z, *z.stride(), *pool_strides,
            n, h, w, ph, pw, c)
    return Launch(bias_relu_kernel, grid, args, dict(HAS_BIAS=bias is not None, POOL=pooled is not None,
                                                     BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4))


def bias_relu_(z: torch.Tensor, bias: torch.Tensor | None, pool: bool = False) -> torch.Tensor | None:
    """z = relu(z + bias) in place; with pool, returns max_pool2d(z, 2) (channels_last), else None."""
    pooled = None
    if pool:
        n, c, h, w = z.shape
        pooled = torch.empty((n, c, h // 2, w // 2), device=z.device, dtype=z.dtype, memory_format=torch.channels_last)
    if z.numel():
        plan(z, bias, pooled).run()
    return pooled
