"""conv3x3_relu(x, weight, bias, *, skip=None, padding=0, pool=False, direct=False): the U-Net's 3x3
convolution + ReLU, fused.

y = relu(conv2d(input, weight, bias, padding)) with input = x, or, with ``skip``, the decoder's
input cat([centre_crop(skip, x's size), x], dim=1), read straight from skip and x by the Triton
kernel's loader (no cropped copy, no concatenated tensor). Bias and ReLU run in the GEMM epilogue;
the output is channels_last. Backward: the ReLU mask comes from y; the input gradient (dgrad)
and the weight gradient (wgrad) are Triton implicit GEMMs, the bias gradient a reduction; the
gradient for skip lands in skip's full shape, zero outside the window the forward read.

Two forward options await a GPU measurement (benchmarks/test_bench_conv.py) and are off by default:
``pool=True`` also returns the 2x2 max-pool of y, written by the same kernel's epilogue (the
encoder's second convs: y is still written, the decoder's skip needs it), and ``direct=True``
computes an unpooled convolution of x alone with at most 4 input channels (the first layer) with
FMA over the 9 * C_in taps instead of a tensor-core GEMM whose K would be mostly padding.
The pool's backward is aten's (max_pool2d's indices recomputed from the saved y, then
max_pool2d_with_indices_backward): its tie-breaking is then F.max_pool2d's by construction, the
forward writes no index tensor, and the cost (one read of y) is small next to dgrad and wgrad.
The direct kernel's backward is the GEMM's.

Where Triton cannot run (CPU without TRITON_INTERPRET=1, float64, no triton) the op is the aten
composite, so it works everywhere. The Triton kernels are the ops unet_fast::conv3x3_relu_triton,
conv3x3_relu_pool_triton (forward, with autograd) and conv3x3_input_grad_triton,
conv3x3_weight_grad_triton (backward), registered as ops/_library.py says, so
torch.compile(fullgraph=True) traces through them.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..geometry import center_crop
from . import triton as _triton
from ._library import choose_implementation, register_fake_and_autograd, register_triton
from .crop_concat import check_skip_covers

if _triton.available():
    from .triton import conv3x3 as _kernels


# ---- input checks

def _describe(t) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def _check(x, weight, bias, skip, padding, pool=False, direct=False) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"conv3x3_relu: x must be a 4-D floating-point tensor (N, C, H, W), got {_describe(x)}"
                         + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if padding not in (0, 1):
        raise ValueError(f"conv3x3_relu: padding must be 0 (valid) or 1 (same), got {padding!r}")
    cs = 0
    if skip is not None:
        if not isinstance(skip, torch.Tensor) or skip.dim() != 4:
            raise ValueError(f"conv3x3_relu: skip must be None or a 4-D tensor (N, C, H, W), got {_describe(skip)}")
        check_skip_covers(skip, x, "conv3x3_relu")
        cs = skip.shape[1]
    cin = cs + x.shape[1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or tuple(weight.shape[1:]) != (cin, 3, 3):
        raise ValueError(f"conv3x3_relu: weight must have shape (C_out, {cin}, 3, 3) for "
                         f"{'skip channels + ' if skip is not None else ''}x channels = {cin}, got {_describe(weight)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"conv3x3_relu: bias must be None or of shape ({weight.shape[0]},), got {_describe(bias)}")
    for name, t in (("weight", weight), ("skip", skip), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"conv3x3_relu: {name} is {t.dtype} but x is {x.dtype}; cast them to one dtype")
        if t.device != x.device:
            raise ValueError(f"conv3x3_relu: {name} is on {t.device} but x is on {x.device}")
    if min(x.shape[2:]) + 2 * padding < 3:
        raise ValueError(f"conv3x3_relu: x's height and width must be at least {3 - 2 * padding} "
                         f"for a 3x3 convolution with padding {padding}, got {tuple(x.shape[2:])}")
    for name, flag in (("pool", pool), ("direct", direct)):
        if not isinstance(flag, bool):
            raise TypeError(f"conv3x3_relu: {name} must be True or False, got {flag!r}")
    if pool and min(x.shape[2:]) + 2 * padding < 4:
        out = tuple(s + 2 * padding - 2 for s in x.shape[2:])
        raise ValueError(f"conv3x3_relu: pool=True needs an output of at least 2x2 for the 2x2 max-pool, "
                         f"got output {out} from x {tuple(x.shape[2:])} with padding {padding}")



# ---- reference

def conv3x3_relu_reference(x, weight, bias=None, skip=None, padding: int = 0) -> torch.Tensor:
    """The aten composite: crop (a view), cat, conv2d, relu."""
    if skip is not None:
        x = torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1)
    return F.relu(F.conv2d(x, weight, bias, padding=padding))



# ---- fake kernels

def _fake_forward(x, weight, bias, skip, padding, direct):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h + 2 * padding - 2, w + 2 * padding - 2)).contiguous(
        memory_format=torch.channels_last)


def _fake_forward_pool(x, weight, bias, skip, padding, direct):
    y = _fake_forward(x, weight, bias, skip, padding, direct)
    return y, y.new_empty((*y.shape[:2], y.shape[2] // 2, y.shape[3] // 2)).contiguous(
        memory_format=torch.channels_last)


def _fake_input_grad(grad, weight, x, skip, padding):
    return [torch.empty_like(t, memory_format=torch.channels_last) for t in (x, skip) if t is not None]


def _fake_weight_grad(grad, x, skip, padding):
    cin = x.shape[1] + (skip.shape[1] if skip is not None else 0)
    # the layout conv3x3_weight_grad returns: a (kh, kw, ci, co) buffer viewed as (co, ci, kh, kw)
    return x.new_empty((3, 3, cin, grad.shape[1]), dtype=torch.float32).permute(3, 2, 0, 1)


# ---- autograd

def _setup_context(ctx, inputs, output):
    x, weight, bias, skip, padding, _ = inputs
    y = output[0] if isinstance(output, tuple) else output  # conv3x3_relu_pool: (y, pooled)
    ctx.save_for_backward(x, weight, skip, y)
    ctx.padding = padding
    ctx.has_skip = skip is not None


def _backward(ctx, grad):
    x, weight, skip, y = ctx.saved_tensors
    needs_x, needs_weight, needs_bias, needs_skip = ctx.needs_input_grad[:4]
    grad = grad.masked_fill(y <= 0, 0)  # ReLU's mask, read from its output
    grad_x = grad_weight = grad_bias = grad_skip = None
    if needs_x or (ctx.has_skip and needs_skip):
        grads = torch.ops.unet_fast.conv3x3_input_grad_triton(grad, weight, x, skip, ctx.padding)
        grad_x = grads[0]
        grad_skip = grads[1] if ctx.has_skip else None
    if needs_weight:
        grad_weight = torch.ops.unet_fast.conv3x3_weight_grad_triton(grad, x, skip, ctx.padding).to(weight.dtype)
    if needs_bias:
        grad_bias = grad.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype)
    return grad_x, grad_weight, grad_bias, grad_skip, None, None


def _backward_pool(ctx, grad, grad_pooled):
    y = ctx.saved_tensors[3]
    _, indices = F.max_pool2d(y, 2, return_indices=True)  # aten's argmax, so aten's tie-breaking
    grad = grad + torch.ops.aten.max_pool2d_with_indices_backward(
        grad_pooled, y, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
    return _backward(ctx, grad)


# ---- Triton implementations

def _conv3x3_relu_triton(x, weight, bias, skip, padding, direct):
    return _kernels.conv3x3_forward(x, weight, bias, skip, padding, direct=direct)[0]


def _conv3x3_relu_pool_triton(x, weight, bias, skip, padding, direct):
    return _kernels.conv3x3_forward(x, weight, bias, skip, padding, pool=True, direct=direct)


def _conv3x3_input_grad_triton(grad, weight, x, skip, padding):
    return [t for t in _kernels.conv3x3_input_grad(grad, weight, x, skip, padding) if t is not None]


def _conv3x3_weight_grad_triton(grad, x, skip, padding):
    return _kernels.conv3x3_weight_grad(grad, x, skip, padding)


if _triton.available():
    register_triton("conv3x3_relu", _conv3x3_relu_triton)
    register_triton("conv3x3_relu_pool", _conv3x3_relu_pool_triton)
    register_triton("conv3x3_input_grad", _conv3x3_input_grad_triton)
    register_triton("conv3x3_weight_grad", _conv3x3_weight_grad_triton)
register_fake_and_autograd("conv3x3_relu", _fake_forward, _backward, _setup_context)
register_fake_and_autograd("conv3x3_relu_pool", _fake_forward_pool, _backward_pool, _setup_context)
register_fake_and_autograd("conv3x3_input_grad", _fake_input_grad)
register_fake_and_autograd("conv3x3_weight_grad", _fake_weight_grad)


# ---- implementation choice

def _backend(device: torch.device, dtype: torch.dtype, implementation: str | None = None) -> str:
    """The implementation to run: ``implementation`` if it can, else the ops' one precedence (ops/_library.py)."""
    return choose_implementation("conv3x3_relu", device, dtype, implementation)


def conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                 skip: Optional[torch.Tensor] = None, padding: int = 0, pool: bool = False,
                 direct: bool = False, implementation: Optional[str] = None
                 ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """y = relu(conv2d(cat([centre_crop(skip), x]) or x, weight, bias, padding)), fused where Triton runs.

    pool: return (y, F.max_pool2d(y, 2)) from one kernel (the pool floors odd sizes, as F.max_pool2d).
    direct: where x alone has at most 4 channels and pool is False, the direct (non-GEMM) kernel;
    elsewhere ignored.
    implementation: None (the default choice for the tensors), or "triton", "composite".
    Under autocast the inputs are cast to the autocast dtype first, as aten's conv2d would.
    """
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device_type) and isinstance(x, torch.Tensor) and x.is_floating_point():
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if isinstance(bias, torch.Tensor) else bias
        skip = skip.to(dtype) if isinstance(skip, torch.Tensor) else skip
    _check(x, weight, bias, skip, padding, pool, direct)
    if _backend(x.device, x.dtype, implementation) == "triton":
        op = torch.ops.unet_fast.conv3x3_relu_pool_triton if pool else torch.ops.unet_fast.conv3x3_relu_triton
        return op(x, weight, bias, skip, padding, direct)
    y = conv3x3_relu_reference(x, weight, bias, skip, padding)
    return (y, F.max_pool2d(y, 2)) if pool else y
