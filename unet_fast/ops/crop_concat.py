"""crop_concat(skip, x) = cat([centre_crop(skip, x's size), x], dim=1): U-Net's copy and crop.

One pass that reads the cropped window of skip in place and writes the concatenation in x's
memory format. Kernels: CUDA C++ (csrc/cuda/crop_concat.cu, op unet_fast::crop_concat) and Triton
(ops/triton/crop_concat.py, op unet_fast::crop_concat_triton); on the CPU aten's cat of the cropped
view is the implementation (a C++ CPU kernel measured no faster: benchmarks/test_bench_crop_concat.py).
The gradient for skip lands in skip's full, uncropped shape (zero outside the window).
"""
from __future__ import annotations

import torch

from ..geometry import center_crop, crop_offset, zero_outside_center
from . import triton as _triton
from ._library import choose_implementation, memory_format_of, register_fake_and_autograd, register_triton

_kernels = _triton.Kernels("crop_concat")


# ---- input checks

def check_skip_covers(skip: torch.Tensor, x: torch.Tensor, op: str) -> None:
    """A skip connection must match x's batch and be at least as large, to be centre-cropped to it."""
    if skip.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: batch sizes differ: skip has {skip.shape[0]}, x has {x.shape[0]}")
    if skip.shape[2] < x.shape[2] or skip.shape[3] < x.shape[3]:
        raise ValueError(f"{op}: skip {tuple(skip.shape[2:])} is smaller than x {tuple(x.shape[2:])}; "
                         "skip must be at least as large as x in height and width")


def _check(skip, x) -> None:
    for name, t in (("skip", skip), ("x", x)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"crop_concat: {name} must be a 4-D tensor (N, C, H, W), got {got}")
    check_skip_covers(skip, x, "crop_concat")
    if skip.dtype != x.dtype:
        raise TypeError(f"crop_concat: dtypes differ: skip is {skip.dtype}, x is {x.dtype}; cast one of them")
    if skip.device != x.device:
        raise ValueError(f"crop_concat: devices differ: skip is on {skip.device}, x on {x.device}")


# ---- reference

def crop_concat_reference(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The composite: a view of the window, then torch.cat."""
    return torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1)


# ---- fake kernel

def _fake(skip, x):
    n, cx, h, w = x.shape
    return x.new_empty((n, skip.shape[1] + cx, h, w)).contiguous(memory_format=memory_format_of(x))


# ---- autograd

def _setup_context(ctx, inputs, output):
    skip, _ = inputs
    ctx.skip_shape = skip.shape
    ctx.skip_format = memory_format_of(skip)


def gradient_parts(grad, skip_shape, skip_format: torch.memory_format, triton: bool, x_copy: bool = False):
    """(skip's gradient in ``skip_shape`` and ``skip_format``, zero outside the window; x's) from the
    concatenation's gradient ``grad``. With ``triton``, one pass (crop_concat_backward_triton; x's gradient a
    channels_last tensor of its own where ``x_copy``), else four fills and a copy; x's is otherwise a view."""
    cs = skip_shape[1]
    if triton:
        parts = torch.ops.unet_fast.crop_concat_backward_triton(grad, list(skip_shape),
                                                                 skip_format == torch.channels_last, x_copy)
        return parts[0], parts[1] if x_copy else grad[:, cs:]
    grad_skip = torch.empty(tuple(skip_shape), dtype=grad.dtype, device=grad.device, memory_format=skip_format)
    zero_outside_center(grad_skip, grad.shape[-2:])      # the window is written next
    center_crop(grad_skip, grad.shape[-2:]).copy_(grad[:, :cs])
    return grad_skip, grad[:, cs:]


def _backward(ctx, grad):
    # in skip's layout: it is added to the pool's gradient and read by the ReLU's backward with skip itself,
    # which for mixed layouts take a strided path (10x slower on the CPU for channels_last skips); on a GPU
    # in one pass, x's gradient left a view (its consumer may read it strided)
    triton = _triton.can_run(grad.device) and not _triton.INTERPRETED and not torch.is_grad_enabled()
    return gradient_parts(grad, ctx.skip_shape, ctx.skip_format, triton)


