"""Every op's schema, its registration, and the one rule that picks an op's implementation.

Each op has one schema (``SCHEMAS``) shared by all its implementations, which return the same outputs:
  - ``unet_fast::<op>``: the compiled kernels of csrc/ (``COMPILED`` ops), registered per device by the
    extension unet_fast._C (``TORCH_LIBRARY_IMPL``; the schema is defined here, so it exists without it);
  - ``unet_fast::<op>_triton``: the Triton kernel (every op here has one), for any device Triton runs on;
  - ``<op>_reference`` in ops/<op>.py: the PyTorch composite, called directly (not a registered op).
Every registered op is opaque to torch.compile (``torch.library.custom_op`` semantics: a fake kernel
gives output shapes, autograd is registered), Triton ones too rather than ``triton_op``: under
TRITON_INTERPRET=1 a ``triton_op`` hands fake tensors to the interpreter, which reads their data, so it
fails opcheck and torch.compile on the CPU; an opaque op passes both there, so every op is checked on
every machine. What opaque costs: Inductor calls the op rather than launching its kernels itself.

The one precedence (``backend``), for every op: the compiled kernel where the extension registered
one for the tensors' device type; else the Triton kernel where Triton compiles for that device (CUDA)
and takes the dtype; else the composite. Compiled kernels come first because they are built ahead of
time for the machine and launched from C++: no JIT compile on first use and less host time per call.
Triton's interpreter (the CPU under TRITON_INTERPRET=1, for tests: hundreds to thousands of times slower
than aten there) runs a Triton kernel only when asked for by name: ``implementation="triton"`` of the
public functions, ``UNet(backend="triton")``, or a direct call of ``torch.ops.unet_fast.<op>_triton``.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import _extension
from . import triton as _triton

SCHEMAS = {
    # cat([centre_crop(skip, x.shape[-2:]), x], dim=1), in x's memory format.
    "crop_concat": "(Tensor skip, Tensor x) -> Tensor",
    # Pixel-wise softmax cross-entropy times weight (None: 1); reduction 0 none, 1 mean over non-ignored
    # pixels, 2 sum. Returns (loss, d loss_sum / d logits = (softmax - onehot) * weight, unscaled, in
    # logits' layout, or an empty tensor when compute_grad is false, number of non-ignored pixels,
    # first_bad: int64 [flat index of the first invalid target, of the first negative, NaN or infinite weight],
    # -1 where none). It never raises for values: the caller decides when to look (no device sync).
    "weighted_cross_entropy": ("(Tensor logits, Tensor target, Tensor? weight, int reduction, int ignore_index, "
                               "bool compute_grad) -> (Tensor, Tensor, Tensor, Tensor)"),
    # relu(conv2d(cat([centre_crop(skip), x]) or x, weight, bias, padding)), channels_last; direct: the FMA
    # kernel where x alone has at most 4 channels; measured: the backward's parts run where the measured
    # table says (cuDNN where it beat every Triton tile on this GPU), else all on Triton. Backward only:
    # mask_input_grad: x is a ReLU's output, its gradient comes back with that ReLU's mask applied;
    # output_grad_masked: y's gradient arrives with y's ReLU mask applied already (see ops/conv3x3.py).
    "conv3x3_relu": ("(Tensor x, Tensor weight, Tensor? bias, Tensor? skip, int padding, bool direct, "
                     "bool measured=False, bool mask_input_grad=False, bool output_grad_masked=False) -> Tensor"),
    # (y, max_pool2d(y, 2)) of conv3x3_relu from one kernel.
    "conv3x3_relu_pool": ("(Tensor x, Tensor weight, Tensor? bias, Tensor? skip, int padding, bool direct, "
                          "bool measured=False, bool mask_input_grad=False, bool output_grad_masked=False) "
                          "-> (Tensor, Tensor)"),
    # [grad_x] or [grad_x, grad_skip (skip's full shape)] of conv2d([centre_crop(skip), x]) for a masked grad;
    # relu_mask_x: grad_x is 0 where x <= 0 (x a ReLU's output: its gradient then that ReLU's input's).
    "conv3x3_input_grad": ("(Tensor grad, Tensor weight, Tensor x, Tensor? skip, int padding, "
                           "bool relu_mask_x=False) -> Tensor[]"),
    # [weight gradient, bias gradient] of conv2d([centre_crop(skip), x]) for a masked grad, float32, from
    # one kernel (the bias gradient is the gradient's sum over pixels, taken on the way).
    "conv3x3_weight_grad": "(Tensor grad, Tensor x, Tensor? skip, int padding) -> Tensor[]",
    # (grad_y + max_pool2d's backward of grad_pooled) where not y <= 0, else 0: the backward of an encoder
    # level's y = relu(conv) that feeds the skip connection and the 2x2 pool (grad_y None: zeros).
    "relu_pool_backward": "(Tensor y, Tensor? grad_y, Tensor grad_pooled) -> Tensor",
    # [relu_pool_backward's result, its float32 sum over batch and pixels (the bias gradient)], one pass.
    "relu_pool_backward_bias": "(Tensor y, Tensor? grad_y, Tensor grad_pooled) -> Tensor[]",
    # [skip's gradient (skip_size, channels_last or contiguous), zero outside the window] or with x_grad
    # [that, x's gradient (channels_last)] from crop_concat's output gradient, in one pass.
    "crop_concat_backward": "(Tensor grad, SymInt[] skip_size, bool skip_channels_last, bool x_grad) -> Tensor[]",
    # [bias gradient] (grad's float32 sum over batch and pixels), or with y (a ReLU's output) [grad where
    # not y <= 0 else 0, channels_last; the bias gradient of that masked grad], from one pass.
    "bias_grad": "(Tensor grad, Tensor? y) -> Tensor[]",
}
COMPILED = ("crop_concat", "weighted_cross_entropy")  # ops with kernels in csrc/
TRITON_DTYPES = {"conv3x3_relu": (torch.float16, torch.bfloat16, torch.float32)}  # where not every dtype
IMPLEMENTATIONS = ("extension", "triton", "composite")

for _name in COMPILED:
    torch.library.define(f"unet_fast::{_name}", SCHEMAS[_name])
# Not a network op, so none of the above applies (no Triton kernel, fake kernel or autograd): the CPU kernel
# of the watershed that splits touching cells (csrc/cpu/watershed_flood.cpp); instances.py floods in Python
# where the extension is missing. Meyer's flooding of level (uint8 [H, W]) from markers (int64 [H, W], 0:
# none) within inside (bool [H, W]), 4-connected; returns the labels (int64 [H, W], 0 outside).
torch.library.define("unet_fast::watershed_flood", "(Tensor level, Tensor markers, Tensor inside) -> Tensor")


def register_triton(name: str, implementation: Callable) -> None:
    """Register ``implementation`` (which launches the Triton kernel) as ``unet_fast::<name>_triton``."""
    torch.library.custom_op(f"unet_fast::{name}_triton", implementation, mutates_args=(), schema=SCHEMAS[name])


def register_fake_and_autograd(name: str, fake: Callable, backward: Callable | None = None,
                               setup_context: Callable | None = None) -> None:
    """The fake kernel and autograd of every registered implementation of ``name``."""
    defined = ([f"unet_fast::{name}"] if name in COMPILED else []) + ([f"unet_fast::{name}_triton"]
                                                                       if _triton.available() else [])
    for qualname in defined:
        torch.library.register_fake(qualname, fake)
        if backward is not None:
            torch.library.register_autograd(qualname, backward, setup_context=setup_context)


def implementations(name: str, device: torch.device, dtype: torch.dtype) -> tuple[str, ...]:
    """The implementations of op ``name`` that can run for tensors of ``device`` (a torch.device or its name) and
    ``dtype``, in the order of the precedence: "extension", "triton", "composite" (always)."""
    if name not in SCHEMAS:     # else any name had the composite (weighted_softmax_cross_entropy: no extension)
        raise ValueError(f"name must be one of the ops {tuple(SCHEMAS)} (unet_fast::<name>), got {name!r}")
    if isinstance(device, str):
        device = torch.device(device)
    found = []
    if name in COMPILED and _extension.has_kernel(name, device.type):
        found.append("extension")
    if _triton.can_run(device) and dtype in TRITON_DTYPES.get(name, (dtype,)):
        found.append("triton")
    return (*found, "composite")


def backend(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation of op ``name`` that runs by default for tensors of ``device`` and ``dtype``:
    the first of ``implementations``, passing over Triton's interpreter (see this module's docstring).
    Decided per call from what is loaded and the tensors, never from a CUDA query, so torch.compile
    folds it to a constant."""
    return next(i for i in implementations(name, device, dtype) if not (i == "triton" and _triton.INTERPRETED))


def choose_implementation(name: str, device: torch.device, dtype: torch.dtype, implementation: str | None) -> str:
    """``implementation`` where it can run for these tensors (a ValueError saying what can otherwise);
    None: ``backend``'s choice."""
    if implementation is None:
        return backend(name, device, dtype)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{name}: implementation must be None or one of {IMPLEMENTATIONS}, got {implementation!r}")
    runnable = implementations(name, device, dtype)
    if implementation not in runnable:
        raise ValueError(f"{name}: implementation {implementation!r} cannot run on {device.type} tensors of {dtype} "
                         f"here (extension: {_extension.describe()}; Triton runs on CUDA, or on the CPU under "
                         f"TRITON_INTERPRET=1); these can: {runnable}")
    return implementation


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last when t is laid out so (and not also plain contiguous, as with one channel), else
    contiguous: the layout an op's outputs take from its main input."""
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
