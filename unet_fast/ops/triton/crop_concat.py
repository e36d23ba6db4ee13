"""Triton kernel for crop_concat(skip, x) = cat([centre_crop(skip, x's size), x], dim=1).

One program copies a tile of (pixels x output channels): channels below C_skip come from skip's
window, the rest from x; the output is written in x's memory format. For channels_last tensors
both the loads and the stores run along contiguous channel vectors.
"""
from __future__ import annotations

import torch

from . import Launch, triton

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
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok = p < N * H * W
        n = (p // (H * W)).to(tl.int64)
        rem = p % (H * W)
        h = rem // W
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
