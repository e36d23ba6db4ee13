"""The backward of an encoder level's y = relu(conv) that feeds both the skip connection and a 2x2 max-pool.

    grad = (grad_y + max_pool2d_backward(grad_pooled, y)) where not y <= 0, else 0

in one pass: each program reads a block of 2x2 windows of y and grad_y (all channels of a block, NHWC) and
the pooled gradient of those windows, and writes the masked sum. Unfused, aten's path recomputes the
pool's argmax indices (an int64 tensor a quarter of y), writes the scattered pool gradient, adds and
masks: about three times the memory traffic. The argmax is aten's: the first maximum of the window in
row-major order, the last NaN winning over every number, so the result equals aten's bit for bit. Pixels of a
trailing odd row or column belong to no window (the pool floors) and get only the masked grad_y. With a
``partial`` buffer each program also sums what it wrote per channel (the bias gradient, where cuDNN computes
the weight's: no pass of its own over the gradient).
"""
from __future__ import annotations

import torch

from . import Launch, triton_or_none

triton = triton_or_none()

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _tap(ptr, n, h, w, s_n, s_h, s_w, c_offsets, mask):
        rows = n * s_n + h.to(tl.int64) * s_h + w.to(tl.int64) * s_w
        return tl.load(ptr + rows[:, None] + c_offsets[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _write(out_ptr, n, h, w, so_n, so_h, so_w, so_c, c64, mask, y, gy, gp, is_arg):
        grad = tl.where(y <= 0, 0.0, gy + tl.where(is_arg, gp, 0.0))  # a NaN passes, as masked_fill(y <= 0)
        rows = n * so_n + h.to(tl.int64) * so_h + w.to(tl.int64) * so_w
        stored = grad.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] + (c64 * so_c)[None, :], stored, mask=mask)
        return tl.sum(tl.where(mask, stored.to(tl.float32), 0.0), axis=0)  # what was written, per channel

    @triton.jit
    def window_taps(pid_m, N, H, W, c_ok, BLOCK_M: tl.constexpr):
        """A program's BLOCK_M windows of the ceil(H/2) x ceil(W/2) grid of 2x2 windows per image (trailing odd
        rows/columns included): (image, top row, left column, window in range, and the masks of its four
        taps, row-major, by channel). Shared with bias_relu's kernel."""
        wh = (H + 1) // 2
        ww = (W + 1) // 2
        window = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        n = (window // (wh * ww)).to(tl.int64)
        rem = window % (wh * ww)
        top = (rem // ww) * 2
        left = (rem % ww) * 2
        ok = window < N * wh * ww
        m00 = (ok & (top < H) & (left < W))[:, None] & c_ok[None, :]
        m01 = (ok & (top < H) & (left + 1 < W))[:, None] & c_ok[None, :]
        m10 = (ok & (top + 1 < H) & (left < W))[:, None] & c_ok[None, :]
        m11 = (ok & (top + 1 < H) & (left + 1 < W))[:, None] & c_ok[None, :]
        return n, top, left, ok, m00, m01, m10, m11

    @triton.jit(do_not_specialize=["N", "H", "W", "PH", "PW", "C"])
    def relu_pool_backward_kernel(
        y_ptr, gy_ptr, gp_ptr, out_ptr, partial_ptr,
        sy_n, sy_c, sy_h, sy_w, sg_n, sg_c, sg_h, sg_w, sp_n, sp_c, sp_h, sp_w, so_n, so_c, so_h, so_w,
        N, H, W, PH, PW, C,
        BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Rows: the ceil(H/2) x ceil(W/2) grid of 2x2 windows per image (trailing odd rows/columns included)."""
        pid_m = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < C
        c64 = c.to(tl.int64)
        n, top, left, ok, m00, m01, m10, m11 = window_taps(pid_m, N, H, W, c_ok, BLOCK_M)
        pooled = ((top // 2 < PH) & (left // 2 < PW))[:, None]  # a whole window the forward pooled
        y00 = _tap(y_ptr, n, top, left, sy_n, sy_h, sy_w, c64 * sy_c, m00)
        y01 = _tap(y_ptr, n, top, left + 1, sy_n, sy_h, sy_w, c64 * sy_c, m01)
        y10 = _tap(y_ptr, n, top + 1, left, sy_n, sy_h, sy_w, c64 * sy_c, m10)
        y11 = _tap(y_ptr, n, top + 1, left + 1, sy_n, sy_h, sy_w, c64 * sy_c, m11)
        # aten's argmax: scan in row-major order, take a value strictly greater than the best so far, or any
        # NaN (so the last NaN of a window wins)
        best = y00
        arg = tl.zeros((BLOCK_M, BLOCK_C), tl.int32)
        take = (y01 > best) | (y01 != y01)
        best = tl.where(take, y01, best)
        arg = tl.where(take, 1, arg)
        take = (y10 > best) | (y10 != y10)
        best = tl.where(take, y10, best)
        arg = tl.where(take, 2, arg)
        take = (y11 > best) | (y11 != y11)
        arg = tl.where(take, 3, arg)
        gp = _tap(gp_ptr, n, top // 2, left // 2, sp_n, sp_h, sp_w, c64 * sp_c, m00 & pooled)
        total = _write(out_ptr, n, top, left, so_n, so_h, so_w, so_c, c64, m00, y00,
                       _tap(gy_ptr, n, top, left, sg_n, sg_h, sg_w, c64 * sg_c, m00), gp, pooled & (arg == 0))
        total += _write(out_ptr, n, top, left + 1, so_n, so_h, so_w, so_c, c64, m01, y01,
                        _tap(gy_ptr, n, top, left + 1, sg_n, sg_h, sg_w, c64 * sg_c, m01), gp, pooled & (arg == 1))
        total += _write(out_ptr, n, top + 1, left, so_n, so_h, so_w, so_c, c64, m10, y10,
                        _tap(gy_ptr, n, top + 1, left, sg_n, sg_h, sg_w, c64 * sg_c, m10), gp, pooled & (arg == 2))
        total += _write(out_ptr, n, top + 1, left + 1, so_n, so_h, so_w, so_c, c64, m11, y11,
                        _tap(gy_ptr, n, top + 1, left + 1, sg_n, sg_h, sg_w, c64 * sg_c, m11), gp, pooled & (arg == 3))
        if BIAS:
            tl.store(partial_ptr + pid_m.to(tl.int64) * C + c64, total, mask=c_ok)


def blocks(y: torch.Tensor) -> tuple[int, int]:
    """(windows, channels) per program."""
    return (64, 32) if y.device.type == "cuda" else (32, 32)


def plan(y: torch.Tensor, grad_y: torch.Tensor, grad_pooled: torch.Tensor, out: torch.Tensor,
         partial: torch.Tensor | None = None) -> Launch:
    """The launch; ``partial`` (programs along the windows, C), float32: each program's per-channel sum of what
    it wrote, or None."""
    n, c, h, w = y.shape
    windows = n * ((h + 1) // 2) * ((w + 1) // 2)
    block_m, block_c = blocks(y)
    grid = (triton.cdiv(windows, block_m), triton.cdiv(c, block_c))
    args = (y, grad_y, grad_pooled, out, partial if partial is not None else out,
            *y.stride(), *grad_y.stride(), *grad_pooled.stride(), *out.stride(),
            n, h, w, grad_pooled.shape[2], grad_pooled.shape[3], c)
    return Launch(relu_pool_backward_kernel, grid, args, dict(BIAS=partial is not None, BLOCK_M=block_m,
                                                              BLOCK_C=block_c, num_warps=4))


def relu_pool_backward(y: torch.Tensor, grad_y: torch.Tensor | None, grad_pooled: torch.Tensor,
                       bias_grad: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(y > 0) * (grad_y + max_pool2d_backward(grad_pooled)) in y's shape, channels_last; grad_y None: zeros.
    bias_grad: also its float32 sum over batch and pixels, (grad, bias gradient)."""
    out = torch.empty(y.shape, device=y.device, dtype=y.dtype, memory_format=torch.channels_last)
    if grad_y is None:
        grad_y = torch.zeros_like(out)
    n, c, h, w = y.shape
    partial = None
    if bias_grad:
        programs = triton.cdiv(n * ((h + 1) // 2) * ((w + 1) // 2), blocks(y)[0])
        partial = torch.zeros((max(programs, 1), c), device=y.device, dtype=torch.float32)
    if y.numel():
        plan(y, grad_y.to(y.dtype), grad_pooled.to(y.dtype), out, partial).run()
    return (out, partial.sum(0)) if bias_grad else out
