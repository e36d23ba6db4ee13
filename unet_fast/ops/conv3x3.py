"""conv3x3_relu(x, weight, bias, *, skip=None, padding=0, pool=False, direct=False): the U-Net's 3x3
convolution + ReLU, fused.

y = relu(conv2d(input, weight, bias, padding)) with input = x, or, with ``skip``, the decoder's
input cat([centre_crop(skip, x's size), x], dim=1), read straight from skip and x by the Triton
kernel's loader (no cropped copy, no concatenated tensor). Bias and ReLU run in the GEMM epilogue;
the output is channels_last. Backward: the ReLU mask comes from y; the input gradient (dgrad)
and the weight gradient (wgrad) are Triton implicit GEMMs, the bias gradient summed by the wgrad
kernel on its way; the gradient for skip lands in skip's full shape, zero outside the window the
forward read. By default (``measured``) each part of each layer runs where the measured table
(ops/triton/conv3x3_configs.py) says it is fastest on this GPU: on an H200, cuDNN's backward
convolutions beat every Triton tile measured (benchmarks/results/*-run2), so there the backward is
aten's convolution_backward on the concatenated input; its bias gradient is not aten's (a slow
reduction) but the unet_fast::bias_grad_triton op's channel sum, taken in the ReLU mask's pass where
the backward makes one (ops/triton/bias_grad.py). Where cuDNN's forward convolution wins, it runs
without the bias, and the bias, the ReLU (and the pool) follow as one Triton pass
(ops/triton/bias_relu.py), as torch.compile fuses them; the op's backward is the same either way.

Two forward options await a GPU measurement (benchmarks/test_bench_conv.py) and are off by default:
``pool=True`` also returns the 2x2 max-pool of y, written by the same kernel's epilogue (the
encoder's second convs: y is still written, the decoder's skip needs it), and ``direct=True``
computes an unpooled convolution of x alone with at most 4 input channels (the first layer) with
FMA over the 9 * C_in taps instead of a tensor-core GEMM whose K would be mostly padding.
Within a double convolution, ``mask_input_grad`` on the second conv and ``output_grad_masked`` on the
first move the first's ReLU mask into the second's dgrad epilogue (it reads x there, the first's
output): the first's backward then makes no masked copy of its gradient (UNet does this per level).
The pool's backward, the skip's gradient and the ReLU mask are one Triton pass
(ops/triton/relu_pool_backward.py: aten's argmax and NaN rules, bit for bit); the forward writes no
index tensor.
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
from .frozen_weights import derived
from ._library import choose_implementation, register_fake_and_autograd, register_triton
from .crop_concat import check_skip_covers, crop_concat, gradient_parts

_bias_grad_kernels = _triton.Kernels("bias_grad")
_bias_relu_kernels = _triton.Kernels("bias_relu")
_kernels = _triton.Kernels("conv3x3")
_pool_backward_kernels = _triton.Kernels("relu_pool_backward")


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

def conv3x3_relu_reference(x, weight, bias=None, skip=None, padding: int = 0, relu=F.relu) -> torch.Tensor:
    """The aten composite: crop (a view), cat, conv2d, relu."""
    if skip is not None:
        x = torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1)
    return relu(F.conv2d(x, weight, bias, padding=padding))



# ---- fake kernels

def _fake_forward(x, weight, bias, skip, padding, direct, measured=False, mask_input_grad=False,
                  output_grad_masked=False):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h + 2 * padding - 2, w + 2 * padding - 2)).contiguous(
        memory_format=torch.channels_last)


def _fake_forward_pool(x, weight, bias, skip, padding, direct, measured=False, mask_input_grad=False,
                       output_grad_masked=False):
    y = _fake_forward(x, weight, bias, skip, padding, direct)
    return y, y.new_empty((*y.shape[:2], y.shape[2] // 2, y.shape[3] // 2)).contiguous(
        memory_format=torch.channels_last)


def _fake_input_grad(grad, weight, x, skip, padding, relu_mask_x=False):
    return [torch.empty_like(t, memory_format=torch.channels_last) for t in (x, skip) if t is not None]


def _fake_relu_pool_backward(y, grad_y, grad_pooled):
    return torch.empty_like(y, memory_format=torch.channels_last)


def _fake_relu_pool_backward_bias(y, grad_y, grad_pooled):
    return [_fake_relu_pool_backward(y, grad_y, grad_pooled), y.new_empty((y.shape[1],), dtype=torch.float32)]


def _fake_bias_grad(grad, y):
    bias = grad.new_empty((grad.shape[1],), dtype=torch.float32)
    return [bias] if y is None else [torch.empty_like(y, memory_format=torch.channels_last), bias]


def _fake_weight_grad(grad, x, skip, padding):
    cin = x.shape[1] + (skip.shape[1] if skip is not None else 0)
    # the layout conv3x3_weight_grad returns: a (kh, kw, ci, co) buffer viewed as (co, ci, kh, kw)
    return [x.new_empty((3, 3, cin, grad.shape[1]), dtype=torch.float32).permute(3, 2, 0, 1),
            x.new_empty((grad.shape[1],), dtype=torch.float32)]


# ---- autograd

def _setup_context(ctx, inputs, output):
    x, weight, bias, skip, padding, _ = inputs[:6]
    y = output[0] if isinstance(output, tuple) else output  # conv3x3_relu_pool: (y, pooled)
    ctx.save_for_backward(x, weight, skip, y)
    ctx.padding = padding
    ctx.has_skip = skip is not None
    ctx.measured, ctx.mask_input_grad, ctx.output_grad_masked = (bool(flag) for flag in inputs[6:9])


def _fused_passes(device: torch.device) -> bool:
    """Whether the backward's passes beside the GEMMs (masks, bias sums, skip's gradient) run as Triton kernels:
    where Triton runs, and no graph is being recorded (create_graph: aten's differentiable ops instead)."""
    return _triton.can_run(device) and not torch.is_grad_enabled()


def _backward(ctx, grad):
    if ctx.output_grad_masked:  # every consumer of y applied ReLU's mask to y's gradient already
        return _masked_backward(ctx, grad)
    y = ctx.saved_tensors[3]
    if _fused_passes(y.device):
        # one pass (aten's is two: y <= 0, then where), which sums the bias gradient on the way: used where
        # cuDNN computes the weight's, which gives no bias gradient worth having
        masked, grad_bias = torch.ops.unet_fast.bias_grad_triton(grad, y)
        aten_wgrad = ctx.needs_input_grad[2] and _aten_parts(ctx, grad)[1]
        return _masked_backward(ctx, masked, grad_bias if aten_wgrad else None)
    # ReLU's mask, read from its output, as aten's threshold_backward applies it (zero where y <= 0; a NaN
    # passes, as in the kernels' fused masks). The result takes y's channels_last layout (the condition's),
    # which the kernels read coalesced, whatever layout the gradient came in: a 1x1 head's or an
    # up-convolution's backward gives NCHW on the CPU.
    return _masked_backward(ctx, torch.where(y <= 0, 0, grad))


def _backward_pool(ctx, grad, grad_pooled):
    """y fed the skip connection (grad) and the pool (grad_pooled): one fused pass where Triton runs (and no
    graph is recorded: under create_graph aten's differentiable pool backward and mask)."""
    y = ctx.saved_tensors[3]
    if grad_pooled is None:
        return _backward(ctx, grad)
    if _fused_passes(y.device):
        if ctx.needs_input_grad[2] and _aten_parts(ctx, y)[1]:  # (y: the shape of y's gradient)
            # cuDNN's wgrad computes no bias gradient worth having: the same pass sums it
            masked, grad_bias = torch.ops.unet_fast.relu_pool_backward_bias_triton(y, grad, grad_pooled)
            return _masked_backward(ctx, masked, grad_bias)
        return _masked_backward(ctx, torch.ops.unet_fast.relu_pool_backward_triton(y, grad, grad_pooled))
    _, indices = F.max_pool2d(y, 2, return_indices=True)  # aten's argmax, so aten's tie-breaking
    pooled = torch.ops.aten.max_pool2d_with_indices_backward(grad_pooled, y, [2, 2], [2, 2], [0, 0], [1, 1],
                                                             False, indices)
    return _backward(ctx, pooled if grad is None else grad + pooled)


def _aten_parts(ctx, grad) -> tuple[bool, bool]:
    """(dgrad, wgrad): whether this layer's backward parts run on cuDNN (the measured table's choice)."""
    if not ctx.measured:
        return False, False
    x, weight, skip, _ = ctx.saved_tensors
    return _kernels.backward_prefers_aten(grad, weight, x, skip, ctx.padding)


def _masked_backward(ctx, grad, grad_bias=None):
    """Gradients for (x, weight, bias, skip) from the output gradient with ReLU's mask applied (grad_bias:
    the bias gradient, where the mask's pass summed it)."""
    x, weight, skip, y = ctx.saved_tensors
    needs_x, needs_weight, needs_bias, needs_skip = ctx.needs_input_grad[:4]
    needs_input = needs_x or (ctx.has_skip and needs_skip)
    aten_dgrad, aten_wgrad = _aten_parts(ctx, grad)
    grad_x = grad_weight = grad_skip = None
    if aten_dgrad or aten_wgrad:
        grads = aten_backward(grad, weight, x, skip, ctx.padding, needs_input and aten_dgrad,
                              needs_weight and aten_wgrad, ctx.mask_input_grad,
                              bias_grad=needs_bias and aten_wgrad and grad_bias is None)
        grad_x, grad_skip, grad_weight = grads[:3]
        grad_bias = grads[3] if grad_bias is None else grad_bias
    if needs_input and not aten_dgrad:
        grads = torch.ops.unet_fast.conv3x3_input_grad_triton(grad, weight, x, skip, ctx.padding,
                                                              ctx.mask_input_grad)
        grad_x = grads[0]
        grad_skip = grads[1] if ctx.has_skip else None
    if (needs_weight or needs_bias) and not aten_wgrad:
        grad_weight, grad_bias = torch.ops.unet_fast.conv3x3_weight_grad_triton(grad, x, skip, ctx.padding)
    grad_weight = grad_weight.to(weight.dtype) if needs_weight else None
    grad_bias = grad_bias.to(weight.dtype) if needs_bias else None
    return grad_x, grad_weight, grad_bias, grad_skip, None, None, None, None, None


def aten_backward(grad, weight, x, skip, padding, input_grad: bool, weight_grad: bool, mask_x: bool = False,
                  bias_grad: bool | None = None):
    """cuDNN's convolution_backward on the (materialised) concatenated input: (grad_x, grad_skip in skip's
    full shape, grad_weight, grad_bias), each None where not asked for (bias_grad: as weight_grad unless
    given); mask_x: grad_x with x's ReLU mask applied (mask_input_grad), a pass of its own. The bias
    gradient is the Triton channel sum where Triton runs (aten's reduction of a bf16 channels_last
    gradient is slow: ops/triton/bias_grad.py). What the op runs where the table picks aten, and what
    the tuner (unet_fast.tune) times against the Triton tiles, every pass included."""
    bias_grad = weight_grad if bias_grad is None else bias_grad
    fused = _fused_passes(grad.device)
    triton_bias = bias_grad and fused
    grad_bias = torch.ops.unet_fast.bias_grad_triton(grad, None)[0] if triton_bias else None
    grad_cat = grad_weight = None
    if input_grad or weight_grad or (bias_grad and not triton_bias):
        if skip is None:
            cat = x
        elif weight_grad or not fused:  # one pass, reading the window in place (create_graph: aten saves it)
            cat = crop_concat(skip, x)
        else:  # dgrad reads only the input's shape and layout: no concatenation made for it
            cat = x.new_empty((x.shape[0], skip.shape[1] + x.shape[1], *x.shape[2:])).contiguous(
                memory_format=torch.channels_last)
        grad_cat, grad_weight, aten_bias = torch.ops.aten.convolution_backward(
            grad, cat, weight, [weight.shape[0]], [1, 1], [padding, padding], [1, 1], False, [0, 0], 1,
            [input_grad, weight_grad, bias_grad and not triton_bias])
        grad_bias = aten_bias if grad_bias is None else grad_bias
    grad_x = grad_skip = None
    if input_grad:
        grad_x = grad_cat
        if skip is not None:  # fused: x's gradient a tensor of its own, which its mask and consumers read faster
            grad_skip, grad_x = gradient_parts(grad_cat, skip.shape, torch.channels_last, fused, x_copy=True)
        if mask_x and fused:
            grad_x = torch.ops.unet_fast.bias_grad_triton(grad_x, x)[0]  # the mask in one pass (its sum unused)
        elif mask_x:  # torch.where, not masked_fill, keeps x's channels_last (see _ReluMaskedGrad)
            grad_x = torch.where(x <= 0, 0, grad_x)
    return grad_x, grad_skip, grad_weight, grad_bias


# ---- Triton implementations

def _packed_forward(weight):
    return derived(weight, "forward packing", _kernels.pack_forward_weight)


def aten_forward(x, weight, bias, skip, padding, pool: bool = False):
    """cuDNN's convolution of the (concatenated) input without its bias, then one Triton pass adding the
    bias and applying the ReLU in place (with pool, also writing the 2x2 max-pool): y, or (y, pooled).
    The op's forward where the measured table picks cuDNN, and what the tuner times against the tiles."""
    cat = x if skip is None else crop_concat(skip, x)
    with torch.autocast(x.device.type, enabled=False):  # the op's dtype is its inputs', as the Triton route's
        z = F.conv2d(cat, weight, None, padding=padding).contiguous(memory_format=torch.channels_last)
    pooled = _bias_relu_kernels.bias_relu_(z, _contiguous(bias), pool)
    return (z, pooled) if pool else z


def _contiguous(bias):
    """The kernels read the bias as C_out consecutive values: a strided or expanded one is copied once."""
    return bias.contiguous() if bias is not None else None


def _conv3x3_relu_triton(x, weight, bias, skip, padding, direct, measured=False, mask_input_grad=False,
                         output_grad_masked=False):
    bias = _contiguous(bias)
    if measured and _kernels.forward_prefers_aten(x, weight, skip, padding):
        return aten_forward(x, weight, bias, skip, padding)
    return _kernels.conv3x3_forward(x, weight, bias, skip, padding, direct=direct,
                                    packed_weight=_packed_forward(weight))[0]


def _conv3x3_relu_pool_triton(x, weight, bias, skip, padding, direct, measured=False, mask_input_grad=False,
                              output_grad_masked=False):
    bias = _contiguous(bias)
    if measured and _kernels.forward_prefers_aten(x, weight, skip, padding, pool=True):
        return aten_forward(x, weight, bias, skip, padding, pool=True)
    return _kernels.conv3x3_forward(x, weight, bias, skip, padding, pool=True, direct=direct,
                                    packed_weight=_packed_forward(weight))


def _conv3x3_input_grad_triton(grad, weight, x, skip, padding, relu_mask_x=False):
    packed = derived(weight, "dgrad packing", _kernels.pack_dgrad_weight)
    return [t for t in _kernels.conv3x3_input_grad(grad, weight, x, skip, padding, packed_weight=packed,
                                                   relu_mask_x=relu_mask_x) if t is not None]


def _conv3x3_weight_grad_triton(grad, x, skip, padding):
    return list(_kernels.conv3x3_weight_grad(grad, x, skip, padding, bias_grad=True))


def _relu_pool_backward_triton(y, grad_y, grad_pooled):
    return _pool_backward_kernels.relu_pool_backward(y, grad_y, grad_pooled)


def _relu_pool_backward_bias_triton(y, grad_y, grad_pooled):
    return list(_pool_backward_kernels.relu_pool_backward(y, grad_y, grad_pooled, bias_grad=True))


def _bias_grad_triton(grad, y):
    masked, bias = _bias_grad_kernels.bias_grad(grad, y)
    return [bias] if masked is None else [masked, bias]


if _triton.available():
    register_triton("conv3x3_relu", _conv3x3_relu_triton)
    register_triton("conv3x3_relu_pool", _conv3x3_relu_pool_triton)
    register_triton("conv3x3_input_grad", _conv3x3_input_grad_triton)
    register_triton("conv3x3_weight_grad", _conv3x3_weight_grad_triton)
    register_triton("relu_pool_backward", _relu_pool_backward_triton)
    register_triton("relu_pool_backward_bias", _relu_pool_backward_bias_triton)
    register_triton("bias_grad", _bias_grad_triton)
register_fake_and_autograd("conv3x3_relu", _fake_forward, _backward, _setup_context)
register_fake_and_autograd("conv3x3_relu_pool", _fake_forward_pool, _backward_pool, _setup_context)
register_fake_and_autograd("conv3x3_input_grad", _fake_input_grad)
register_fake_and_autograd("conv3x3_weight_grad", _fake_weight_grad)
register_fake_and_autograd("relu_pool_backward", _fake_relu_pool_backward)
register_fake_and_autograd("relu_pool_backward_bias", _fake_relu_pool_backward_bias)
register_fake_and_autograd("bias_grad", _fake_bias_grad)


# ---- implementation choice

def _backend(device: torch.device, dtype: torch.dtype, implementation: str | None = None) -> str:
    """The implementation to run: ``implementation`` if it can, else the ops' one precedence (ops/_library.py)."""
    return choose_implementation("conv3x3_relu", device, dtype, implementation)


def _cast(t, dtype):
    """t.to(dtype), made once per weight inside frozen_weights() when no gradient is being recorded (the
    same tensor each time then, so its packings are reused too)."""
    if not isinstance(t, torch.Tensor) or t.dtype == dtype:
        return t
    if torch.is_grad_enabled():
        return t.to(dtype)
    return derived(t, f"cast to {dtype}", lambda w: w.to(dtype))


class _ReluMaskedGrad(torch.autograd.Function):
    """Identity whose backward applies the ReLU mask of its input: mask_input_grad where the composite runs."""

    @staticmethod
    def forward(x):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        # torch.where, not masked_fill: masked_fill returns NCHW whatever its input, and cuDNN's backward would
        # then copy the gradient back to the layer's channels_last
        return torch.where(ctx.saved_tensors[0] <= 0, 0, grad)


class _ReluOfMaskedGrad(torch.autograd.Function):
    """relu whose backward passes the gradient through: for output_grad_masked where the composite runs, the
    gradient arrives with this ReLU's mask applied already (y > 0 exactly where its input is > 0)."""

    @staticmethod
    def forward(x):
        return F.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad


def conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                 skip: Optional[torch.Tensor] = None, padding: int = 0, pool: bool = False,
                 direct: bool = False, implementation: Optional[str] = None, mask_input_grad: bool = False,
                 output_grad_masked: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """y = relu(conv2d(cat([centre_crop(skip), x]) or x, weight, bias, padding)), fused where Triton runs.

    pool: return (y, F.max_pool2d(y, 2)) from one kernel (the pool floors odd sizes, as F.max_pool2d).
    direct: where x alone has at most 4 channels and pool is False, the direct (non-GEMM) kernel;
    elsewhere ignored.
    implementation: None (the default choice for the tensors, and on a GPU whose measured table says
    cuDNN is faster for a part of this layer, cuDNN for that part), or "triton" (every part on the
    Triton kernels), "composite".
    mask_input_grad: x is a ReLU's output (another conv3x3_relu's y); x's gradient then comes back with
    that ReLU's mask applied (0 where x <= 0), i.e. as the gradient of the ReLU's input. Parameter
    gradients are unchanged; x.grad, were it kept, would differ where x is 0.
    output_grad_masked: every use of y was a conv3x3_relu(y, ..., mask_input_grad=True), so y's gradient
    arrives masked: the backward skips applying the mask again. Anything else reading y makes the
    gradients wrong; not with pool=True (the pool's gradient is not masked). UNet sets both per level.
    Under autocast the inputs are cast to the autocast dtype first, as aten's conv2d would.
    """
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device_type) and isinstance(x, torch.Tensor) and x.is_floating_point():
        dtype = torch.get_autocast_dtype(device_type)
        if mask_input_grad is True and x.dtype != dtype and x.requires_grad and torch.is_grad_enabled():
            # the mask of the values as the ReLU gave them: a positive value the cast rounds to 0 keeps its gradient
            x, mask_input_grad = _ReluMaskedGrad.apply(x), False
        x, weight, bias = x.to(dtype), _cast(weight, dtype), _cast(bias, dtype)
        skip = skip.to(dtype) if isinstance(skip, torch.Tensor) else skip
    _check(x, weight, bias, skip, padding, pool, direct)
    for name, flag in (("mask_input_grad", mask_input_grad), ("output_grad_masked", output_grad_masked)):
        if not isinstance(flag, bool):
            raise TypeError(f"conv3x3_relu: {name} must be True or False, got {flag!r}")
    if pool and output_grad_masked:
        raise ValueError("conv3x3_relu: output_grad_masked=True cannot go with pool=True: the pooled output's "
                         "gradient arrives unmasked; leave output_grad_masked False")
    measured = implementation is None
    if _backend(x.device, x.dtype, implementation) == "triton":
        op = torch.ops.unet_fast.conv3x3_relu_pool_triton if pool else torch.ops.unet_fast.conv3x3_relu_triton
        return op(x, weight, bias, skip, padding, direct, measured, mask_input_grad, output_grad_masked)
    if mask_input_grad and x.requires_grad and torch.is_grad_enabled():
        x = _ReluMaskedGrad.apply(x)
    relu = _ReluOfMaskedGrad.apply if output_grad_masked and torch.is_grad_enabled() else F.relu
    if skip is not None and torch.is_grad_enabled():
        # the crop_concat op, not torch.cat of a cropped view: its backward gives skip's gradient in skip's
        # layout in one pass, where cat's and the crop's backward give it NCHW in two; implementation=
        # "composite" (the tests' oracle, the users' way out) stays pure aten there too
        x, skip = crop_concat(skip, x, implementation="composite" if implementation == "composite" else None), None
    y = conv3x3_relu_reference(x, weight, bias, skip, padding, relu)
    return (y, F.max_pool2d(y, 2)) if pool else y
