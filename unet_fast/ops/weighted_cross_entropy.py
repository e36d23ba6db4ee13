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

Kernels: CPU and CUDA C++ (csrc/cpu/, csrc/cuda/weighted_cross_entropy.*, op
unet_fast::weighted_cross_entropy) and Triton (ops/triton/weighted_cross_entropy.py, op
unet_fast::weighted_cross_entropy_triton), chosen by the ops' one precedence (ops/_library.py);
a weight that needs a gradient takes the PyTorch composite. All accumulate in fp32 (fp64 for fp64
logits) and reduce per-block partial sums in a fixed order, so results are deterministic.

Checks on values cost no extra pass: the kernels flag invalid targets (outside [0, C) and not
ignore_index) and negative, NaN or infinite weights while they read them and return the first one's flat
index (``first_bad``); the op never raises for values. When to look is the caller's choice
(``value_check``): on the CPU at once (free); on CUDA, by default, without stalling the GPU: the
16 bytes are copied to pinned host memory asynchronously and looked at by the next call (or by
``check_pending``, which fit calls at every epoch's end), so a bad target is reported one step
late, naming its pixel, and training steps can be captured in CUDA graphs. "now" looks at once (a
synchronisation per call, the error at the call that caused it); "off" never looks. Under
torch.compile a bad value trips a device-side assert. The composite checks with vectorised
comparisons (extra passes; it is the slow path), except under torch.compile.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import triton as _triton
from ._library import choose_implementation, memory_format_of, register_fake_and_autograd, register_triton

_kernels = _triton.Kernels("weighted_cross_entropy")

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # at::Reduction codes, as the schema takes them
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TARGET_DTYPES = (torch.uint8, torch.int32, torch.int64)
_NAME = "weighted_softmax_cross_entropy"
VALUE_CHECKS = ("auto", "now", "deferred", "off")


# ---- input checks

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


def _check_value_check(value_check) -> None:
    if value_check not in VALUE_CHECKS:
        raise ValueError(f"{_NAME}: value_check must be one of {VALUE_CHECKS}, got {value_check!r}")


def _position(flat: int, shape) -> str:
    _, h, w = shape
    return f"(n={flat // (h * w)}, h={flat % (h * w) // w}, w={flat % w})"


def _raise_for_bad_values(first_bad: tuple[int, int], target, weight, num_classes: int, ignore_index: int,
                          when: str = "") -> None:
    """Raise for the first invalid target / weight; first_bad holds flat pixel indices, -1 for none."""
    bad_target, bad_weight = first_bad
    if bad_target >= 0:
        value = target.reshape(-1)[bad_target].item()
        raise IndexError(f"{_NAME}: target has value {value} at {_position(bad_target, target.shape)}{when}; "
                         f"class indices must be in [0, {num_classes}) or equal ignore_index={ignore_index}")
    if bad_weight >= 0:
        value = weight.reshape(-1)[bad_weight].item()
        raise ValueError(f"{_NAME}: weight has value {value} at {_position(bad_weight, weight.shape)}{when}; "
                         "weights must be >= 0 and not NaN or infinite")


@dataclass
class _Pending:
    """A call's first_bad on its way to the host: copied without waiting, looked at once it arrived."""

    first_bad: torch.Tensor  # pinned host memory, filled by an asynchronous copy
    arrived: torch.cuda.Event | None  # None: already on the host
    target: torch.Tensor
    weight: torch.Tensor | None
    num_classes: int
    ignore_index: int

    def check(self) -> None:
        _raise_for_bad_values(self.first_bad.tolist(), self.target, self.weight, self.num_classes,
                              self.ignore_index, " (found in an earlier call, checked without waiting)")


_pending: deque[_Pending] = deque()


def check_pending(wait: bool = True) -> None:
    """Raise for invalid targets or weights that earlier CUDA calls found (value_check "deferred"):
    every call so far with ``wait`` (a synchronisation), else those whose result has arrived."""
    while _pending and (wait or _pending[0].arrived is None or _pending[0].arrived.query()):
        entry = _pending.popleft()
        if entry.arrived is not None:
            entry.arrived.synchronize()
        entry.check()


def _defer(first_bad, target, weight, num_classes: int, ignore_index: int) -> None:
    if first_bad.device.type != "cuda":
        _pending.append(_Pending(first_bad, None, target, weight, num_classes, ignore_index))
        return
    host = torch.empty(first_bad.shape, dtype=first_bad.dtype, pin_memory=True)
    host.copy_(first_bad, non_blocking=True)
    arrived = torch.cuda.Event()
    arrived.record(torch.cuda.current_stream(first_bad.device))  # the copy's stream (not the current device's)
    _pending.append(_Pending(host, arrived, target, weight, num_classes, ignore_index))


def _first_bad_values(logits, target, weight, ignore_index) -> tuple[int, int]:
    """Vectorised value check for the composite path: flat index of the first bad target / weight, or -1."""
    kept = target.long() != ignore_index  # a uint8 target would compare with ignore_index wrapped mod 256
    bad = kept & ((target < 0) | (target >= logits.shape[1]))
    bad_target = int(bad.reshape(-1).nonzero()[0, 0]) if bool(bad.any()) else -1
    bad_weight = -1
    if weight is not None:
        bad_w = ~(weight >= 0) | torch.isinf(weight)
        bad_weight = int(bad_w.reshape(-1).nonzero()[0, 0]) if bool(bad_w.any()) else -1
    return bad_target, bad_weight


# ---- reference

def weighted_cross_entropy_reference(logits, target, weight=None, reduction="mean", ignore_index=-100):
    """The composite: F.cross_entropy(reduction="none") * weight, then the reduction ("mean" divides
    by the number of pixels whose target is not ignore_index). fp32, fp64 for fp64 logits."""
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = F.cross_entropy(logits.to(compute_dtype), target.long(), reduction="none", ignore_index=ignore_index)
    if weight is not None:
        loss = loss * weight.to(compute_dtype)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # widened: uint8 targets compare with ignore_index wrapped mod 256 (-100 as 156, 256 as class 0)
        return loss.sum() / (target.long() != ignore_index).sum().clamp(min=1)
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


# ---- fake kernel

def _fake(logits, target, weight, reduction: int, ignore_index: int, compute_grad: bool):
    """(loss, grad, count, first_bad) shaped as every implementation returns them."""
    n, _, h, w = logits.shape
    loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = logits.new_empty((n, h, w) if reduction == 0 else (), dtype=loss_dtype)
    grad = (torch.empty_like(logits, memory_format=memory_format_of(logits)) if compute_grad
            else logits.new_empty((0,)))
    return loss, grad, logits.new_empty((), dtype=torch.int64), logits.new_empty((2,), dtype=torch.int64)


# ---- autograd

def _setup_context(ctx, inputs, output):
    _, _, _, reduction, _, compute_grad = inputs
    _, grad, count, first_bad = output
    ctx.mark_non_differentiable(grad, count, first_bad)
    ctx.set_materialize_grads(False)  # else autograd fills a zero gradient for the saved-gradient output
    ctx.reduction, ctx.compute_grad = reduction, compute_grad
    ctx.save_for_backward(grad, count)


def _backward(ctx, grad_loss, *_unused):
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


def _weighted_cross_entropy_triton(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                                   reduction: int, ignore_index: int, compute_grad: bool):
    layout = memory_format_of(logits)
    logits = logits.contiguous(memory_format=layout)
    target = target.contiguous()
    weight = weight.contiguous() if weight is not None else None
    _, grad, _, _ = _fake(logits, target, weight, reduction, ignore_index, compute_grad)
    loss, count, first_bad = _kernels.weighted_cross_entropy_forward(
        logits, target, weight, grad if compute_grad else None, reduction, ignore_index, layout == torch.channels_last)
    return loss, grad, count, first_bad


if _triton.available():
    register_triton("weighted_cross_entropy", _weighted_cross_entropy_triton)
register_fake_and_autograd("weighted_cross_entropy", _fake, _backward, _setup_context)


# ---- implementation choice

def _backend(device: torch.device, dtype: torch.dtype, implementation: str | None = None) -> str:
    """The implementation to run: ``implementation`` if it can, else the ops' one precedence (ops/_library.py)."""
    return choose_implementation("weighted_cross_entropy", device, dtype, implementation)


def weighted_softmax_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                   *, reduction: str = "mean", ignore_index: int = -100,
                                   implementation: str | None = None, value_check: str = "auto") -> torch.Tensor:
    """Pixel-wise softmax cross-entropy of ``logits`` [N, C, H, W] against ``target`` [N, H, W], times ``weight``.

    Equals ``F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_index) * weight``
    followed by the reduction: "none" gives the per-pixel loss [N, H, W], "sum" its sum, and "mean"
    the sum divided by the number of pixels whose target is not ``ignore_index`` (not by the sum
    of the weights; 0 when every pixel is ignored). ``target`` may be uint8, int32 or int64 and is
    read as it is; ``weight`` (None: all ones) is any floating dtype. The loss is float32 (float64
    for float64 logits); logits' gradient comes in logits' dtype. Double backward is not supported.
    implementation: None (the default choice for the tensors; the composite when ``weight`` needs a
    gradient, which only it gives), or "extension", "triton", "composite".
    value_check: when to raise for an invalid target or weight (see the module docstring): "auto"
    (at once on the CPU; on CUDA without a synchronisation, one call late), "now", "deferred", "off".
    """
    _check(logits, target, weight, reduction, ignore_index)
    _check_value_check(value_check)
    if _pending and not torch.compiler.is_compiling():
        check_pending(wait=False)
    weight_needs_grad = weight is not None and weight.requires_grad and torch.is_grad_enabled()
    if weight_needs_grad and implementation not in (None, "composite"):
        raise ValueError(f"{_NAME}: weight requires a gradient, which only implementation 'composite' gives, "
                         f"got implementation={implementation!r}")
    implementation = _backend(logits.device, logits.dtype, "composite" if weight_needs_grad else implementation)
    if implementation == "composite":
        if not torch.compiler.is_compiling():
            _raise_for_bad_values(_first_bad_values(logits, target, weight, ignore_index), target, weight,
                                  logits.shape[1], ignore_index)
        return weighted_cross_entropy_reference(logits, target, weight, reduction, ignore_index)
    op = (torch.ops.unet_fast.weighted_cross_entropy if implementation == "extension"
          else torch.ops.unet_fast.weighted_cross_entropy_triton)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    loss, _, _, first_bad = op(logits, target, weight, _REDUCTIONS[reduction], ignore_index, compute_grad)
    if torch.compiler.is_compiling():
        if value_check != "off":
            torch._assert_async(first_bad.max() < 0, f"{_NAME}: invalid target or weight")
    elif value_check == "now" or (value_check == "auto" and first_bad.device.type != "cuda"):
        _raise_for_bad_values(first_bad.tolist(), target, weight, logits.shape[1], ignore_index)
    elif value_check != "off":
        _defer(first_bad, target, weight, logits.shape[1], ignore_index)
    return loss
