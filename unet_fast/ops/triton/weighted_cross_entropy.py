"""Weighted softmax cross-entropy in Triton: loss and gradient w.r.t. the logits in one pass.

One program per block of BLOCK pixels (a fixed configuration, so the interpreter and GPU runs
use the same kernel); the class axis is looped over twice: an online max / sum of exponentials
with the target logit picked on the way, then, when the gradient is wanted, the logits are read
again (from L2) to write (softmax - onehot) * weight. Loads and stores are masked; math is fp32
(fp64 for fp64 logits). Each program writes its partial loss sum, its non-ignored count and the
first invalid target / weight it saw; these small arrays are reduced by torch afterwards (a
deterministic reduction, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import on_device

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _weighted_cross_entropy_kernel(
    logits_ptr, target_ptr, weight_ptr, loss_ptr, grad_ptr, part_loss_ptr, part_count_ptr, part_bad_ptr,
    num_pixels, HW, C, stride_n, stride_c, stride_p, ignore_index,
    HAS_WEIGHT: tl.constexpr, PER_PIXEL: tl.constexpr, WITH_GRAD: tl.constexpr, FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    acc_dtype: tl.constexpr = tl.float64 if FP64 else tl.float32
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_pixels
    base = (offs // HW) * stride_n + (offs % HW) * stride_p

    t = tl.load(target_ptr + offs, mask=mask, other=0).to(tl.int64)
    kept = mask & (t != ignore_index)
    in_range = (t >= 0) & (t < C)
    use = kept & in_range
    if HAS_WEIGHT:
        w_raw = tl.load(weight_ptr + offs, mask=mask, other=0).to(acc_dtype)
        bad_w = mask & ~((w_raw >= 0) & (w_raw < float("inf")))  # negative, NaN or infinite
    else:
        w_raw = tl.full([BLOCK], 1, acc_dtype)
        bad_w = offs < 0
    w = tl.where(use, w_raw, 0)

    x = tl.load(logits_ptr + base, mask=mask, other=0).to(acc_dtype)
    m = x
    s = tl.full([BLOCK], 1, acc_dtype)
    xt = tl.where(t == 0, x, 0)
    for c in range(1, C):
        x = tl.load(logits_ptr + base + c * stride_c, mask=mask, other=0).to(acc_dtype)
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
        xt = tl.where(t == c, x, xt)
    lse = m + tl.log(s)
    loss = tl.where(use, (lse - xt) * w, 0)
    if PER_PIXEL:
        tl.store(loss_ptr + offs, loss, mask=mask)
    if WITH_GRAD:
        for c in range(0, C):
            x = tl.load(logits_ptr + base + c * stride_c, mask=mask, other=0).to(acc_dtype)
            g = tl.exp(x - lse) * w - tl.where(t == c, w, 0)
            tl.store(grad_ptr + base + c * stride_c, g.to(grad_ptr.dtype.element_ty), mask=mask)

    tl.store(part_loss_ptr + pid, tl.sum(loss, axis=0))
    tl.store(part_count_ptr + pid, tl.sum(kept.to(tl.int64), axis=0))
    # First invalid pixel of this block, num_pixels where there is none.
    tl.store(part_bad_ptr + 2 * pid, tl.min(tl.where(kept & ~in_range, offs, num_pixels), axis=0))
    tl.store(part_bad_ptr + 2 * pid + 1, tl.min(tl.where(bad_w, offs, num_pixels), axis=0))


def weighted_cross_entropy_forward(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                                   grad: torch.Tensor | None, reduction: int, ignore_index: int,
                                   channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, non-ignored count, flat index of the first invalid (target, weight) pixel or -1 each).

    logits: dense, channels_last or else contiguous; target, weight: contiguous; grad: None, or where
    to write the unscaled gradient, laid out as logits; reduction: 0 none, 1 mean over non-ignored
    pixels, 2 sum.
    """
    n, c, h, w = logits.shape
    num_pixels = n * h * w
    loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = logits.new_empty((n, h, w) if reduction == 0 else (0,), dtype=loss_dtype)
    programs = triton.cdiv(num_pixels, BLOCK)
    part_loss = logits.new_empty((programs,), dtype=loss_dtype)
    part_count = logits.new_empty((programs,), dtype=torch.int64)
    part_bad = logits.new_empty((programs, 2), dtype=torch.int64)
    if programs == 0:  # no pixel: nothing to launch, and amin below has nothing to reduce
        count = logits.new_zeros((), dtype=torch.int64)
        return (loss if reduction == 0 else logits.new_zeros((), dtype=loss_dtype)), count, \
            logits.new_full((2,), -1, dtype=torch.int64)
    stride_c, stride_p = (1, c) if channels_last else (h * w, 1)
    with on_device(logits.device):
        _weighted_cross_entropy_kernel[(programs,)](
            logits, target, weight if weight is not None else logits, loss, grad if grad is not None else logits,
            part_loss, part_count, part_bad, num_pixels, h * w, c, c * h * w, stride_c, stride_p, ignore_index,
            HAS_WEIGHT=weight is not None, PER_PIXEL=reduction == 0, WITH_GRAD=grad is not None,
            FP64=logits.dtype == torch.float64, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
    count = part_count.sum()
    if reduction != 0:
        loss = part_loss.sum()
        if reduction == 1:
            loss = loss / count.clamp(min=1)
    first_bad = part_bad.amin(dim=0)
    return loss, count, torch.where(first_bad >= num_pixels, -1, first_bad)
