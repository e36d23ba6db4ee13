"""crop_concat(skip, x) = cat([centre_crop(skip, x's size), x], dim=1): U-Net's copy and crop.

One pass that reads the cropped window of skip in place and writes the concatenation in
x's memory format (CPU kernel in csrc/cpu, CUDA kernel in csrc/cuda; a Triton kernel, op
unet_fast::crop_concat_triton, serves CUDA where the extension has no CUDA kernel). The gradient
for skip lands in skip's full, uncropped shape (zero outside the window).
"""
from __future__ import annotations

import torch

from .. import _extension
from ..geometry import crop_offset
from ..reference import center_crop
from . import triton as _triton

if _triton.available():
    from .triton import crop_concat as _kernels


def check_skip_covers(skip: torch.Tensor, x: torch.Tensor, op: str) -> None:
    """A skip connection must match x's batch and be at least as large, to be centre-cropped to it."""
    if skip.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: batch sizes differ: skip has {skip.shape[0]}, x has {x.shape[0]}")
    if skip.shape[2] < x.shape[2] or skip.shape[3] < x.shape[3]:
        raise ValueError(f"{op}: skip {tuple(skip.shape[2:])} is smaller than x {tuple(x.shape[2:])}; "
                         "skip must be at least as large as x in height and width")


def _check(skip: torch.Tensor, x: torch.Tensor) -> None:
    for name, t in (("skip", skip), ("x", x)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"crop_concat: {name} must be a 4-D tensor (N, C, H, W), got {got}")
    check_skip_covers(skip, x, "crop_concat")
    if skip.dtype != x.dtype:
        raise TypeError(f"crop_concat: dtypes differ: skip is {skip.dtype}, x is {x.dtype}; cast one of them")
    if skip.device != x.device:
        raise ValueError(f"crop_concat: devices differ: skip is on {skip.device}, x on {x.device}")


def crop_concat_reference(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The composite: a view of the window, then torch.cat."""
    return torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1)


def crop_concat(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Concatenate the centre crop of ``skip`` (to x's height and width) and ``x`` along channels."""
    _check(skip, x)
    # On the CPU aten's cat measured ~15 % faster than our C++ kernel (benchmarks/test_bench_crop_concat.py),
    # so the compiled kernel is used on CUDA only; torch.ops.unet_fast.crop_concat still reaches it on CPU.
    if x.device.type == "cuda" and _extension.has_kernel("crop_concat", "cuda"):
        return torch.ops.unet_fast.crop_concat(skip, x)
    if x.device.type == "cuda" and triton_usable(x.device):
        return torch.ops.unet_fast.crop_concat_triton(skip, x)
    return crop_concat_reference(skip, x)


def triton_usable(device: torch.device) -> bool:
    """True when the Triton kernel runs for tensors of this device in this process."""
    return _triton.available() and _triton.can_run(_kernels.crop_concat_kernel, device)


def _output_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _setup_context(ctx, inputs, output):
    skip, x = inputs
    ctx.skip_shape = skip.shape
    ctx.skip_channels = skip.shape[1]


def _backward(ctx, grad):
    cs = ctx.skip_channels
    h, w = grad.shape[-2:]
    grad_skip = grad.new_zeros(ctx.skip_shape)
    top, left = crop_offset(ctx.skip_shape[2], h), crop_offset(ctx.skip_shape[3], w)
    grad_skip[:, :, top:top + h, left:left + w] = grad[:, :cs]
    return grad_skip, grad[:, cs:]


if _extension.available():
    @torch.library.register_fake("unet_fast::crop_concat")
    def _(skip, x):
        n, cx, h, w = x.shape
        return x.new_empty((n, skip.shape[1] + cx, h, w)).contiguous(memory_format=_output_format(x))

    torch.library.register_autograd("unet_fast::crop_concat", _backward, setup_context=_setup_context)

if _triton.available():
    @torch.library.triton_op("unet_fast::crop_concat_triton", mutates_args=())
    def _crop_concat_triton(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return _kernels.crop_concat_forward(skip, x, crop_offset(skip.shape[2], h), crop_offset(skip.shape[3], w),
                                            _output_format(x))

    torch.library.register_autograd("unet_fast::crop_concat_triton", _backward, setup_context=_setup_context)
