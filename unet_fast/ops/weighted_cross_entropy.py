"""weighted_softmax_cross_entropy: the paper's loss, pixel-wise softmax cross-entropy times a weight map.

One pass over the logits computes the loss and, when the logits need a gradient, the gradient
itself: d loss / d logits = (softmax - onehot(target)) * weight, zero at ignored pixels. The kernel
writes it next to the loss and saves it; backward only scales it by grad_output (and 1 / count
for "mean"), a plain multiply. We chose this over recomputing the softmax in a fused backward
kernel by measurement (benchmarks/test_bench_loss.py, "gradient strategy" group, CPU
(8, 2, 512, 512) fp32, benchmarks/results/2026-11-25-cpu-loss.md): forward-with-gradient plus the
multiply was 1.27x faster than forward-without-gradient plus a second gradient pass on one
thread, and as fast on two; it is also the simpler code. The price is memory: the gradient
(logits' size) lives from forward to backward. Double backward is not supported.

Kernels: CPU C++ (csrc/cpu/weighted_cross_entropy.cpp), CUDA C++ (csrc/cuda/...), Triton
(ops/triton/weighted_cross_entropy.py). CUDA tensors use Triton where it imports, else the
CUDA C++ kernel; CPU tensors use the C++ kernel; anything else, or a weight that needs a
gradient, uses the PyTorch composite. All accumulate in fp32 (fp64 for fp64 logits) and reduce
per-block partial sums in a fixed order, so results are deterministic.

Checks on values cost no extra pass: the kernels flag invalid targets (outside [0, C) and not
ignore_index) and negative or NaN weights while they read them, and report the first one by
(n, h, w) after the pass (IndexError for a target, ValueError for a weight). On the CPU that
is free; on CUDA it costs one 16-byte device-to-host copy (a synchronisation) per call.
Under torch.compile the Triton path checks with a device-side assert instead (no position).
The composite fallback checks with vectorised comparisons (extra passes; it is the slow path).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # at::Reduction codes, as the C++ schema takes them
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TARGET_DTYPES = (torch.uint8, torch.int32, torch.int64)
_NAME = "weighted_softmax_cross_entropy"


def _check(logits, target, weight, reduction, ignore_index) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{_NAME}: logits must be a 4-D tensor (N, C, H, W), got {got}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"{_NAME}: logits must be float32, bfloat16, float16 or float64, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"{_NAME}: logits need at least one channel (class), got shape {tuple(logits.shape)}")
    n, _, h, w = logits.shape
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != (n, h, w):
        got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"{_NAME}: target must have shape (N, H, W) = {(n, h, w)} to match logits "
                         f"{tuple(logits.shape)}, got {got}")
    if target.dtype not in _TARGET_DTYPES:
        raise TypeError(f"{_NAME}: target must hold class indices as uint8, int32 or int64, got {target.dtype}")
    if target.device != logits.device:
        raise ValueError(f"{_NAME}: target is on {target.device} but logits on {logits.device}; move them together")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (n, h, w):
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"{_NAME}: weight must be None or have shape (N, H, W) = {(n, h, w)}, got {got}")
        if not weight.is_floating_point():
            raise TypeError(f"{_NAME}: weight must be a floating-point tensor, got {weight.dtype}")
        if weight.device != logits.device:
            raise ValueError(f"{_NAME}: weight is on {weight.device} but logits on {logits.device}; move them together")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{_NAME}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{_NAME}: ignore_index must be an int, got {type(ignore_index).__name__}")


def _position(flat: int, shape) -> str:
    _, h, w = shape
    return f"(n={flat // (h * w)}, h={flat % (h * w) // w}, w={flat % w})"


def raise_for_bad_values(first_bad: tuple[int, int], target, weight, num_classes: int, ignore_index: int) -> None:
    """Raise for the first invalid target / weight; first_bad holds flat pixel indices, -1 for none."""
    bad_target, bad_weight = first_bad
    if bad_target >= 0:
        value = target.reshape(-1)[bad_target].item()
        raise IndexError(f"{_NAME}: target has value {value} at {_position(bad_target, target.shape)}; class "
                         f"indices must be in [0, {num_classes}) or equal ignore_index={ignore_index}")
    if bad_weight >= 0:
        value = weight.reshape(-1)[bad_weight].item()
        raise ValueError(f"{_NAME}: weight has value {value} at {_position(bad_weight, weight.shape)}; "
                         "weights must be >= 0 and not NaN")


def _first_bad_values(logits, target, weight, ignore_index) -> tuple[int, int]:
    """Vectorised value check for the composite path: flat index of the first bad target / weight, or -1."""
    kept = target != ignore_index
    bad = kept & ((target < 0) | (target >= logits.shape[1]))
    bad_target = int(bad.reshape(-1).nonzero()[0, 0]) if bool(bad.any()) else -1
    bad_weight = -1
    if weight is not None:
        bad_w = ~(weight >= 0)
        bad_weight = int(bad_w.reshape(-1).nonzero()[0, 0]) if bool(bad_w.any()) else -1
    return bad_target, bad_weight


def weighted_cross_entropy_composite(logits, target, weight=None, reduction="mean", ignore_index=-100):
    """PyTorch composite: F.cross_entropy(reduction="none") * weight, then the reduction.

    Like unet_fast.reference.weighted_cross_entropy, but float64 logits stay float64.
    """
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = F.cross_entropy(logits.to(compute_dtype), target.long(), reduction="none", ignore_index=ignore_index)
    if weight is not None:
        loss = loss * weight.to(compute_dtype)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (target != ignore_index).sum().clamp(min=1)


def weighted_softmax_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                   *, reduction: str = "mean", ignore_index: int = -100) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy of ``logits`` [N, C, H, W] against ``target`` [N, H, W], times ``weight``.

    Equals ``F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_index) * weight``
    followed by the reduction: "none" gives the per-pixel loss [N, H, W], "sum" its sum, and "mean"
    the sum divided by the number of pixels whose target is not ``ignore_index`` (not by the sum
    of the weights; 0 when every pixel is ignored). ``target`` may be uint8, int32 or int64 and is
    read as it is; ``weight`` (None: all ones) is any floating dtype. The loss is float32 (float64
    for float64 logits); logits' gradient comes in logits' dtype. Double backward is not supported.
    """
    _check(logits, target, weight, reduction, ignore_index)
    code = _REDUCTIONS[reduction]
    weight_needs_grad = weight is not None and weight.requires_grad and torch.is_grad_enabled()
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    if not weight_needs_grad and logits.device.type == "cuda" and _TRITON is not None:
        return _TRITON.weighted_cross_entropy_checked(logits, target, weight, code, ignore_index, compute_grad)
    if not weight_needs_grad and _extension.has_kernel("weighted_cross_entropy", logits.device.type):
        loss, _, _ = torch.ops.unet_fast.weighted_cross_entropy(logits, target, weight, code, ignore_index, compute_grad)
        return loss
    if not torch.compiler.is_compiling():
        raise_for_bad_values(_first_bad_values(logits, target, weight, ignore_index), target, weight,
                             logits.shape[1], ignore_index)
    return weighted_cross_entropy_composite(logits, target, weight, reduction, ignore_index)