class _CompositeCropConcat(torch.autograd.Function):
    """The composite with the registered ops' backward: skip's gradient in skip's layout (torch.cat's own
    backward gives it plain contiguous, which makes a channels_last network's ReLU backward slow)."""

    @staticmethod
    def forward(skip, x):
        return crop_concat_reference(skip, x)

    setup_context = staticmethod(_setup_context)

    @staticmethod
    def backward(ctx, grad):
        return _backward(ctx, grad)


def _crop_concat_triton(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return _kernels.crop_concat_forward(skip, x, crop_offset(skip.shape[2], h), crop_offset(skip.shape[3], w),
                                        memory_format_of(x))


def _crop_concat_backward_triton(grad, skip_size, skip_channels_last, x_grad):
    n, c, h, w = grad.shape
    if len(skip_size) != 4 or skip_size[0] != n or not 0 <= skip_size[1] <= c or skip_size[2] < h \
            or skip_size[3] < w:
        raise ValueError(f"crop_concat_backward: skip_size {list(skip_size)} does not fit the concatenation's "
                         f"gradient {tuple(grad.shape)}: it must be (N, C_skip <= C, H >= {h}, W >= {w}), N = {n}")
    memory_format = torch.channels_last if skip_channels_last else torch.contiguous_format
    grad_skip, grad_x = _kernels.crop_concat_backward(grad, skip_size, crop_offset(skip_size[2], h),
                                                      crop_offset(skip_size[3], w), memory_format, x_grad)
    return [grad_skip] if grad_x is None else [grad_skip, grad_x]


def _fake_backward(grad, skip_size, skip_channels_last, x_grad):
    memory_format = torch.channels_last if skip_channels_last else torch.contiguous_format
    grad_skip = grad.new_empty(tuple(skip_size)).contiguous(memory_format=memory_format)
    if not x_grad:
        return [grad_skip]
    n, c, h, w = grad.shape
    return [grad_skip, grad.new_empty((n, c - skip_size[1], h, w)).contiguous(memory_format=torch.channels_last)]


if _triton.available():
    register_triton("crop_concat", _crop_concat_triton)
    register_triton("crop_concat_backward", _crop_concat_backward_triton)
register_fake_and_autograd("crop_concat", _fake, _backward, _setup_context)
register_fake_and_autograd("crop_concat_backward", _fake_backward)


# ---- implementation choice

def _backend(device: torch.device, dtype: torch.dtype, implementation: str | None = None) -> str:
    """The implementation to run: ``implementation`` if it can, else the ops' one precedence (ops/_library.py)."""
    return choose_implementation("crop_concat", device, dtype, implementation)


# whether a torch.func transform (vmap, grad, jacrev) is under way (private; a torch without it: none)
_functorch_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def crop_concat(skip: torch.Tensor, x: torch.Tensor, *, implementation: str | None = None) -> torch.Tensor:
    """Concatenate the centre crop of ``skip`` (to x's height and width) and ``x`` along channels.

    implementation: None (the default choice for the tensors), or "extension", "triton", "composite".
    """
    _check(skip, x)
    implementation = _backend(x.device, x.dtype, implementation)
    if implementation == "extension":
        return torch.ops.unet_fast.crop_concat(skip, x)
    if implementation == "triton":
        return torch.ops.unet_fast.crop_concat_triton(skip, x)
    # The gradients' layout, all _CompositeCropConcat changes, is not worth a failure where it does not fit:
    # torch.jit.trace records it as a Python call (which fails the trace's check and cannot be saved), and
    # torch.func's transforms (vmap of grad: per-sample gradients, jacrev) cannot run its backward's layout
    # queries and in-place writes.
    if torch.is_grad_enabled() and (skip.requires_grad or x.requires_grad) and not torch.jit.is_tracing() \
            and not _functorch_transforms_active():
        return _CompositeCropConcat.apply(skip, x)
    return crop_concat_reference(skip, x)
