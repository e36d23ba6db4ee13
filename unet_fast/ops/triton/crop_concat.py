"""Triton kernel for crop_concat(skip, x) = cat([centre_crop(skip, x's size), x], dim=1).

One program copies a tile of (pixels x output channels): channels below C_skip come from skip's
window, the rest from x; the output is written in x's memory format. For channels_last tensors
both the loads and the stores run along contiguous channel vectors.
"""
from __future__ import annotations

import torch

from . import Launch, triton_or_none

triton = triton_or_none()

if triton is not None:
    import triton.language as tl

    @triton.jit
    def crop_concat_kernel(
        skip_ptr, ss_n, ss_c, ss_h, ss_w, top, left,
        x_ptr, sx_n, sx_c, sx_h, sx_w,
        out_ptr, so_n, so_c, so_h, so_w,
        N, H, W, Cs, Cx,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
        p_ok = p < N * H * W
        n = (p // (H * W)).to(tl.int64)
        rem = p % (H * W)
        # 64-bit offsets: one image of a large tile can hold more than 2^31 elements (row * row stride)
        h = (rem // W).to(tl.int64)
        w = rem - h * W
        from_skip = p_ok[:, None] & (c < Cs)[None, :]
        from_x = p_ok[:, None] & ((c >= Cs) & (c < Cs + Cx))[None, :]
        value = tl.load(skip_ptr + (n * ss_n + (h + top) * ss_h + (w + left) * ss_w)[:, None] + (c * ss_c)[None, :],
                        mask=from_skip)
        value = tl.where(from_skip, value, tl.load(
            x_ptr + (n * sx_n + h * sx_h + w * sx_w)[:, None] + ((c - Cs) * sx_c)[None, :], mask=from_x))
        tl.store(out_ptr + (n * so_n + h * so_h + w * so_w)[:, None] + (c * so_c)[None, :], value,
                 mask=from_skip | from_x)


def plan_crop_concat(skip: torch.Tensor, x: torch.Tensor, top: int, left: int, out: torch.Tensor) -> Launch:
    """crop_concat_kernel's launch writing ``out``."""
    n, cx, h, w = x.shape
    cs = skip.shape[1]
    block_p, block_c = 64, 64
    grid = (triton.cdiv(n * h * w, block_p), triton.cdiv(cs + cx, block_c))
    args = (skip, *skip.stride(), top, left, x, *x.stride(), out, *out.stride(), n, h, w, cs, cx)
    return Launch(crop_concat_kernel, grid, args, dict(BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4, num_stages=1))


def crop_concat_forward(skip: torch.Tensor, x: torch.Tensor, top: int, left: int,
                        memory_format: torch.memory_format) -> torch.Tensor:
    """The concatenation, in a new tensor of ``memory_format``."""
    n, cx, h, w = x.shape
    out = torch.empty((n, skip.shape[1] + cx, h, w), device=x.device, dtype=x.dtype, memory_format=memory_format)
    plan_crop_concat(skip, x, top, left, out).run()
    return out


if triton is not None:
    @triton.jit
    def crop_concat_backward_kernel(
        grad_ptr, sg_n, sg_c, sg_h, sg_w,
        skip_ptr, ss_n, ss_c, ss_h, ss_w,
        x_ptr, sx_n, sx_c, sx_h, sx_w,
        N, SH, SW, H, W, top, left, Cs, Cx,
        X_GRAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Programs over skip's whole pixel grid: skip's channels take the gradient inside the window and 0
        around it; with X_GRAD, x's channels (window pixels only) are copied out too."""
        # 64-bit pixel indices: skip's grid can be larger than the concatenation's, and than 2^31 pixels
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok = p < N.to(tl.int64) * SH * SW
        n = p // (SH * SW)
        rem = p % (SH * SW)
        sh = rem // SW
        sw = rem - sh * SW
        h = sh - top
        w = sw - left
        inside = p_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        channels = Cs + Cx if X_GRAD else Cs
        c64 = c.to(tl.int64)
        value = tl.load(grad_ptr + (n * sg_n + h.to(tl.int64) * sg_h + w.to(tl.int64) * sg_w)[:, None]
                        + (c64 * sg_c)[None, :], mask=inside[:, None] & (c < channels)[None, :], other=0.0)
        tl.store(skip_ptr + (n * ss_n + sh.to(tl.int64) * ss_h + sw.to(tl.int64) * ss_w)[:, None]
                 + (c64 * ss_c)[None, :], value, mask=p_ok[:, None] & (c < Cs)[None, :])
        if X_GRAD:
            tl.store(x_ptr + (n * sx_n + h.to(tl.int64) * sx_h + w.to(tl.int64) * sx_w)[:, None]
                     + ((c64 - Cs) * sx_c)[None, :], value,
                     mask=inside[:, None] & ((c >= Cs) & (c < channels))[None, :])


def plan_crop_concat_backward(grad: torch.Tensor, grad_skip: torch.Tensor, grad_x: torch.Tensor | None,
                              top: int, left: int) -> Launch:
    """crop_concat_backward_kernel's launch: ``grad`` (N, Cs + Cx, H, W) into grad_skip (N, Cs, SH, SW) and,
    where given, grad_x (N, Cx, H, W)."""
    n, c, h, w = grad.shape
    cs, sh, sw = grad_skip.shape[1:]
    channels = c if grad_x is not None else cs
    block_p, block_c = 64, 64
    grid = (triton.cdiv(n * sh * sw, block_p), triton.cdiv(channels, block_c))
    x = grad_x if grad_x is not None else grad_skip  # never written without X_GRAD
    args = (grad, *grad.stride(), grad_skip, *grad_skip.stride(), x, *x.stride(), n, sh, sw, h, w, top, left,
            cs, c - cs)
    return Launch(crop_concat_backward_kernel, grid, args,
                  dict(X_GRAD=grad_x is not None, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4, num_stages=1))


def crop_concat_backward(grad: torch.Tensor, skip_shape, top: int, left: int, skip_format: torch.memory_format,
                         x_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(skip's gradient in skip's full shape and ``skip_format``, zero outside the window; with ``x_grad``,
    x's gradient as a channels_last tensor of its own, else None) from the concatenation's gradient, one pass."""
    n, c, h, w = grad.shape
    grad_skip = torch.empty(tuple(skip_shape), device=grad.device, dtype=grad.dtype, memory_format=skip_format)
    grad_x = None
    if x_grad:
        grad_x = torch.empty((n, c - skip_shape[1], h, w), device=grad.device, dtype=grad.dtype,
                             memory_format=torch.channels_last)
    if grad_skip.numel() or (grad_x is not None and grad_x.numel()):
        plan_crop_concat_backward(grad, grad_skip, grad_x, top, left).run()
    return grad_skip, grad_x