def _output_format(logits: torch.Tensor) -> torch.memory_format:
    channels_last = logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def fake_outputs(logits, reduction: int, compute_grad: bool):
    """(loss, grad, count) shaped as every kernel returns them: also the fake kernel."""
    n, _, h, w = logits.shape
    loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = logits.new_empty((n, h, w) if reduction == 0 else (), dtype=loss_dtype)
    grad = (torch.empty_like(logits, memory_format=_output_format(logits)) if compute_grad
            else logits.new_empty((0,)))
    return loss, grad, logits.new_empty((), dtype=torch.int64)


def setup_context(ctx, inputs, output):
    _, _, _, reduction, _, compute_grad = inputs[:6]
    _, grad, count = output[:3]
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # else autograd fills a zero gradient for the saved-gradient output
    ctx.reduction, ctx.compute_grad = reduction, compute_grad
    ctx.save_for_backward(grad, count)


def backward(ctx, grad_loss, *_unused):
    """Scale the gradient the forward kernel saved: by grad_output per pixel, or by the scalar."""
    if not ctx.compute_grad:
        raise RuntimeError(f"{_NAME}: backward through a call made with compute_grad=False")
    if grad_loss is None:  # the loss took no part in what is being differentiated
        return (None,) * 6
    grad, count = ctx.saved_tensors
    if ctx.reduction == 0:
        scale = grad_loss.unsqueeze(1)
    elif ctx.reduction == 1:
        scale = grad_loss / count.clamp(min=1)
    else:
        scale = grad_loss
    return (grad * scale.to(grad.dtype),) + (None,) * 5


if _extension.available():
    @torch.library.register_fake("unet_fast::weighted_cross_entropy")
    def _(logits, target, weight, reduction, ignore_index, compute_grad):
        return fake_outputs(logits, reduction, compute_grad)

    torch.library.register_autograd("unet_fast::weighted_cross_entropy", backward, setup_context=setup_context)


def _load_triton():
    try:
        from .triton import weighted_cross_entropy as module
    except ImportError:  # no triton on this platform: CUDA tensors use the CUDA C++ kernel
        return None
    return module


# Resolved once at import (not inside the traced call): the Triton implementation, where there is a GPU.
_TRITON = _load_triton() if torch.cuda.is_available() else None
